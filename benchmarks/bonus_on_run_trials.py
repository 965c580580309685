"""Does an exploration bonus pay for evidence about the cluster, or for something else? Read off a MILET run.

A candidate r_h is worth having if the explorer earns more of it on trials that tell the task's cluster than on
trials that do not. This script loads a MILET run's resume.pt (its CBVI, policies and observation normaliser), rolls
out the exploration episode on --tasks training tasks (deterministic, as the meta-test) three ways: the run's own
explorer, standing (zero actions) and flailing (actions ~ N(0, 1)), and reports for each:

* --cluster-bonus task-evidence (cbvi.evidence_probs over the other trials' z at the end of their exploration
  episode, as the training loop does over its batch): r_h per episode, H(p_0) - H(p_H), and the share of p(j | r_:H)
  on trials of the same true cluster against its chance level, with the noise variance of cbvi.evidence_probs
  ("best") and, for comparison, the mean over all hypotheses ("mean") and the likelihood tempered by 10 and 30;
* the run's own q(c | tau) (the paper's head, or --cluster-posterior responsibility): r_h per episode, H(q_0) - H(q_H),
  and the NMI of its argmax after the episode against the true clusters;
* the reward decoder's error on the episode's own rewards from the posterior mean z after 0, 1, 20 and H steps, and
  from another task's z after H steps: what a bonus for reward-prediction improvement would pay;
* what z holds after the episode (goal envs): the 4-fold cross-validated R^2 of a linear map from the posterior mean
  z to the goal and to |g|_1 (which a standing ant's first reward tells), and the NMI of k-means on z (K = 4).

    python benchmarks/bonus_on_run_trials.py docs/run_data/antgoal/screen_wide_taskev_credit_s1
"""
import argparse
import dataclasses
import math
import os
import sys

import torch
from sklearn.cluster import KMeans
from sklearn.linear_model import LinearRegression
from sklearn.metrics import normalized_mutual_info_score
from sklearn.model_selection import cross_val_score
from torch.distributions import Categorical

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import envs_clustered  # noqa: E402
import milet_ppo_continuous as milet  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("run", help="a MILET run folder with a resume.pt")
parser.add_argument("--tasks", type=int, default=128, help="training tasks rolled out, each one hypothesis")
opts = parser.parse_args()
torch.set_num_threads(1)
torch.manual_seed(0)
args, cbvi, explore_agent, exploit_agent, obs_rms = milet.load_checkpoint(os.path.join(opts.run, "resume.pt"))
split = envs_clustered.make_task_split(args.env_id, seed=args.task_seed)
probe = dataclasses.replace(split, test_tasks=split.train_tasks[:opts.tasks],
                            test_clusters=split.train_clusters[:opts.tasks])
N, H = opts.tasks, args.episode_length


class RandomActions(torch.nn.Module):
    """A stand-in explorer: actions ~ N(0, scale^2) (scale 0: standing still)."""

    def __init__(self, scale: float, action_dim: int):
        super().__init__()
        self.scale, self.action_dim = scale, action_dim

    def get_action_and_value(self, x, action=None, deterministic=False):
        return self.scale * torch.randn(len(x), self.action_dim), None, None, None


@torch.no_grad()
def exploration_episode(agent):
    envs = milet.make_env(args, N, args.seed + 1)
    record, episode = milet.meta_test_trial(args, cbvi.eval(), agent, exploit_agent, obs_rms, envs, probe, "cpu")
    envs.close()
    return record, episode


true = torch.as_tensor(probe.test_clusters)
same_cluster = (true[:, None] == true[None]).float().fill_diagonal_(0)
chance = float(same_cluster.sum(-1).mean() / (N - 1))
action_dim = envs_clustered.make_env(args.env_id).action_space.shape[0]
print(f"{opts.run}: {args.env_id}, {N} training tasks, same-cluster chance {chance:.3f}")
with torch.no_grad():
    for name, agent in (("explorer", explore_agent), ("standing", RandomActions(0.0, action_dim)),
                        ("flailing", RandomActions(1.0, action_dim))):
        record, (belief, states, actions, rewards, next_states) = exploration_episode(agent)
        decoder_input = torch.cat([cbvi.dec_embed_state(states), cbvi.dec_embed_action(actions),
                                   cbvi.dec_embed_state(next_states)], -1)
        squared_error = (cbvi.reward_decoder(belief.z_mean[:, None, None], decoder_input)[..., 0] - rewards) ** 2
        others = ~torch.eye(N, dtype=torch.bool)
        variants = {"best": {}, "mean": {"noise_var": squared_error.mean(1)[others].mean()},
                    "tempered 10": {"temperature": 10.0}, "tempered 30": {"temperature": 30.0}}
        cells = []
        for variant, setting in variants.items():
            probs = cbvi.evidence_probs(states, actions, rewards, next_states, belief.z_mean, leave_own_out=True,
                                        **setting)
            entropy = Categorical(probs=probs.clamp_min(1e-12)).entropy()
            share = float((probs[-1] * same_cluster).sum(-1).mean())
            cells.append(f"{variant}: r_h {float((entropy[0] - entropy[-1]).mean()):.2f}, same-cluster share {share:.3f}")
        posterior = cbvi.encode(actions, next_states, rewards, sample=False)  # (H+1, B, .) after every prefix
        z, q_c = posterior.z_mean, posterior.cluster_probs
        q_entropy = Categorical(probs=q_c).entropy()
        nmi = normalized_mutual_info_score(true.numpy(), q_c[-1].argmax(-1).numpy())
        error = ((cbvi.reward_decoder(z[:, None], decoder_input)[..., 0] - rewards) ** 2).mean(1)  # (H+1, B)
        other = ((cbvi.reward_decoder(z[-1][torch.randperm(N)][None, None], decoder_input)[0, ..., 0] - rewards)
                 ** 2).mean(0)
        print(f"{name}: episode-1 return {record['return_episode_1']:.1f}, reward std over the episode "
              f"{float(rewards.std(0).mean()):.3f}\n  task-evidence (max r_h {math.log(N - 1):.2f}): " + "; ".join(cells)
              + f"\n  q(c | tau) ({args.cluster_posterior}): r_h {float((q_entropy[0] - q_entropy[-1]).mean()):.2f} of "
              f"{math.log(q_c.shape[-1]):.2f}, NMI of its argmax after {H} steps {nmi:.3f}"
              + f"\n  reward error from z after 0 / 1 / 20 / {H} steps {error[0].mean():.4f} / {error[1].mean():.4f} / "
              f"{error[20].mean():.4f} / {error[-1].mean():.4f}; from another task's z after {H}: {other.mean():.4f}")
        if args.env_id in envs_clustered.GOAL_ENV_IDS:
            goals, z_end = probe.test_tasks, z[-1].numpy()
            r2 = [cross_val_score(LinearRegression(), z_end, target, cv=4, scoring="r2").mean()
                  for target in (goals, abs(goals).sum(1))]
            kmeans = KMeans(4, n_init=10, random_state=0).fit_predict(z_end)
            print(f"  z after {H} steps: R^2 of the goal {r2[0]:.2f}, of |g|_1 {r2[1]:.2f}; NMI of k-means(z) "
                  f"{normalized_mutual_info_score(true.numpy(), kmeans):.3f}")
