"""PEARL (Rakelly et al., ICML 2019) with SAC for continuous actions: the off-policy baseline of MILET (CleanRL style).

PEARL infers a probabilistic task variable z from a context c of transitions and acts with a SAC policy pi(a | s, z):
  * the context encoder maps every transition c_n = (s, a, r[, s']) to a Gaussian factor Psi(z | c_n); q(z | c) is
    their product (Sec. 4.1), pulled towards the prior N(0, I) by a KL term weighted by kl_lambda;
  * SAC as in PEARL's public code: twin Q-networks, a state-value network V with a Polyak target, a tanh-Gaussian
    actor and a FIXED entropy weight (alpha = 1 on rewards multiplied by reward_scale; no automatic tuning);
  * the critic's Bellman error trains the encoder (Sec. 4.3); the actor and V see z with its gradient stopped;
  * per-task replay buffers; the context of a task comes from its most recent data collected with z ~ prior (the
    encoder buffer, cleared whenever the task is visited again), the RL batch from all of its data (Sec. 4.3).
Exploration by posterior sampling (Sec. 4.2) on MILET's trial: episode 1 acts on z drawn from the prior N(0, I);
q(z | c) is updated at the END of each episode from all the context of the trial so far (as PEARL's evaluation does
after each trajectory), and the next episode acts on one z drawn from it. Training rollouts and the meta-test follow
the same rule; only episode 1 enters the encoder buffer, the later episodes feed the RL buffer only (PEARL's
`num_extra_rl_steps_posterior`). Actions are sampled in training, tanh(mean) at meta-test, as PEARL.

Only envs_clustered (environments) and meta_test (evaluation protocol, run files) are imported: this file is a leaf.

    python pearl_sac_continuous.py                        # PointGoal (see docs/pearl.md)
    python pearl_sac_continuous.py --env-id AntGoal       # PEARL's ant-goal settings
    python pearl_sac_continuous.py --resume runs/<run>    # continue an interrupted run
"""
import copy
import json
import os
import random
import time
from dataclasses import dataclass
from typing import Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
import tyro
from torch.distributions import Normal, kl_divergence
from tqdm import tqdm

import envs_clustered
import meta_test


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment (networks, task sampling, replay sampling, environments)"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, cuda will be enabled when available"""
    track: bool = False
    """if toggled, this experiment will be tracked with Weights and Biases (needs `pip install wandb`)"""
    wandb_project_name: str = "milet"
    """the wandb's project name"""
    wandb_entity: Optional[str] = None
    """the entity (team) of wandb's project"""
    runs_dir: str = "runs"
    """folder that receives runs/<run_name>/ (tensorboard events, eval.jsonl, summary.json, checkpoint)"""
    save_model: bool = False
    """if toggled, save a checkpoint (runs/<run_name>/pearl.pt) at every evaluation"""
    capture_video: bool = False
    """if toggled, write MP4s of the final meta-test trial, one test task per cluster, to runs/<run_name>/videos/"""
    eval_every: int = 5
    """meta-test evaluation every this many iterations (and before training and at the end)"""
    checkpoint_every: int = 20
    """write runs/<run_name>/resume.pt (everything --resume needs, replay buffers included) every this many iterations"""
    resume: Optional[str] = None
    """continue the run in this folder (runs/<run_name>) from its resume.pt, with the run's own flags"""

    # Environment and trials, as MILET
    env_id: str = "PointGoal"
    """the environment id, one of envs_clustered.ENV_IDS"""
    task_seed: int = 0
    """seed of the 500 train / 32 test task split (kept fixed across training seeds)"""
    num_envs: int = 16
    """the number of parallel trials (distinct training tasks) per iteration"""
    episode_length: int = 100
    """H, the length of every episode"""
    num_exploit_episodes: int = 1
    """N, episodes after the first of a trial"""
    async_envs: bool = False
    """if toggled, step gymnasium's v5 MuJoCo envs in worker processes (AsyncVectorEnv; implies --gymnasium-envs)"""
    gymnasium_envs: bool = False
    """if toggled, step MuJoCo through gymnasium's v5 envs (the reference path) instead of the native batched env"""
    physics_threads: int = 2
    """threads that step the native MuJoCo vector env"""
    torch_threads: int = 1
    """torch's CPU threads (numbers are reproducible per thread count)"""
    buffer_size_per_task: int = 4000
    """capacity of each training task's RL replay buffer, in transitions (oldest overwritten first)"""

    # PEARL. The defaults are PointGoal's row of ENV_DEFAULTS below; `--env-id X` puts X's row under the flags
    total_timesteps: int = 256_000
    """total environment frames [per env: ENV_DEFAULTS; MuJoCo envs: meta_test.TOTAL_TIMESTEPS]"""
    latent_size: int = 5
    """dimension of z [per env: ENV_DEFAULTS; ant-goal 5]"""
    net_size: int = 128
    """width of the 3 hidden layers of the actor, Q and V networks [per env: ENV_DEFAULTS; ant-goal 300]"""
    encoder_size: int = 128
    """width of the 3 hidden layers of the context encoder [per env: ENV_DEFAULTS; ant-goal 200]"""
    learning_rate: float = 1e-3
    """Adam lr of the actor, the Q and V networks and the encoder [per env: ENV_DEFAULTS; ant-goal 3e-4]"""
    meta_batch: int = 8
    """tasks per gradient step [per env: ENV_DEFAULTS; ant-goal 10]"""
    batch_size: int = 128
    """RL transitions per task per gradient step [per env: ENV_DEFAULTS; ant-goal 256]"""
    context_size: int = 100
    """context transitions per task per gradient step [per env: ENV_DEFAULTS; ant-goal 256]"""
    kl_lambda: float = 0.1
    """weight of KL(q(z|c) || N(0, I)), summed over tasks and dims as PEARL [per env: ENV_DEFAULTS; ant-goal 1.0]"""
    reward_scale: float = 5.0
    """rewards are multiplied by this in the Bellman target; 1 / alpha [per env: ENV_DEFAULTS; ant-goal 5]"""
    gamma: float = 0.97
    """the discount factor gamma [per env: ENV_DEFAULTS; ant-goal 0.99]"""
    tau: float = 0.005
    """Polyak rate of the target V network [per env: ENV_DEFAULTS; ant-goal 0.005]"""
    updates_per_iteration: int = 200
    """gradient steps per iteration of num_envs trials [per env: ENV_DEFAULTS; ant-goal 2560]"""
    use_next_obs_in_context: bool = False
    """the context holds s' too [per env: ENV_DEFAULTS; the rand-params envs, as PEARL's configs]"""

    # to be filled in runtime
    trial_length: int = 0
    """(1 + N) * H, filled in at runtime"""
    num_iterations: int = 0
    """the number of iterations (computed in runtime)"""


# One complete row per env id: PEARL's public settings (katerakelly/oyster configs/default.py with ant-goal.json,
# humanoid-dir.json, hopper/walker_rand_params.json; docs/pearl.md). updates_per_iteration keeps PEARL's ratio of 4000
# gradient steps per 5000 collected transitions on our 3200-frame iterations. The MuJoCo envs keep MILET's frame budget,
# so that all methods get the same frames. PointGoal (not in PEARL) is sized to learn in about 15 minutes on one core.
COLUMNS = ("latent_size", "net_size", "encoder_size", "learning_rate", "meta_batch", "batch_size", "context_size",
           "kl_lambda", "reward_scale", "gamma", "tau", "updates_per_iteration", "use_next_obs_in_context")
TABLE = {  #             z  net  encoder lr    tasks batch context KL   reward gamma tau    updates s'
    "PointGoal":         (5, 128, 128,    1e-3, 8,    128,  100,    0.1, 5.0,   0.97, 0.005, 200,    False),
    "AntGoal":           (5, 300, 200,    3e-4, 10,   256,  256,    1.0, 5.0,   0.99, 0.005, 2560,   False),
    "AntGoalPartial":    (5, 300, 200,    3e-4, 10,   256,  256,    1.0, 5.0,   0.99, 0.005, 2560,   False),
    "AntU":              (5, 300, 200,    3e-4, 10,   256,  256,    1.0, 5.0,   0.99, 0.005, 2560,   False),
    "HumanoidDir":       (5, 300, 200,    3e-4, 16,   256,  256,    0.1, 5.0,   0.99, 0.005, 2560,   False),
    "HumanoidDirSparse": (5, 300, 200,    3e-4, 16,   256,  256,    0.1, 5.0,   0.99, 0.005, 2560,   False),
    "HopperRandParams":  (5, 300, 200,    3e-4, 10,   256,  100,    0.1, 5.0,   0.99, 0.005, 2560,   True),
    "WalkerRandParams":  (5, 300, 200,    3e-4, 10,   256,  100,    0.1, 5.0,   0.99, 0.005, 2560,   True),
}
# PEARL converges in far fewer frames than the on-policy methods: its PointGoal budget is 256k frames (docs/pearl.md)
ENV_DEFAULTS = {env_id: dict(zip(COLUMNS, row), total_timesteps=256_000 if env_id == "PointGoal"
                             else meta_test.TOTAL_TIMESTEPS[env_id]) for env_id, row in TABLE.items()}
MEAN_REG, LOG_STD_REG, LOG_STD_MIN, LOG_STD_MAX = 1e-3, 1e-3, -20.0, 2.0  # PEARL's actor regularisers and log-std clamp


def parse_args(argv: Optional[list[str]] = None) -> Args:
    """tyro reads the flags on top of --env-id's row of ENV_DEFAULTS (so --help shows the values that env runs with),
    then the settings are checked with one clear line each, before anything is written."""
    env_id = meta_test.peek_env_id(argv, ENV_DEFAULTS)
    args = tyro.cli(Args, args=argv, default=Args(env_id=env_id, **ENV_DEFAULTS[env_id]))
    for flag in ("eval_every", "checkpoint_every", "episode_length", "num_exploit_episodes", "physics_threads", "torch_threads",
                 "num_envs", "latent_size", "net_size", "encoder_size", "meta_batch", "batch_size", "context_size"):
        if getattr(args, flag) < 1:
            meta_test.exit_with_error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.async_envs and args.env_id == "PointGoal":
        meta_test.exit_with_error("--async-envs is for the MuJoCo envs; PointGoal is already one batched numpy env")
    if args.num_envs > 500:
        meta_test.exit_with_error(f"--num-envs ({args.num_envs}) must be at most the 500 training tasks (one distinct task per trial)")
    trial = (1 + args.num_exploit_episodes) * args.episode_length
    if args.buffer_size_per_task < trial:
        meta_test.exit_with_error(f"--buffer-size-per-task ({args.buffer_size_per_task}) must hold one trial ({trial} transitions)")
    if args.total_timesteps < args.num_envs * trial:
        meta_test.exit_with_error(f"--total-timesteps ({args.total_timesteps}) is below one iteration ({args.num_envs * trial} frames)")
    if args.updates_per_iteration < 0 or args.kl_lambda < 0 or args.reward_scale <= 0:
        meta_test.exit_with_error("--updates-per-iteration and --kl-lambda must be >= 0 and --reward-scale > 0")
    if not (0 <= args.gamma < 1 and 0 < args.tau <= 1 and args.learning_rate > 0):
        meta_test.exit_with_error(f"need 0 <= --gamma < 1, 0 < --tau <= 1 and --learning-rate > 0, got {args.gamma}, {args.tau}, {args.learning_rate}")
    if args.capture_video:  # an offscreen GL backend and the MP4 encoder, before anything is written
        meta_test.check_video_support()
    return args


def make_env(args: Args, num_envs: int, seed: int) -> gym.vector.VectorEnv:
    """num_envs task slots, each a trial of 1 + N episodes of H steps; the actor acts in [-1, 1], rescaled to the box."""
    envs = envs_clustered.make_vector_env(
        args.env_id, num_envs, episode_length=args.episode_length, num_episodes=1 + args.num_exploit_episodes,
        seed=seed, asynchronous=args.async_envs, native=not args.gymnasium_envs, physics_threads=args.physics_threads,
    )
    space, unit = envs.single_action_space, np.ones(envs.single_action_space.shape, dtype=np.float32)
    if not (np.array_equal(space.low, -unit) and np.array_equal(space.high, unit)):  # Humanoid's +-0.4
        envs = gym.wrappers.vector.RescaleAction(envs, -unit, unit)
    return gym.wrappers.vector.ClipAction(envs)


def mlp(in_dim: int, width: int, out_dim: int, depth: int = 3) -> nn.Sequential:
    """`depth` ReLU hidden layers of `width` units (PEARL's networks), torch's default initialisation."""
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        in_dim = width
    return nn.Sequential(*layers, nn.Linear(in_dim, out_dim))


def product_of_gaussians(means: torch.Tensor, variances: torch.Tensor) -> Normal:
    """q(z | c_1:N) proportional to prod_n N(mu_n, sigma_n^2) over dim -2 (Sec. 4.1): precisions add, and the mean is
    the precision-weighted mean of the factors' means. The variances are floored at 1e-7, as PEARL's code."""
    precisions = 1.0 / variances.clamp(min=1e-7)
    variance = 1.0 / precisions.sum(-2)
    return Normal(variance * (means * precisions).sum(-2), variance.sqrt())


class ContextEncoder(nn.Module):
    """Psi(z | c_n) = N(f_mu(c_n), softplus(f_var(c_n))) for each transition; q(z | c) is their product (Sec. 4.1)."""

    def __init__(self, context_dim: int, args: Args):
        super().__init__()
        self.net = mlp(context_dim, args.encoder_size, 2 * args.latent_size)
        self.context_dim = context_dim

    def forward(self, context: torch.Tensor) -> Normal:
        """context (..., N, context_dim) -> q(z | c) with batch shape (..., latent_size)."""
        means, raw_variances = self.net(context).chunk(2, dim=-1)
        return product_of_gaussians(means, F.softplus(raw_variances))


class Actor(nn.Module):
    """pi(a | s, z): tanh of a Gaussian with state-dependent log-std (PEARL's TanhGaussianPolicy)."""

    def __init__(self, obs_dim: int, action_dim: int, args: Args):
        super().__init__()
        self.trunk = mlp(obs_dim + args.latent_size, args.net_size, args.net_size, depth=2)
        self.trunk.append(nn.ReLU())
        self.mean, self.log_std = nn.Linear(args.net_size, action_dim), nn.Linear(args.net_size, action_dim)

    def forward(self, x: torch.Tensor, deterministic: bool = False):
        """-> action in [-1, 1], its log-probability (with the tanh correction), the Gaussian's mean and log-std."""
        hidden = self.trunk(x)
        mean, log_std = self.mean(hidden), self.log_std(hidden).clamp(LOG_STD_MIN, LOG_STD_MAX)
        if deterministic:
            return torch.tanh(mean), None, mean, log_std
        gaussian = Normal(mean, log_std.exp())
        pre_tanh = gaussian.rsample()
        action = torch.tanh(pre_tanh)
        log_prob = (gaussian.log_prob(pre_tanh) - torch.log(1 - action.pow(2) + 1e-6)).sum(-1)
        return action, log_prob, mean, log_std


class TaskReplay:
    """Per-task replay (Sec. 4.3): an RL ring buffer per training task, and an encoder buffer per task that holds
    the task's most recent exploration episode (z ~ prior), replaced at each visit as PEARL clears it. A row is
    (s, a, r, s'); the context uses (s, a, r), or all of it with use_next_obs_in_context."""

    def __init__(self, num_tasks: int, capacity: int, episode_length: int, obs_dim: int, action_dim: int, args: Args):
        width = 2 * obs_dim + action_dim + 1
        self.rl = np.zeros((num_tasks, capacity, width), dtype=np.float32)  # pages are touched only when written
        self.size, self.pointer = np.zeros(num_tasks, dtype=np.int64), np.zeros(num_tasks, dtype=np.int64)
        self.encoder = np.zeros((num_tasks, episode_length, width), dtype=np.float32)
        self.visited = np.zeros(num_tasks, dtype=bool)
        self.context_dim = width if args.use_next_obs_in_context else obs_dim + action_dim + 1
        self.split_sizes = (obs_dim, action_dim, 1, obs_dim)

    def add_trial(self, task_index: np.ndarray, trial: np.ndarray, episode_length: int) -> None:
        """trial (B, T, width): all of it to the RL buffers, episode 1 to the encoder buffers."""
        positions = (self.pointer[task_index, None] + np.arange(trial.shape[1])) % self.rl.shape[1]
        self.rl[task_index[:, None], positions] = trial
        self.pointer[task_index] = (self.pointer[task_index] + trial.shape[1]) % self.rl.shape[1]
        self.size[task_index] = np.minimum(self.size[task_index] + trial.shape[1], self.rl.shape[1])
        self.encoder[task_index] = trial[:, :episode_length]
        self.visited[task_index] = True

    def sample(self, meta_batch: int, batch_size: int, context_size: int):
        """PEARL's sampling, with replacement: tasks among those seen, then per task an RL batch and a context."""
        tasks = np.random.choice(np.flatnonzero(self.visited), meta_batch)
        rl_rows = self.rl[tasks[:, None], np.random.randint(0, self.size[tasks, None], size=(meta_batch, batch_size))]
        context = self.encoder[tasks[:, None], np.random.randint(self.encoder.shape[1], size=(meta_batch, context_size))]
        return torch.from_numpy(rl_rows), torch.from_numpy(context[..., : self.context_dim])

    def state(self) -> dict:
        filled = int(self.size.max())
        return {"rl": self.rl[:, :filled].copy(), "size": self.size, "pointer": self.pointer, "encoder": self.encoder,
                "visited": self.visited}

    def load(self, state: dict) -> None:
        self.rl[:, : state["rl"].shape[1]] = state["rl"]
        self.size, self.pointer, self.encoder, self.visited = state["size"], state["pointer"], state["encoder"], state["visited"]


def episode_belief(encoder, context: Optional[torch.Tensor], num_slots: int, args: Args, device) -> Normal:
    """The belief an episode acts on (Sec. 4.2): the prior N(0, I) before any context, else q(z | c) from all the
    context of the trial so far (context (B, t, row width); the update happens at the end of each episode)."""
    if context is None:
        zeros = torch.zeros(num_slots, args.latent_size, device=device)
        return Normal(zeros, torch.ones_like(zeros))
    return encoder(context[..., : encoder.context_dim])


@torch.no_grad()
def run_trial(envs, actor, encoder, reset_kwargs: dict, args: Args, device) -> np.ndarray:
    """One training trial in every slot by posterior sampling: z ~ prior in episode 1, z ~ q(z | c) in the next
    episodes, actions sampled from pi(a | s, z). Returns the (B, T, width) rows (s, a, r, s')."""
    obs, _ = envs.reset(**reset_kwargs)
    rows = []
    for step in range(args.trial_length):
        if step % args.episode_length == 0:
            context = torch.as_tensor(np.stack(rows, 1), device=device) if rows else None
            z = episode_belief(encoder, context, len(obs), args, device).sample()
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device)
        action = actor(torch.cat([obs_t, z], -1))[0]
        obs, reward, _, _, info = envs.step(action.cpu().numpy())
        rows.append(np.concatenate([obs_t.cpu().numpy(), action.cpu().numpy(), np.asarray(reward, dtype=np.float32)[:, None],
                                    np.stack(info["next_state"]).astype(np.float32)], -1))
    return np.stack(rows, 1)


@torch.no_grad()
def evaluate(args: Args, actor, encoder, eval_envs, split, device) -> dict:
    """Meta-test on the shared protocol (meta_test.py) with run_trial's rule and tanh(mean) actions. z is drawn from
    a generator seeded alike at every evaluation, so evaluating never moves the training's random state. No NMI."""
    generator = torch.Generator().manual_seed(args.seed + 20_000)
    num_tasks, context, state = len(split.test_tasks), [], {}

    def act(obs, step):
        if step % args.episode_length == 0:
            belief = episode_belief(encoder, torch.stack(context, 1) if context else None, num_tasks, args, device)
            state["z"] = belief.mean + belief.stddev * torch.randn(belief.mean.shape, generator=generator).to(device)
        state["obs"] = torch.as_tensor(obs, dtype=torch.float32, device=device)
        return actor(torch.cat([state["obs"], state["z"]], -1), deterministic=True)[0]

    def observe(action, next_state, reward, step):
        context.append(torch.cat([state["obs"], action, reward[:, None], next_state], -1))
        return None

    return meta_test.evaluate(eval_envs, split, args.seed + 10_000, 1 + args.num_exploit_episodes,
                              args.episode_length, act, observe)


def sac_update(nets: dict, optimizers: dict, replay: TaskReplay, args: Args, device) -> dict:
    """One PEARL gradient step (Sec. 4.3, Algorithm 1) on meta_batch tasks."""
    rl_rows, context = (x.to(device) for x in replay.sample(args.meta_batch, args.batch_size, args.context_size))
    obs, actions, rewards, next_obs = rl_rows.flatten(0, 1).split(replay.split_sizes, -1)
    posterior = nets["encoder"](context)  # q(z | c) per task, (meta_batch, latent)
    z = posterior.rsample().repeat_interleave(args.batch_size, 0)  # one z per task, for all its RL transitions

    # critic and encoder: the Bellman error of both Q-networks trains the encoder through z, plus the KL bottleneck
    q1, q2 = (nets[q](torch.cat([obs, actions, z], -1)) for q in ("qf1", "qf2"))
    with torch.no_grad():  # no terminal states in these envs: the target always bootstraps
        q_target = args.reward_scale * rewards + args.gamma * nets["target_vf"](torch.cat([next_obs, z], -1))
    qf_loss = F.mse_loss(q1, q_target) + F.mse_loss(q2, q_target)
    prior = Normal(torch.zeros_like(posterior.mean), torch.ones_like(posterior.stddev))
    kl = kl_divergence(posterior, prior).sum()  # summed over tasks and dims, as PEARL's code
    optimizers["critic"].zero_grad()
    optimizers["encoder"].zero_grad()
    (qf_loss + args.kl_lambda * kl).backward()
    optimizers["critic"].step()
    optimizers["encoder"].step()

    # V and actor see z with its gradient stopped (the encoder learns from the critic only)
    z = z.detach()
    new_actions, log_pi, mean, log_std = nets["actor"](torch.cat([obs, z], -1))
    min_q = torch.min(*(nets[q](torch.cat([obs, new_actions, z], -1)) for q in ("qf1", "qf2"))).squeeze(-1)
    vf_loss = F.mse_loss(nets["vf"](torch.cat([obs, z], -1)).squeeze(-1), (min_q - log_pi).detach())  # soft V target
    optimizers["vf"].zero_grad()
    vf_loss.backward()
    optimizers["vf"].step()
    with torch.no_grad():
        for param, target_param in zip(nets["vf"].parameters(), nets["target_vf"].parameters()):
            target_param.lerp_(param, args.tau)
    policy_loss = (log_pi - min_q).mean() + MEAN_REG * mean.pow(2).mean() + LOG_STD_REG * log_std.pow(2).mean()
    optimizers["actor"].zero_grad()
    policy_loss.backward()
    optimizers["actor"].step()
    return {"qf_loss": qf_loss, "vf_loss": vf_loss, "policy_loss": policy_loss, "kl": kl,
            "z_variance": posterior.variance.mean(), "log_pi": log_pi.mean()}


if __name__ == "__main__":
    args = parse_args()
    resumed = None  # --resume: the checkpoint's state and the run's own args, restored once everything is built
    if args.resume is not None:
        resumed, args = meta_test.load_resume(args)
    args.trial_length = (1 + args.num_exploit_episodes) * args.episode_length
    args.num_iterations = args.total_timesteps // (args.num_envs * args.trial_length)
    if resumed is None:
        run_dir, writer = meta_test.start_run(args)  # runs/<env_id>__<exp_name>__<seed>__<time>/, args.json
        eval_lines = []
    else:  # the same folder: evaluations after the checkpoint are dropped, tensorboard purges its later events
        run_dir = args.resume
        writer, eval_lines, record = meta_test.resume_run(run_dir, resumed["iteration"], resumed["global_step"])

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.torch_threads)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    # env setup: the same task split, trials and test tasks as MILET
    split = envs_clustered.make_task_split(args.env_id, seed=args.task_seed)
    envs = make_env(args, args.num_envs, args.seed)
    eval_envs = make_env(args, len(split.test_tasks), args.seed + 1)
    obs_dim, action_dim = envs.single_observation_space.shape[0], envs.single_action_space.shape[0]
    task_rng = np.random.default_rng(args.seed)
    replay = TaskReplay(len(split.train_tasks), args.buffer_size_per_task, args.episode_length, obs_dim, action_dim, args)
    nets = {"encoder": ContextEncoder(replay.context_dim, args), "actor": Actor(obs_dim, action_dim, args),
            "qf1": mlp(obs_dim + action_dim + args.latent_size, args.net_size, 1),
            "qf2": mlp(obs_dim + action_dim + args.latent_size, args.net_size, 1),
            "vf": mlp(obs_dim + args.latent_size, args.net_size, 1)}
    nets["target_vf"] = copy.deepcopy(nets["vf"]).requires_grad_(False)
    nets = {name: net.to(device) for name, net in nets.items()}
    optimizers = {name: optim.Adam(params, lr=args.learning_rate) for name, params in (
        ("encoder", nets["encoder"].parameters()), ("actor", nets["actor"].parameters()),
        ("critic", [*nets["qf1"].parameters(), *nets["qf2"].parameters()]), ("vf", nets["vf"].parameters()))}

    # Everything a checkpoint must hold so that --resume continues exactly as an uninterrupted run (CPU, same threads)
    checkpoint_path = os.path.join(run_dir, f"{args.exp_name}.pt")
    start_iteration, global_step = 1, 0
    if resumed is None:  # meta-test the untrained policy: the reference every later evaluation is read against
        record = {"iteration": 0, "global_step": 0,
                  **evaluate(args, nets["actor"], nets["encoder"], eval_envs, split, device)}
        meta_test.log_evaluation(writer, run_dir, eval_lines, record)
    else:
        for name, net in nets.items():
            net.load_state_dict(resumed["nets"][name])
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(resumed["optimizers"][name])
        replay.load(resumed["replay"])
        meta_test.restore_random_state(resumed["rng"], task_rng, envs)
        start_iteration, global_step = resumed["iteration"] + 1, resumed["global_step"]
    start_step, start_time, sps = global_step, time.time(), 0
    progress = tqdm(range(start_iteration, args.num_iterations + 1), desc=f"PEARL {args.env_id}", unit="it",
                    initial=start_iteration - 1, total=args.num_iterations)
    for iteration in progress:
        # ALGO LOGIC: collect one trial in each of num_envs distinct training tasks by posterior sampling
        task_index = task_rng.choice(len(split.train_tasks), size=args.num_envs, replace=False)
        trial = run_trial(envs, nets["actor"], nets["encoder"], dict(
            seed=args.seed if iteration == 1 else None,
            options={"tasks": split.train_tasks[task_index], "clusters": split.train_clusters[task_index]}),
            args, device)
        replay.add_trial(task_index, trial, args.episode_length)
        global_step += args.num_envs * args.trial_length

        # ALGO LOGIC: PEARL's gradient steps on tasks seen so far (SAC + encoder, Sec. 4.3)
        for update in range(args.updates_per_iteration):
            losses = sac_update(nets, optimizers, replay, args, device)
            meta_test.check_finite(losses, iteration)

        if args.updates_per_iteration:
            for key, value in losses.items():
                writer.add_scalar(f"losses/{key}", value.item(), global_step)
        H = args.episode_length
        for episode in range(1 + args.num_exploit_episodes):
            episode_rewards = trial[:, episode * H: (episode + 1) * H, obs_dim + action_dim]
            writer.add_scalar(f"charts/return_episode_{episode + 1}", episode_rewards.sum(1).mean(), global_step)
        sps = int((global_step - start_step) / (time.time() - start_time))
        writer.add_scalar("charts/SPS", sps, global_step)

        # meta-test evaluation every eval_every iterations and at the end
        if iteration % args.eval_every == 0 or iteration == args.num_iterations:
            record = {"iteration": iteration, "global_step": global_step,
                      **evaluate(args, nets["actor"], nets["encoder"], eval_envs, split, device)}
            meta_test.log_evaluation(writer, run_dir, eval_lines, record)
            if args.save_model:
                meta_test.torch_save_atomic(checkpoint_path, {
                    "args": vars(args), "iteration": iteration, "nets": {k: v.state_dict() for k, v in nets.items()}})
        if iteration % args.checkpoint_every == 0 or iteration == args.num_iterations:
            meta_test.torch_save_atomic(os.path.join(run_dir, "resume.pt"), {
                "args": vars(args), "iteration": iteration, "global_step": global_step,
                "nets": {k: v.state_dict() for k, v in nets.items()},
                "optimizers": {k: v.state_dict() for k, v in optimizers.items()},
                "replay": replay.state(), "rng": meta_test.random_state(task_rng, envs)})
        progress.set_postfix(SPS=sps, eval_return_2=round(record["return_episode_2"], 1))

    meta_test.write_atomic(os.path.join(run_dir, "summary.json"),
                           json.dumps(meta_test.summary(args, global_step, sps, record), indent=1))
    if args.capture_video:  # MP4s of the final evaluation's trial, one test task per cluster (replayed, then drawn)
        meta_test.capture_video(run_dir, record, lambda: evaluate(args, nets["actor"], nets["encoder"], eval_envs, split,
                                                                  device))
    envs.close()
    eval_envs.close()
    writer.close()
    print(f"run saved to {run_dir}")
