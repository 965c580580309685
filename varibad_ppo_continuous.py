"""VariBAD (Zintgraf et al., 2020) with PPO for continuous actions: the single-Gaussian baseline of MILET (CleanRL style).

VariBAD is MILET without clusters and without an exploration policy:
  * one PPO policy on [normalised state, latent mean, latent log-variance] acts in every episode of the trial;
  * the inference model is a single-Gaussian VAE: one GRU over (a_t, s_{t+1}, r_t), q(m | tau_:t) = N(mu, sigma^2),
    a reward decoder (and a state decoder when lambda_s > 0);
  * the ELBO runs over all prefixes tau_:t of the trial; its KL goes to the PREVIOUS posterior q(m | tau_:t-1)
    (prefix 0 to N(0, I)), where MILET has a learned per-cluster prior p(z | c), Gumbel clusters and L_I, L_P.
The policy loss does not train the encoder. The embeddings, decoders, trial buffer, PPO update and evaluation are
MILET's own (cbvi.py, milet_ppo_continuous.py, meta_test.py); what differs is written out here.

    python varibad_ppo_continuous.py                    # PointGoal
    python varibad_ppo_continuous.py --env-id AntGoal
    python varibad_ppo_continuous.py --env-id AntGoal --oracle --exp-name oracle   # PPO that knows the task
    python varibad_ppo_continuous.py --resume runs/<run>                           # continue an interrupted run
"""
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim
import tyro
from gymnasium.wrappers.utils import RunningMeanStd
from torch.distributions import kl_divergence
from tqdm import tqdm

import envs_clustered
import meta_test
from cbvi import SplitDecoder, TrialBuffer, gaussian, mlp
from milet_ppo_continuous import ENV_DEFAULTS, Agent, check_finite, check_trial_args, gae, make_env, ppo_update


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
    """if toggled, save a checkpoint (runs/<run_name>/varibad.pt) at every evaluation"""
    eval_every: int = 25
    """meta-test evaluation every this many iterations (and before training and at the end)"""
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
    total_timesteps: Optional[int] = None
    """total environment frames of the experiment (None: MILET's budget for the env, 2M on PointGoal)"""
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
    lambda_s: Optional[float] = None
    """weight of the state reconstruction (None: 1 for the rand-params envs, else 0, as MILET)"""
    kl_weight: float = 0.1
    """weight of the KL terms (VariBAD's AntGoal config; MILET's PointGoal preset uses 1 for its cluster prior)"""
    vae_lr: float = 1e-3
    """learning rate of the VAE Adam optimizer"""
    vae_buffer_size: int = 10_000
    """capacity of the VAE trial buffer, in trials"""
    vae_batch_size: int = 50
    """trials per VAE update"""
    vae_updates: Optional[int] = None
    """VAE updates per iteration (None: 4 on PointGoal, as MILET's preset, else 1)"""
    vae_num_prefixes: int = 10
    """prefixes whose latent decodes the trial, a random subset (VariBAD subsamples ELBOs too); 0 uses all"""

    # PPO
    learning_rate: float = 1e-3
    """policy learning rate (VariBAD's AntGoal config as docs/paper_settings.md gives it, and MILET's PointGoal preset)"""
    anneal_lr: bool = True
    """toggle learning rate annealing"""
    policy_layers: tuple[int, ...] = (128, 128)
    """hidden layers of the actor and critic"""
    gamma: float = 0.97
    """the discount factor gamma"""
    gae_lambda: float = 0.9
    """the lambda for the general advantage estimation"""
    num_minibatches: Optional[int] = None
    """the number of mini-batches per PPO epoch (None: 4 on PointGoal, as MILET's preset, else VariBAD's 1)"""
    update_epochs: Optional[int] = None
    """the K epochs to update the policy (None: 4 on PointGoal, as MILET's preset, else VariBAD's 2)"""
    norm_adv: bool = True
    """toggles advantages normalization"""
    clip_coef: Optional[float] = None
    """the surrogate clipping coefficient (None: 0.2 on PointGoal, as MILET's preset, else VariBAD's 0.05)"""
    ent_coef: Optional[float] = None
    """coefficient of the entropy (None: 1e-3 on PointGoal, between MILET's 1e-4 (exploit) and 1e-2 (explore), else VariBAD's 0.01)"""
    huber_value_loss: bool = True
    """Huber (smooth L1) clipped value loss, as MILET; --no-huber-value-loss uses the squared error"""
    vf_coef: float = 0.5
    """coefficient of the value function"""
    max_grad_norm: float = 0.5
    """the maximum norm for the gradient clipping"""

    # to be filled in runtime
    trial_length: int = 0
    """(1 + N) * H, filled in at runtime"""
    num_iterations: int = 0
    """the number of iterations (computed in runtime)"""


# Unset flags: PointGoal takes MILET's quick preset (milet_ppo_continuous.ENV_DEFAULTS); other envs the settings of
# VariBAD's AntGoal config (docs/paper_settings.md). Every env keeps MILET's frame budget, so that all methods get the same frames.
POINTGOAL = dict(vae_updates=4, num_minibatches=4, update_epochs=4, clip_coef=0.2, ent_coef=1e-3)
VARIBAD = dict(vae_updates=1, num_minibatches=1, update_epochs=2, clip_coef=0.05, ent_coef=0.01)


def check_args(args: Args) -> None:
    """Fill the per-env defaults, then reject impossible settings with one clear line before anything is written."""
    if args.env_id not in envs_clustered.ENV_IDS:
        raise ValueError(f"unknown --env-id {args.env_id!r}; valid ids: {', '.join(envs_clustered.ENV_IDS)}")
    defaults = dict(POINTGOAL if args.env_id == "PointGoal" else VARIBAD,
                    total_timesteps=ENV_DEFAULTS[args.env_id]["total_timesteps"], lambda_s=ENV_DEFAULTS[args.env_id]["lambda_s"])
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    check_trial_args(args, ("vae_updates", "vae_batch_size", "checkpoint_every"))


class VariBADVAE(nn.Module):
    """q(m | tau_:t) = N(mu(h_t), sigma^2(h_t)) from one GRU, with MILET's embeddings and decoders (cbvi.py)."""

    def __init__(self, obs_dim: int, action_dim: int, args: Args):
        super().__init__()
        action_embed, state_embed, reward_embed = args.encoder_embed_sizes
        self.embed_action = mlp([action_dim, action_embed], out_act=True)
        self.embed_state = mlp([obs_dim, state_embed], out_act=True)
        self.embed_reward = mlp([1, reward_embed], out_act=True)
        self.gru = nn.GRU(action_embed + state_embed + reward_embed, args.encoder_hidden_size)
        self.latent_head = nn.Linear(args.encoder_hidden_size, 2 * args.latent_dim)  # mean and log-variance
        self.dec_embed_state = mlp([obs_dim, state_embed], out_act=True)
        self.dec_embed_action = mlp([action_dim, action_embed], out_act=True)
        self.reward_decoder = SplitDecoder(args.latent_dim, 2 * state_embed + action_embed, args.reward_decoder_layers, 1)
        self.state_decoder = (SplitDecoder(args.latent_dim, state_embed + action_embed, args.state_decoder_layers, obs_dim)
                              if args.lambda_s > 0 else None)
        self.hidden_size, self.args = args.encoder_hidden_size, args

    def encode(self, actions, next_obs, rewards, hidden):
        """(T, B, .) transitions from hidden (B, H) -> latent mean, log-variance (T, B, L) and the new hidden."""
        emb = torch.cat([self.embed_action(actions), self.embed_state(next_obs), self.embed_reward(rewards.unsqueeze(-1))], -1)
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
        mean, logvar, _ = self.encode(actions, next_obs, rewards, torch.zeros(B, self.hidden_size, device=actions.device))
        mean, logvar = torch.cat([mean0.unsqueeze(0), mean]), torch.cat([logvar0.unsqueeze(0), logvar])  # (T+1, B, L)
        # KL(q(m | tau_:t) || q(m | tau_:t-1)) for t >= 1 and KL(q(m | tau_:0) || N(0, I)): the previous posterior is the prior
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
        r_hat = self.reward_decoder(latent, torch.cat([e_s, e_a, e_s1], -1))
        reward_rec = (r_hat.squeeze(-1) - rewards).pow(2).sum(1).mean()
        state_rec = reward_rec.new_zeros(())
        if self.state_decoder is not None:
            state_rec = (self.state_decoder(latent, torch.cat([e_s, e_a], -1)) - next_obs).pow(2).sum(dim=(1, 3)).mean()
        total = reward_rec + self.args.lambda_s * state_rec + self.args.kl_weight * kl
        return {"reward_reconstruction": reward_rec, "state_reconstruction": state_rec, "kl": kl, "total": total}


def policy_input(obs, belief, obs_rms, device) -> torch.Tensor:
    """pi(a | s, q(m | tau_:t)): the normalised state and the belief, [latent mean, latent log-variance] (no cluster
    probabilities), or with --oracle the true task parameters."""
    norm_obs = np.clip((obs - obs_rms.mean) / np.sqrt(obs_rms.var + 1e-8), -10, 10)
    return torch.cat([torch.as_tensor(norm_obs, dtype=torch.float32, device=device), belief], -1)


def task_tensor(tasks, device) -> torch.Tensor:
    """The true task parameters (goal, direction or multipliers), the --oracle policy's belief."""
    return torch.as_tensor(np.stack(tasks), dtype=torch.float32, device=device)


@torch.no_grad()
def evaluate(args: Args, vae, agent, obs_rms, eval_envs, split, device) -> dict:
    """Meta-test (meta_test.py) with mean actions and the posterior mean's belief. No clusters, so no NMI."""
    hidden, mean, logvar = vae.initial_belief(len(split.test_tasks), device)

    def act(obs, step):
        belief = task_tensor(split.test_tasks, device) if args.oracle else torch.cat([mean, logvar], -1)
        return agent.get_action_and_value(policy_input(obs, belief, obs_rms, device), deterministic=True)[0]

    def observe(action, next_state, reward, step):
        nonlocal hidden, mean, logvar
        new_mean, new_logvar, hidden = vae.encode(action[None], next_state[None], reward[None], hidden)
        mean, logvar = new_mean[0], new_logvar[0]
        return None

    return meta_test.evaluate(eval_envs, split, args.seed + 10_000, 1 + args.num_exploit_episodes,
                              args.episode_length, act, observe)


if __name__ == "__main__":
    args = tyro.cli(Args)
    resumed = None  # --resume: the checkpoint's state, restored once everything is built
    if args.resume is not None:
        resumed, args = meta_test.load_resume(args)
    try:
        check_args(args)
    except ValueError as error:
        sys.exit(f"varibad_ppo_continuous.py: error: {error}")
    steps = args.episode_length
    args.trial_length = (1 + args.num_exploit_episodes) * steps
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
    vae = VariBADVAE(obs_dim, action_dim, args).to(device)
    belief_dim = split.train_tasks.shape[1] if args.oracle else 2 * args.latent_dim
    agent = Agent(obs_dim + belief_dim, action_dim, args.policy_layers).to(device)
    vae_optimizer = optim.Adam(vae.parameters(), lr=args.vae_lr)
    optimizer = optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-8)
    buffer = TrialBuffer(args.vae_buffer_size, 1 + args.num_exploit_episodes, steps, obs_dim, action_dim)
    obs_rms, return_rms = RunningMeanStd(shape=(obs_dim,)), RunningMeanStd(shape=())

    # ALGO Logic: Storage setup for one trial per environment
    T, B = args.trial_length, args.num_envs
    inputs = torch.zeros((T, B, obs_dim + belief_dim), device=device)
    actions = torch.zeros((T, B, action_dim), device=device)
    logprobs, values, rewards = (torch.zeros((T, B), device=device) for _ in range(3))
    states, next_states = torch.zeros((T, B, obs_dim), device=device), torch.zeros((T, B, obs_dim), device=device)

    # Everything a checkpoint must hold so that --resume continues exactly as an uninterrupted run (CPU, same threads)
    stateful = {"vae": vae, "agent": agent, "buffer": buffer, "vae_optimizer": vae_optimizer, "optimizer": optimizer}
    start_iteration, global_step = 0, 0
    if resumed is not None:
        for name, obj in stateful.items():
            obj.load_state_dict(resumed[name])
        (obs_rms.mean, obs_rms.var, obs_rms.count), (return_rms.mean, return_rms.var, return_rms.count) = resumed["rms"]
        meta_test.restore_random_state(resumed["rng"], task_rng, envs)
        start_iteration, global_step = resumed["iteration"] + 1, resumed["global_step"]
    start_step, start_time, sps = global_step, time.time(), 0
    resume_path = os.path.join(run_dir, "resume.pt")
    progress = tqdm(range(start_iteration, args.num_iterations + 1), desc=f"VariBAD {args.env_id}", unit="it",
                    initial=start_iteration, total=args.num_iterations + 1)
    try:
        for iteration in progress:
            if iteration > 0:
                if args.anneal_lr:
                    optimizer.param_groups[0]["lr"] = (1.0 - (iteration - 1.0) / args.num_iterations) * args.learning_rate

                # ALGO LOGIC: one trial per environment, one policy in every episode, the belief updated online
                task_index = task_rng.integers(len(split.train_tasks), size=B)
                obs, reset_info = envs.reset(seed=args.seed if iteration == 1 else None,
                                    options={"tasks": split.train_tasks[task_index], "clusters": split.train_clusters[task_index]})
                with torch.no_grad():  # the policy never trains the encoder
                    hidden, latent_mean, latent_logvar = vae.initial_belief(B, device)
                    for step in range(T):
                        global_step += B
                        obs_rms.update(obs)
                        belief = task_tensor(reset_info["task"], device) if args.oracle else torch.cat([latent_mean, latent_logvar], -1)
                        inputs[step] = policy_input(obs, belief, obs_rms, device)
                        action, logprobs[step], _, values[step] = agent.get_action_and_value(inputs[step])
                        actions[step] = action
                        states[step] = torch.as_tensor(obs, dtype=torch.float32, device=device)
                        obs, reward, _, _, info = envs.step(action.cpu().numpy())
                        next_states[step] = torch.as_tensor(np.stack(info["next_state"]), dtype=torch.float32, device=device)
                        rewards[step] = torch.as_tensor(reward, dtype=torch.float32, device=device)
                        latent_mean, latent_logvar, hidden = vae.encode(action[None], next_states[step][None], rewards[step][None], hidden)
                        latent_mean, latent_logvar = latent_mean[0], latent_logvar[0]
                buffer.add(states, actions, rewards, next_states)

                # ALGO LOGIC: PPO on the whole trial (the objective is every episode's return), rewards scaled as MILET
                discounted = torch.zeros_like(rewards)
                for t in range(T):
                    discounted[t] = rewards[t] + args.gamma * (discounted[t - 1] if t % steps else 0.0)
                return_rms.update(discounted.flatten().cpu().numpy())
                policy_rewards = (rewards / np.sqrt(return_rms.var + 1e-8)).clamp(-10, 10)
                advantages, returns = gae(policy_rewards, values, args.gamma, args.gae_lambda)
                stats = ppo_update(agent, optimizer, inputs.flatten(0, 1), actions.flatten(0, 1), logprobs.flatten(),
                                   advantages.flatten(), returns.flatten(), values.flatten(), args.ent_coef, args, iteration)
                writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], global_step)
                for key, value in stats.items():
                    writer.add_scalar(f"losses/{key}", value, global_step)

                # ALGO LOGIC: VAE update on whole trials from the buffer (none for the --oracle reference)
                for _ in range(0 if args.oracle else args.vae_updates):
                    vae_losses = vae.loss(*buffer.sample(args.vae_batch_size, device))
                    check_finite(vae_losses, iteration)
                    vae_optimizer.zero_grad()
                    vae_losses["total"].backward()
                    nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
                    vae_optimizer.step()
                for key, value in (vae_losses.items() if not args.oracle else ()):
                    writer.add_scalar(f"losses/vae_{key}", value.item(), global_step)
                for episode in range(1 + args.num_exploit_episodes):
                    train_return = rewards[episode * steps: (episode + 1) * steps].sum(0).mean().item()
                    writer.add_scalar(f"charts/return_episode_{episode + 1}", train_return, global_step)
                writer.add_scalar("charts/SPS", int((global_step - start_step) / (time.time() - start_time)), global_step)

            # meta-test evaluation before training, every eval_every iterations and at the end
            if iteration % args.eval_every == 0 or iteration == args.num_iterations:
                record = {"iteration": iteration, "global_step": global_step,
                          **evaluate(args, vae, agent, obs_rms, eval_envs, split, device)}
                meta_test.log_evaluation(writer, run_dir, eval_lines, record)
                if args.save_model:
                    meta_test.torch_save_atomic(os.path.join(run_dir, "varibad.pt"), {"args": vars(args), "vae": vae.state_dict(), "agent": agent.state_dict(), "iteration": iteration,
                                                "obs_rms": (obs_rms.mean, obs_rms.var, obs_rms.count)})
            if iteration > 0 and (iteration % args.checkpoint_every == 0 or iteration == args.num_iterations):
                meta_test.torch_save_atomic(resume_path, {"args": vars(args), "iteration": iteration, "global_step": global_step,
                            **{name: obj.state_dict() for name, obj in stateful.items()},
                            "rms": [(rms.mean, rms.var, rms.count) for rms in (obs_rms, return_rms)],
                            "rng": meta_test.random_state(task_rng, envs)})
            sps = int((global_step - start_step) / max(time.time() - start_time, 1e-9))
            progress.set_postfix(SPS=sps, eval_return_2=round(record["return_episode_2"], 1))
    except FloatingPointError as error:
        writer.close()
        sys.exit(f"varibad_ppo_continuous.py: error: {error}")

    meta_test.write_atomic(os.path.join(run_dir, "summary.json"),
                           json.dumps(meta_test.summary(args, global_step, sps, record), indent=1))
    envs.close()
    eval_envs.close()
    writer.close()
    print(f"run saved to {run_dir}")
