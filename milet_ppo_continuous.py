"""MILET with PPO for continuous actions: the whole meta-training loop in one file (CleanRL style).

Paper: "Unravel Structured Heterogeneity of Tasks in Meta-RL via Exploratory Clustering" (MILET).
The loop below is the paper's Algorithm 1, one marker comment per step:
  1. sample training tasks and roll out one trial each: pi_psi explores in episode 1, pi_phi exploits in episodes
     2..N+1, while the CBVI encoder (cbvi.py, Sec. 4.1) updates its belief about cluster c and task latent z online;
  2. reward pi_psi with the task reward plus the cluster-uncertainty bonuses r_h, r_c (Eq. 9-12, in this file);
  3. one PPO update of each policy on its own part of the trial;
  4. one CBVI update (Eq. 4-8) on whole trials drawn from the trial buffer;
  5. every `eval_every` iterations, meta-test on held-out tasks (Algorithm 2, meta_test.py), with the clusters' NMI.

    python milet_ppo_continuous.py                          # PointGoal, 2M frames, 7-27 minutes on 2 CPU cores
    python milet_ppo_continuous.py --env-id AntGoal --num-clusters 6
    python milet_ppo_continuous.py --env-id AntGoal --help  # every flag with AntGoal's values
    python milet_ppo_continuous.py --eval-checkpoint runs/<run>/milet_ppo_continuous.pt   # re-run the meta-test
    python milet_ppo_continuous.py --resume runs/<run>      # continue an interrupted run
"""
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import Literal, Optional, Union

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
import tyro
from gymnasium.wrappers.utils import RunningMeanStd
from sklearn.metrics import normalized_mutual_info_score, roc_auc_score
from torch.distributions import Categorical, kl_divergence
from torch.distributions.normal import Normal
from tqdm import tqdm

import envs_clustered
import meta_test
from cbvi import CBVI, TrialBuffer


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment (policies, encoder, task sampling, environments)"""
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
    eval_checkpoint: Optional[str] = None
    """if set, load this checkpoint (--save-model's .pt or a resume.pt), re-run the meta-test, print it as JSON, exit"""
    eval_every: int = 25
    """meta-test evaluation every this many iterations (and before training and at the end)"""
    eval_trials: int = 1
    """trials per test task in each evaluation (each with its own reset noise; the 32 test tasks stay the protocol)"""
    checkpoint_every: int = 100
    """write runs/<run_name>/resume.pt (everything --resume needs, trial buffer included) every this many iterations"""
    resume: Optional[str] = None
    """continue the run in this folder (runs/<run_name>) from its resume.pt, with the run's own flags"""

    # Environment and trials (Sec. 3)
    env_id: str = "PointGoal"
    """the environment id, one of envs_clustered.ENV_IDS"""
    task_seed: int = 0
    """seed of the 500 train / 32 test task split (kept fixed across training seeds, as in the paper)"""
    total_timesteps: int = 2_000_000
    """total environment frames of the experiment [per env: meta_test.TOTAL_TIMESTEPS, the same for every method]"""
    num_envs: int = 16
    """the number of parallel trials (one task each) per iteration"""
    episode_length: int = 100
    """H, the length of every episode"""
    num_exploit_episodes: int = 1
    """N, exploitation episodes after the exploration episode"""
    async_envs: bool = False
    """if toggled, step gymnasium's v5 MuJoCo envs in worker processes (AsyncVectorEnv; implies --gymnasium-envs)"""
    gymnasium_envs: bool = False
    """if toggled, step MuJoCo through gymnasium's v5 envs (the reference path) instead of the native batched env"""
    physics_threads: int = 2
    """threads that step the native MuJoCo vector env (with --torch-threads 1, the fastest split on 2 cores)"""
    torch_threads: int = 1
    """torch's CPU threads while envs step (rollouts, evaluations; 1 measured fastest on 2 cores)"""
    update_threads: Optional[int] = None
    """torch's CPU threads in the PPO and CBVI updates, while the physics is idle (default: torch's own, i.e.
    OMP_NUM_THREADS, else every core; numbers are reproducible per thread count)"""

    # Cluster-based variational inference (Sec. 4.1)
    num_clusters: Union[int, Literal["auto"]] = 4
    """K, the number of clusters the model assumes; auto: up to --max-clusters, with learned weights (beyond the paper)"""
    max_clusters: int = 10
    """K_max, the clusters available to --num-clusters auto"""
    weight_concentration: float = 1.0
    """gamma of the sparse prior Dir(gamma / K_max) on the cluster weights (--num-clusters auto)"""
    ood_eval: bool = False
    """also score every evaluation's test tasks against out-of-distribution tasks (ood_auroc; beyond the paper;
    direction envs leave their last cluster out of training for it)"""
    ood_score: Literal["prior_nll", "reward_error"] = "reward_error"
    """the OOD score that ood_auroc reports (both are logged; reward_error measured better, docs/clusters.md)"""
    latent_dim: int = 10
    """dimension of the task latent z"""
    stacked_gru: bool = True
    """stacked C-GRU/T-GRU encoder; --no-stacked-gru uses one GRU (the "no S-GRU" ablation, App. E)"""
    encoder_hidden_size: int = 32
    """GRU hidden size [per env: ENV_DEFAULTS]"""
    encoder_embed_sizes: tuple[int, int, int] = (16, 32, 16)
    """embedding sizes of action, state and reward [per env: ENV_DEFAULTS]"""
    reward_decoder_layers: tuple[int, ...] = (64, 32)
    """hidden layers of the reward decoder [per env: ENV_DEFAULTS]"""
    state_decoder_layers: tuple[int, ...] = (256, 128)
    """hidden layers of the state decoder (used only when lambda_s > 0)"""
    vae_lr: float = 1e-3
    """learning rate of the CBVI Adam optimizer"""
    vae_buffer_size: int = 10_000
    """capacity of the CBVI trial buffer, in trials"""
    vae_batch_size: int = 50
    """trials per CBVI update"""
    vae_updates: int = 4
    """CBVI updates per iteration [per env: ENV_DEFAULTS]"""
    vae_num_prefixes: int = 10
    """prefixes tau_:t per trial in the ELBO (a random subset, as the authors); 0 uses all [per env: ENV_DEFAULTS]"""
    vae_num_decodes: int = 0
    """steps of the trial each prefix decodes (random, as the authors' vae_subsample_decodes); 0 decodes all
    [per env: ENV_DEFAULTS]"""
    gumbel_temperature: float = 0.8
    """temperature of the Gumbel-softmax cluster sample during training"""
    lambda_s: float = 0.0
    """weight of the state reconstruction (Eq. 5): 0 for reward, 1 for dynamics clusters [per env: ENV_DEFAULTS]"""
    lambda_i: float = 1.0
    """weight of the in-trial consistency regulariser L_I (Eq. 6, 8)"""
    lambda_p: float = 0.1
    """weight of the prior consistency regulariser L_P (Eq. 7, 8), applied on top of kl_weight"""
    kl_weight: float = 0.01
    """weight of KL(q(z|c,tau) || p(z|c)) [per env: ENV_DEFAULTS]"""
    cat_weight: float = 1e-3
    """weight of KL(q(c|tau) || p(c)) [per env: ENV_DEFAULTS]"""
    target_prior_every: int = 50
    """refresh the target prior p_tgt(z|c) with a hard copy every this many iterations"""

    # Exploration reward schedules (Eq. 12)
    a_h: float = 0.1
    """gamma_h(t) = b_h - a_h exp(-s_h (H - t))"""
    b_h: float = 0.1
    """see a_h"""
    s_h: float = 0.1
    """see a_h"""
    a_c: float = 0.2
    """gamma_c(t) = -b_c + a_c exp(-s_c (H - t))"""
    b_c: float = 0.1
    """see a_c"""
    s_c: float = 0.1
    """see a_c"""
    cluster_bonus: Literal["posterior", "evidence", "task-evidence"] = "posterior"
    """the belief that r_h and r_c (Eq. 10, 11) read: posterior, q(c | tau_:t) (the paper); not in the paper
    (cbvi.evidence_probs), the reward decoder's likelihood of the observed rewards under each cluster's prior mean
    (evidence) or under the end-of-trial z of each trial of the batch (task-evidence)"""
    cluster_posterior: Literal["head", "responsibility"] = "head"
    """q(c | tau_:t): a head on the C-GRU's h_alpha (the paper); responsibility (not in the paper), read from z: log q(c)
    = log p(c) - KL(q(z | tau) || p_omega(z | c)), with z no longer fed c (cbvi.CBVI._responsibility_logits)
    [per env: ENV_DEFAULTS]"""
    policy_cluster_probs: bool = True
    """also feed q(c | tau_:t) to both policies (our addition); --no-policy-cluster-probs: state, z mean, z var only"""
    exploration_policy: bool = True
    """separate exploration policy; --no-exploration-policy lets pi_phi act everywhere with no bonus (App. E)"""
    authors_boundary: bool = False
    """the authors' episode boundary: pi_psi's GAE treats the end of episode 1 as a time limit (bootstraps from its
    last value, that step's advantage 0), and the return normaliser's discounted return runs across the whole trial"""
    relabel_share: float = 0.0
    """not in the paper: this share of each iteration's trials enters the CBVI's buffer with the rewards of another
    training task (hindsight task relabelling, goal envs), trials whose behaviour says nothing of their goal"""
    credit_exploration: bool = False
    """not in the paper: pi_psi's advantages also count the exploitation episodes' returns (GAE over the whole trial,
    bootstrapped from pi_phi's critic where pi_phi takes over), so exploring pays through what pi_phi then earns
    (no effect with --no-exploration-policy: its one policy's GAE runs over the whole trial) [per env: ENV_DEFAULTS]"""

    # PPO (both policies)
    exploit_lr: float = 1e-3
    """learning rate of the exploitation policy pi_phi [per env: ENV_DEFAULTS]"""
    explore_lr: float = 1e-3
    """learning rate of the exploration policy pi_psi [per env: ENV_DEFAULTS]"""
    exploit_ent_coef: float = 1e-4
    """entropy coefficient of pi_phi [per env: ENV_DEFAULTS]"""
    explore_ent_coef: float = 1e-2
    """entropy coefficient of pi_psi [per env: ENV_DEFAULTS]"""
    anneal_lr: bool = True
    """toggle learning rate annealing for both policies"""
    policy_layers: tuple[int, ...] = (128, 64)
    """hidden layers of each actor and critic [per env: ENV_DEFAULTS]"""
    gamma: float = 0.97
    """the discount factor gamma"""
    gae_lambda: float = 0.9
    """the lambda for the general advantage estimation"""
    num_minibatches: int = 4
    """the number of mini-batches per PPO epoch [per env: ENV_DEFAULTS]"""
    update_epochs: int = 4
    """the K epochs to update each policy [per env: ENV_DEFAULTS]"""
    norm_adv: bool = True
    """toggles advantages normalization"""
    clip_coef: float = 0.2
    """the surrogate clipping coefficient (also clips the value loss) [per env: ENV_DEFAULTS]"""
    huber_value_loss: bool = True
    """Huber (smooth L1) clipped value loss as the authors; --no-huber-value-loss uses the squared error"""
    vf_coef: float = 0.5
    """coefficient of the value function"""
    max_grad_norm: float = 0.5
    """the maximum norm for the gradient clipping"""
    clip_vloss: bool = True
    """clip the value loss by clip_coef (the authors, CleanRL); --no-clip-vloss: unclipped [per env: ENV_DEFAULTS]"""
    init_logstd: float = 0.0
    """initial log-std of both Gaussian policies (0 = std 1, the authors') [per env: ENV_DEFAULTS]"""
    explore_init_logstd: Optional[float] = None
    """initial log-std of pi_psi alone (None: --init-logstd); the authors' explorer starts at 0 (std 1)
    [per env: ENV_DEFAULTS]"""
    explore_mean_gain: float = 0.01
    """orthogonal-init gain of pi_psi's action-mean output layer: 0.01 (CleanRL) starts near 0 mean actions; 1 starts
    far from them, as the authors' normc-initialised explorer [per env: ENV_DEFAULTS]"""
    target_kl: Optional[float] = None
    """stop an update at the first minibatch whose approximate KL to the rollout policy exceeds this (None: never)
    [per env: ENV_DEFAULTS]"""

    # to be filled in runtime
    trial_length: int = 0
    """(1 + N) * H, filled in at runtime"""
    num_iterations: int = 0
    """the number of iterations (computed in runtime)"""


# Per-env defaults, one complete row per env in two tables: the authors' configs (docs/paper_settings.md), except
# PointGoal, our quick env. Its row is also Args' defaults; `--env-id X` puts X's row under the flags. The frame budget
# is the protocol's (meta_test.TOTAL_TIMESTEPS), the same for every method.
# PointGoal departs from the paper so that the default run learns in minutes on 2 CPU cores: 4 CBVI updates per
# iteration on 10 prefixes each, larger PPO steps (lr 1e-3, clip 0.2, 4 epochs x 4 minibatches).
PPO_COLUMNS = ("exploit_lr", "explore_lr", "exploit_ent_coef", "explore_ent_coef", "clip_coef", "update_epochs",
               "num_minibatches", "policy_layers", "init_logstd", "clip_vloss", "target_kl")
AUTHORS = (0.0, True, None)  # the authors' initial log-std, value clip and (no) KL stop
# Ant: the PPO core's setting, swept on the oracle (docs/antgoal.md), for both policies; the authors' is lr 1e-4,
# entropy 1e-4 / 1e-3, clip 0.05, 2 epochs x 8 minibatches, which moved the policies too little in 1e7 frames.
# Humanoid takes the same PPO setting (the oracle check in docs/results.md, issue 28), with the authors' layers.
# The Ant rows' explorer adds the authors' entropy bonus 1e-3 (ent psi below; its wide start is in EXPLORE_TABLE).
ANT_SWEPT = (3e-4, 3e-4, 0.0, 1e-3, 0.2, 10, 16, (128, 64), -1.0, False, 0.02)
HUMANOID_SWEPT = (3e-4, 3e-4, 0.0, 0.0, 0.2, 10, 16, (512, 256), -1.0, False, 0.02)
PPO_TABLE = {  #       lr phi  lr psi  ent phi ent psi clip  epochs minibatches layers  log-std, value clip, KL stop
    "PointGoal":         (1e-3,   1e-3,   1e-4,   1e-2,   0.2,  4,     4,          (128, 64), *AUTHORS),
    "AntGoal":           ANT_SWEPT,
    "AntGoalPartial":    ANT_SWEPT,
    "AntU":              ANT_SWEPT,
    "HumanoidDir":       HUMANOID_SWEPT,
    "HumanoidDirSparse": HUMANOID_SWEPT,
    "HopperRandParams":  (5e-4,   1e-4,   1e-3,   1e-2,   0.05, 2,     8,          (128, 128), *AUTHORS),
    "WalkerRandParams":  (3e-4,   3e-4,   1e-3,   1e-2,   0.05, 2,     8,          (128, 128), *AUTHORS),
}
# The Ant rows take 8 CBVI updates an iteration where the authors take 1: with one, q(c) barely follows the goals;
# with eight the belief reads the goal sooner than with four (AntGoal, 1e7 frames, 3 seeds each; docs/antgoal.md,
# "Eight CBVI updates"; docs/deviations.md).
CBVI_COLUMNS = ("encoder_hidden_size", "encoder_embed_sizes", "reward_decoder_layers", "kl_weight", "cat_weight",
                "lambda_s", "vae_updates", "vae_num_prefixes", "vae_num_decodes")
ANT_CBVI = (32, (16, 32, 16), (64, 32), 1e-2, 1e-3, 0.0, 8, 50, 0)
CBVI_TABLE = {  #      GRU  embeddings a,s,r  reward decoder  KL z  KL c  lambda_s updates prefixes decodes (0: all)
    "PointGoal":         (32,  (16, 32, 16),    (64, 32),       1e-2, 1e-3, 0.0,     4,      10,      0),
    "AntGoal":           ANT_CBVI,
    "AntGoalPartial":    ANT_CBVI,
    "AntU":              ANT_CBVI,
    "HumanoidDir":       (128, (16, 32, 16),    (64, 32),       1e-3, 1e-4, 0.0,     1,      50,      100),
    "HumanoidDirSparse": (128, (16, 32, 16),    (64, 32),       1e-3, 1e-4, 0.0,     1,      50,      100),
    "HopperRandParams":  (64,  (32, 32, 32),    (256, 64),      1e-4, 1e-4, 1.0,     1,      50,      50),
    "WalkerRandParams":  (64,  (32, 32, 32),    (256, 64),      1e-3, 1e-3, 1.0,     1,      50,      50),
}
# The explorer (not in the paper; docs/antgoal.md, "What makes the explorer explore"): the Ant rows credit pi_psi
# with what pi_phi then earns, start it wide (the authors' std 1 and normc-like mean layer, on pi_psi alone) and read
# q(c) from z's responsibilities: at 1e7 frames, 3 seeds, it explores and clusters more than the paper's explorer,
# and with CBVI_TABLE's eight updates its episode 2 leads VariBAD's (docs/deviations.md, "Explorer of the Ant rows").
EXPLORE_COLUMNS = ("credit_exploration", "explore_init_logstd", "explore_mean_gain", "cluster_posterior")
PAPER_EXPLORER, ANT_EXPLORER = (False, None, 0.01, "head"), (True, 0.0, 1.0, "responsibility")
EXPLORE_TABLE = {env_id: ANT_EXPLORER if env_id.startswith("Ant") else PAPER_EXPLORER
                 for env_id in envs_clustered.ENV_IDS}
ENV_DEFAULTS = {env_id: {**dict(zip(PPO_COLUMNS, PPO_TABLE[env_id])), **dict(zip(CBVI_COLUMNS, CBVI_TABLE[env_id])),
                         **dict(zip(EXPLORE_COLUMNS, EXPLORE_TABLE[env_id])),
                         "total_timesteps": meta_test.TOTAL_TIMESTEPS[env_id]} for env_id in envs_clustered.ENV_IDS}


def parse_args(argv: Optional[list[str]] = None) -> Args:
    """tyro reads the flags on top of --env-id's row of ENV_DEFAULTS (so --help shows the values that env runs with),
    then the settings are checked with one clear line each, before anything is written."""
    env_id = meta_test.peek_env_id(argv, ENV_DEFAULTS)
    args = tyro.cli(Args, args=argv, default=Args(env_id=env_id, **ENV_DEFAULTS[env_id]))
    if args.num_clusters != "auto" and args.num_clusters < 1:
        meta_test.exit_with_error(f"--num-clusters must be >= 1 or auto, got {args.num_clusters}")
    if args.num_clusters == "auto" and args.max_clusters < 2:
        meta_test.exit_with_error(f"--max-clusters must be >= 2 with --num-clusters auto, got {args.max_clusters}")
    meta_test.check_trial_args(args, ("vae_updates", "vae_batch_size", "vae_buffer_size", "target_prior_every",
                                    "checkpoint_every"))
    if args.ood_eval and args.eval_trials > 1:
        meta_test.exit_with_error("--ood-eval scores one trial per task: use it with --eval-trials 1")
    if args.credit_exploration and args.authors_boundary:
        meta_test.exit_with_error("--credit-exploration (the Ant rows' default) runs pi_psi's GAE on through episode "
                                  "1's end, which --authors-boundary makes a time limit: add --no-credit-exploration")
    if not 0.0 <= args.relabel_share <= 1.0:
        meta_test.exit_with_error(f"--relabel-share must be in [0, 1], got {args.relabel_share}")
    if args.relabel_share > 0 and args.env_id not in envs_clustered.GOAL_ENV_IDS:
        meta_test.exit_with_error(f"--relabel-share needs a goal env (its reward must follow from the robot's x, y), "
                                  f"not {args.env_id}")
    if args.update_threads is not None and args.update_threads < 1:
        meta_test.exit_with_error(f"--update-threads must be >= 1, got {args.update_threads}")
    if args.capture_video:  # an offscreen GL backend and the MP4 encoder, before anything is written
        meta_test.check_video_support()
    return args


def make_env(args: Args, num_envs: int, seed: int) -> gym.vector.VectorEnv:
    """num_envs task slots, each a trial of 1 + N episodes of H steps (Sec. 3); see envs_clustered.py.
    The policies act in [-1, 1]^A, rescaled to the env's box (Humanoid: +-0.4), as the authors' policies did."""
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
    """A PPO actor-critic on [normalised state, z mean, z log-variance]. MILET has two of them:
    the exploration policy pi_psi and the exploitation policy pi_phi (Sec. 4.2)."""

    def __init__(self, input_dim: int, action_dim: int, hidden: tuple[int, ...], init_logstd: float = 0.0,
                 mean_gain: float = 0.01):
        super().__init__()
        self.critic = mlp(input_dim, hidden, 1, out_std=1.0)
        self.actor_mean = mlp(input_dim, hidden, action_dim, out_std=mean_gain)
        self.actor_logstd = nn.Parameter(torch.full((1, action_dim), init_logstd))  # state-independent

    def get_action_and_value(self, x, action=None, deterministic=False):
        action_mean = self.actor_mean(x)
        probs = Normal(action_mean, self.actor_logstd.expand_as(action_mean).exp())
        if action is None:
            action = action_mean if deterministic else probs.sample()
        return action, probs.log_prob(action).sum(1), probs.entropy().sum(1), self.critic(x).squeeze(-1)


def build_models(args: Args, obs_dim: int, action_dim: int, device):
    """The CBVI model (cbvi.py) and the two policies on policy_input; pi_psi is None for --no-exploration-policy."""
    cbvi = CBVI(
        obs_dim, action_dim, num_clusters=cluster_slots(args), latent_dim=args.latent_dim,
        hidden_size=args.encoder_hidden_size, action_embed=args.encoder_embed_sizes[0],
        state_embed=args.encoder_embed_sizes[1], reward_embed=args.encoder_embed_sizes[2], stacked=args.stacked_gru,
        reward_decoder_layers=args.reward_decoder_layers, state_decoder_layers=args.state_decoder_layers,
        temperature=args.gumbel_temperature, lambda_s=args.lambda_s, kl_weight=args.kl_weight,
        cat_weight=args.cat_weight, lambda_i=args.lambda_i, lambda_p=args.lambda_p,
        num_prefixes=args.vae_num_prefixes or None, num_decodes=args.vae_num_decodes or None,
        learn_cluster_weights=args.num_clusters == "auto",
        weight_concentration=args.weight_concentration, cluster_posterior=args.cluster_posterior,
    ).to(device)
    input_dim = policy_input_dim(args, obs_dim)
    exploit_agent = Agent(input_dim, action_dim, args.policy_layers, args.init_logstd).to(device)
    explore_logstd = args.init_logstd if args.explore_init_logstd is None else args.explore_init_logstd
    explore_agent = (Agent(input_dim, action_dim, args.policy_layers, explore_logstd, args.explore_mean_gain).to(device)
                     if args.exploration_policy else None)
    return cbvi, explore_agent, exploit_agent


def policy_input_dim(args: Args, obs_dim: int) -> int:
    """The width of policy_input: state, t / H, z mean, z log-variance and (by default) q(c | tau_:t)."""
    return obs_dim + 1 + 2 * args.latent_dim + (cluster_slots(args) if args.policy_cluster_probs else 0)


def cluster_slots(args: Args) -> int:
    """K: --num-clusters, or --max-clusters with --num-clusters auto."""
    return args.max_clusters if args.num_clusters == "auto" else args.num_clusters


def policy_input(obs: np.ndarray, step: int, belief, obs_rms: RunningMeanStd, args: Args, device) -> torch.Tensor:
    """pi(a | s, z_c): the normalised state, the time t / H within the episode (our addition: the Eq. 12 weights
    depend on t, so the exploration critic needs it), the belief's z mean and log-variance and, unless
    --no-policy-cluster-probs, q(c | tau_:t), which is the same in training and evaluation (z's c is not)."""
    norm_obs = np.clip((obs - obs_rms.mean) / np.sqrt(obs_rms.var + 1e-8), -10, 10)
    time_feature = belief.z_mean.new_full((len(obs), 1), (step % args.episode_length) / args.episode_length)
    parts = [torch.as_tensor(norm_obs, dtype=torch.float32, device=device), time_feature, belief.z_mean,
             belief.z_logvar]
    return torch.cat(parts + ([belief.cluster_probs] if args.policy_cluster_probs else []), -1)


def gae(rewards, values, gamma, gae_lambda):
    """Advantages over one policy's segment of the trial (T, B). The segment ends where the policy stops acting
    (the exploration episode, or the trial), so nothing is bootstrapped past it; inside a segment of several
    inner episodes the trial is one episode for the policy, so GAE runs across their boundaries."""
    advantages, last_gae = torch.zeros_like(rewards), 0.0
    for t in reversed(range(len(rewards))):
        next_value = values[t + 1] if t + 1 < len(values) else 0.0  # values one longer: bootstrap from the last
        delta = rewards[t] + gamma * next_value - values[t]
        advantages[t] = last_gae = delta + gamma * gae_lambda * last_gae
    return advantages, advantages + values[:len(rewards)]


def segment_advantages(rewards, values, part: slice, args: Args, through_trial: bool = False, time_out: bool = False):
    """GAE of one policy's part of the trial (T, B). through_trial (--credit-exploration, not in the paper): GAE over
    the whole trial, cut to the part, so the exploration episode is credited with the exploitation episodes' rewards.
    time_out (--authors-boundary): the part's end is a time limit, as in the authors' code (gym's bad_masks): its
    last step gets advantage 0 and the step before bootstraps from the last step's value."""
    if through_trial:
        return tuple(x[part] for x in gae(rewards, values, args.gamma, args.gae_lambda))
    if time_out:
        advantages, returns = gae(rewards[part][:-1], values[part], args.gamma, args.gae_lambda)
        return torch.cat([advantages, 0 * values[part][-1:]]), torch.cat([returns, values[part][-1:]])
    return gae(rewards[part], values[part], args.gamma, args.gae_lambda)


def ppo_update(agent, optimizer, inputs, actions, logprobs, advantages, returns, values, ent_coef, args, iteration):
    """CleanRL's PPO update on one policy's flat batch, with the authors' Huber clipped value loss."""
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
            loss = pg_loss - ent_coef * entropy_loss + v_loss * args.vf_coef
            meta_test.check_finite({"policy_loss": pg_loss, "value_loss": v_loss}, iteration)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
            optimizer.step()
    return {"policy_loss": pg_loss.item(), "value_loss": v_loss.item(), "entropy": entropy_loss.item(),
            "approx_kl": approx_kl.item(), "clipfrac": float(np.mean(clipfracs)), "update_steps": steps}


def exploration_rewards(cluster_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sec. 4.2: cluster_probs (H+1, B, K) = q(c | tau_:t) for t = 0..H of the exploration episode -> r_h, r_c (H, B).
    q(c | tau_:0) is the uniform p(c) (cbvi.py), as in the authors' code."""
    entropy = Categorical(probs=cluster_probs).entropy()
    r_h = entropy[:-1] - entropy[1:]  # Eq. 10: r_h = H(q_t) - H(q_{t+1}), the drop in cluster uncertainty
    r_c = -kl_divergence(Categorical(probs=cluster_probs[:-1]), Categorical(probs=cluster_probs[1:]))  # Eq. 11
    return r_h, r_c


def reward_weights(t, horizon: int, args: Args) -> tuple:
    """Eq. 12: gamma_h(t) = b_h - a_h exp(-s_h (H - t)) falls from ~0.1 to 0, gamma_c(t) = -b_c + a_c exp(-s_c (H - t))
    rises from ~-0.1 to 0.1: reduce the uncertainty early, keep the belief consistent late (Fig. 6, plots.py)."""
    exp = torch.exp if isinstance(t, torch.Tensor) else np.exp
    return args.b_h - args.a_h * exp(-args.s_h * (horizon - t)), -args.b_c + args.a_c * exp(-args.s_c * (horizon - t))


def shaped_rewards(rewards, cluster_probs, return_rms: RunningMeanStd, args: Args, exploration_policy: bool):
    """The policies' rewards on a batch of trials (T, B): the task reward divided by a running std of the discounted
    return (restarted every episode) and clipped, as the authors; with an exploration policy, its episode adds the
    bonuses. cluster_probs (T+1, B, K) = q(c | tau_:t). Returns (rewards, r_h, r_c), the bonuses None without pi_psi."""
    H = args.episode_length
    discounted = torch.zeros_like(rewards)
    for t in range(len(rewards)):
        restart = t % H == 0 if not args.authors_boundary else t == 0  # --authors-boundary: run across the trial
        discounted[t] = rewards[t] + args.gamma * (0.0 if restart else discounted[t - 1])
    return_rms.update(discounted.flatten().cpu().numpy())
    policy_rewards = (rewards / np.sqrt(return_rms.var + 1e-8)).clamp(-10, 10)
    if not exploration_policy:
        return policy_rewards, None, None
    r_h, r_c = exploration_rewards(cluster_probs[: H + 1])  # Eq. 10, 11
    gamma_h, gamma_c = reward_weights(torch.arange(H, device=rewards.device), H, args)  # Eq. 12
    policy_rewards[:H] += gamma_h[:, None] * r_h + gamma_c[:, None] * r_c  # Eq. 12: r + gh*r_h + gc*r_c
    return policy_rewards, r_h, r_c


@torch.no_grad()
def evaluate(args: Args, cbvi, explore_agent, exploit_agent, obs_rms, eval_envs, split, device) -> dict:
    """Meta-test (Algorithm 2, meta_test.py) on the fixed test tasks: mean actions and the argmax cluster.
    Reads the training observation statistics but never updates them (the authors' code did). Also logs the
    clusters in use and the weights p(c); with --ood-eval, the AUROC of the OOD scores (beyond the paper)."""
    record, exploration = meta_test_trial(args, cbvi, explore_agent, exploit_agent, obs_rms, eval_envs, split, device)
    record.update(num_clusters_found=len(set(record["test_clusters_pred"])),
                  cluster_weights=[round(w, 4) for w in cbvi.cluster_weights().tolist()])
    if args.ood_eval:  # the test tasks against OOD tasks; the threshold flags 5% of training tasks
        scores = {"test": cbvi.ood_scores(*exploration)}
        ood_tasks, ood_clusters = envs_clustered.make_ood_tasks(args.env_id, len(split.test_tasks), seed=args.task_seed)
        for name, tasks, clusters in (("ood", ood_tasks, ood_clusters),
                                      ("train", split.train_tasks[:len(split.test_tasks)], split.train_clusters)):
            other = replace(split, test_tasks=tasks, test_clusters=clusters[:len(tasks)])
            scores[name] = cbvi.ood_scores(*meta_test_trial(args, cbvi, explore_agent, exploit_agent, obs_rms,
                                                              eval_envs, other, device)[1])
        is_ood = np.r_[np.zeros(len(split.test_tasks)), np.ones(len(ood_tasks))]
        for candidate in scores["test"]:
            test, ood, train = (scores[name][candidate].cpu().numpy() for name in ("test", "ood", "train"))
            threshold = float(np.quantile(train, 0.95))
            record[f"ood_auroc_{candidate}"] = float(roc_auc_score(is_ood, np.r_[test, ood]))
            record[f"ood_flagged_{candidate}"] = {"test": float((test > threshold).mean()),
                                                  "ood": float((ood > threshold).mean())}
        record["ood_auroc"] = record[f"ood_auroc_{args.ood_score}"]
    return record


def meta_test_trial(args: Args, cbvi, explore_agent, exploit_agent, obs_rms, eval_envs, split, device):
    """One meta-test trial on split's test tasks: (the eval.jsonl record, the exploration episode as
    (belief at its end, states, actions, rewards, next states))."""
    hidden, belief = cbvi.initial_belief(eval_envs.num_envs, sample=False)  # --eval-trials slots per test task
    episode = {"states": [], "actions": [], "rewards": [], "next_states": []}

    def act(obs, step):
        agent = explore_agent if step < args.episode_length and explore_agent is not None else exploit_agent
        if step < args.episode_length:
            episode["states"].append(torch.as_tensor(obs, dtype=torch.float32, device=device))
        return agent.get_action_and_value(policy_input(obs, step, belief, obs_rms, args, device), deterministic=True)[0]

    def observe(action, next_state, reward, step):
        nonlocal hidden, belief
        hidden, belief = cbvi.step(action, next_state, reward, hidden, sample=False)
        if step < args.episode_length:
            for key, value in zip(("actions", "rewards", "next_states"), (action, reward, next_state)):
                episode[key].append(value)
            episode["belief"] = belief
        return belief.cluster_probs

    record = meta_test.evaluate(eval_envs, split, args.seed + 10_000, 1 + args.num_exploit_episodes,
                                args.episode_length, act, observe)
    exploration = (episode["belief"], *(torch.stack(episode[key]) for key in ("states", "actions", "rewards",
                                                                              "next_states")))
    return record, exploration


def save_checkpoint(path, args, cbvi, explore_agent, exploit_agent, obs_rms, iteration, global_step):
    state = {"args": asdict(args), "cbvi": cbvi.state_dict(), "exploit_agent": exploit_agent.state_dict(),
             "explore_agent": explore_agent.state_dict() if explore_agent is not None else None,
             "obs_rms": (obs_rms.mean, obs_rms.var, obs_rms.count), "iteration": iteration, "global_step": global_step}
    meta_test.torch_save_atomic(path, state)


def load_checkpoint(path: str, device="cpu"):
    """Rebuild (args, cbvi, explore_agent, exploit_agent, obs_rms) from a `--save-model` checkpoint or a resume.pt."""
    state = torch.load(path, map_location=device, weights_only=False)
    args = Args(**{k: tuple(v) if isinstance(v, list) else v for k, v in state["args"].items()})
    probe = envs_clustered.make_env(args.env_id, episode_length=args.episode_length)
    cbvi, explore_agent, exploit_agent = build_models(
        args, probe.observation_space.shape[0], probe.action_space.shape[0], device)
    cbvi.load_state_dict(state["cbvi"])
    exploit_agent.load_state_dict(state["exploit_agent"])
    if explore_agent is not None:
        explore_agent.load_state_dict(state["explore_agent"])
    obs_rms = RunningMeanStd(shape=probe.observation_space.shape)
    # --save-model stores the observation normaliser as obs_rms, resume.pt as rms = (obs_rms, return_rms)
    obs_rms.mean, obs_rms.var, obs_rms.count = state["obs_rms"] if "obs_rms" in state else state["rms"][0]
    return args, cbvi, explore_agent, exploit_agent, obs_rms


if __name__ == "__main__":
    args = parse_args()
    if args.eval_checkpoint is not None:  # re-run the meta-test of a checkpoint, print it, exit
        if not os.path.isfile(args.eval_checkpoint):
            meta_test.exit_with_error(f"no checkpoint at {args.eval_checkpoint}")
        checkpoint, capture_video = args.eval_checkpoint, args.capture_video
        args, cbvi, explore_agent, exploit_agent, obs_rms = load_checkpoint(checkpoint)
        split = envs_clustered.make_task_split(args.env_id, seed=args.task_seed, hold_out_ood=args.ood_eval)
        eval_envs = make_env(args, len(split.test_tasks) * args.eval_trials, args.seed + 1)
        result = evaluate(args, cbvi.eval(), explore_agent, exploit_agent, obs_rms, eval_envs, split, "cpu")
        print(json.dumps({k: v for k, v in result.items() if k not in ("exploration_xy", "exploration_clusters")}))
        if capture_video:  # the videos of this evaluation, into videos/ beside the checkpoint
            meta_test.capture_video(os.path.dirname(os.path.abspath(checkpoint)), result, lambda: evaluate(
                args, cbvi, explore_agent, exploit_agent, obs_rms, eval_envs, split, "cpu"))
        sys.exit(0)
    resumed = None  # --resume: the checkpoint's state and the run's own args, restored once everything is built
    if args.resume is not None:
        resumed, args = meta_test.load_resume(args)
    if args.update_threads is None:  # fixed in args.json; a run from before the flag used torch_threads throughout
        args.update_threads = args.torch_threads if resumed is not None else torch.get_num_threads()
    H = args.episode_length
    args.trial_length = (1 + args.num_exploit_episodes) * H
    args.num_iterations = args.total_timesteps // (args.num_envs * args.trial_length)
    if resumed is None:
        run_dir, writer = meta_test.start_run(args)  # runs/<env_id>__<exp_name>__<seed>__<time>/, args.json
        eval_lines = []  # eval.jsonl, one serialised line per evaluation
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

    # env setup: the fixed task split (500 train / 32 test tasks), training and meta-test environments
    split = envs_clustered.make_task_split(args.env_id, seed=args.task_seed, hold_out_ood=args.ood_eval)
    envs = make_env(args, args.num_envs, args.seed)
    eval_envs = make_env(args, len(split.test_tasks) * args.eval_trials, args.seed + 1)
    obs_dim, action_dim = envs.single_observation_space.shape[0], envs.single_action_space.shape[0]
    task_rng = np.random.default_rng(args.seed)

    cbvi, explore_agent, exploit_agent = build_models(args, obs_dim, action_dim, device)
    vae_optimizer = optim.Adam(cbvi.parameters(), lr=args.vae_lr)
    exploit_optimizer = optim.Adam(exploit_agent.parameters(), lr=args.exploit_lr, eps=1e-8)
    explore_optimizer = optim.Adam(explore_agent.parameters(), lr=args.explore_lr, eps=1e-8) if explore_agent else None
    buffer = TrialBuffer(args.vae_buffer_size, 1 + args.num_exploit_episodes, H, obs_dim, action_dim)
    obs_rms, return_rms = RunningMeanStd(shape=(obs_dim,)), RunningMeanStd(shape=())

    # ALGO Logic: Storage setup for one trial per environment
    T, B = args.trial_length, args.num_envs
    inputs = torch.zeros((T, B, policy_input_dim(args, obs_dim)), device=device)
    actions = torch.zeros((T, B, action_dim), device=device)
    logprobs, values, rewards = (torch.zeros((T, B), device=device) for _ in range(3))
    states, next_states = torch.zeros((T, B, obs_dim), device=device), torch.zeros((T, B, obs_dim), device=device)
    cluster_probs = torch.zeros((T + 1, B, cluster_slots(args)), device=device)

    # Everything a checkpoint must hold so that --resume continues exactly as an uninterrupted run (CPU, same threads)
    stateful = {"cbvi": cbvi, "exploit_agent": exploit_agent, "explore_agent": explore_agent, "buffer": buffer,
                "vae_optimizer": vae_optimizer, "exploit_optimizer": exploit_optimizer,
                "explore_optimizer": explore_optimizer}
    stateful = {name: obj for name, obj in stateful.items() if obj is not None}
    checkpoint_path = os.path.join(run_dir, f"{args.exp_name}.pt")
    start_iteration, global_step = 1, 0
    # since the last evaluation: the training trials' true and inferred clusters (at step 20, at the exploration's
    # end), and per iteration the bonus r_h, KL(q(c) || U) and (task-evidence) the evidence's same-cluster share
    train_log = {"true": [], "step_20": [], "end_of_exploration": [], "r_h": [], "kl_c": [], "evidence_same_cluster": []}
    if resumed is None:  # meta-test the untrained policies: the reference every later evaluation is read against
        record = {"iteration": 0, "global_step": 0,
                  **evaluate(args, cbvi.eval(), explore_agent, exploit_agent, obs_rms, eval_envs, split, device)}
        meta_test.log_evaluation(writer, run_dir, eval_lines, record)
        if args.save_model:
            save_checkpoint(checkpoint_path, args, cbvi, explore_agent, exploit_agent, obs_rms, 0, 0)
    else:
        for name, obj in stateful.items():
            obj.load_state_dict(resumed[name])
        (obs_rms.mean, obs_rms.var, obs_rms.count), (return_rms.mean, return_rms.var, return_rms.count) = resumed["rms"]
        meta_test.restore_random_state(resumed["rng"], task_rng, envs)
        start_iteration, global_step = resumed["iteration"] + 1, resumed["global_step"]
        train_log.update(resumed.get("train_clusters", {}))  # absent from older checkpoints
    start_step, start_time, sps = global_step, time.time(), 0
    progress = tqdm(range(start_iteration, args.num_iterations + 1), desc=args.env_id, unit="it",
                    initial=start_iteration - 1, total=args.num_iterations)
    for iteration in progress:
        cbvi.train()
        if args.anneal_lr:
            frac = 1.0 - (iteration - 1.0) / args.num_iterations
            exploit_optimizer.param_groups[0]["lr"] = frac * args.exploit_lr
            if explore_optimizer:
                explore_optimizer.param_groups[0]["lr"] = frac * args.explore_lr

        # ALGO LOGIC (Alg. 1, step 1): sample tasks M_i and roll out one trial each, the encoder updating online
        torch.set_num_threads(args.torch_threads)  # the physics steps on the other core(s)
        task_index = task_rng.integers(len(split.train_tasks), size=B)
        obs, _ = envs.reset(seed=args.seed if iteration == 1 else None,
                            options={"tasks": split.train_tasks[task_index], "clusters": split.train_clusters[task_index]})
        with torch.no_grad():  # the policies never train the encoder: their gradients stay separate
            # the policies see z under the argmax cluster here as in evaluation (deviation: the authors fed a fresh
            # Gumbel sample in rollouts, the argmax in evaluation); the Gumbel sample stays in CBVI.loss
            hidden, belief = cbvi.initial_belief(B, sample=False)
            cluster_probs[0] = belief.cluster_probs
            for step in range(T):
                global_step += B
                agent = explore_agent if step < H and explore_agent is not None else exploit_agent
                obs_rms.update(obs)
                inputs[step] = policy_input(obs, step, belief, obs_rms, args, device)
                action, logprobs[step], _, values[step] = agent.get_action_and_value(inputs[step])
                actions[step] = action
                states[step] = torch.as_tensor(obs, dtype=torch.float32, device=device)
                obs, reward, _, _, info = envs.step(action.cpu().numpy())
                next_states[step] = torch.as_tensor(np.stack(info["next_state"]), dtype=torch.float32, device=device)
                rewards[step] = torch.as_tensor(reward, dtype=torch.float32, device=device)
                # the hidden state h = (h_alpha, h_beta) carries over into the exploitation episodes
                hidden, belief = cbvi.step(action, next_states[step], rewards[step], hidden, sample=False)
                cluster_probs[step + 1] = belief.cluster_probs
        cbvi_rewards = rewards  # deviation, --relabel-share: some trials enter V with another task's rewards
        if args.relabel_share > 0:
            relabelled = torch.as_tensor(task_rng.random(B) < args.relabel_share, device=device)
            new_tasks = split.train_tasks[task_rng.integers(len(split.train_tasks), size=B)]
            relabelled_rewards = envs_clustered.relabel_rewards(args.env_id, rewards.cpu().numpy(), next_states[
                ..., :2].cpu().numpy(), split.train_tasks[task_index], new_tasks)  # goal envs: obs[:2] is x, y
            cbvi_rewards = torch.where(relabelled, torch.as_tensor(relabelled_rewards, dtype=torch.float32,
                                                                   device=device), rewards)
        buffer.add(states, actions, cbvi_rewards, next_states)  # insert tau+ into the trial buffer V
        # the clusters inferred on these (stochastic) training trials, scored at the next evaluation
        for name, step in (("step_20", min(20, H)), ("end_of_exploration", H)):
            train_log[name] += cluster_probs[step].argmax(-1).tolist()
        train_log["true"] += split.train_clusters[task_index].tolist()

        # ALGO LOGIC (step 2): rewards: the scaled task reward, plus the cluster-uncertainty bonuses in exploration
        bonus_probs = cluster_probs  # --cluster-bonus evidence: p(c | r_:t); task-evidence: over the batch's tasks
        if args.cluster_bonus != "posterior":
            hypotheses = cbvi.cluster_means() if args.cluster_bonus == "evidence" else belief.z_mean
            bonus_probs = cbvi.evidence_probs(states[:H], actions[:H], rewards[:H], next_states[:H], hypotheses,
                                              leave_own_out=args.cluster_bonus == "task-evidence")
            if args.cluster_bonus == "task-evidence":  # the share of p(j | r_:H) on trials of the same true cluster
                true_clusters = torch.as_tensor(split.train_clusters[task_index])
                same = (true_clusters[:, None] == true_clusters[None]).float().fill_diagonal_(0)
                train_log["evidence_same_cluster"].append((bonus_probs[H] * same).sum(-1).mean().item())
                writer.add_scalar("charts/evidence_same_cluster", train_log["evidence_same_cluster"][-1], global_step)
                writer.add_scalar("charts/evidence_same_cluster_chance", same.sum(-1).mean() / (B - 1), global_step)
        policy_rewards, r_h, r_c = shaped_rewards(rewards, bonus_probs, return_rms, args, explore_agent is not None)
        segments = [("exploit", exploit_agent, exploit_optimizer, slice(0, T), args.exploit_ent_coef)]
        if explore_agent is not None:
            segments = [("explore", explore_agent, explore_optimizer, slice(0, H), args.explore_ent_coef),
                        ("exploit", exploit_agent, exploit_optimizer, slice(H, T), args.exploit_ent_coef)]
            train_log["r_h"].append(r_h.sum(0).mean().item())
            writer.add_scalar("charts/intrinsic_reward_r_h", train_log["r_h"][-1], global_step)
            writer.add_scalar("charts/intrinsic_reward_r_c", r_c.sum(0).mean().item(), global_step)

        # ALGO LOGIC (step 3): one PPO update of each policy on its own part of the trial
        torch.set_num_threads(args.update_threads)  # no env steps until the next rollout: torch may use every core
        for name, agent, optimizer, part, ent_coef in segments:
            advantages, returns = segment_advantages(policy_rewards, values, part, args,
                                                     through_trial=args.credit_exploration and name == "explore",
                                                     time_out=args.authors_boundary and name == "explore")
            stats = ppo_update(agent, optimizer, inputs[part].flatten(0, 1), actions[part].flatten(0, 1),
                               logprobs[part].flatten(), advantages.flatten(), returns.flatten(),
                               values[part].flatten(), ent_coef, args, iteration)
            writer.add_scalar(f"charts/{name}_learning_rate", optimizer.param_groups[0]["lr"], global_step)
            for key, value in stats.items():
                writer.add_scalar(f"losses/{name}_{key}", value, global_step)

        # ALGO LOGIC (step 4): CBVI update on whole trials from the buffer, maximising Eq. 8
        for _ in range(args.vae_updates):
            cbvi_losses = cbvi.loss(*buffer.sample(args.vae_batch_size, device))
            meta_test.check_finite(cbvi_losses, iteration)
            vae_optimizer.zero_grad()
            cbvi_losses["total"].backward()
            nn.utils.clip_grad_norm_(cbvi.parameters(), 1.0)
            vae_optimizer.step()
        if iteration % args.target_prior_every == 0:
            cbvi.refresh_target_prior()  # Eq. 7: hard copy p_omega -> p_tgt
        for key, value in cbvi_losses.items():
            writer.add_scalar(f"losses/cbvi_{key}", value.item(), global_step)
        train_log["kl_c"].append(cbvi_losses["kl_c"].item())
        for episode in range(1 + args.num_exploit_episodes):
            train_return = rewards[episode * H: (episode + 1) * H].sum(0).mean().item()
            writer.add_scalar(f"charts/return_episode_{episode + 1}", train_return, global_step)
        sps = int((global_step - start_step) / (time.time() - start_time))
        writer.add_scalar("charts/SPS", sps, global_step)

        # ALGO LOGIC (step 5): meta-test on the held-out tasks (Alg. 2) every eval_every iterations and at the end
        if iteration % args.eval_every == 0 or iteration == args.num_iterations:
            torch.set_num_threads(args.torch_threads)
            record = {"iteration": iteration, "global_step": global_step,
                      **evaluate(args, cbvi.eval(), explore_agent, exploit_agent, obs_rms, eval_envs, split, device)}
            for name in ("step_20", "end_of_exploration"):  # "the encoder cannot cluster" or "the explorer stays put"
                record[f"train_nmi_{name}"] = float(normalized_mutual_info_score(train_log["true"], train_log[name]))
                writer.add_scalar(f"charts/train_nmi_{name}", record[f"train_nmi_{name}"], global_step)
            record.update({f"train_{name}": float(np.mean(train_log[name])) for name in ("r_h", "kl_c",
                           "evidence_same_cluster") if train_log[name]})  # the interval's mean per iteration
            train_log = {name: [] for name in train_log}  # the next evaluation scores the trials after this
            meta_test.log_evaluation(writer, run_dir, eval_lines, record)
            if args.save_model:
                save_checkpoint(checkpoint_path, args, cbvi, explore_agent, exploit_agent, obs_rms, iteration,
                                global_step)
        if iteration % args.checkpoint_every == 0 or iteration == args.num_iterations:
            meta_test.torch_save_atomic(os.path.join(run_dir, "resume.pt"), {
                "args": asdict(args), "iteration": iteration, "global_step": global_step,
                **{name: obj.state_dict() for name, obj in stateful.items()},
                "rms": [(rms.mean, rms.var, rms.count) for rms in (obs_rms, return_rms)],
                "rng": meta_test.random_state(task_rng, envs), "train_clusters": train_log})
        progress.set_postfix(SPS=sps, eval_return_2=round(record["return_episode_2"], 1),
                             eval_nmi=round(record["nmi_end_of_exploration"], 3))

    summary_path = os.path.join(run_dir, "summary.json")  # --resume of a finished run trains nothing: keep its summary
    if start_iteration <= args.num_iterations or not os.path.exists(summary_path):
        meta_test.write_atomic(summary_path, json.dumps(meta_test.summary(args, global_step, sps, record), indent=1))
    if args.capture_video:  # MP4s of the final evaluation's trial, one test task per cluster (replayed, then drawn)
        meta_test.capture_video(run_dir, record, lambda: evaluate(args, cbvi.eval(), explore_agent, exploit_agent,
                                                                  obs_rms, eval_envs, split, device))
    envs.close()
    eval_envs.close()
    writer.close()
    print(f"run saved to {run_dir}")
