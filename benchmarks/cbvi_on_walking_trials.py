"""Can CBVI cluster AntGoal tasks when the ant walks? (issue 25, point 3: "the encoder cannot cluster" against "the
explorer does not move").

MILET's AntGoal runs never leave the start: their ants end about 2 m (the goal radius) from every goal, and their
NMI stays near chance. This script takes the policy out of the question. It rolls out a trained oracle
(`varibad_ppo_continuous.py --oracle`, which walks to the goal it is told) on training tasks, trains MILET's AntGoal
CBVI model (its own defaults, `milet_ppo_continuous.build_models`) on those trials exactly as the training loop
does (batches of --batch-size whole trials, Adam, grad-norm clip 1, the target prior refreshed every
--target-prior-every updates), and reports the NMI of argmax q(c | tau_:t) on the 32 test tasks (deterministic
oracle) at step 20 and at the end of episode 1, beside the NMI ceiling. With --policy zero the trials are the ant
standing still (zero actions), the control: those trials carry no cluster information.

With --policy mixed, half the training trials walk and half stand still, and the script also reports what the
exploration reward r_h (Eq. 10) pays on each kind of test trial: summed over episode 1 it is H(q_0) - H(q_H), and
weighted by gamma_h(t) (Eq. 12) it is what the exploration policy is paid. The difference between walking and
standing is the explorer's incentive to move; --cat-weight sets the weight of KL(q(c) || U(K)) it depends on.

With --policy mixed-late, half the trials walk in both episodes and half stand in episode 1 and walk in episode 2:
a belief whose uncertainty follows the trial's unseen rewards would pay the standing episodes nothing. Every report
also gives, for z at the end of the training trials, the 5-fold ridge R^2 of the goal and the reward decoder's error
from each trial's own z against another trial's (does the decoder need z?), and k-means (K = 4) on z of the test trials.

    python benchmarks/cbvi_on_walking_trials.py --trials 800 --updates 1000
    python benchmarks/cbvi_on_walking_trials.py --policy mixed-late --trials 800 --updates 1000 --cluster-posterior head
    python benchmarks/cbvi_on_walking_trials.py --policy mixed-late --trials 800 --updates 1000 --states xy --cluster-posterior head
    python benchmarks/cbvi_on_walking_trials.py --policy mixed-decoy --trials 800 --updates 1000 --cluster-posterior head
    python benchmarks/cbvi_on_walking_trials.py --policy mixed --trials 800 --updates 1000 --cat-weight 0.001

The default policy file is the finished oracle seed 1 (`--target-kl 0.02`, 1e7 frames): its agent and observation
normaliser, cut from that run's final resume.pt; any oracle resume.pt works too.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import cross_val_score
from sklearn.metrics import normalized_mutual_info_score

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import envs_clustered  # noqa: E402
import milet_ppo_continuous as milet  # noqa: E402
import varibad_ppo_continuous as varibad  # noqa: E402
from gymnasium.wrappers.utils import RunningMeanStd  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--oracle-checkpoint", help="an oracle's resume.pt, or a file of its 'agent' and 'rms' entries",
                    default="docs/run_data/antgoal/issue24_oracle_s1_targetkl002/final_policy.pt")
parser.add_argument("--policy", choices=("oracle", "zero", "mixed", "mixed-late", "mixed-decoy"), default="oracle",
                    help="training trials: the oracle walking, the ant standing still, or half of each; mixed-late: "
                         "half walk both episodes, half stand in episode 1 and walk in episode 2 (zero-then-oracle); "
                         "mixed-decoy: as mixed-late, but the second half walks in episode 1 to another task's goal "
                         "(decoy-then-oracle), so that the buffer holds moves away from the goal")
parser.add_argument("--cat-weight", type=float, default=None, help="CBVI's --cat-weight (default: AntGoal's row)")
parser.add_argument("--kl-weight", type=float, default=None, help="CBVI's --kl-weight (default: AntGoal's row)")
parser.add_argument("--latent-dim", type=int, default=None, help="CBVI's --latent-dim (default: 10)")
parser.add_argument("--states", choices=("full", "xy"), default="full",
                    help="what CBVI sees of each state: all of it, or the torso x, y alone (the rest zeroed), so that "
                         "neither the encoder nor the decoder can read the goal's direction from the ant's heading")
parser.add_argument("--cluster-posterior", choices=("head", "responsibility"), default=None,
                    help="CBVI's --cluster-posterior (default: AntGoal's row)")
parser.add_argument("--trials", type=int, default=1600, help="training trials collected (16 per batch)")
parser.add_argument("--updates", type=int, default=1500, help="CBVI updates")
parser.add_argument("--batch-size", type=int, default=50)
parser.add_argument("--target-prior-every", type=int, default=50)
parser.add_argument("--seed", type=int, default=1)
opts = parser.parse_args()
torch.manual_seed(opts.seed)
torch.set_num_threads(1)

checkpoint = torch.load(opts.oracle_checkpoint, weights_only=False)
oracle_args = varibad.parse_args(["--env-id", "AntGoal", "--oracle"])
envs = envs_clustered.make_vector_env("AntGoal", 16, episode_length=oracle_args.episode_length, num_episodes=2, seed=opts.seed,
                                      physics_threads=1)
obs_dim, action_dim = envs.single_observation_space.shape[0], envs.single_action_space.shape[0]
split = envs_clustered.make_task_split("AntGoal")
T = 2 * oracle_args.episode_length  # one trial: the exploration episode and one exploitation episode
# the oracle's policy input: state, t / T and the true goal
agent = varibad.Agent(obs_dim + 1 + split.train_tasks.shape[1], action_dim, oracle_args.policy_layers,
                      oracle_args.init_logstd)
agent.load_state_dict(checkpoint["agent"])
obs_rms = RunningMeanStd(shape=(obs_dim,))
obs_rms.mean, obs_rms.var, obs_rms.count = checkpoint["rms"][0]


@torch.no_grad()
def rollout(tasks, clusters, deterministic, policy=opts.policy):
    """One trial per env: (obs, actions, rewards, next_obs) time-major, and the final distance to the goal."""
    obs, info = envs.reset(options={"tasks": tasks, "clusters": clusters})
    goals = torch.as_tensor(np.stack(info["task"]), dtype=torch.float32)
    if policy == "decoy-then-oracle":  # episode 1 walks to another task's goal
        decoys = torch.as_tensor(split.train_tasks[rng.integers(len(split.train_tasks), size=len(tasks))],
                                 dtype=torch.float32)
    parts = {name: [] for name in ("obs", "actions", "rewards", "next_obs")}
    for step in range(T):
        if policy == "zero" or (policy == "zero-then-oracle" and step < oracle_args.episode_length):
            action = torch.zeros(len(obs), action_dim)
        else:
            decoy = policy == "decoy-then-oracle" and step < oracle_args.episode_length
            x = varibad.policy_input(obs, step, decoys if decoy else goals, obs_rms, oracle_args, "cpu")
            action = agent.get_action_and_value(x, deterministic=deterministic)[0]
        parts["obs"].append(torch.as_tensor(obs, dtype=torch.float32))
        obs, reward, _, _, info = envs.step(action.numpy())
        parts["actions"].append(action)
        parts["rewards"].append(torch.as_tensor(reward, dtype=torch.float32))
        parts["next_obs"].append(torch.as_tensor(np.stack(info["next_state"]), dtype=torch.float32))
    distance = np.linalg.norm(np.stack(info["xy"]) - tasks, axis=-1)
    return [torch.stack(parts[name]) for name in ("obs", "actions", "rewards", "next_obs")], distance


MIXES = {"mixed": ("oracle", "zero"), "mixed-late": ("oracle", "zero-then-oracle"),  # alternate batches
         "mixed-decoy": ("oracle", "decoy-then-oracle")}
start = time.time()
rng = np.random.default_rng(opts.seed)
trials, distances, goals = [], [], []
for batch in range(opts.trials // 16):
    index = rng.integers(len(split.train_tasks), size=16)
    policy = MIXES[opts.policy][batch % 2] if opts.policy in MIXES else opts.policy
    trial, distance = rollout(split.train_tasks[index], split.train_clusters[index], deterministic=False, policy=policy)
    trials.append(trial)
    goals.append(split.train_tasks[index])
    distances.append(distance)


def seen(parts):
    """(obs, actions, rewards, next_obs) as CBVI sees them under --states."""
    if opts.states == "full":
        return parts
    mask = torch.zeros(obs_dim)
    mask[:2] = 1.0  # AntGoal's observation starts with the torso x, y
    return [parts[0] * mask, parts[1], parts[2], parts[3] * mask]


data = seen([torch.cat(parts, 1) for parts in zip(*trials)])  # (T, N, .)
goals = np.concatenate(goals)
print(f"{data[1].shape[1]} training trials ({opts.policy}), median final distance {np.median(distances):.2f} m, "
      f"{time.time() - start:.0f} s", flush=True)

overrides = {"--cat-weight": opts.cat_weight, "--kl-weight": opts.kl_weight, "--latent-dim": opts.latent_dim,
             "--cluster-posterior": opts.cluster_posterior}
milet_args = milet.parse_args(["--env-id", "AntGoal", "--num-clusters", "4"] + [
    word for flag, value in overrides.items() if value is not None for word in (flag, str(value))])
print(f"CBVI: cluster posterior {milet_args.cluster_posterior}, KL weight {milet_args.kl_weight}, latent dim "
      f"{milet_args.latent_dim}, "
      f"categorical weight {milet_args.cat_weight}", flush=True)
cbvi = milet.build_models(milet_args, obs_dim, action_dim, "cpu")[0]
optimizer = torch.optim.Adam(cbvi.parameters(), lr=milet_args.vae_lr)
kinds = MIXES.get(opts.policy, (opts.policy,)) + (("zero-then-oracle",) if opts.policy == "mixed-decoy" else ())
test_data = {kind: seen([torch.cat(parts, 1) for parts in zip(*[
    rollout(split.test_tasks[i:i + 16], split.test_clusters[i:i + 16], deterministic=True, policy=kind)[0]
    for i in (0, 16)])]) for kind in kinds}
ceiling = envs_clustered.nmi_ceiling(split)
H = oracle_args.episode_length
gamma_h = milet.reward_weights(torch.arange(H), H, milet_args)[0]


def test_report(kind):
    """NMI at step 20 and at the end of episode 1, and r_h summed over episode 1, unweighted and weighted by gamma_h
    (the mean over the 32 test tasks), on the test trials of one kind."""
    obs, actions, rewards, next_obs = test_data[kind]
    with torch.no_grad():
        belief = cbvi.encode(actions, next_obs, rewards, sample=False)
    probs = belief.cluster_probs[:H + 1]
    r_h = milet.exploration_rewards(probs)[0]  # (H, 32), Eq. 10
    nmi = [normalized_mutual_info_score(split.test_clusters, probs[t].argmax(-1).numpy()) for t in (20, H)]
    # the cluster information z holds, whether or not q(c) uses it: k-means (K = 4) on z's mean
    kmeans_nmi = [normalized_mutual_info_score(split.test_clusters, KMeans(4, n_init=10, random_state=0).fit_predict(
        belief.z_mean[t].numpy())) for t in (H, 2 * H)]
    return (f"{kind}: NMI step 20 {nmi[0]:.3f}, end of episode 1 {nmi[1]:.3f} (ceiling {ceiling:.3f}), "
            f"k-means of z end of episode 1 / 2 {kmeans_nmi[0]:.3f} / {kmeans_nmi[1]:.3f}, "
            f"r_h per episode {r_h.sum(0).mean():.3f}, weighted by gamma_h {(gamma_h[:, None] * r_h).sum(0).mean():.4f}")


for update in range(1, opts.updates + 1):
    index = torch.randint(data[1].shape[1], (opts.batch_size,))
    losses = cbvi.loss(*(part[:, index] for part in data))
    optimizer.zero_grad()
    losses["total"].backward()
    torch.nn.utils.clip_grad_norm_(cbvi.parameters(), 1.0)
    optimizer.step()
    if update % opts.target_prior_every == 0:
        cbvi.refresh_target_prior()
    if update % 250 == 0 or update == opts.updates:
        with torch.no_grad():  # how well z at the end of the training trials tells the goal (5-fold ridge R^2)
            final_z = torch.cat([cbvi.encode(*(data[j][:, i:i + 200] for j in (1, 3, 2)), sample=False).z_mean[-1]
                                 for i in range(0, data[1].shape[1], 200)]).numpy()
        goal_r2 = cross_val_score(RidgeCV(), final_z, goals, cv=5).mean()
        l1_r2 = cross_val_score(RidgeCV(), final_z, np.abs(goals).sum(-1), cv=5).mean()  # |g|_1: standing tells it
        with torch.no_grad():  # does the decoder need z? 200 trials decoded from their own end-of-trial z, or another's
            obs, actions, rewards, next_obs = (part[:, :200] for part in data)
            inputs = torch.cat([cbvi.dec_embed_state(obs), cbvi.dec_embed_action(actions),
                                cbvi.dec_embed_state(next_obs)], -1)
            z = torch.as_tensor(final_z[:200])[None, None]
            own, shuffled = (cbvi.reward_decoder.mean_squared_error(latent, inputs, rewards[..., None]).item()
                             for latent in (z, z[:, :, torch.randperm(200)]))
        print(f"update {update}: from z at the trial's end, R^2 of the goal {goal_r2:.3f}, of |g|_1 {l1_r2:.3f}; "
              f"reward error from the own z "
              f"{own:.3f}, another trial's {shuffled:.3f}; "
              + "; ".join(test_report(kind) for kind in kinds)
              + f"; reward reconstruction {losses['reward_reconstruction'].item():.3f}, "
              f"kl_c {losses['kl_c'].item():.3f}, {time.time() - start:.0f} s", flush=True)
