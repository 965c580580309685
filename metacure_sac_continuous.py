"""MetaCURE (Zhang et al., ICML 2021) with SAC for continuous actions: the baseline with its own explorer (CleanRL style).

MetaCURE ("Meta Reinforcement Learning with Empowerment-Driven Exploration") separates exploration from
exploitation, as MILET does, but rewards its explorer with task IDs where MILET uses clusters:
  * a causal context encoder over (s_t, a_{t-1}, r_{t-1}) gives the belief q(z | tau_:t) = N(mu_t, sigma_t^2) at
    every step; the exploitation critic's Bellman error and a KL to N(0, I) (weight kl_lambda) train it;
  * two SAC agents, each with twin Q networks, a V network with a Polyak target and a tanh-Gaussian actor, and a
    fixed entropy weight (alpha = 1 on rewards multiplied by reward_scale): the exploitation agent acts on
    (s, z ~ q(z | tau)), the explorer on (s, mu_t, sigma_t^2), the belief with its gradient stopped;
  * the explorer's reward is r + intrinsic_weight * r_int, r_int = (r - R_belief(mu_t, sigma_t^2, s, a))^2
    - (r - R_task(task, s, a))^2: how much better the task ID predicts the reward than the belief before the step,
    a Gaussian form of log q(r | s, a, task) - log q(r | s, a, belief). The two reward predictors train by squared
    error; task IDs are used only there.
MetaCURE on MILET's trial (the paper's protocol for methods with an explorer): the explorer acts in episode 1, its
belief updated every step; the exploitation agent acts in episode 2 on one z drawn from q(z | episode 1). Actions are
sampled in training, tanh(mean) at meta-test, as the authors. What departs from the authors' code is listed in
docs/metacure.md.

Only envs_clustered (environments) and meta_test (evaluation protocol, run files) are imported: this file is a leaf.

    python metacure_sac_continuous.py                     # PointGoal (docs/metacure.md)
    python metacure_sac_continuous.py --env-id AntGoal    # MetaCURE's ant-goal settings
    python metacure_sac_continuous.py --resume runs/<run> # continue an interrupted run
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
    """if toggled, save a checkpoint (runs/<run_name>/<exp_name>.pt) at every evaluation"""
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
    """N, exploitation episodes after the exploration episode"""
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
    exploration_episodes_per_task: int = 10
    """exploration episodes kept per training task for the encoder and the explorer (oldest overwritten first)"""

    # MetaCURE. The defaults are PointGoal's row of ENV_DEFAULTS below; `--env-id X` puts X's row under the flags
    total_timesteps: int = 256_000
    """total environment frames [per env: ENV_DEFAULTS; MuJoCo envs: meta_test.TOTAL_TIMESTEPS]"""
    latent_size: int = 5
    """dimension of z [per env: ENV_DEFAULTS; ant-goal 2]"""
    net_size: int = 128
    """width of the 3 hidden layers of the actors, Q and V networks and the belief reward predictor [per env]"""
    encoder_size: int = 64
    """width of the encoder's input MLP (3 layers) and of its GRU [per env: ENV_DEFAULTS; the authors' 64]"""
    task_embedding_size: int = 16
    """size of the learned embedding of the training-task index that the task-ID reward predictor sees"""
    learning_rate: float = 1e-3
    """Adam lr of every network [per env: ENV_DEFAULTS; ant-goal 3e-4]"""
    meta_batch: int = 8
    """tasks per gradient step [per env: ENV_DEFAULTS; ant-goal 16]"""
    batch_size: int = 128
    """transitions per task per gradient step, for each agent [per env: ENV_DEFAULTS; ant-goal 96]"""
    kl_lambda: float = 0.1
    """weight of KL(q(z | tau_:t) || N(0, I)), averaged over steps and tasks [per env: ENV_DEFAULTS; ant-goal 0.1]"""
    reward_scale: float = 5.0
    """rewards are multiplied by this in both Bellman targets; 1 / alpha [per env: ENV_DEFAULTS; ant-goal 1]"""
    intrinsic_weight: float = 0.1
    """the explorer's reward is r + intrinsic_weight * r_int [per env: ENV_DEFAULTS; ant-goal 0.1]"""
    gamma: float = 0.97
    """the discount factor gamma [per env: ENV_DEFAULTS; ant-goal 0.99]"""
    tau: float = 0.005
    """Polyak rate of the target V networks"""
    updates_per_iteration: int = 200
    """gradient steps per iteration of num_envs trials [per env: ENV_DEFAULTS]"""

    # to be filled in runtime
    trial_length: int = 0
    """(1 + N) * H, filled in at runtime"""
    num_iterations: int = 0
    """the number of iterations (computed in runtime)"""


# One complete row per env id. The MuJoCo rows are MetaCURE's ant-goal config (NagisaZj/MetaCURE-Public,
# configs/ant-goal-sparse-metacure.json and configs/default.py; docs/metacure.md), the only one its code ships for
# the envs here, with its ratio of about 0.22 gradient steps per collected frame (1000 per 4,480) on our 3,200-frame
# iterations; they keep MILET's frame budget. PointGoal (not in MetaCURE) takes PEARL's PointGoal row and budget.
COLUMNS = ("latent_size", "net_size", "learning_rate", "meta_batch", "batch_size", "kl_lambda", "reward_scale",
           "gamma", "updates_per_iteration")
METACURE_ANT = (2, 300, 3e-4, 16, 96, 0.1, 1.0, 0.99, 700)
TABLE = {"PointGoal": (5, 128, 1e-3, 8, 128, 0.1, 5.0, 0.97, 200),
         **{env_id: METACURE_ANT for env_id in envs_clustered.ENV_IDS if env_id != "PointGoal"}}
ENV_DEFAULTS = {env_id: dict(zip(COLUMNS, row), total_timesteps=256_000 if env_id == "PointGoal"
                             else meta_test.TOTAL_TIMESTEPS[env_id]) for env_id, row in TABLE.items()}
MEAN_REG, LOG_STD_REG, LOG_STD_MIN, LOG_STD_MAX = 1e-3, 1e-3, -20.0, 2.0  # the actors' regularisers and log-std clamp


def parse_args(argv: Optional[list[str]] = None) -> Args:
    """tyro reads the flags on top of --env-id's row of ENV_DEFAULTS (so --help shows the values that env runs with),
    then the settings are checked with one clear line each, before anything is written."""
    env_id = meta_test.peek_env_id(argv, ENV_DEFAULTS)
    args = tyro.cli(Args, args=argv, default=Args(env_id=env_id, **ENV_DEFAULTS[env_id]))
    for flag in ("eval_every", "checkpoint_every", "episode_length", "num_exploit_episodes", "physics_threads",
                 "torch_threads", "num_envs", "latent_size", "net_size", "encoder_size", "task_embedding_size",
                 "meta_batch", "batch_size", "exploration_episodes_per_task"):
        if getattr(args, flag) < 1:
            meta_test.exit_with_error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.async_envs and args.env_id == "PointGoal":
        meta_test.exit_with_error("--async-envs is for the MuJoCo envs; PointGoal is already one batched numpy env")
    if args.num_envs > 500:
        meta_test.exit_with_error(f"--num-envs ({args.num_envs}) must be at most the 500 training tasks")
    trial = (1 + args.num_exploit_episodes) * args.episode_length
    if args.buffer_size_per_task < trial:
        meta_test.exit_with_error(f"--buffer-size-per-task ({args.buffer_size_per_task}) must hold one trial ({trial})")
    if args.total_timesteps < args.num_envs * trial:
        meta_test.exit_with_error(f"--total-timesteps ({args.total_timesteps}) is below one iteration "
                                  f"({args.num_envs * trial} frames)")
    if args.updates_per_iteration < 0 or args.kl_lambda < 0 or args.intrinsic_weight < 0 or not args.reward_scale > 0:
        meta_test.exit_with_error("--updates-per-iteration, --kl-lambda and --intrinsic-weight must be >= 0 and "
                                  "--reward-scale > 0")
    if not (0 <= args.gamma < 1 and 0 < args.tau <= 1 and args.learning_rate > 0):
        meta_test.exit_with_error(f"need 0 <= --gamma < 1, 0 < --tau <= 1 and --learning-rate > 0, got {args.gamma}, "
                                  f"{args.tau}, {args.learning_rate}")
    if args.capture_video:  # an offscreen GL backend and the MP4 encoder, before anything is written
        meta_test.check_video_support()
    return args


def make_env(args: Args, num_envs: int, seed: int) -> gym.vector.VectorEnv:
    """num_envs task slots, each a trial of 1 + N episodes of H steps; the actors act in [-1, 1], rescaled to the box."""
    envs = envs_clustered.make_vector_env(
        args.env_id, num_envs, episode_length=args.episode_length, num_episodes=1 + args.num_exploit_episodes,
        seed=seed, asynchronous=args.async_envs, native=not args.gymnasium_envs, physics_threads=args.physics_threads,
    )
    space, unit = envs.single_action_space, np.ones(envs.single_action_space.shape, dtype=np.float32)
    if not (np.array_equal(space.low, -unit) and np.array_equal(space.high, unit)):  # Humanoid's +-0.4
        envs = gym.wrappers.vector.RescaleAction(envs, -unit, unit)
    return envs  # tanh actions lie in [-1, 1]: nothing to clip


def mlp(in_dim: int, width: int, out_dim: int, depth: int = 3) -> nn.Sequential:
    """`depth` ReLU hidden layers of `width` units (the authors' rlkit networks), torch's default initialisation."""
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        in_dim = width
    return nn.Sequential(*layers, nn.Linear(in_dim, out_dim))


class ContextEncoder(nn.Module):
    """q(z | tau_:t) = N(mu_t, sigma_t^2) after every step, from x_t = (s_t, a_{t-1}, r_{t-1}) (zeros for a_{-1},
    r_{-1}): an MLP of 3 x encoder_size on each x_t, a GRU over them, a linear head to (mu, softplus variance).
    The authors' encoder is SNAIL's (temporal convolutions and causal attention over the same inputs); a GRU is
    the causal sequence model this project already uses, and updates the belief one step at a time."""

    def __init__(self, input_dim: int, args: Args):
        super().__init__()
        self.embed = nn.Sequential(mlp(input_dim, args.encoder_size, args.encoder_size), nn.ReLU())
        self.gru = nn.GRU(args.encoder_size, args.encoder_size)
        self.head = nn.Linear(args.encoder_size, 2 * args.latent_size)

    def forward(self, inputs: torch.Tensor, hidden: Optional[torch.Tensor] = None):
        """inputs (T, B, input_dim) -> (q(z | tau_:t) for t = 0..T-1 with batch shape (T, B, latent), hidden)."""
        out, hidden = self.gru(self.embed(inputs), hidden)
        mean, raw_variance = self.head(out).chunk(2, dim=-1)
        return Normal(mean, F.softplus(raw_variance).clamp(min=1e-7).sqrt()), hidden


def belief_features(belief: Normal) -> torch.Tensor:
    """What the explorer and the belief reward predictor see of q(z | tau_:t): its mean and variance."""
    return torch.cat([belief.mean, belief.variance], -1)


class Actor(nn.Module):
    """pi(a | s, c) with c = z (exploitation) or (mu, sigma^2) (exploration): tanh of a Gaussian with state-dependent
    log-std (rlkit's TanhGaussianPolicy, as PEARL's)."""

    def __init__(self, input_dim: int, action_dim: int, args: Args):
        super().__init__()
        self.trunk = nn.Sequential(mlp(input_dim, args.net_size, args.net_size, depth=2), nn.ReLU())
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


class SACAgent(nn.Module):
    """One SAC agent: the actor, twin Q networks, V and its Polyak target, on inputs (s, c) of width obs + context."""

    def __init__(self, obs_dim: int, action_dim: int, context_dim: int, args: Args):
        super().__init__()
        self.actor = Actor(obs_dim + context_dim, action_dim, args)
        self.qf1, self.qf2 = (mlp(obs_dim + action_dim + context_dim, args.net_size, 1) for _ in range(2))
        self.vf = mlp(obs_dim + context_dim, args.net_size, 1)
        self.target_vf = copy.deepcopy(self.vf).requires_grad_(False)


class TrialReplay:
    """Per training task: an RL ring buffer of all its transitions (s, a, r, s'), both agents' episodes, for the
    exploitation agent, and a ring of its last exploration episodes, kept whole, for the encoder and the explorer."""

    def __init__(self, num_tasks: int, args: Args, obs_dim: int, action_dim: int):
        self.width, H = 2 * obs_dim + action_dim + 1, args.episode_length
        self.rl = np.zeros((num_tasks, args.buffer_size_per_task, self.width), dtype=np.float32)
        self.explore = np.zeros((num_tasks, args.exploration_episodes_per_task, H, self.width), dtype=np.float32)
        self.size, self.pointer = np.zeros(num_tasks, dtype=np.int64), np.zeros(num_tasks, dtype=np.int64)
        self.episodes, self.episode_pointer = np.zeros(num_tasks, dtype=np.int64), np.zeros(num_tasks, dtype=np.int64)
        self.split_sizes = (obs_dim, action_dim, 1, obs_dim)

    def add_trial(self, task_index: np.ndarray, trial: np.ndarray, episode_length: int) -> None:
        """trial (B, T, width): all of it to the RL buffers, the exploration episode to the episode rings."""
        positions = (self.pointer[task_index, None] + np.arange(trial.shape[1])) % self.rl.shape[1]
        self.rl[task_index[:, None], positions] = trial
        self.pointer[task_index] = (self.pointer[task_index] + trial.shape[1]) % self.rl.shape[1]
        self.size[task_index] = np.minimum(self.size[task_index] + trial.shape[1], self.rl.shape[1])
        self.explore[task_index, self.episode_pointer[task_index]] = trial[:, :episode_length]
        self.episode_pointer[task_index] = (self.episode_pointer[task_index] + 1) % self.explore.shape[1]
        self.episodes[task_index] = np.minimum(self.episodes[task_index] + 1, self.explore.shape[1])

    def sample(self, meta_batch: int, batch_size: int):
        """Tasks among those seen (with replacement, as the authors), one whole exploration episode of each, and a
        batch of each task's RL transitions -> (tasks, episodes (H, meta_batch, width), rl rows (meta_batch, batch,
        width))."""
        tasks = np.random.choice(np.flatnonzero(self.episodes), meta_batch)
        episodes = self.explore[tasks, np.random.randint(0, self.episodes[tasks])]
        rl_rows = self.rl[tasks[:, None], np.random.randint(0, self.size[tasks, None], size=(meta_batch, batch_size))]
        return tasks, torch.from_numpy(episodes).transpose(0, 1), torch.from_numpy(rl_rows)

    def state(self) -> dict:
        filled, episodes = int(self.size.max()), int(self.episodes.max())  # only what was written
        return {"rl": self.rl[:, :filled].copy(), "explore": self.explore[:, :episodes].copy(),
                **{name: getattr(self, name) for name in ("size", "pointer", "episodes", "episode_pointer")}}

    def load(self, state: dict) -> None:
        self.rl[:, : state["rl"].shape[1]] = state["rl"]
        self.explore[:, : state["explore"].shape[1]] = state["explore"]
        for name in ("size", "pointer", "episodes", "episode_pointer"):
            setattr(self, name, state[name])


def encoder_inputs(episode: torch.Tensor, split_sizes) -> torch.Tensor:
    """An exploration episode's rows (H, B, width) of (s, a, r, s') -> the encoder's inputs x_0..x_H (H+1, B, .),
    x_t = (s_t, a_{t-1}, r_{t-1}), with zeros before the first step and s_H the episode's last successor state."""
    obs, actions, rewards, next_obs = episode.split(split_sizes, -1)
    states = torch.cat([obs, next_obs[-1:]])
    previous = torch.cat([torch.zeros_like(torch.cat([actions[:1], rewards[:1]], -1)), torch.cat([actions, rewards], -1)])
    return torch.cat([states, previous], -1)


def soft_q_losses(agent: SACAgent, obs, actions, rewards, next_obs, context, next_context, args: Args):
    """The critic's Bellman error (twin Q) on (s, a, r, s') with the agent's context before and after the step; these
    envs never terminate, so the target always bootstraps from the target V."""
    q1, q2 = (q(torch.cat([obs, actions, context], -1)) for q in (agent.qf1, agent.qf2))
    with torch.no_grad():
        target = args.reward_scale * rewards + args.gamma * agent.target_vf(torch.cat([next_obs, next_context], -1))
    return F.mse_loss(q1, target) + F.mse_loss(q2, target)


def actor_and_value_step(agent: SACAgent, optimizer_vf, optimizer_actor, obs, context, args: Args) -> dict:
    """SAC's V and actor steps with a fixed entropy weight (alpha = 1 on scaled rewards) and the Polyak target."""
    new_actions, log_pi, mean, log_std = agent.actor(torch.cat([obs, context], -1))
    min_q = torch.min(*(q(torch.cat([obs, new_actions, context], -1)) for q in (agent.qf1, agent.qf2))).squeeze(-1)
    vf_loss = F.mse_loss(agent.vf(torch.cat([obs, context], -1)).squeeze(-1), (min_q - log_pi).detach())
    optimizer_vf.zero_grad()
    vf_loss.backward()
    optimizer_vf.step()
    with torch.no_grad():
        for param, target_param in zip(agent.vf.parameters(), agent.target_vf.parameters()):
            target_param.lerp_(param, args.tau)
    policy_loss = (log_pi - min_q).mean() + MEAN_REG * mean.pow(2).mean() + LOG_STD_REG * log_std.pow(2).mean()
    optimizer_actor.zero_grad()
    policy_loss.backward()
    optimizer_actor.step()
    return {"vf_loss": vf_loss, "policy_loss": policy_loss, "log_pi": log_pi.mean()}


def intrinsic_reward(nets: dict, tasks, obs, actions, rewards, belief_before) -> torch.Tensor:
    """r_int = (r - R_belief(mu_t, sigma_t^2, s, a))^2 - (r - R_task(task, s, a))^2, with the belief before the step:
    positive where the task ID predicts the reward better than the explorer's belief does (MetaCURE's Eq. 7-8 in
    their Gaussian form)."""
    with torch.no_grad():
        by_task = nets["task_reward"](torch.cat([nets["task_embedding"](tasks), obs, actions], -1))
        by_belief = nets["belief_reward"](torch.cat([belief_before, obs, actions], -1))
    return (rewards - by_belief).pow(2) - (rewards - by_task).pow(2)


def metacure_update(nets: dict, optimizers: dict, replay: TrialReplay, args: Args, device) -> dict:
    """One gradient step on meta_batch tasks: the encoder and the exploitation agent, the reward predictors, then the
    explorer on its own exploration episodes with the intrinsic reward."""
    tasks, episodes, rl_rows = replay.sample(args.meta_batch, args.batch_size)
    episodes, rl_rows, tasks = episodes.to(device), rl_rows.to(device), torch.as_tensor(tasks, device=device)
    beliefs, _ = nets["encoder"](encoder_inputs(episodes, replay.split_sizes))  # q(z | tau_:t), t = 0..H
    final = Normal(beliefs.mean[-1], beliefs.stddev[-1])  # after the whole exploration episode, as at meta-test
    prior = Normal(torch.zeros_like(beliefs.mean), torch.ones_like(beliefs.stddev))
    kl = kl_divergence(beliefs, prior).sum(-1).mean()  # over z's dims; averaged over steps and tasks, as the authors

    # the exploitation agent on each task's RL transitions, z ~ q(z | exploration episode); its Bellman error and the
    # KL train the encoder; V and the actor see z with its gradient stopped
    exploit = nets["exploit"]
    obs, actions, rewards, next_obs = rl_rows.flatten(0, 1).split(replay.split_sizes, -1)
    z = final.rsample().repeat_interleave(args.batch_size, 0)
    exploit_qf_loss = soft_q_losses(exploit, obs, actions, rewards, next_obs, z, z.detach(), args)
    optimizers["encoder"].zero_grad()
    optimizers["exploit_critic"].zero_grad()
    (exploit_qf_loss + args.kl_lambda * kl).backward()
    optimizers["encoder"].step()
    optimizers["exploit_critic"].step()
    exploit_stats = actor_and_value_step(exploit, optimizers["exploit_vf"], optimizers["exploit_actor"], obs,
                                         z.detach(), args)

    # the explorer on transitions of its own episodes, each with its belief before and after the step
    H = episodes.shape[0]
    steps = torch.as_tensor(np.random.randint(0, H, size=(args.batch_size, args.meta_batch)), device=device)
    columns = torch.arange(args.meta_batch, device=device).expand_as(steps)
    features = belief_features(beliefs).detach()
    before, after = features[steps, columns].flatten(0, 1), features[steps + 1, columns].flatten(0, 1)
    obs, actions, rewards, next_obs = episodes[steps, columns].flatten(0, 1).split(replay.split_sizes, -1)
    task_ids = tasks.expand_as(steps).flatten()
    predictor_loss = (F.mse_loss(nets["task_reward"](torch.cat([nets["task_embedding"](task_ids), obs, actions], -1)),
                                 rewards)
                      + F.mse_loss(nets["belief_reward"](torch.cat([before, obs, actions], -1)), rewards))
    optimizers["predictors"].zero_grad()
    predictor_loss.backward()
    optimizers["predictors"].step()
    r_int = intrinsic_reward(nets, task_ids, obs, actions, rewards, before)  # with the predictors just updated
    explore = nets["explore"]
    explore_qf_loss = soft_q_losses(explore, obs, actions, rewards + args.intrinsic_weight * r_int, next_obs, before,
                                    after, args)
    optimizers["explore_critic"].zero_grad()
    explore_qf_loss.backward()
    optimizers["explore_critic"].step()
    explore_stats = actor_and_value_step(explore, optimizers["explore_vf"], optimizers["explore_actor"], obs, before,
                                         args)
    return {"exploit_qf_loss": exploit_qf_loss, "explore_qf_loss": explore_qf_loss, "kl": kl,
            "reward_predictor_loss": predictor_loss, "intrinsic_reward": r_int.mean(),
            "z_variance": final.variance.mean(), **{f"exploit_{k}": v for k, v in exploit_stats.items()},
            **{f"explore_{k}": v for k, v in explore_stats.items()}}


def build_networks(obs_dim: int, action_dim: int, num_tasks: int, args: Args, device) -> tuple[dict, dict]:
    encoder_input = obs_dim + action_dim + 1
    nets = {"encoder": ContextEncoder(encoder_input, args),
            "exploit": SACAgent(obs_dim, action_dim, args.latent_size, args),
            "explore": SACAgent(obs_dim, action_dim, 2 * args.latent_size, args),
            "task_embedding": nn.Embedding(num_tasks, args.task_embedding_size),
            "task_reward": mlp(args.task_embedding_size + obs_dim + action_dim, 64, 1),  # the authors' [64, 64, 64]
            "belief_reward": mlp(2 * args.latent_size + obs_dim + action_dim, args.net_size, 1)}
    nets = {name: net.to(device) for name, net in nets.items()}
    groups = {"encoder": nets["encoder"].parameters(),
              "predictors": [*nets["task_embedding"].parameters(), *nets["task_reward"].parameters(),
                             *nets["belief_reward"].parameters()]}
    for name in ("exploit", "explore"):
        agent = nets[name]
        groups.update({f"{name}_critic": [*agent.qf1.parameters(), *agent.qf2.parameters()],
                       f"{name}_vf": agent.vf.parameters(), f"{name}_actor": agent.actor.parameters()})
    return nets, {name: optim.Adam(params, lr=args.learning_rate) for name, params in groups.items()}


class TrialRunner:
    """Acts through one trial in every slot: the explorer in episode 1 on the belief after each step, then the
    exploitation agent on one z drawn from q(z | episode 1) (drawn from `generator` when one is given)."""

    def __init__(self, nets: dict, num_slots: int, action_dim: int, args: Args, device, deterministic: bool,
                 generator: Optional[torch.Generator] = None):
        self.nets, self.args, self.device, self.deterministic, self.generator = nets, args, device, deterministic, generator
        self.previous = torch.zeros(num_slots, action_dim + 1, device=device)  # (a_{t-1}, r_{t-1}), zeros at t = 0
        self.hidden, self.z, self.last_state = None, None, None

    def _belief(self, state: torch.Tensor) -> Normal:
        belief, self.hidden = self.nets["encoder"](torch.cat([state, self.previous], -1)[None], self.hidden)
        return Normal(belief.mean[0], belief.stddev[0])

    def act(self, obs: np.ndarray, step: int) -> torch.Tensor:
        state = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        if step < self.args.episode_length:  # explore on q(z | tau_:t)
            context, actor = belief_features(self._belief(state)), self.nets["explore"].actor
        else:
            if step == self.args.episode_length:  # the posterior after the whole exploration episode, then one z
                final = self._belief(self.last_state)
                noise = torch.randn(final.mean.shape, generator=self.generator).to(self.device) \
                    if self.generator is not None else torch.randn_like(final.mean)
                self.z = final.mean + final.stddev * noise
            context, actor = self.z, self.nets["exploit"].actor
        return actor(torch.cat([state, context], -1), deterministic=self.deterministic)[0]

    def observe(self, action: torch.Tensor, next_state: torch.Tensor, reward: torch.Tensor, step: int) -> None:
        if step < self.args.episode_length:
            self.previous, self.last_state = torch.cat([action, reward[:, None]], -1), next_state


@torch.no_grad()
def run_trial(envs, nets: dict, reset_kwargs: dict, args: Args, device) -> np.ndarray:
    """One training trial in every slot with sampled actions. Returns the (B, T, width) rows (s, a, r, s')."""
    obs, _ = envs.reset(**reset_kwargs)
    runner = TrialRunner(nets, len(obs), envs.single_action_space.shape[0], args, device, deterministic=False)
    rows = []
    for step in range(args.trial_length):
        state = torch.as_tensor(obs, dtype=torch.float32, device=device)
        action = runner.act(obs, step)
        obs, reward, _, _, info = envs.step(action.cpu().numpy())
        next_state = torch.as_tensor(np.stack(info["next_state"]), dtype=torch.float32, device=device)
        reward = torch.as_tensor(reward, dtype=torch.float32, device=device)
        runner.observe(action, next_state, reward, step)
        rows.append(torch.cat([state, action, reward[:, None], next_state], -1).cpu().numpy())
    return np.stack(rows, 1)


@torch.no_grad()
def evaluate(args: Args, nets: dict, eval_envs, split, device) -> dict:
    """Meta-test on the shared protocol (meta_test.py): the deterministic explorer, then the exploitation agent's
    tanh(mean) on one z drawn from a generator seeded alike at every evaluation (evaluating never moves the
    training's random state). No clusters, so no NMI."""
    runner = TrialRunner(nets, eval_envs.num_envs, eval_envs.single_action_space.shape[0], args, device,
                         deterministic=True, generator=torch.Generator().manual_seed(args.seed + 20_000))
    return meta_test.evaluate(eval_envs, split, args.seed + 10_000, 1 + args.num_exploit_episodes,
                              args.episode_length, runner.act, runner.observe)


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
    replay = TrialReplay(len(split.train_tasks), args, obs_dim, action_dim)
    nets, optimizers = build_networks(obs_dim, action_dim, len(split.train_tasks), args, device)

    # Everything a checkpoint must hold so that --resume continues exactly as an uninterrupted run (CPU, same threads)
    checkpoint_path = os.path.join(run_dir, f"{args.exp_name}.pt")
    start_iteration, global_step = 1, 0
    if resumed is None:  # meta-test the untrained agents: the reference every later evaluation is read against
        record = {"iteration": 0, "global_step": 0, **evaluate(args, nets, eval_envs, split, device)}
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
    progress = tqdm(range(start_iteration, args.num_iterations + 1), desc=f"MetaCURE {args.env_id}", unit="it",
                    initial=start_iteration - 1, total=args.num_iterations)
    for iteration in progress:
        # ALGO LOGIC: one trial in each of num_envs distinct training tasks: explore in episode 1, exploit after it
        task_index = task_rng.choice(len(split.train_tasks), size=args.num_envs, replace=False)
        trial = run_trial(envs, nets, dict(
            seed=args.seed if iteration == 1 else None,
            options={"tasks": split.train_tasks[task_index], "clusters": split.train_clusters[task_index]}),
            args, device)
        replay.add_trial(task_index, trial, args.episode_length)
        global_step += args.num_envs * args.trial_length

        # ALGO LOGIC: gradient steps on tasks seen so far: encoder and exploitation SAC, reward predictors, explorer
        for update in range(args.updates_per_iteration):
            losses = metacure_update(nets, optimizers, replay, args, device)
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
                      **evaluate(args, nets, eval_envs, split, device)}
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
        meta_test.capture_video(run_dir, record, lambda: evaluate(args, nets, eval_envs, split, device))
    envs.close()
    eval_envs.close()
    writer.close()
    print(f"run saved to {run_dir}")
