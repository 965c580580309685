"""RL2 (Duan et al., 2016) with PPO for continuous actions: the recurrent baseline of the MILET paper (CleanRL style).

One recurrent policy and no inference model. A GRU reads (s_t, a_{t-1}, r_{t-1}, episode-start flag) at every step;
its hidden state persists across the 1 + N episodes of a trial and is reset only between trials, so the policy
itself must learn to explore in episode 1 and exploit what it found later. PPO trains it on whole trial sequences
(each minibatch is a set of trials, re-run from the zero hidden state) to maximise the whole trial's return.

It shares MILET's environments (envs_clustered.py) and the meta-test protocol (meta_test.py). Its PPO pieces are
copies of milet_ppo_continuous.py's (gae, layer_init, the actor/critic MLPs, the Huber clipped value loss, here for
sequence minibatches), CleanRL style, so that this file stands alone and only the method differs.

    python rl2_ppo_continuous.py                        # PointGoal
    python rl2_ppo_continuous.py --env-id AntGoal
"""
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
from gymnasium.wrappers.utils import RunningMeanStd
from torch.distributions.normal import Normal
from tqdm import tqdm

import envs_clustered
import meta_test


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment (policy, task sampling, environments)"""
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
    """if toggled, save a checkpoint (runs/<run_name>/<exp_name>.pt) at every evaluation"""
    capture_video: bool = False
    """if toggled, write MP4s of the final meta-test trial, one test task per cluster, to runs/<run_name>/videos/"""
    eval_every: int = 25
    """meta-test evaluation every this many iterations (and before training and at the end)"""
    eval_trials: int = 1
    """trials per test task in each evaluation (each with its own reset noise; the 32 test tasks stay the protocol)"""
    checkpoint_every: int = 100
    """write runs/<run_name>/resume.pt (everything --resume needs) every this many iterations"""
    resume: Optional[str] = None
    """continue the run in this folder (runs/<run_name>) from its resume.pt, with the run's own flags"""

    # Environment and trials, as MILET
    env_id: str = "PointGoal"
    """the environment id, one of envs_clustered.ENV_IDS"""
    task_seed: int = 0
    """seed of the 500 train / 32 test task split (kept fixed across training seeds)"""
    total_timesteps: int = 2_000_000
    """total environment frames of the experiment [per env: meta_test.TOTAL_TIMESTEPS, the same for every method]"""
    num_envs: int = 16
    """the number of parallel trials (one task each) per iteration"""
    episode_length: int = 100
    """H, the length of every episode"""
    num_exploit_episodes: int = 1
    """N, episodes after the first (exploration) episode of a trial"""
    async_envs: bool = False
    """if toggled, step gymnasium's v5 MuJoCo envs in worker processes (AsyncVectorEnv; implies --gymnasium-envs)"""
    gymnasium_envs: bool = False
    """if toggled, step MuJoCo through gymnasium's v5 envs (the reference path) instead of the native batched env"""
    physics_threads: int = 2
    """threads that step the native MuJoCo vector env (with --torch-threads 1, the fastest split on 2 cores)"""
    torch_threads: int = 1
    """torch's CPU threads (1 measured fastest on 2 cores; numbers are reproducible per thread count)"""

    # Recurrent policy
    gru_hidden_size: int = 128
    """hidden size of the policy GRU"""
    embed_sizes: tuple[int, int, int] = (16, 32, 16)
    """Linear+ReLU embedding sizes of the previous action, the state and the previous reward (as VariBAD's RL2)"""
    policy_layers: tuple[int, ...] = (128,)
    """hidden layers of the actor and critic heads on the GRU output"""

    # PPO
    learning_rate: float = 3e-4
    """the learning rate of the optimizer"""
    anneal_lr: bool = True
    """toggle learning rate annealing"""
    gamma: float = 0.97
    """the discount factor gamma (MILET's)"""
    gae_lambda: float = 0.9
    """the lambda for the general advantage estimation (MILET's)"""
    num_minibatches: int = 4
    """the number of mini-batches of whole trials per PPO epoch [per env: ENV_DEFAULTS]"""
    update_epochs: int = 4
    """the K epochs to update the policy [per env: ENV_DEFAULTS]"""
    norm_adv: bool = True
    """toggles advantages normalization"""
    clip_coef: float = 0.2
    """the surrogate clipping coefficient, also clips the value loss [per env: ENV_DEFAULTS]"""
    ent_coef: float = 1e-3
    """coefficient of the entropy [per env: ENV_DEFAULTS]"""
    huber_value_loss: bool = True
    """Huber (smooth L1) clipped value loss, as MILET; --no-huber-value-loss uses the squared error"""
    vf_coef: float = 0.5
    """coefficient of the value function"""
    max_grad_norm: float = 0.5
    """the maximum norm for the gradient clipping"""
    clip_vloss: bool = True
    """the value loss clipped by clip_coef, as the authors; --no-clip-vloss: unclipped [per env: ENV_DEFAULTS]"""
    init_logstd: float = 0.0
    """initial log-std of the Gaussian policy (0 = std 1, the authors') [per env: ENV_DEFAULTS]"""
    target_kl: Optional[float] = None
    """stop an update at the first minibatch whose approximate KL to the rollout policy exceeds this (None: never)
    [per env: ENV_DEFAULTS]"""

    # to be filled in runtime
    trial_length: int = 0
    """(1 + N) * H, filled in at runtime"""
    num_iterations: int = 0
    """the number of iterations (computed in runtime)"""


# Per-env defaults, one complete row per env: the RL2 settings of VariBAD's AntGoal config (docs/paper_settings.md) on
# the rand-params envs; on PointGoal the epochs, minibatches and clip of MILET's quick preset and entropy
# 1e-3, but RL2's lr 3e-4 (declared in the README: the learning check was calibrated with it). The Ant rows take the
# PPO setting of the oracle sweep (issue 24, docs/antgoal.md; not measured on RL2 itself): 10 epochs x 16 minibatches
# (one trial each), clip 0.2, no entropy bonus, initial std exp(-1), unclipped value loss, an update that stops
# once its KL passes 0.02, at RL2's lr 3e-4; the HumanoidDir rows too (the oracle check, issue 28, docs/results.md).
# The PointGoal row is also Args' defaults; `--env-id X` puts X's row under the flags. The frame budget is the
# protocol's (meta_test.TOTAL_TIMESTEPS).
COLUMNS = ("num_minibatches", "update_epochs", "clip_coef", "ent_coef", "init_logstd", "clip_vloss", "target_kl")
RL2_CONFIG = (1, 2, 0.05, 0.01, 0.0, True, None)
ANT_SWEPT = (16, 10, 0.2, 0.0, -1.0, False, 0.02)
TABLE = {  #             minibatches, epochs, clip, entropy, init log-std, value clip, KL stop
    "PointGoal":         (4, 4, 0.2, 1e-3, 0.0, True, None),
    "AntGoal":           ANT_SWEPT,
    "AntGoalPartial":    ANT_SWEPT,
    "AntU":              ANT_SWEPT,
    "HumanoidDir":       ANT_SWEPT,
    "HumanoidDirSparse": ANT_SWEPT,
    "HopperRandParams":  RL2_CONFIG,
    "WalkerRandParams":  RL2_CONFIG,
}
ENV_DEFAULTS = {env_id: dict(zip(COLUMNS, row), total_timesteps=meta_test.TOTAL_TIMESTEPS[env_id])
                for env_id, row in TABLE.items()}


def parse_args(argv: Optional[list[str]] = None) -> Args:
    """tyro reads the flags on top of --env-id's row of ENV_DEFAULTS (so --help shows the values that env runs with),
    then the settings are checked with one clear line each, before anything is written."""
    env_id = meta_test.peek_env_id(argv, ENV_DEFAULTS)
    args = tyro.cli(Args, args=argv, default=Args(env_id=env_id, **ENV_DEFAULTS[env_id]))
    meta_test.check_trial_args(args, ("checkpoint_every",))
    if args.capture_video:  # an offscreen GL backend and the MP4 encoder, before anything is written
        meta_test.check_video_support()
    return args


def make_env(args: Args, num_envs: int, seed: int) -> gym.vector.VectorEnv:
    """num_envs task slots, each a trial of 1 + N episodes of H steps (envs_clustered.py). The policy acts in
    [-1, 1]^A, rescaled to the env's box (Humanoid: +-0.4)."""
    envs = envs_clustered.make_vector_env(
        args.env_id, num_envs, episode_length=args.episode_length, num_episodes=1 + args.num_exploit_episodes,
        seed=seed, asynchronous=args.async_envs, native=not args.gymnasium_envs, physics_threads=args.physics_threads,
    )
    space, unit = envs.single_action_space, np.ones(envs.single_action_space.shape, dtype=np.float32)
    if not (np.array_equal(space.low, -unit) and np.array_equal(space.high, unit)):  # Humanoid's +-0.4
        envs = gym.wrappers.vector.RescaleAction(envs, -unit, unit)
    # no ClipAction: the env charges its control cost on the action the policy sent and MuJoCo clamps the control to
    # the model's ctrlrange, as the authors' envs did (a clipped action made a wide policy free; docs/antgoal.md)
    return envs


def layer_init(layer, std=np.sqrt(2), bias_const=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


def mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int, out_std: float) -> nn.Sequential:
    layers = []
    for width in hidden:
        layers += [layer_init(nn.Linear(in_dim, width)), nn.Tanh()]
        in_dim = width
    return nn.Sequential(*layers, layer_init(nn.Linear(in_dim, out_dim), std=out_std))


def gae(rewards, values, gamma, gae_lambda):
    """Advantages over the whole trial (T, B): the trial is one episode for the policy, so GAE runs across the
    inner episodes' boundaries and nothing is bootstrapped past the trial's end."""
    advantages, last_gae = torch.zeros_like(rewards), 0.0
    for t in reversed(range(len(rewards))):
        next_value = values[t + 1] if t + 1 < len(rewards) else 0.0
        delta = rewards[t] + gamma * next_value - values[t]
        advantages[t] = last_gae = delta + gamma * gae_lambda * last_gae
    return advantages, advantages + values


class RL2Agent(nn.Module):
    """pi(a_t | GRU(s_0..s_t, a_{<t}, r_{<t}, episode starts)) and its value, sharing the GRU (the RL loss trains it)."""

    def __init__(self, obs_dim: int, action_dim: int, args: Args):
        super().__init__()
        action_embed, state_embed, reward_embed = args.embed_sizes
        self.embed_action = nn.Sequential(layer_init(nn.Linear(action_dim, action_embed)), nn.ReLU())
        self.embed_state = nn.Sequential(layer_init(nn.Linear(obs_dim, state_embed)), nn.ReLU())
        self.embed_reward = nn.Sequential(layer_init(nn.Linear(1, reward_embed)), nn.ReLU())
        self.gru = nn.GRU(action_embed + state_embed + reward_embed + 2, args.gru_hidden_size)
        self.obs_dim = obs_dim
        for name, param in self.gru.named_parameters():
            if "bias" in name:
                nn.init.constant_(param, 0)
            elif "weight" in name:
                nn.init.orthogonal_(param, 1.0)
        self.critic = mlp(args.gru_hidden_size, args.policy_layers, 1, out_std=1.0)
        self.actor_mean = mlp(args.gru_hidden_size, args.policy_layers, action_dim, out_std=0.01)
        self.actor_logstd = nn.Parameter(torch.full((1, action_dim), args.init_logstd))

    def forward(self, inputs, hidden, action=None, deterministic=False):
        """inputs (T, B, in) from hidden (B, H) -> action, logprob, entropy, value (each (T, B[, A])), new hidden."""
        action_dim = inputs.shape[-1] - self.obs_dim - 3
        obs, prev_action, prev_reward, flags = inputs.split([self.obs_dim, action_dim, 1, 2], -1)
        embedded = torch.cat([self.embed_action(prev_action), self.embed_state(obs), self.embed_reward(prev_reward),
                              flags], -1)
        features, hidden = self.gru(embedded, hidden.unsqueeze(0))
        action_mean = self.actor_mean(features)
        probs = Normal(action_mean, self.actor_logstd.exp().expand_as(action_mean))
        if action is None:
            action = action_mean if deterministic else probs.sample()
        return (action, probs.log_prob(action).sum(-1), probs.entropy().sum(-1), self.critic(features).squeeze(-1),
                hidden[0])


def rl2_input(obs, prev_action, prev_reward, step, obs_rms, args, device) -> torch.Tensor:
    """(normalised s_t, a_{t-1}, r_{t-1}, 1 at the first step of every episode, the time t / T within the trial);
    zeros before the trial's first step. The time is our addition: the critic must know whether a reset follows."""
    norm_obs = np.clip((obs - obs_rms.mean) / np.sqrt(obs_rms.var + 1e-8), -10, 10)
    episode_start = torch.full((len(obs), 1), float(step % args.episode_length == 0), device=device)
    time_feature = torch.full((len(obs), 1), step / ((1 + args.num_exploit_episodes) * args.episode_length),
                              device=device)
    return torch.cat([torch.as_tensor(norm_obs, dtype=torch.float32, device=device), prev_action,
                      prev_reward.unsqueeze(-1), episode_start, time_feature], -1)


def ppo_update(agent, optimizer, inputs, actions, logprobs, advantages, returns, values, args, iteration):
    """CleanRL's PPO update on whole trials (T, B, .): each minibatch is a set of trials, re-run from h = 0, so the
    GRU sees each trial as it did in the rollout. The authors' Huber clipped value loss."""
    value_loss_fn = F.smooth_l1_loss if args.huber_value_loss else F.mse_loss
    trials_per_minibatch = inputs.shape[1] // args.num_minibatches
    clipfracs, steps, stop = [], 0, False
    for epoch in range(args.update_epochs):
        if stop:
            break
        for mb in torch.randperm(inputs.shape[1]).split(trials_per_minibatch):
            _, newlogprob, entropy, newvalue, _ = agent(
                inputs[:, mb], inputs.new_zeros(len(mb), args.gru_hidden_size), actions[:, mb])
            logratio = newlogprob - logprobs[:, mb]
            ratio = logratio.exp()
            with torch.no_grad():
                approx_kl = ((ratio - 1) - logratio).mean()
                clipfracs.append(((ratio - 1.0).abs() > args.clip_coef).float().mean().item())
            if args.target_kl is not None and approx_kl > args.target_kl:
                stop = True  # the policy has moved far enough from the rollout's: end the update
                break
            steps += 1
            mb_advantages = advantages[:, mb]
            if args.norm_adv:
                mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)
            clipped_ratio = ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)
            pg_loss = torch.max(-mb_advantages * ratio, -mb_advantages * clipped_ratio).mean()
            v_loss = value_loss_fn(newvalue, returns[:, mb], reduction="none")
            if args.clip_vloss:
                v_clipped = values[:, mb] + (newvalue - values[:, mb]).clamp(-args.clip_coef, args.clip_coef)
                v_loss = torch.max(v_loss, value_loss_fn(v_clipped, returns[:, mb], reduction="none"))
            v_loss = 0.5 * v_loss.mean()
            entropy_loss = entropy.mean()
            loss = pg_loss - args.ent_coef * entropy_loss + v_loss * args.vf_coef
            meta_test.check_finite({"policy_loss": pg_loss, "value_loss": v_loss}, iteration)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
            optimizer.step()
    return {"policy_loss": pg_loss.item(), "value_loss": v_loss.item(), "entropy": entropy_loss.item(),
            "approx_kl": approx_kl.item(), "clipfrac": float(np.mean(clipfracs)), "update_steps": steps}


@torch.no_grad()
def evaluate(args: Args, agent, obs_rms, eval_envs, split, device) -> dict:
    """Meta-test (meta_test.py): mean actions, the hidden state carried through the trial. No clusters, so no NMI."""
    num_tasks = eval_envs.num_envs  # --eval-trials slots per test task
    hidden = torch.zeros(num_tasks, args.gru_hidden_size, device=device)
    prev_action = torch.zeros(num_tasks, eval_envs.single_action_space.shape[0], device=device)
    prev_reward = torch.zeros(num_tasks, device=device)

    def act(obs, step):
        nonlocal hidden
        x = rl2_input(obs, prev_action, prev_reward, step, obs_rms, args, device)
        action, _, _, _, hidden = agent(x.unsqueeze(0), hidden, deterministic=True)
        return action[0]

    def observe(action, next_state, reward, step):
        nonlocal prev_action, prev_reward
        prev_action, prev_reward = action, reward
        return None

    return meta_test.evaluate(eval_envs, split, args.seed + 10_000, 1 + args.num_exploit_episodes,
                              args.episode_length, act, observe)


if __name__ == "__main__":
    args = parse_args()
    resumed = None  # --resume: the checkpoint's state and the run's own args, restored once everything is built
    if args.resume is not None:
        resumed, args = meta_test.load_resume(args)
    H = args.episode_length
    args.trial_length = (1 + args.num_exploit_episodes) * H
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
    eval_envs = make_env(args, len(split.test_tasks) * args.eval_trials, args.seed + 1)
    obs_dim, action_dim = envs.single_observation_space.shape[0], envs.single_action_space.shape[0]
    task_rng = np.random.default_rng(args.seed)
    agent = RL2Agent(obs_dim, action_dim, args).to(device)
    optimizer = optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)  # CleanRL's eps (MILET's: 1e-8)
    obs_rms, return_rms = RunningMeanStd(shape=(obs_dim,)), RunningMeanStd(shape=())

    # ALGO Logic: Storage setup for one trial per environment
    T, B = args.trial_length, args.num_envs
    inputs = torch.zeros((T, B, obs_dim + action_dim + 3), device=device)
    actions = torch.zeros((T, B, action_dim), device=device)
    logprobs, values, rewards = (torch.zeros((T, B), device=device) for _ in range(3))

    # Everything a checkpoint must hold so that --resume continues exactly as an uninterrupted run (CPU, same threads)
    checkpoint_path = os.path.join(run_dir, f"{args.exp_name}.pt")
    start_iteration, global_step = 1, 0
    if resumed is None:  # meta-test the untrained policy: the reference every later evaluation is read against
        record = {"iteration": 0, "global_step": 0, **evaluate(args, agent, obs_rms, eval_envs, split, device)}
        meta_test.log_evaluation(writer, run_dir, eval_lines, record)
    else:
        agent.load_state_dict(resumed["agent"])
        optimizer.load_state_dict(resumed["optimizer"])
        (obs_rms.mean, obs_rms.var, obs_rms.count), (return_rms.mean, return_rms.var, return_rms.count) = resumed["rms"]
        meta_test.restore_random_state(resumed["rng"], task_rng, envs)
        start_iteration, global_step = resumed["iteration"] + 1, resumed["global_step"]
    start_step, start_time, sps = global_step, time.time(), 0
    progress = tqdm(range(start_iteration, args.num_iterations + 1), desc=f"RL2 {args.env_id}", unit="it",
                    initial=start_iteration - 1, total=args.num_iterations)
    for iteration in progress:
        if args.anneal_lr:
            optimizer.param_groups[0]["lr"] = (1.0 - (iteration - 1.0) / args.num_iterations) * args.learning_rate

        # ALGO LOGIC: one trial per environment; the hidden state starts at zero and runs through all episodes
        task_index = task_rng.integers(len(split.train_tasks), size=B)
        obs, _ = envs.reset(seed=args.seed if iteration == 1 else None,
                            options={"tasks": split.train_tasks[task_index],
                                     "clusters": split.train_clusters[task_index]})
        hidden = torch.zeros(B, args.gru_hidden_size, device=device)
        prev_action, prev_reward = torch.zeros(B, action_dim, device=device), torch.zeros(B, device=device)
        with torch.no_grad():
            for step in range(T):
                global_step += B
                obs_rms.update(obs)
                inputs[step] = rl2_input(obs, prev_action, prev_reward, step, obs_rms, args, device)
                action, logprob, _, value, hidden = agent(inputs[step].unsqueeze(0), hidden)
                actions[step], logprobs[step], values[step] = action[0], logprob[0], value[0]
                obs, reward, _, _, _ = envs.step(action[0].cpu().numpy())
                rewards[step] = torch.as_tensor(reward, dtype=torch.float32, device=device)
                prev_action, prev_reward = action[0], rewards[step]

        # ALGO LOGIC: the objective is the whole trial's return; rewards scaled by a running std of the discounted
        # return, which for RL2 runs across the episodes of the trial (MILET and VariBAD restart it per episode)
        discounted = torch.zeros_like(rewards)
        for t in range(T):
            discounted[t] = rewards[t] + args.gamma * (discounted[t - 1] if t else 0.0)
        return_rms.update(discounted.flatten().cpu().numpy())
        policy_rewards = (rewards / np.sqrt(return_rms.var + 1e-8)).clamp(-10, 10)
        advantages, returns = gae(policy_rewards, values, args.gamma, args.gae_lambda)  # across episode boundaries

        # ALGO LOGIC: PPO on whole trial sequences: each minibatch is a set of trials, re-run from h = 0
        stats = ppo_update(agent, optimizer, inputs, actions, logprobs, advantages, returns, values, args, iteration)
        writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], global_step)
        for key, value in stats.items():
            writer.add_scalar(f"losses/{key}", value, global_step)
        for episode in range(1 + args.num_exploit_episodes):
            train_return = rewards[episode * H: (episode + 1) * H].sum(0).mean()
            writer.add_scalar(f"charts/return_episode_{episode + 1}", train_return.item(), global_step)
        sps = int((global_step - start_step) / (time.time() - start_time))
        writer.add_scalar("charts/SPS", sps, global_step)

        # meta-test evaluation every eval_every iterations and at the end
        if iteration % args.eval_every == 0 or iteration == args.num_iterations:
            record = {"iteration": iteration, "global_step": global_step,
                      **evaluate(args, agent, obs_rms, eval_envs, split, device)}
            meta_test.log_evaluation(writer, run_dir, eval_lines, record)
            if args.save_model:
                meta_test.torch_save_atomic(checkpoint_path, {
                    "args": vars(args), "agent": agent.state_dict(), "iteration": iteration,
                    "obs_rms": (obs_rms.mean, obs_rms.var, obs_rms.count)})
        if iteration % args.checkpoint_every == 0 or iteration == args.num_iterations:
            meta_test.torch_save_atomic(os.path.join(run_dir, "resume.pt"), {
                "args": vars(args), "iteration": iteration, "global_step": global_step,
                "agent": agent.state_dict(), "optimizer": optimizer.state_dict(),
                "rms": [(rms.mean, rms.var, rms.count) for rms in (obs_rms, return_rms)],
                "rng": meta_test.random_state(task_rng, envs)})
        progress.set_postfix(SPS=sps, eval_return_2=round(record["return_episode_2"], 1))

    meta_test.write_atomic(os.path.join(run_dir, "summary.json"),
                           json.dumps(meta_test.summary(args, global_step, sps, record), indent=1))
    if args.capture_video:  # MP4s of the final evaluation's trial, one test task per cluster (replayed, then drawn)
        meta_test.capture_video(run_dir, record, lambda: evaluate(args, agent, obs_rms, eval_envs, split, device))
    envs.close()
    eval_envs.close()
    writer.close()
    print(f"run saved to {run_dir}")
