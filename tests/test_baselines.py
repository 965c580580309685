"""End-to-end tests of the baselines (varibad_ppo_continuous.py, rl2_ppo_continuous.py): bad input, every env id,
the shared evaluation protocol (same keys as MILET, NMI omitted), reproducibility, and plots.py on their runs."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from gymnasium.wrappers.utils import RunningMeanStd

import envs_clustered
import launch
import plots
import rl2_ppo_continuous as rl2
from test_milet import ROOT, SCRIPT, only_run_dir, tiny

BASELINES = {"varibad": os.path.join(ROOT, "varibad_ppo_continuous.py"), "rl2": os.path.join(ROOT, "rl2_ppo_continuous.py")}
TINY = {  # 2 iterations of 4 trials of 2 x 5 steps (40 frames each), evaluated after every iteration
    "varibad": ["--episode-length", "5", "--num-envs", "4", "--num-minibatches", "2", "--total-timesteps", "80",
                "--vae-batch-size", "4", "--vae-num-prefixes", "3", "--vae-updates", "1", "--eval-every", "1", "--no-cuda"],
    "rl2": ["--episode-length", "5", "--num-envs", "4", "--num-minibatches", "2", "--total-timesteps", "80",
            "--eval-every", "1", "--no-cuda"],
}


def run_baseline(method, tmp_path, *flags, check=True):
    return launch.run_script(BASELINES[method], "--runs-dir", tmp_path, *flags, check=check)  # in-process


@pytest.mark.parametrize("method", BASELINES)
@pytest.mark.parametrize("flags, message", [
    (["--env-id", "AntGoall"], "unknown --env-id 'AntGoall'; valid ids: PointGoal, AntGoal"),
    (["--num-envs", "10"], "must be a positive multiple of --num-minibatches"),
    (["--total-timesteps", "100"], "is below one iteration"),
    (["--update-epochs", "0"], "--update-epochs must be >= 1"),
    (["--async-envs"], "--async-envs is for the MuJoCo envs"),
    (["--gamma", "-0.5"], "--gamma must be in [0, 1], got -0.5"),
    (["--gae-lambda", "2"], "--gae-lambda must be in [0, 1], got 2.0"),
    (["--clip-coef", "-0.2"], "--clip-coef must be > 0, got -0.2"),
    (["--learning-rate", "0"], "--learning-rate must be > 0, got 0.0"),
])
def test_bad_input_is_rejected_with_one_line(method, flags, message, monkeypatch):
    """Each baseline's parse_args stops with `<script>: error: ...` (one line) before the script builds anything."""
    import varibad_ppo_continuous as varibad

    module = {"varibad": varibad, "rl2": rl2}[method]
    monkeypatch.setattr(sys, "argv", [BASELINES[method]])
    with pytest.raises(SystemExit) as stop:
        module.parse_args(flags)
    assert str(stop.value.code).startswith(f"{method}_ppo_continuous.py: error: ") and message in str(stop.value.code)


@pytest.mark.parametrize("flags, message", [(["--vae-buffer-size", "0"], "--vae-buffer-size must be >= 1, got 0"),
                                           (["--vae-lr", "0"], "--vae-lr must be > 0, got 0.0"),
                                           (["--vae-num-prefixes", "-1"], "--vae-num-prefixes must be >= 0 (0: all), got -1")])
def test_varibad_rejects_an_empty_buffer_and_a_zero_vae_learning_rate(flags, message, monkeypatch):
    import varibad_ppo_continuous as varibad

    monkeypatch.setattr(sys, "argv", [BASELINES["varibad"]])
    with pytest.raises(SystemExit) as stop:
        varibad.parse_args(flags)
    assert message in str(stop.value.code) and "\n" not in str(stop.value.code)


@pytest.mark.parametrize("method", BASELINES)
def test_bad_input_from_the_command_line_writes_nothing(tmp_path, method):
    result = run_baseline(method, tmp_path, "--num-envs", "10", check=False)
    assert result.returncode != 0 and "must be a positive multiple of --num-minibatches" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("method", BASELINES)
@pytest.mark.parametrize("env_id", ["PointGoal", "AntGoal", "HumanoidDir", "HopperRandParams"])  # one per kind; MILET
# runs every id (test_milet.py), and every script builds its envs with a copy of the same make_env
def test_every_env_runs_two_iterations_with_milets_protocol(tmp_path, method, env_id):
    run_baseline(method, tmp_path, "--env-id", env_id, *TINY[method])
    run_dir = only_run_dir(tmp_path)
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    records = [json.loads(line) for line in open(os.path.join(run_dir, "eval.jsonl"))]
    assert summary["env_id"] == env_id and summary["global_step"] == 2 * 4 * 10
    assert {"test_return_episode_1", "test_return_episode_2", "test_clusters_true", "sps", "args"} <= set(summary)
    assert not any("nmi" in key or "clusters_pred" in key for key in summary)  # no clusters: NMI omitted, not faked
    assert [r["iteration"] for r in records] == [0, 1, 2]
    assert len(records[-1]["test_clusters_true"]) == 32  # the same 32 test tasks as MILET
    assert ("exploration_xy" in records[-1]) == (envs_clustered._kind(env_id) != "params")


def zero_and_sampled_action_returns():
    """Per-task test returns (episodes x tasks) of the tiny runs' protocol under zero actions and under N(0, 1)
    actions: the references that tell an evaluation on mean actions (~0 untrained) from one on sampled actions."""
    import meta_test
    import milet_ppo_continuous as milet

    args = milet.parse_args(tiny())
    split = envs_clustered.make_task_split("PointGoal")
    noise = torch.Generator().manual_seed(0)
    actors = {"zero": lambda obs, step: torch.zeros(len(obs), 2),
              "sampled": lambda obs, step: torch.randn(len(obs), 2, generator=noise)}
    return {name: np.array(meta_test.evaluate(milet.make_env(args, 32, args.seed + 1), split, args.seed + 10_000, 2, 5,
                                              act, lambda *_: None)["test_returns_per_task"])
            for name, act in actors.items()}


def test_baselines_and_milet_share_the_untrained_protocol(tmp_path):
    """At iteration 0 the policies output ~0 mean actions, so all three score every test task as zero actions do,
    within 0.3; N(0, 1) actions, which a policy sampling at its initial std would take, differ by more than 1 on some
    task (their mean over the tasks is within 0.01 of zero actions', so the mean cannot tell them apart)."""
    reference = zero_and_sampled_action_returns()
    assert np.abs(reference["sampled"] - reference["zero"]).max() > 1.0
    returns = {}
    for method in BASELINES:
        run_baseline(method, tmp_path / method, *TINY[method])
        returns[method] = json.loads(open(os.path.join(only_run_dir(tmp_path / method), "eval.jsonl")).readline())
    launch.run_script(SCRIPT, "--runs-dir", tmp_path / "milet", *tiny(), check=True)
    returns["milet"] = json.loads(open(os.path.join(only_run_dir(tmp_path / "milet"), "eval.jsonl")).readline())
    assert returns["milet"]["test_clusters_true"] == returns["rl2"]["test_clusters_true"] == returns["varibad"]["test_clusters_true"]
    for method, record in returns.items():
        assert np.abs(np.array(record["test_returns_per_task"]) - reference["zero"]).max() < 0.3, method

    # plots.py puts all three in one table and one figure; the baselines' NMI is "n/a", not a number
    runs = plots.load_runs([only_run_dir(tmp_path / name) for name in ("milet", "varibad", "rl2")])
    table = plots.results_table(runs)
    assert table.count("n/a (no clusters)") == 2 and "milet_ppo_continuous" in table
    nmi_axis = next(ax for ax in plots.plot_curves(runs).axes if ax.get_title().startswith("NMI"))
    # only MILET draws an NMI curve; the dashed ceiling is a reference line, not a method
    assert [line.get_label().split(" (")[0] for line in nmi_axis.get_lines()] == ["milet_ppo_continuous", "ceiling"]


@pytest.mark.parametrize("method", BASELINES)
def test_same_seed_same_numbers_on_cpu(tmp_path, method):
    for name in ("a", "b"):
        run_baseline(method, tmp_path / name, *TINY[method], "--env-id", "PointGoal")
    a, b = (open(os.path.join(only_run_dir(tmp_path / name), "eval.jsonl")).read() for name in ("a", "b"))
    assert a == b
    run_baseline(method, tmp_path / "c", *TINY[method], "--env-id", "PointGoal", "--seed", "2")
    assert open(os.path.join(only_run_dir(tmp_path / "c"), "eval.jsonl")).read() != a  # another seed, other numbers


def test_rl2_sequence_rerun_reproduces_the_rollout():
    """PPO re-runs whole trials from h = 0 on the stored inputs; at the old parameters that must give the rollout's
    log-probabilities and values step for step (a ratio of exactly 1 on the first minibatch)."""
    torch.manual_seed(0)
    args = rl2.Args(episode_length=4)
    agent = rl2.RL2Agent(obs_dim=2, action_dim=2, args=args)
    obs_rms, rng = RunningMeanStd(shape=(2,)), np.random.default_rng(0)
    hidden, prev_action, prev_reward = torch.zeros(3, args.gru_hidden_size), torch.zeros(3, 2), torch.zeros(3)
    inputs, actions, logprobs, values = [], [], [], []
    with torch.no_grad():
        for step in range(8):  # two episodes of 4 steps, 3 trials
            x = rl2.rl2_input(rng.normal(size=(3, 2)), prev_action, prev_reward, step, obs_rms, args, "cpu")
            action, logprob, _, value, hidden = agent(x.unsqueeze(0), hidden)
            inputs.append(x), actions.append(action[0]), logprobs.append(logprob[0]), values.append(value[0])
            prev_action, prev_reward = action[0], torch.as_tensor(rng.normal(size=3), dtype=torch.float32)
        assert [x[0, -2].item() for x in inputs] == [1, 0, 0, 0, 1, 0, 0, 0]  # episode-start flag
        assert [x[0, -1].item() for x in inputs] == [t / 8 for t in range(8)]  # the time t / T within the trial
        _, new_logprob, _, new_value, _ = agent(torch.stack(inputs), torch.zeros(3, args.gru_hidden_size), torch.stack(actions))
    torch.testing.assert_close(new_logprob, torch.stack(logprobs))
    torch.testing.assert_close(new_value, torch.stack(values))


@pytest.mark.parametrize("env_id", ["PointGoal", "AntGoal", "HopperRandParams"])
def test_varibad_oracle_sees_the_true_task_and_trains_no_vae(tmp_path, env_id):
    run_baseline("varibad", tmp_path, "--env-id", env_id, "--oracle", *TINY["varibad"])
    run_dir = only_run_dir(tmp_path)
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    assert summary["args"]["oracle"] and "test_return_episode_2" in summary
    split = envs_clustered.make_task_split(env_id)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tags = EventAccumulator(run_dir).Reload().Tags()["scalars"]
    assert "losses/policy_loss" in tags and not any(tag.startswith("losses/vae_") for tag in tags)
    obs_dim = envs_clustered.make_env(env_id).observation_space.shape[0]
    policy = torch.load(os.path.join(run_dir, "resume.pt"), weights_only=False)["agent"]
    # state, time t / T and the true task, no latent
    assert policy["critic.0.weight"].shape[1] == obs_dim + 1 + split.train_tasks.shape[1]


def test_oracle_on_env_replays_its_run_and_scores_the_same_walk_on_the_partial_reward(tmp_path):
    """benchmarks/oracle_on_env.py (issue 28: AntGoalPartial's oracle is AntGoal's): on the run's own env it gives the
    run's last evaluation, on AntGoalPartial the same trajectories (final distances) under the other reward, and it
    refuses an env whose test tasks the oracle was not told, unless `--other-tasks` (AntU's goals) and the robot is
    the same."""
    run_baseline("varibad", tmp_path, "--env-id", "AntGoal", "--oracle", *TINY["varibad"])
    run_dir = only_run_dir(tmp_path)
    last = json.loads(open(os.path.join(run_dir, "eval.jsonl")).read().splitlines()[-1])

    def score(env_id, *flags):
        return subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "oracle_on_env.py"), run_dir,
                               "--env-id", env_id, *flags], capture_output=True, text=True, cwd=ROOT,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})

    own, partial, other = score("AntGoal"), score("AntGoalPartial"), score("HumanoidDir")
    assert own.returncode == 0 and partial.returncode == 0, own.stderr + partial.stderr
    own, partial = json.loads(own.stdout), json.loads(partial.stdout)
    assert own["return_episode_2"] == pytest.approx(last["return_episode_2"], abs=1e-6)
    assert partial["final_distance_episode_2"] == pytest.approx(own["final_distance_episode_2"], abs=1e-9)
    assert partial["return_episode_2"] != pytest.approx(own["return_episode_2"], abs=1e-3)
    assert other.returncode != 0 and "test tasks are not those of AntGoal" in other.stderr
    uniform, other_robot = score("AntU", "--other-tasks"), score("HumanoidDir", "--other-tasks")
    assert score("AntU").returncode != 0 and uniform.returncode == 0, uniform.stderr
    assert "not the AntGoal tasks it trained on" in uniform.stderr
    assert json.loads(uniform.stdout)["return_episode_2"] != pytest.approx(own["return_episode_2"], abs=1e-3)
    assert other_robot.returncode != 0 and "another robot or task layout" in other_robot.stderr
