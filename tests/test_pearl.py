"""Tests of pearl_sac_continuous.py: the product of Gaussians, bad input, a tiny end-to-end run on the shared protocol
(the same eval.jsonl / summary.json keys as VariBAD), reproducibility, --resume, and that the script is a leaf."""
import ast
import json
import os

import numpy as np
import pytest
import torch
from torch.distributions import Normal

import envs_clustered
import launch
import pearl_sac_continuous as pearl
from test_milet import ROOT, kill_and_resume, only_run_dir

SCRIPT = os.path.join(ROOT, "pearl_sac_continuous.py")
# 2 iterations of 4 trials of 2 x 5 steps (40 frames each), 3 small gradient steps each, evaluated every iteration
TINY = ["--episode-length", "5", "--num-envs", "4", "--total-timesteps", "80", "--meta-batch", "2", "--batch-size",
        "8", "--context-size", "4", "--updates-per-iteration", "3", "--eval-every", "1", "--no-cuda"]
VARIBAD_TINY = ["--episode-length", "5", "--num-envs", "4", "--num-minibatches", "2", "--total-timesteps", "80",
                "--vae-batch-size", "4", "--vae-num-prefixes", "3", "--vae-updates", "1", "--eval-every", "1", "--no-cuda"]


def run_pearl(tmp_path, *flags, check=True):
    return launch.run_script(SCRIPT, "--runs-dir", tmp_path, *flags, check=check)  # in-process, one torch thread


def test_product_of_gaussians_matches_the_normalised_product_of_densities():
    """q(z | c) = prod_n N(mu_n, s_n^2), renormalised: compare with the closed form of two factors, and with the product
    of the densities evaluated on a grid (one latent dim), normalised numerically."""
    torch.manual_seed(0)
    means, variances = torch.randn(3, 2, 4), torch.rand(3, 2, 4) + 0.1  # 3 tasks, 2 factors, 4 latent dims
    q = pearl.product_of_gaussians(means, variances)
    (m1, m2), (v1, v2) = means.unbind(1), variances.unbind(1)
    torch.testing.assert_close(q.variance, v1 * v2 / (v1 + v2))
    torch.testing.assert_close(q.mean, (m1 * v2 + m2 * v1) / (v1 + v2))

    means, variances = torch.tensor([[-1.0], [0.5], [2.0]], dtype=torch.float64), torch.tensor([[0.5], [2.0], [1.0]], dtype=torch.float64)
    grid = torch.linspace(-10, 10, 200_001, dtype=torch.float64)
    log_density = Normal(means, variances.sqrt()).log_prob(grid).sum(0)  # (grid,): sum of the factors' log-densities
    density = (log_density - log_density.max()).exp()
    density = density / torch.trapezoid(density, grid)
    mean = torch.trapezoid(grid * density, grid)
    variance = torch.trapezoid((grid - mean) ** 2 * density, grid)
    q = pearl.product_of_gaussians(means, variances)
    assert abs(q.mean.item() - mean.item()) < 1e-6 and abs(q.variance.item() - variance.item()) < 1e-6


def test_more_context_sharpens_the_posterior_and_order_does_not_matter():
    torch.manual_seed(0)
    args = pearl.Args(latent_size=3, encoder_size=16)
    encoder = pearl.ContextEncoder(5, args)
    context = torch.randn(2, 10, 5)
    few, many = encoder(context[:, :3]), encoder(context)
    assert (many.variance < few.variance).all()  # every factor adds precision
    shuffled = encoder(context[:, torch.randperm(10)])  # permutation-invariant (Sec. 4.1)
    torch.testing.assert_close(shuffled.mean, many.mean)
    torch.testing.assert_close(shuffled.variance, many.variance)


def tiny_learner(seed: int = 0):
    torch.manual_seed(seed)
    np.random.seed(seed)
    args = pearl.Args(latent_size=2, net_size=16, encoder_size=16, meta_batch=2, batch_size=4, context_size=3, kl_lambda=0.0,
                      learning_rate=1e-3, reward_scale=5.0, gamma=0.99, tau=0.005, use_next_obs_in_context=False)
    replay = pearl.TaskReplay(3, 20, 5, 2, 2, args)
    replay.add_trial(np.array([0, 2]), np.random.randn(2, 10, 7).astype(np.float32), 5)
    nets = {"encoder": pearl.ContextEncoder(replay.context_dim, args), "actor": pearl.Actor(2, 2, args),
            "qf1": pearl.mlp(6, 16, 1), "qf2": pearl.mlp(6, 16, 1), "vf": pearl.mlp(4, 16, 1), "target_vf": pearl.mlp(4, 16, 1)}
    optimizers = {name: torch.optim.SGD(params, lr=0.1) for name, params in (
        ("encoder", nets["encoder"].parameters()), ("actor", nets["actor"].parameters()),
        ("critic", [*nets["qf1"].parameters(), *nets["qf2"].parameters()]), ("vf", nets["vf"].parameters()))}
    return args, replay, nets, optimizers


def test_the_critic_trains_the_encoder_and_the_actor_and_v_do_not():
    """Sec. 4.3: only the Bellman error (and the KL, off here) reaches the encoder. With the Q-networks' last layer at 0,
    dQ/dz = 0 in the critic step, so the encoder's gradient must be exactly 0: after the critic step the Q-networks
    depend on z, and the actor and V losses would leak into the encoder if z were not detached for them."""
    args, replay, nets, optimizers = tiny_learner()
    before = [p.clone() for p in nets["encoder"].parameters()]
    pearl.sac_update(nets, optimizers, replay, args, "cpu")
    assert any(not torch.equal(b, p) for b, p in zip(before, nets["encoder"].parameters()))  # the Q loss moved it

    args, replay, nets, optimizers = tiny_learner()
    for q in ("qf1", "qf2"):
        torch.nn.init.zeros_(nets[q][-1].weight)
    pearl.sac_update(nets, optimizers, replay, args, "cpu")
    assert all(torch.count_nonzero(p.grad) == 0 for p in nets["encoder"].parameters())
    assert any(torch.count_nonzero(p.grad) > 0 for p in nets["actor"].parameters())


@pytest.mark.parametrize("flags, message", [
    (["--env-id", "AntGoall"], "unknown --env-id 'AntGoall'; valid ids: PointGoal, AntGoal"),
    (["--total-timesteps", "100"], "is below one iteration"),
    (["--meta-batch", "0"], "--meta-batch must be >= 1"),
    (["--num-envs", "501"], "at most the 500 training tasks"),
    (["--buffer-size-per-task", "150"], "must hold one trial (200 transitions)"),
    (["--gamma", "1.0"], "need 0 <= --gamma < 1"),
    (["--async-envs"], "--async-envs is for the MuJoCo envs"),
])
def test_bad_input_is_rejected_with_one_line_before_anything_is_written(tmp_path, flags, message):
    result = run_pearl(tmp_path, *flags, check=False)
    assert result.returncode != 0 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert os.listdir(tmp_path) == []


def test_tiny_run_writes_the_same_keys_as_varibad(tmp_path):
    run_pearl(tmp_path / "pearl", *TINY)
    launch.run_script("varibad_ppo_continuous.py", "--runs-dir", tmp_path / "varibad", *VARIBAD_TINY, check=True)
    runs = {name: only_run_dir(tmp_path / name) for name in ("pearl", "varibad")}
    records = {name: [json.loads(line) for line in open(os.path.join(d, "eval.jsonl"))] for name, d in runs.items()}
    summaries = {name: json.load(open(os.path.join(d, "summary.json"))) for name, d in runs.items()}
    assert [r["iteration"] for r in records["pearl"]] == [0, 1, 2]
    assert set(records["pearl"][-1]) == set(records["varibad"][-1])
    assert set(summaries["pearl"]) == set(summaries["varibad"])
    assert not any("nmi" in key for key in summaries["pearl"])  # no clusters: NMI omitted, not faked
    assert summaries["pearl"]["global_step"] == 80
    oracle = envs_clustered.point_goal_oracle_returns(envs_clustered.make_task_split("PointGoal").test_tasks, 5, 2)
    assert summaries["pearl"]["oracle_return_episode_2"] == summaries["varibad"]["oracle_return_episode_2"] == oracle[1]
    assert records["pearl"][0]["test_clusters_true"] == records["varibad"][0]["test_clusters_true"]  # same 32 test tasks
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tags = EventAccumulator(runs["pearl"]).Reload().Tags()["scalars"]
    assert {"losses/qf_loss", "losses/kl", "losses/policy_loss", "eval/return_episode_2", "charts/SPS"} <= set(tags)


@pytest.mark.parametrize("env_id", [env_id for env_id in pearl.envs_clustered.ENV_IDS if env_id != "PointGoal"])
def test_mujoco_envs_run_with_their_table_row(tmp_path, env_id):
    run_pearl(tmp_path, "--env-id", env_id, *TINY, "--net-size", "32", "--encoder-size", "32")
    args = json.load(open(os.path.join(only_run_dir(tmp_path), "args.json")))
    row = pearl.ENV_DEFAULTS[env_id]
    assert args["kl_lambda"] == row["kl_lambda"] and args["use_next_obs_in_context"] == row["use_next_obs_in_context"]
    assert args["total_timesteps"] == 80 and args["net_size"] == 32  # the flags given win over the row
    summary = json.load(open(os.path.join(only_run_dir(tmp_path), "summary.json")))
    assert summary["env_id"] == env_id and summary["global_step"] == 80 and len(summary["test_clusters_true"]) == 32


def test_every_env_has_one_complete_row():
    keys = set(pearl.ENV_DEFAULTS["PointGoal"])
    assert set(pearl.ENV_DEFAULTS) == set(pearl.envs_clustered.ENV_IDS)
    assert all(set(row) == keys for row in pearl.ENV_DEFAULTS.values())
    # no None defaults: Args() is PointGoal's row, and --env-id X parses the flags on top of X's row
    assert all(getattr(pearl.Args(), name) == value for name, value in pearl.ENV_DEFAULTS["PointGoal"].items())
    assert pearl.parse_args(["--env-id", "AntGoal"]).net_size == pearl.ENV_DEFAULTS["AntGoal"]["net_size"] == 300


def test_same_seed_same_numbers_on_cpu(tmp_path):
    for name in ("a", "b"):
        run_pearl(tmp_path / name, *TINY)
    a, b = (open(os.path.join(only_run_dir(tmp_path / name), "eval.jsonl")).read() for name in ("a", "b"))
    assert a == b
    run_pearl(tmp_path / "c", *TINY, "--seed", "2")
    assert open(os.path.join(only_run_dir(tmp_path / "c"), "eval.jsonl")).read() != a


def test_a_killed_run_resumes_to_the_same_evaluations_as_an_uninterrupted_run(tmp_path):
    """As tests/test_milet.py for the other scripts: killed after the first resume.pt, --resume, identical eval.jsonl.
    The checkpoint holds the networks, the optimisers, the replay buffers and every random generator."""
    flags = [*TINY, "--total-timesteps", str(40 * 24), "--eval-every", "4", "--checkpoint-every", "5"]
    whole, resumed = kill_and_resume(tmp_path, SCRIPT, flags)
    lines = [open(os.path.join(d, "eval.jsonl")).readlines() for d in (whole, resumed)]
    assert len(lines[0]) == 7 and lines[1] == lines[0]

def test_bad_resume_is_one_line(tmp_path):
    result = launch.run_script(SCRIPT, "--resume", tmp_path)
    assert result.returncode != 0 and "no resume.pt in" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_script_is_a_leaf():
    """It imports the helper modules only, never another training script."""
    tree = ast.parse(open(SCRIPT).read())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    local = {name[:-3] for name in os.listdir(ROOT) if name.endswith(".py")}
    assert imported & local == {"envs_clustered", "meta_test"}
