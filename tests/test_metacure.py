"""Tests of metacure_sac_continuous.py: the causal encoder, the intrinsic reward, where each loss's gradient goes, the
meta-test's belief, bad input, a tiny end-to-end run on the shared protocol, reproducibility, --resume, and that the
script is a leaf."""
import ast
import json
import os

import numpy as np
import pytest
import torch

import launch
import metacure_sac_continuous as metacure
from test_milet import ROOT, kill_and_resume, only_run_dir

SCRIPT = os.path.join(ROOT, "metacure_sac_continuous.py")
# 2 iterations of 4 trials of 2 x 5 steps (40 frames each), 3 small gradient steps each, evaluated every iteration
TINY = ["--episode-length", "5", "--num-envs", "4", "--total-timesteps", "80", "--meta-batch", "2", "--batch-size",
        "8", "--updates-per-iteration", "3", "--eval-every", "1", "--no-cuda"]


def run_metacure(tmp_path, *flags, check=True):
    return launch.run_script(SCRIPT, "--runs-dir", tmp_path, *flags, check=check)  # in-process, one torch thread


def tiny_learner(seed: int = 0, **overrides):
    """Networks and optimisers (SGD) of 2-dimensional states and actions, 3 training tasks, and a replay holding one
    trial of 2 x 5 steps in tasks 0 and 2."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    args = metacure.Args(latent_size=2, net_size=16, encoder_size=8, task_embedding_size=4, meta_batch=2, batch_size=4,
                         episode_length=5, exploration_episodes_per_task=2, buffer_size_per_task=20, **overrides)
    replay = metacure.TrialReplay(3, args, 2, 2)
    replay.add_trial(np.array([0, 2]), np.random.randn(2, 10, 7).astype(np.float32), 5)
    nets, optimizers = metacure.build_networks(2, 2, 3, args, "cpu")
    optimizers = {name: torch.optim.SGD([p for group in opt.param_groups for p in group["params"]], lr=0.1)
                  for name, opt in optimizers.items()}
    return args, replay, nets, optimizers


def test_the_encoder_is_causal_and_steps_online_as_it_runs_offline():
    """The belief after step t depends on x_0..x_t only; stepping the GRU one input at a time (rollouts, meta-test)
    gives the beliefs of one pass over the episode (training). x_t = (s_t, a_{t-1}, r_{t-1}), zeros at t = 0, and
    the last input holds the episode's final successor state."""
    args, replay, nets, _ = tiny_learner()
    episode = torch.from_numpy(replay.explore[[0, 2], 0]).transpose(0, 1)  # (H, 2, width)
    inputs = metacure.encoder_inputs(episode, replay.split_sizes)
    assert inputs.shape == (6, 2, 2 + 2 + 1)
    torch.testing.assert_close(inputs[0, :, 2:], torch.zeros(2, 3))
    torch.testing.assert_close(inputs[:5, :, :2], episode[..., :2])  # s_t
    torch.testing.assert_close(inputs[5, :, :2], episode[-1, :, 5:7])  # s_H, the last successor state
    torch.testing.assert_close(inputs[1:, :, 2:], episode[..., 2:5])  # (a_t, r_t)
    offline, _ = nets["encoder"](inputs)
    changed = inputs.clone()
    changed[3:] += 1.0
    later, _ = nets["encoder"](changed)
    torch.testing.assert_close(later.mean[:3], offline.mean[:3])
    assert not torch.allclose(later.mean[3:], offline.mean[3:])
    hidden, means = None, []
    for t in range(6):
        belief, hidden = nets["encoder"](inputs[t: t + 1], hidden)
        means.append(belief.mean[0])
    torch.testing.assert_close(torch.stack(means), offline.mean)


def test_the_intrinsic_reward_is_how_much_better_the_task_id_predicts_the_reward():
    """r_int = (r - R_belief)^2 - (r - R_task)^2: with predictors that output constants b and c it is known."""
    args, replay, nets, _ = tiny_learner()
    for name, constant in (("task_reward", 0.5), ("belief_reward", -1.0)):
        torch.nn.init.zeros_(nets[name][-1].weight)
        torch.nn.init.constant_(nets[name][-1].bias, constant)
    rewards = torch.tensor([[0.0], [2.0], [-1.0]])
    r_int = metacure.intrinsic_reward(nets, torch.tensor([0, 1, 2]), torch.zeros(3, 2), torch.zeros(3, 2), rewards,
                                      torch.zeros(3, 4))
    torch.testing.assert_close(r_int, (rewards + 1.0) ** 2 - (rewards - 0.5) ** 2)


def test_only_the_exploitation_critic_and_the_kl_train_the_encoder():
    """With the exploitation Q networks' last layers at 0 and no KL, nothing reaches the encoder: the explorer sees
    the belief with its gradient stopped, and so do the exploitation actor and V. With them, it moves."""
    args, replay, nets, optimizers = tiny_learner(kl_lambda=0.0)
    before = [p.clone() for p in nets["encoder"].parameters()]
    metacure.metacure_update(nets, optimizers, replay, args, "cpu")
    assert any(not torch.equal(b, p) for b, p in zip(before, nets["encoder"].parameters()))
    args, replay, nets, optimizers = tiny_learner(kl_lambda=0.0)
    for q in (nets["exploit"].qf1, nets["exploit"].qf2):
        torch.nn.init.zeros_(q[-1].weight)
    metacure.metacure_update(nets, optimizers, replay, args, "cpu")
    assert all(torch.count_nonzero(p.grad) == 0 for p in nets["encoder"].parameters())
    assert any(torch.count_nonzero(p.grad) > 0 for p in nets["explore"].actor.parameters())
    assert any(torch.count_nonzero(p.grad) > 0 for p in nets["task_reward"].parameters())


def test_the_explorers_reward_carries_the_intrinsic_term_with_its_weight():
    """The explorer's Bellman target uses r + intrinsic_weight * r_int: with a weight of 0 its critic loss does not
    depend on the reward predictors, with 1 it does."""
    losses = {}
    for weight in (0.0, 1.0):
        for shift in (0.0, 3.0):
            args, replay, nets, optimizers = tiny_learner(intrinsic_weight=weight)
            torch.nn.init.constant_(nets["task_reward"][-1].bias, shift)
            losses[weight, shift] = metacure.metacure_update(nets, optimizers, replay, args, "cpu")["explore_qf_loss"]
    assert losses[0.0, 0.0] == losses[0.0, 3.0]
    assert losses[1.0, 0.0] != losses[1.0, 3.0]


def test_the_meta_test_is_deterministic_and_exploits_on_the_exploration_episodes_posterior():
    """Two evaluations of the same networks agree exactly (tanh(mean) actions, z from a seeded generator). The
    exploitation episode acts on z drawn from q(z | episode 1): the mean and std of the encoder's belief after the
    whole exploration episode (x_0..x_H, run offline here) and the generator's first normal draw."""
    args = metacure.parse_args(TINY)
    args.trial_length = 10
    split = metacure.envs_clustered.make_task_split("PointGoal")
    torch.manual_seed(0)
    nets, _ = metacure.build_networks(2, 2, 500, args, "cpu")
    first, second = (metacure.evaluate(args, nets, metacure.make_env(args, 32, 2), split, "cpu") for _ in range(2))
    assert first["test_returns_per_task"] == second["test_returns_per_task"]
    runner = metacure.TrialRunner(nets, 3, 2, args, "cpu", deterministic=True,
                                  generator=torch.Generator().manual_seed(5))
    rng, rows = np.random.default_rng(0), []
    obs = rng.normal(size=(3, 2)).astype(np.float32)
    with torch.no_grad():
        for step in range(5):
            action = runner.act(obs, step)
            next_obs, reward = rng.normal(size=(3, 2)).astype(np.float32), rng.normal(size=3).astype(np.float32)
            rows.append(np.concatenate([obs, action.numpy(), reward[:, None], next_obs], -1))
            runner.observe(action, torch.as_tensor(next_obs), torch.as_tensor(reward), step)
            obs = next_obs
        runner.act(rng.normal(size=(3, 2)), 5)  # the exploitation episode's first step draws z
        episode = torch.as_tensor(np.stack(rows))
        beliefs, _ = nets["encoder"](metacure.encoder_inputs(episode, (2, 2, 1, 2)))
    noise = torch.randn((3, args.latent_size), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(runner.z, beliefs.mean[-1] + beliefs.stddev[-1] * noise)


@pytest.mark.parametrize("flags, message", [
    (["--env-id", "AntGoall"], "unknown --env-id 'AntGoall'; valid ids: PointGoal, AntGoal"),
    (["--total-timesteps", "100"], "is below one iteration"),
    (["--meta-batch", "0"], "--meta-batch must be >= 1"),
    (["--num-envs", "501"], "at most the 500 training tasks"),
    (["--buffer-size-per-task", "150"], "must hold one trial (200)"),
    (["--gamma", "1.0"], "need 0 <= --gamma < 1"),
    (["--intrinsic-weight", "-1"], "--intrinsic-weight must be >= 0"),
    (["--async-envs"], "--async-envs is for the MuJoCo envs"),
])
def test_bad_input_is_rejected_with_one_line_before_anything_is_written(tmp_path, flags, message):
    result = run_metacure(tmp_path, *flags, check=False)
    assert result.returncode != 0 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert os.listdir(tmp_path) == []


def test_tiny_run_writes_the_same_keys_as_pearl_and_another_seed_other_numbers(tmp_path):
    run_metacure(tmp_path / "metacure", *TINY)
    pearl_tiny = [*TINY, "--context-size", "4"]
    launch.run_script("pearl_sac_continuous.py", "--runs-dir", tmp_path / "pearl", *pearl_tiny, check=True)
    runs = {name: only_run_dir(tmp_path / name) for name in ("metacure", "pearl")}
    records = {name: [json.loads(line) for line in open(os.path.join(d, "eval.jsonl"))] for name, d in runs.items()}
    summaries = {name: json.load(open(os.path.join(d, "summary.json"))) for name, d in runs.items()}
    assert [r["iteration"] for r in records["metacure"]] == [0, 1, 2]
    assert set(records["metacure"][-1]) == set(records["pearl"][-1])
    assert set(summaries["metacure"]) == set(summaries["pearl"])
    assert records["metacure"][0]["test_clusters_true"] == records["pearl"][0]["test_clusters_true"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tags = EventAccumulator(runs["metacure"]).Reload().Tags()["scalars"]
    assert {"losses/exploit_qf_loss", "losses/explore_qf_loss", "losses/intrinsic_reward", "losses/kl",
            "eval/return_episode_2", "charts/SPS"} <= set(tags)
    run_metacure(tmp_path / "again", *TINY)
    run_metacure(tmp_path / "other", *TINY, "--seed", "2")
    text = {name: open(os.path.join(only_run_dir(tmp_path / name), "eval.jsonl")).read() for name in ("again", "other")}
    assert text["again"] == open(os.path.join(runs["metacure"], "eval.jsonl")).read() != text["other"]


def test_mujoco_envs_take_metacures_ant_goal_row(tmp_path):
    run_metacure(tmp_path, "--env-id", "AntGoal", *TINY, "--net-size", "32")
    args = json.load(open(os.path.join(only_run_dir(tmp_path), "args.json")))
    assert (args["latent_size"], args["batch_size"], args["reward_scale"], args["gamma"]) == (2, 8, 1.0, 0.99)
    assert set(metacure.ENV_DEFAULTS) == set(metacure.envs_clustered.ENV_IDS)
    assert all(getattr(metacure.Args(), name) == value for name, value in metacure.ENV_DEFAULTS["PointGoal"].items())


@pytest.mark.parametrize("env_id", [e for e in metacure.envs_clustered.ENV_IDS if e not in ("PointGoal", "AntGoal")])
def test_every_other_env_runs_end_to_end_with_its_row(tmp_path, env_id):
    """A tiny run on each remaining env id (PointGoal and AntGoal have theirs above): trains, evaluates, writes."""
    run_metacure(tmp_path, "--env-id", env_id, *TINY, "--net-size", "32", "--buffer-size-per-task", "40")
    run_dir = only_run_dir(tmp_path)
    args = json.load(open(os.path.join(run_dir, "args.json")))
    assert args["latent_size"] == metacure.ENV_DEFAULTS[env_id]["latent_size"] and args["net_size"] == 32
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    assert summary["env_id"] == env_id and summary["global_step"] == 80 and len(summary["test_clusters_true"]) == 32
    records = [json.loads(line) for line in open(os.path.join(run_dir, "eval.jsonl"))]
    assert [r["iteration"] for r in records] == [0, 1, 2]
    assert all(np.isfinite([r["return_episode_1"], r["return_episode_2"]]).all() for r in records)


def test_a_killed_run_resumes_to_the_same_evaluations_as_an_uninterrupted_run(tmp_path):
    """As tests/test_milet.py for the other scripts: killed after the first resume.pt, --resume, identical eval.jsonl.
    The checkpoint holds the networks, the optimisers, the replay buffers and every random generator."""
    flags = [*TINY, "--total-timesteps", str(40 * 24), "--eval-every", "4", "--checkpoint-every", "5"]
    whole, resumed = kill_and_resume(tmp_path, SCRIPT, flags)
    lines = [open(os.path.join(d, "eval.jsonl")).readlines() for d in (whole, resumed)]
    assert len(lines[0]) == 7 and lines[1] == lines[0]

def test_the_script_is_a_leaf():
    """It imports the helper modules only, never another training script."""
    tree = ast.parse(open(SCRIPT).read())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    local = {name[:-3] for name in os.listdir(ROOT) if name.endswith(".py")}
    assert imported & local == {"envs_clustered", "meta_test"}
