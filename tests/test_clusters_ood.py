"""--num-clusters auto (a learned Dirichlet posterior over the cluster weights) and the out-of-distribution scores
(--ood-eval): beyond the paper, the two extensions its conclusion names as future work."""
import json
import os
import sys

import numpy as np
import pytest
import torch
from scipy.special import digamma, gammaln
from torch.distributions import Categorical, kl_divergence

import envs_clustered
from cbvi import CBVI
from test_milet import SCRIPT, only_run_dir, run_script, tiny

S, A = 3, 2


def trial(T, B, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(T, B, S, generator=g), torch.randn(T, B, A, generator=g), torch.randn(T, B, generator=g),
            torch.randn(T, B, S, generator=g))


def test_learned_weights_kl_matches_a_direct_computation():
    """kl_c = mean over prefixes and trials of E_q(pi)[KL(q(c|tau) || Cat(pi))] + KL(Dir(alpha) || Dir(gamma/K)) / N,
    computed here with scipy's digamma and log-gamma instead of torch.distributions."""
    torch.manual_seed(0)
    K, gamma, N = 5, 1.0, 500
    model = CBVI(S, A, num_clusters=K, learn_cluster_weights=True, weight_concentration=gamma, num_train_tasks=N)
    with torch.no_grad():
        model.log_alpha.copy_(torch.tensor([0.3, -1.0, 0.5, 0.0, 2.0]))
    obs, act, rew, nxt = trial(6, 4)
    logits = model.encode(act, nxt, rew).cluster_logits.detach().double().numpy()  # (T+1, B, K); prefix 0: E[pi]
    alpha, prior = np.exp([0.3, -1.0, 0.5, 0.0, 2.0]), np.full(K, gamma / K)
    q = np.exp(logits - logits.max(-1, keepdims=True))
    q /= q.sum(-1, keepdims=True)
    expected_log_pi = digamma(alpha) - digamma(alpha.sum())
    per_prefix = (q * (np.log(q) - expected_log_pi)).sum(-1)
    dirichlet_kl = (gammaln(alpha.sum()) - gammaln(alpha).sum() - gammaln(prior.sum()) + gammaln(prior).sum()
                    + ((alpha - prior) * expected_log_pi).sum())
    torch.manual_seed(1)
    loss = model.loss(obs, act, rew, nxt)
    # all T + 1 prefixes enter the categorical KL (num_prefixes=None)
    assert loss["kl_c"].item() == pytest.approx(per_prefix.mean() + dirichlet_kl / N, rel=1e-5)
    np.testing.assert_allclose(q[0, 0], alpha / alpha.sum(), rtol=1e-5)  # the empty prefix's belief is E[pi]
    np.testing.assert_allclose(model.cluster_weights().detach().numpy(), alpha / alpha.sum(), rtol=1e-6)


def test_fixed_k_loss_is_unchanged_and_unused_clusters_fade():
    """With a fixed K the categorical term is KL(q(c|tau) || U(K)) exactly as before; with learned weights, a
    gradient step on a batch that uses one cluster lowers the weights of the others."""
    torch.manual_seed(0)
    fixed = CBVI(S, A, num_clusters=4)
    obs, act, rew, nxt = trial(5, 3)
    logits = fixed.encode(act, nxt, rew).cluster_logits
    uniform = Categorical(logits=torch.zeros_like(logits))
    torch.testing.assert_close(fixed.loss(obs, act, rew, nxt)["kl_c"],
                               kl_divergence(Categorical(logits=logits), uniform).mean())
    assert torch.equal(fixed.initial_belief(2)[1].cluster_logits, torch.zeros(2, 4))
    assert not any("alpha" in name for name, _ in fixed.named_parameters())

    learned = CBVI(S, A, num_clusters=4, learn_cluster_weights=True)
    with torch.no_grad():  # every prefix's posterior puts its mass on cluster 0
        learned.cluster_head[-1].weight.zero_()
        learned.cluster_head[-1].bias.copy_(torch.tensor([8.0, 0.0, 0.0, 0.0]))
    optimizer = torch.optim.Adam([learned.log_alpha], lr=0.05)
    for _ in range(50):
        optimizer.zero_grad()
        learned.loss(obs, act, rew, nxt)["kl_c"].backward()
        optimizer.step()
    weights = learned.cluster_weights().detach()
    assert weights[0] > 0.5 and weights[1:].max() < 0.2


@pytest.mark.parametrize("env_id", ["PointGoal", "AntGoal", "HumanoidDir", "HopperRandParams"])
def test_ood_tasks_are_reproducible_and_outside_the_training_support(env_id):
    tasks, clusters = envs_clustered.make_ood_tasks(env_id, 32, seed=3)
    again, _ = envs_clustered.make_ood_tasks(env_id, 32, seed=3)
    np.testing.assert_array_equal(tasks, again)
    assert not np.array_equal(tasks, envs_clustered.make_ood_tasks(env_id, 32, seed=4)[0])
    split = envs_clustered.make_task_split(env_id, seed=0)
    kind = envs_clustered._kind(env_id)
    if kind == "goal":  # training goals lie on the circle of radius 2, OOD goals on radius 3.5
        np.testing.assert_allclose(np.linalg.norm(split.train_tasks, axis=1), 2.0)
        np.testing.assert_allclose(np.linalg.norm(tasks, axis=1), 3.5)
    elif kind == "dir":  # the held-out cluster, which meta-training leaves out with --ood-eval
        assert (clusters == envs_clustered.OOD_HELD_OUT_CLUSTER).all()
        nearest = [envs_clustered.infer_cluster(env_id, task) for task in tasks]
        assert np.mean(np.array(nearest) == envs_clustered.OOD_HELD_OUT_CLUSTER) > 0.6
    else:  # training scales one parameter group; OOD tasks scale two
        groups = list(envs_clustered.param_group_slices(env_id).values())
        scaled = lambda task: sum(not np.allclose(task[g], 1.0) for g in groups)  # noqa: E731
        assert all(scaled(task) == 1 for task in split.train_tasks)
        assert all(scaled(task) == 2 for task in tasks)


def test_auto_clusters_and_ood_eval_report_known_answers(tmp_path, monkeypatch):
    """Known answers through the whole run: an encoder that puts the tasks in 2 of its 6 clusters (even and odd
    slots) reports num_clusters_found 2; an OOD score that separates the OOD goals (radius 3.5) from the test goals
    (radius 2), minus the exploration's mean reward while the untrained point stays near the start, gives AUROC 1
    for both scores and flags every OOD task."""
    import runpy

    import cbvi

    real_step = cbvi.CBVI.step

    def two_clusters(self, *inputs, **kwargs):
        hidden, belief = real_step(self, *inputs, **kwargs)
        chosen = torch.nn.functional.one_hot(torch.arange(len(hidden)) % 2, self.num_clusters).float()
        probs = 0.5 * chosen + 0.5 / self.num_clusters  # argmax: the even or odd cluster; no zero probability
        return hidden, belief._replace(cluster_probs=probs)

    def separable(self, belief, obs, actions, rewards, next_obs):
        return {"prior_nll": -rewards.mean(0), "reward_error": -rewards.mean(0)}

    monkeypatch.setattr(cbvi.CBVI, "step", two_clusters)
    monkeypatch.setattr(cbvi.CBVI, "ood_scores", separable)
    monkeypatch.setattr(sys, "argv", [SCRIPT, "--runs-dir", str(tmp_path), *tiny(), "--num-clusters", "auto",
                                      "--max-clusters", "6", "--ood-eval"])
    runpy.run_path(SCRIPT, run_name="__main__")
    run_dir = only_run_dir(tmp_path)
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    records = [json.loads(line) for line in open(os.path.join(run_dir, "eval.jsonl"))]
    for result in (summary, records[-1]):
        assert result["num_clusters_found"] == 2 and len(result["cluster_weights"]) == 6
        assert sum(result["cluster_weights"]) == pytest.approx(1.0, abs=1e-3)
    for record in records:
        assert record["ood_auroc"] == record["ood_auroc_reward_error"] == record["ood_auroc_prior_nll"] == 1.0
        assert record["ood_flagged_reward_error"]["ood"] == 1.0
        assert set(record["ood_flagged_prior_nll"]) == {"test", "ood"}
    assert len(records[-1]["test_clusters_pred"]) == 32


def test_auto_and_ood_bad_input_is_one_line(tmp_path):
    result = run_script(tmp_path, "--num-clusters", "auto", "--max-clusters", "1", check=False)
    assert result.returncode != 0 and "--max-clusters must be >= 2" in result.stderr
    assert os.listdir(tmp_path) == []


def test_direction_envs_hold_their_ood_cluster_out_of_training(tmp_path):
    held_out = envs_clustered.OOD_HELD_OUT_CLUSTER
    split = envs_clustered.make_task_split("HumanoidDir", seed=0, hold_out_ood=True)
    assert held_out not in split.train_clusters and held_out not in split.test_clusters
    assert set(split.test_clusters) == set(range(envs_clustered.NUM_CLUSTERS)) - {held_out}
    for env_id in ("PointGoal", "HopperRandParams"):  # the other kinds keep all four clusters
        kept = envs_clustered.make_task_split(env_id, seed=0, hold_out_ood=True)
        np.testing.assert_array_equal(kept.train_tasks, envs_clustered.make_task_split(env_id, seed=0).train_tasks)
    run_script(tmp_path, "--env-id", "HumanoidDir", *tiny(1), "--ood-eval")
    records = [json.loads(line) for line in open(os.path.join(only_run_dir(tmp_path), "eval.jsonl"))]
    assert held_out not in records[-1]["test_clusters_true"] and isinstance(records[-1]["ood_auroc"], float)


def test_clusters_figure_shows_each_groups_late_averages(tmp_path):
    import plots

    for name, flags in (("k2", ["--num-clusters", "2"]), ("auto", ["--num-clusters", "auto", "--max-clusters", "5"])):
        run_script(tmp_path / name, *tiny(3), "--exp-name", name, *flags)
    runs = plots.load_runs([only_run_dir(tmp_path / name) for name in ("k2", "auto")])
    fig = plots.plot_cluster_counts(runs)
    found_axis = fig.axes[2]
    assert [tick.get_text() for tick in found_axis.get_xticklabels()] == ["k2", "auto"]
    # the grey points are each run's late average of num_clusters_found (evaluations at >= 80% of training)
    late = [r["num_clusters_found"] for r in runs[1].records if r["global_step"] >= 0.8 * runs[1].records[-1]["global_step"]]
    from matplotlib.collections import PathCollection

    points = [c for c in found_axis.collections if isinstance(c, PathCollection)]
    np.testing.assert_allclose(points[1].get_offsets()[0], [1, np.mean(late)])
