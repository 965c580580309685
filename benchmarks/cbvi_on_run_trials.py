"""Why do a MILET run's clusters collapse? CBVI retrained on that run's own trials (issue 28, item 4).

A MILET run whose NMI sits at 0 (every test task in one cluster) leaves two questions: do its trials carry the
cluster at all, and which term of the CBVI loss keeps q(c | tau) from using it? This script takes a MILET run folder
(its resume.pt: the trial buffer V, the CBVI model, both policies, the observation normaliser) and:

1. rolls out the run's own policies on the 32 test tasks and on --probe-tasks training tasks (deterministic, as the
   meta-test), and reports for the run's CBVI the NMI of argmax q(c | tau_:t) at step 20 and at the end of the
   exploration episode, the NMI of k-means (K clusters) on the posterior mean z at the end of exploration (the
   cluster information the encoder holds in z, whether or not q(c) uses it), how many of the cluster head's
   hidden ReLUs still fire on the test trials, and how far apart the K prior components p_omega(z | c) lie;
2. trains a fresh CBVI (the run's own settings, with the overrides given) on the trials of the run's buffer exactly
   as the training loop does (batches of vae_batch_size whole trials, Adam, grad-norm clip 1, the target prior
   refreshed every target_prior_every updates), and reports the same NMIs on the same test trials as it trains.

    python benchmarks/cbvi_on_run_trials.py runs/<a MILET run> --updates 600
    python benchmarks/cbvi_on_run_trials.py runs/<a MILET run> --updates 600 --lambda-i 1e-4
    python benchmarks/cbvi_on_run_trials.py runs/<a MILET run> --updates 400 --cluster-head-slope 0.01
    python benchmarks/cbvi_on_run_trials.py runs/<a MILET run> --updates 400 --z-ignores-c

The retrained model sees the run's trials, not trials of its own policies, so it answers "can CBVI cluster these
trials with this setting", not "would the run have learned it".
"""
import argparse
import dataclasses
import os
import sys
import time

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import envs_clustered  # noqa: E402
import milet_ppo_continuous as milet  # noqa: E402
from cbvi import TrialBuffer  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("run", help="a MILET run folder with a resume.pt")
parser.add_argument("--updates", type=int, default=600, help="updates of the fresh CBVI (0: only the run's own)")
parser.add_argument("--report-every", type=int, default=100)
parser.add_argument("--probe-tasks", type=int, default=128, help="training tasks rolled out for the k-means of z")
parser.add_argument("--lambda-i", type=float, default=None, help="override: L_I's weight (Eq. 6)")
parser.add_argument("--cat-weight", type=float, default=None, help="override: the weight of KL(q(c) || U(K))")
parser.add_argument("--kl-weight", type=float, default=None, help="override: the weight of the z KL term")
parser.add_argument("--gumbel-temperature", type=float, default=None,
                    help="override: the temperature of the Gumbel-softmax sample of c in the loss")
parser.add_argument("--cluster-head-slope", type=float, default=0.0,
                    help="experiment: the fresh CBVI's cluster head uses LeakyReLU with this negative slope (0: ReLU)")
parser.add_argument("--z-ignores-c", action="store_true",
                    help="experiment: the fresh CBVI's q(z | h_beta) gets no c (c reaches only the prior p_omega(z | c))")
parser.add_argument("--seed", type=int, default=1)
opts = parser.parse_args()
torch.manual_seed(opts.seed)
torch.set_num_threads(1)
start = time.time()

args, run_cbvi, explore_agent, exploit_agent, obs_rms = milet.load_checkpoint(os.path.join(opts.run, "resume.pt"))
state = torch.load(os.path.join(opts.run, "resume.pt"), weights_only=False)  # the trial buffer and the frame count
probe_env = envs_clustered.make_env(args.env_id, episode_length=args.episode_length)
obs_dim, action_dim = probe_env.observation_space.shape[0], probe_env.action_space.shape[0]
buffer = TrialBuffer(args.vae_buffer_size, 1 + args.num_exploit_episodes, args.episode_length, obs_dim, action_dim)
buffer.load_state_dict(state["buffer"])
H, K = args.episode_length, milet.cluster_slots(args)
split = envs_clustered.make_task_split(args.env_id, seed=args.task_seed)
probe = dataclasses.replace(split, test_tasks=split.train_tasks[:opts.probe_tasks],
                            test_clusters=split.train_clusters[:opts.probe_tasks])
print(f"{opts.run}: {args.env_id}, {state['global_step']:,} frames, {buffer.size} trials in V, K = {K}", flush=True)


@torch.no_grad()
def exploration_episodes(tasks):
    """The run's policies and CBVI on each task of `tasks` (a split), deterministic: the exploration episode."""
    envs = milet.make_env(args, len(tasks.test_tasks), args.seed + 1)
    record, (_, states, actions, rewards, next_states) = milet.meta_test_trial(
        args, run_cbvi.eval(), explore_agent, exploit_agent, obs_rms, envs, tasks, "cpu")
    envs.close()
    return (actions, next_states, rewards), tasks.test_clusters, record


test_episode, test_clusters, test_record = exploration_episodes(split)
probe_episode, probe_clusters, _ = exploration_episodes(probe)
print(f"test trials: episode 1 / 2 returns {test_record['return_episode_1']:.3f} / "
      f"{test_record['return_episode_2']:.3f}, the run's NMI at the end of exploration "
      f"{test_record['nmi_end_of_exploration']:.3f} (ceiling {test_record['nmi_ceiling']:.3f}), "
      f"{time.time() - start:.0f} s", flush=True)


@torch.no_grad()
def report(model, name):
    """NMI of argmax q(c) at step 20 and at H on the test trials; q(c)'s spread; NMI of k-means on z at H."""
    h_alpha, h_beta = model.eval()._all_prefix_states(*test_episode)  # CBVI.encode's pass, kept for the head's units
    belief = model._prefix_belief(h_alpha, h_beta, sample=False)
    nmi = [normalized_mutual_info_score(test_clusters, belief.cluster_probs[t].argmax(-1).numpy())
           for t in (min(20, H), H)]
    mean_probs = "[" + ", ".join(f"{p:.2f}" for p in belief.cluster_probs[H].mean(0)) + "]"  # q(c) at H, task mean
    probe_z = model.encode(*probe_episode, sample=False).z_mean[H].numpy()
    kmeans = KMeans(K, n_init=10, random_state=0).fit_predict(probe_z)
    z_nmi = normalized_mutual_info_score(probe_clusters, kmeans)
    # The cluster head is Linear -> ReLU -> Linear (as the authors'): a hidden unit silent on every step passes no
    # gradient, and once all are silent q(c) is a constant (the bias) that training can no longer move.
    firing = (model.cluster_head[1](model.cluster_head[0](h_alpha[1:])) > 0).float().mean((0, 1))
    logit_std = belief.cluster_logits[1:].std((0, 1)).max().item()  # over tasks and steps: 0 for a constant q(c)
    prior = model.prior(torch.eye(K))  # p_omega(z | c = k): clusters need components apart, not K copies of one
    spread = torch.cdist(prior.mean, prior.mean).max().item()
    model.train()
    return (f"{name}: NMI argmax q(c) step 20 {nmi[0]:.3f}, end {nmi[1]:.3f}; mean q(c) at the end "
            f"{mean_probs}; NMI k-means(z) on {len(probe_clusters)} training tasks {z_nmi:.3f}; cluster-head "
            f"ReLUs firing on >= 1% of the test steps {int((firing >= 0.01).sum())} of {len(firing)}, on none "
            f"{int((firing == 0).sum())}; q(c) logits' std over tasks and steps {logit_std:.4f}; prior components' "
            f"means at most {spread:.3f} apart (their std {prior.stddev.min().item():.2f}-"
            f"{prior.stddev.max().item():.2f})")




@torch.no_grad()
def value_of_the_task(model, trials=200):
    """The decoders' mean squared errors on `trials` trials of V, each decoded from the posterior mean z after its
    own exploration episode, then from another trial's (shuffled): how much the inferred task is worth to Eq. 5."""
    obs, actions, rewards, next_obs = buffer.sample(trials, "cpu")
    z = model.eval().encode(actions, next_obs, rewards, sample=False).z_mean[H][None, None]  # (1, 1, B, L)
    embedded = model.dec_embed_state(obs), model.dec_embed_action(actions), model.dec_embed_state(next_obs)
    errors = {}
    for name, latent in (("own", z), ("shuffled", z[:, :, torch.randperm(trials)])):
        errors[name] = [model.reward_decoder.mean_squared_error(latent, torch.cat(embedded, -1), rewards[..., None])]
        if model.state_decoder is not None:
            errors[name].append(model.state_decoder.mean_squared_error(latent, torch.cat(embedded[:2], -1), next_obs))
    model.train()
    return f"on {trials} trials of V: " + "; ".join(f"z {name}: reward error {values[0]:.5f}" + (f", state error {values[1]:.4f}" if len(values) > 1
                                                                  else "") for name, values in errors.items())


print(report(run_cbvi, "the run's CBVI"), flush=True)
print(f"the run's CBVI {value_of_the_task(run_cbvi)}", flush=True)
if opts.updates:
    overrides = {name: value for name, value in (("lambda_i", opts.lambda_i), ("cat_weight", opts.cat_weight),
                                                  ("kl_weight", opts.kl_weight),
                                                  ("gumbel_temperature", opts.gumbel_temperature)) if value is not None}
    fresh_args = dataclasses.replace(args, **overrides)
    cbvi = milet.build_models(fresh_args, obs_dim, action_dim, "cpu")[0]
    if opts.cluster_head_slope:  # not a setting of the training script: a test of whether silent ReLUs matter
        cbvi.cluster_head[1] = torch.nn.LeakyReLU(opts.cluster_head_slope)
        overrides["cluster_head_slope"] = opts.cluster_head_slope
    if opts.z_ignores_c:  # not the paper's q(z | tau, c) (Eq. 4): a test of whether z absorbing c's noise matters
        z_params_given_c = cbvi._z_params
        cbvi._z_params = lambda h_beta, c: z_params_given_c(h_beta, torch.zeros_like(c))
        overrides["z_ignores_c"] = True
    optimizer = torch.optim.Adam(cbvi.parameters(), lr=args.vae_lr)
    print(f"fresh CBVI, overrides {overrides or 'none'}", flush=True)
    print(f"update 0: {report(cbvi, 'fresh')}", flush=True)
    for update in range(1, opts.updates + 1):
        losses = cbvi.loss(*buffer.sample(args.vae_batch_size, "cpu"))
        optimizer.zero_grad()
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(cbvi.parameters(), 1.0)
        optimizer.step()
        if update % args.target_prior_every == 0:
            cbvi.refresh_target_prior()
        if update % opts.report_every == 0 or update == opts.updates:
            terms = ", ".join(f"{key} {value.item():.4g}" for key, value in losses.items())
            print(f"update {update}: {report(cbvi, 'fresh')}; {terms}; {time.time() - start:.0f} s", flush=True)
    print(f"fresh CBVI {value_of_the_task(cbvi)}", flush=True)
