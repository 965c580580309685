"""VariBAD (Zintgraf et al., 2020) with PPO for continuous actions: MILET's single-Gaussian baseline (CleanRL style).

VariBAD is MILET without clusters and without an exploration policy:
  * one PPO policy on [normalised state, latent mean, latent log-variance] acts in every episode of the trial;
  * the inference model is a single-Gaussian VAE: one GRU over (a_t, s_{t+1}, r_t), q(m | tau_:t) = N(mu, sigma^2),
    a reward decoder (and a state decoder when lambda_s > 0);
  * the ELBO runs over all prefixes tau_:t of the trial; its KL goes to the PREVIOUS posterior q(m | tau_:t-1)
    (prefix 0 to N(0, I)), where MILET has a learned per-cluster prior p(z | c), Gumbel clusters and L_I, L_P.
The policy loss does not train the encoder. The embeddings, decoders and trial buffer are MILET's (cbvi.py), the
evaluation is the shared protocol (meta_test.py); the PPO agent and update are copied from milet_ppo_continuous.py,
CleanRL style, so that this file stands alone.

    python varibad_ppo_continuous.py                    # PointGoal
    python varibad_ppo_continuous.py --env-id AntGoal
    python varibad_ppo_continuous.py --env-id AntGoal --oracle --exp-name oracle   # PPO that knows the task
    python varibad_ppo_continuous.py --resume runs/<run>                           # continue an interrupted run
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
from torch.distributions import kl_divergence
from torch.distributions.normal import Normal
from tqdm import tqdm

import envs_clustered
import meta_test
from cbvi import SplitDecoder, TrialBuffer, gaussian
from cbvi import mlp as embedding_mlp


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment (policy, encoder, task sampling, environments)"""
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
    """write runs/<run_name>/resume.pt (everything --resume needs, trial buffer included) every this many iterations"""
    resume: Optional[str] = None
    """continue the run in this folder (runs/<run_name>) from its resume.pt, with the run's own flags"""
    oracle: bool = False
    """the oracle reference: the policy sees the TRUE task parameters instead of the belief (the VAE is not trained)"""

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
    """N, episodes after the first of a trial"""
    async_envs: bool = False
    """if toggled, step gymnasium's v5 MuJoCo envs in worker processes (AsyncVectorEnv; implies --gymnasium-envs)"""
    gymnasium_envs: bool = False
    """if toggled, step MuJoCo through gymnasium's v5 envs (the reference path) instead of the native batched env"""
    physics_threads: int = 2
    """threads that step the native MuJoCo vector env (with --torch-threads 1, the fastest split on 2 cores)"""
    torch_threads: int = 1
    """torch's CPU threads (1 measured fastest on 2 cores; numbers are reproducible per thread count)"""

    # The VAE (sizes as VariBAD's AntGoal config; buffer, batch and prefixes as MILET's)
    latent_dim: int = 10
    """dimension of the task latent m"""
    encoder_hidden_size: int = 128
    """GRU hidden size"""
    encoder_embed_sizes: tuple[int, int, int] = (16, 32, 16)
    """embedding sizes of action, state and reward"""
    reward_decoder_layers: tuple[int, ...] = (64, 32)
    """hidden layers of the reward decoder"""
    state_decoder_layers: tuple[int, ...] = (64, 32)
    """hidden layers of the state decoder (used only when lambda_s > 0)"""
    lambda_s: float = 0.0
    """weight of the state reconstruction: 1 for the rand-params envs, else 0, as MILET [per env: ENV_DEFAULTS]"""
    kl_weight: float = 0.1
    """weight of the KL terms (VariBAD's AntGoal config; MILET's PointGoal preset uses 1 for its cluster prior)"""
    vae_lr: float = 1e-3
    """learning rate of the VAE Adam optimizer"""
    vae_buffer_size: int = 10_000
    """capacity of the VAE trial buffer, in trials"""
    vae_batch_size: int = 50
    """trials per VAE update"""
    vae_updates: int = 4
    """VAE updates per iteration [per env: ENV_DEFAULTS]"""
    vae_num_prefixes: int = 10
    """prefixes whose latent decodes the trial, a random subset (VariBAD subsamples ELBOs too); 0 uses all"""

    # PPO
    learning_rate: float = 1e-3
    """policy learning rate (Ant: the oracle sweep's; else VariBAD's or the PointGoal preset) [per env: ENV_DEFAULTS]"""
    anneal_lr: bool = True
    """toggle learning rate annealing"""
    policy_layers: tuple[int, ...] = (128, 128)
    """hidden layers of the actor and critic"""
    gamma: float = 0.97
    """the discount factor gamma"""
    gae_lambda: float = 0.9
    """the lambda for the general advantage estimation"""
    num_minibatches: int = 4
    """the number of mini-batches per PPO epoch [per env: ENV_DEFAULTS]"""
    update_epochs: int = 4
    """the K epochs to update the policy [per env: ENV_DEFAULTS]"""
    norm_adv: bool = True
    """toggles advantages normalization"""
    clip_coef: float = 0.2
    """the surrogate clipping coefficient (also clips the value loss) [per env: ENV_DEFAULTS]"""
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


# Per-env defaults, one complete row per env: VariBAD's AntGoal config (docs/paper_settings.md) on the rand-params
# envs, and on PointGoal the PPO and VAE steps of MILET's quick preset (entropy 1e-3: between MILET's 1e-4
# for pi_phi and 1e-2 for pi_psi). The Ant rows depart from VariBAD's config (issue 24, docs/antgoal.md): with its 2
# gradient steps per iteration and std 1 the oracle, told the goal, did not learn to walk in 1e7 frames; the sweep on
# the oracle chose lr 3e-4, 10 epochs x 16 minibatches, clip 0.2, no entropy bonus, initial std exp(-1) = 0.37 and an
# unclipped value loss, and on the 1e7 schedule an update that stops once its KL passes 0.02 (without it the std
# collapsed after 1.5M frames). Measured on AntGoal; AntGoalPartial and AntU share the robot, unmeasured. The
# HumanoidDir rows take it too: on the oracle at 1M frames it reached 26 where VariBAD's config stayed near the
# untrained level (issue 28, docs/results.md); HumanoidDirSparse shares the robot, unmeasured. The
# PointGoal row is also Args' defaults; `--env-id X` puts X's row under the flags. lambda_s is MILET's: the
# rand-params clusters differ in dynamics. The frame budget is the protocol's (meta_test.TOTAL_TIMESTEPS).
COLUMNS = ("vae_updates", "learning_rate", "num_minibatches", "update_epochs", "clip_coef", "ent_coef",
           "init_logstd", "clip_vloss", "target_kl", "lambda_s")
VARIBAD_CONFIG = (1e-3, 1, 2, 0.05, 0.01, 0.0, True, None)  # VariBAD's AntGoal PPO: lr, minibatches, epochs, clip, ...
ANT_SWEPT = (3e-4, 16, 10, 0.2, 0.0, -1.0, False, 0.02)  # the oracle sweep's choice (docs/antgoal.md)
TABLE = {  #             VAE updates  lr, minibatches, epochs, clip, entropy, init log-std, value clip, KL stop  lambda_s
    "PointGoal":         (4,           *(1e-3, 4, 4, 0.2, 1e-3, 0.0, True, None),                     0.0),
    "AntGoal":           (1,           *ANT_SWEPT,                                                    0.0),
    "AntGoalPartial":    (1,           *ANT_SWEPT,                                                    0.0),
    "AntU":              (1,           *ANT_SWEPT,                                                    0.0),
    "HumanoidDir":       (1,           *ANT_SWEPT,                                                    0.0),
    "HumanoidDirSparse": (1,           *ANT_SWEPT,                                                    0.0),
    "HopperRandParams":  (1,           *VARIBAD_CONFIG,                                               1.0),
    "WalkerRandParams":  (1,           *VARIBAD_CONFIG,                                               1.0),
}
ENV_DEFAULTS = {env_id: dict(zip(COLUMNS, row), total_timesteps=meta_test.TOTAL_TIMESTEPS[env_id])
                for env_id, row in TABLE.items()}


def parse_args(argv: Optional[list[str]] = None) -> Args:
    """tyro reads the flags on top of --env-id's row of ENV_DEFAULTS (so --help shows the values that env runs with),
    then the settings are checked with one clear line each, before anything is written."""
    env_id = meta_test.peek_env_id(argv, ENV_DEFAULTS)
    args = tyro.cli(Args, args=argv, default=Args(env_id=env_id, **ENV_DEFAULTS[env_id]))
    meta_test.check_trial_args(args, ("vae_updates", "vae_batch_size", "vae_buffer_size", "checkpoint_every"))
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


class Agent(nn.Module):
    """The PPO actor-critic on policy_input: [normalised state, latent mean, latent log-variance]."""

    def __init__(self, input_dim: int, action_dim: int, hidden: tuple[int, ...], init_logstd: float = 0.0):
        super().__init__()
        self.critic = mlp(input_dim, hidden, 1, out_std=1.0)
        self.actor_mean = mlp(input_dim, hidden, action_dim, out_std=0.01)
        self.actor_logstd = nn.Parameter(torch.full((1, action_dim), init_logstd))  # state-independent

    def get_action_and_value(self, x, action=None, deterministic=False):
        action_mean = self.actor_mean(x)
        probs = Normal(action_mean, self.actor_logstd.expand_as(action_mean).exp())
        if action is None:
            action = action_mean if deterministic else probs.sample()
        return action, probs.log_prob(action).sum(1), probs.entropy().sum(1), self.critic(x).squeeze(-1)


def gae(rewards, values, gamma, gae_lambda):
    """Advantages over the whole trial (T, B): the trial is one episode for the policy, so GAE runs across the
    inner episodes' boundaries and nothing is bootstrapped past the trial's end."""
    advantages, last_gae = torch.zeros_like(rewards), 0.0
    for t in reversed(range(len(rewards))):
        next_value = values[t + 1] if t + 1 < len(rewards) else 0.0
        delta = rewards[t] + gamma * next_value - values[t]
        advantages[t] = last_gae = delta + gamma * gae_lambda * last_gae
    return advantages, advantages + values


def ppo_update(agent, optimizer, inputs, actions, logprobs, advantages, returns, values, args, iteration):
    """CleanRL's PPO update on the flat batch, with the authors' Huber clipped value loss."""
    value_loss_fn = F.smooth_l1_loss if args.huber_value_loss else F.mse_loss
    minibatch_size = len(inputs) // args.num_minibatches
    clipfracs, steps, stop = [], 0, False
    for epoch in range(args.update_epochs):
        if stop:
            break
        for mb in torch.randperm(len(inputs)).split(minibatch_size):
            _, newlogprob, entropy, newvalue = agent.get_action_and_value(inputs[mb], actions[mb])
            logratio = newlogprob - logprobs[mb]
            ratio = logratio.exp()
            with torch.no_grad():
                approx_kl = ((ratio - 1) - logratio).mean()
                clipfracs.append(((ratio - 1.0).abs() > args.clip_coef).float().mean().item())
            if args.target_kl is not None and approx_kl > args.target_kl:
                stop = True  # the policy has moved far enough from the one that collected the data: end the update
                break
            steps += 1
            mb_advantages = advantages[mb]
            if args.norm_adv:
                mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)
            clipped_ratio = ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)
            pg_loss = torch.max(-mb_advantages * ratio, -mb_advantages * clipped_ratio).mean()
            v_loss = value_loss_fn(newvalue, returns[mb], reduction="none")
            if args.clip_vloss:
                v_clipped = values[mb] + (newvalue - values[mb]).clamp(-args.clip_coef, args.clip_coef)
                v_loss = torch.max(v_loss, value_loss_fn(v_clipped, returns[mb], reduction="none"))
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


class VariBADVAE(nn.Module):
    """q(m | tau_:t) = N(mu(h_t), sigma^2(h_t)) from one GRU, with MILET's embeddings and decoders (cbvi.py)."""

    def __init__(self, obs_dim: int, action_dim: int, args: Args):
        super().__init__()
        action_embed, state_embed, reward_embed = args.encoder_embed_sizes
        self.embed_action = embedding_mlp([action_dim, action_embed], out_act=True)
        self.embed_state = embedding_mlp([obs_dim, state_embed], out_act=True)
        self.embed_reward = embedding_mlp([1, reward_embed], out_act=True)
        self.gru = nn.GRU(action_embed + state_embed + reward_embed, args.encoder_hidden_size)
        self.latent_head = nn.Linear(args.encoder_hidden_size, 2 * args.latent_dim)  # mean and log-variance
        self.dec_embed_state = embedding_mlp([obs_dim, state_embed], out_act=True)
        self.dec_embed_action = embedding_mlp([action_dim, action_embed], out_act=True)
        self.reward_decoder = SplitDecoder(args.latent_dim, 2 * state_embed + action_embed,
                                           args.reward_decoder_layers, 1)
        self.state_decoder = (SplitDecoder(args.latent_dim, state_embed + action_embed,
                                           args.state_decoder_layers, obs_dim)
                              if args.lambda_s > 0 else None)
        self.hidden_size, self.args = args.encoder_hidden_size, args

    def encode(self, actions, next_obs, rewards, hidden):
        """(T, B, .) transitions from hidden (B, H) -> latent mean, log-variance (T, B, L) and the new hidden."""
        emb = torch.cat([self.embed_action(actions), self.embed_state(next_obs),
                         self.embed_reward(rewards.unsqueeze(-1))], -1)
        out, hidden = self.gru(emb, hidden.unsqueeze(0))
        mean, logvar = self.latent_head(out).chunk(2, dim=-1)
        return mean, logvar, hidden[0]

    def initial_belief(self, batch: int, device):
        """The zero hidden state and the belief of the empty prefix, the heads on it."""
        hidden = torch.zeros(batch, self.hidden_size, device=device)
        mean, logvar = self.latent_head(hidden).chunk(2, dim=-1)
        return hidden, mean, logvar

    def loss(self, obs, actions, rewards, next_obs):
        """-ELBO over the prefixes t = 0..T of whole time-major trials (VariBAD's Eq. 8 as a loss)."""
        T, B = actions.shape[:2]
        _, mean0, logvar0 = self.initial_belief(B, actions.device)
        mean, logvar, _ = self.encode(actions, next_obs, rewards,
                                      torch.zeros(B, self.hidden_size, device=actions.device))
        mean, logvar = torch.cat([mean0.unsqueeze(0), mean]), torch.cat([logvar0.unsqueeze(0), logvar])  # (T+1, B, L)
        # KL(q(m | tau_:t) || q(m | tau_:t-1)) for t >= 1 and KL(q(m | tau_:0) || N(0, I)): the previous posterior is
        # the prior
        prior_mean = torch.cat([torch.zeros_like(mean[:1]), mean[:-1]])
        prior_logvar = torch.cat([torch.zeros_like(logvar[:1]), logvar[:-1]])
        kl = kl_divergence(gaussian(mean, logvar), gaussian(prior_mean, prior_logvar)).mean()
        num_prefixes = self.args.vae_num_prefixes
        if 0 < num_prefixes < T + 1:  # decode from a random subset of prefixes (torch's global RNG)
            idx = torch.randperm(T + 1, device=mean.device)[:num_prefixes].sort().values
            mean, logvar = mean[idx], logvar[idx]
        latent = gaussian(mean, logvar).rsample().unsqueeze(1)  # (P, 1, B, L)
        # every prefix's latent reconstructs the WHOLE trial (past and future), as VariBAD and MILET's Eq. 5
        e_s, e_a, e_s1 = self.dec_embed_state(obs), self.dec_embed_action(actions), self.dec_embed_state(next_obs)
        # summed over the decoded steps (and the state's dimensions), averaged over prefixes and trials
        reward_rec = T * self.reward_decoder.mean_squared_error(
            latent, torch.cat([e_s, e_a, e_s1], -1), rewards[..., None])
        state_rec = reward_rec.new_zeros(())
        if self.state_decoder is not None:
            state_rec = T * obs.shape[-1] * self.state_decoder.mean_squared_error(
                latent, torch.cat([e_s, e_a], -1), next_obs)
        total = reward_rec + self.args.lambda_s * state_rec + self.args.kl_weight * kl
        return {"reward_reconstruction": reward_rec, "state_reconstruction": state_rec, "kl": kl, "total": total}


def policy_input(obs, step: int, belief, obs_rms, args: Args, device) -> torch.Tensor:
    """pi(a | s, t, q(m | tau_:t)): the normalised state, the time t / T within the trial (our addition: without it
    the critic cannot tell whether a reset follows, and the same state has value targets that differ by episode), and
    the belief, [latent mean, latent log-variance] (no cluster probabilities), or with --oracle the true task."""
    norm_obs = np.clip((obs - obs_rms.mean) / np.sqrt(obs_rms.var + 1e-8), -10, 10)
    time_feature = belief.new_full((len(obs), 1), step / ((1 + args.num_exploit_episodes) * args.episode_length))
    return torch.cat([torch.as_tensor(norm_obs, dtype=torch.float32, device=device), time_feature, belief], -1)


def task_tensor(tasks, device) -> torch.Tensor:
    """The true task parameters (goal, direction or multipliers), the --oracle policy's belief."""
    return torch.as_tensor(np.stack(tasks), dtype=torch.float32, device=device)


@torch.no_grad()
def evaluate(args: Args, vae, agent, obs_rms, eval_envs, split, device) -> dict:
    """Meta-test (meta_test.py) with mean actions and the posterior mean's belief. No clusters, so no NMI."""
    hidden, mean, logvar = vae.initial_belief(eval_envs.num_envs, device)
    tasks = task_tensor(meta_test.eval_tasks(split, eval_envs.num_envs)[0], device)

    def act(obs, step):
        belief = tasks if args.oracle else torch.cat([mean, logvar], -1)
        return agent.get_action_and_value(policy_input(obs, step, belief, obs_rms, args, device),
                                          deterministic=True)[0]

    def observe(action, next_state, reward, step):
        nonlocal hidden, mean, logvar
        if args.oracle:  # the oracle's belief is the true task: no encoder to run
            return None
        new_mean, new_logvar, hidden = vae.encode(action[None], next_state[None], reward[None], hidden)
        mean, logvar = new_mean[0], new_logvar[0]
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
    vae = VariBADVAE(obs_dim, action_dim, args).to(device)
    belief_dim = split.train_tasks.shape[1] if args.oracle else 2 * args.latent_dim
    input_dim = obs_dim + 1 + belief_dim  # policy_input: state, t / T, belief
    agent = Agent(input_dim, action_dim, args.policy_layers, args.init_logstd).to(device)
    vae_optimizer = optim.Adam(vae.parameters(), lr=args.vae_lr)
    optimizer = optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-8)
    buffer = TrialBuffer(args.vae_buffer_size, 1 + args.num_exploit_episodes, H, obs_dim, action_dim)
    obs_rms, return_rms = RunningMeanStd(shape=(obs_dim,)), RunningMeanStd(shape=())

    # ALGO Logic: Storage setup for one trial per environment
    T, B = args.trial_length, args.num_envs
    inputs = torch.zeros((T, B, input_dim), device=device)
    actions = torch.zeros((T, B, action_dim), device=device)
    logprobs, values, rewards = (torch.zeros((T, B), device=device) for _ in range(3))
    states, next_states = torch.zeros((T, B, obs_dim), device=device), torch.zeros((T, B, obs_dim), device=device)

    # Everything a checkpoint must hold so that --resume continues exactly as an uninterrupted run (CPU, same threads)
    stateful = {"vae": vae, "agent": agent, "buffer": buffer, "vae_optimizer": vae_optimizer, "optimizer": optimizer}
    checkpoint_path = os.path.join(run_dir, f"{args.exp_name}.pt")
    start_iteration, global_step = 1, 0
    if resumed is None:  # meta-test the untrained policy: the reference every later evaluation is read against
        record = {"iteration": 0, "global_step": 0, **evaluate(args, vae, agent, obs_rms, eval_envs, split, device)}
        meta_test.log_evaluation(writer, run_dir, eval_lines, record)
    else:
        for name, obj in stateful.items():
            obj.load_state_dict(resumed[name])
        (obs_rms.mean, obs_rms.var, obs_rms.count), (return_rms.mean, return_rms.var, return_rms.count) = resumed["rms"]
        meta_test.restore_random_state(resumed["rng"], task_rng, envs)
        start_iteration, global_step = resumed["iteration"] + 1, resumed["global_step"]
    start_step, start_time, sps = global_step, time.time(), 0
    progress = tqdm(range(start_iteration, args.num_iterations + 1), desc=f"VariBAD {args.env_id}", unit="it",
                    initial=start_iteration - 1, total=args.num_iterations)
    for iteration in progress:
        if args.anneal_lr:
            optimizer.param_groups[0]["lr"] = (1.0 - (iteration - 1.0) / args.num_iterations) * args.learning_rate

        # ALGO LOGIC: one trial per environment, one policy in every episode, the belief updated online
        task_index = task_rng.integers(len(split.train_tasks), size=B)
        obs, reset_info = envs.reset(seed=args.seed if iteration == 1 else None,
                                     options={"tasks": split.train_tasks[task_index],
                                              "clusters": split.train_clusters[task_index]})
        with torch.no_grad():  # the policy never trains the encoder
            hidden, latent_mean, latent_logvar = vae.initial_belief(B, device)
            for step in range(T):
                global_step += B
                obs_rms.update(obs)
                belief = (task_tensor(reset_info["task"], device) if args.oracle
                          else torch.cat([latent_mean, latent_logvar], -1))
                inputs[step] = policy_input(obs, step, belief, obs_rms, args, device)
                action, logprobs[step], _, values[step] = agent.get_action_and_value(inputs[step])
                actions[step] = action
                states[step] = torch.as_tensor(obs, dtype=torch.float32, device=device)
                obs, reward, _, _, info = envs.step(action.cpu().numpy())
                next_states[step] = torch.as_tensor(np.stack(info["next_state"]), dtype=torch.float32, device=device)
                rewards[step] = torch.as_tensor(reward, dtype=torch.float32, device=device)
                if not args.oracle:  # the oracle trains no VAE: no belief, no trial buffer
                    latent_mean, latent_logvar, hidden = vae.encode(action[None], next_states[step][None],
                                                                    rewards[step][None], hidden)
                    latent_mean, latent_logvar = latent_mean[0], latent_logvar[0]
        if not args.oracle:
            buffer.add(states, actions, rewards, next_states)

        # ALGO LOGIC: PPO on the whole trial (the objective is every episode's return), rewards scaled as MILET
        discounted = torch.zeros_like(rewards)
        for t in range(T):
            discounted[t] = rewards[t] + args.gamma * (discounted[t - 1] if t % H else 0.0)
        return_rms.update(discounted.flatten().cpu().numpy())
        policy_rewards = (rewards / np.sqrt(return_rms.var + 1e-8)).clamp(-10, 10)
        advantages, returns = gae(policy_rewards, values, args.gamma, args.gae_lambda)
        stats = ppo_update(agent, optimizer, inputs.flatten(0, 1), actions.flatten(0, 1), logprobs.flatten(),
                           advantages.flatten(), returns.flatten(), values.flatten(), args, iteration)
        writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], global_step)
        for key, value in stats.items():
            writer.add_scalar(f"losses/{key}", value, global_step)

        # ALGO LOGIC: VAE update on whole trials from the buffer (none for the --oracle reference)
        for _ in range(0 if args.oracle else args.vae_updates):
            vae_losses = vae.loss(*buffer.sample(args.vae_batch_size, device))
            meta_test.check_finite(vae_losses, iteration)
            vae_optimizer.zero_grad()
            vae_losses["total"].backward()
            nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            vae_optimizer.step()
        for key, value in (vae_losses.items() if not args.oracle else ()):
            writer.add_scalar(f"losses/vae_{key}", value.item(), global_step)
        for episode in range(1 + args.num_exploit_episodes):
            train_return = rewards[episode * H: (episode + 1) * H].sum(0).mean().item()
            writer.add_scalar(f"charts/return_episode_{episode + 1}", train_return, global_step)
        sps = int((global_step - start_step) / (time.time() - start_time))
        writer.add_scalar("charts/SPS", sps, global_step)

        # meta-test evaluation every eval_every iterations and at the end
        if iteration % args.eval_every == 0 or iteration == args.num_iterations:
            record = {"iteration": iteration, "global_step": global_step,
                      **evaluate(args, vae, agent, obs_rms, eval_envs, split, device)}
            meta_test.log_evaluation(writer, run_dir, eval_lines, record)
            if args.save_model:
                meta_test.torch_save_atomic(checkpoint_path, {
                    "args": vars(args), "vae": vae.state_dict(), "agent": agent.state_dict(), "iteration": iteration,
                    "obs_rms": (obs_rms.mean, obs_rms.var, obs_rms.count)})
        if iteration % args.checkpoint_every == 0 or iteration == args.num_iterations:
            meta_test.torch_save_atomic(os.path.join(run_dir, "resume.pt"), {
                "args": vars(args), "iteration": iteration, "global_step": global_step,
                **{name: obj.state_dict() for name, obj in stateful.items()},
                "rms": [(rms.mean, rms.var, rms.count) for rms in (obs_rms, return_rms)],
                "rng": meta_test.random_state(task_rng, envs)})
        progress.set_postfix(SPS=sps, eval_return_2=round(record["return_episode_2"], 1))

    meta_test.write_atomic(os.path.join(run_dir, "summary.json"),
                           json.dumps(meta_test.summary(args, global_step, sps, record), indent=1))
    if args.capture_video:  # MP4s of the final evaluation's trial, one test task per cluster (replayed, then drawn)
        meta_test.capture_video(run_dir, record, lambda: evaluate(args, vae, agent, obs_rms, eval_envs, split, device))
    envs.close()
    eval_envs.close()
    writer.close()
    print(f"run saved to {run_dir}")
