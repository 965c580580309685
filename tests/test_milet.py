"""End-to-end tests of milet_ppo_continuous.py: bad input, every env id, checkpoints, NaN handling, reproducibility."""
import json
import os
import re
import runpy
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import envs_clustered
import launch
import meta_test

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "milet_ppo_continuous.py")


def tiny(iterations=2):
    """Flags for a run of a few iterations of 4 trials of 2 x 5 steps (40 frames each)."""
    return ["--episode-length", "5", "--num-envs", "4", "--num-minibatches", "2", "--total-timesteps",
            str(40 * iterations), "--vae-batch-size", "4", "--vae-num-prefixes", "3", "--vae-updates", "1", "--eval-every", "1", "--no-cuda"]


def run_script(tmp_path, *flags, check=True):
    """`python milet_ppo_continuous.py --runs-dir tmp_path flags...`, run inside the test process (tests/launch.py)."""
    return launch.run_script(SCRIPT, "--runs-dir", tmp_path, *flags, check=check)


def only_run_dir(tmp_path):
    (run_dir,) = [os.path.join(tmp_path, d) for d in os.listdir(tmp_path)]
    return run_dir


@pytest.mark.parametrize("flags, message", [
    (["--env-id", "AntGoall"], "unknown --env-id 'AntGoall'; valid ids: PointGoal, AntGoal"),
    (["--num-clusters", "0"], "--num-clusters must be >= 1"),
    (["--num-envs", "10"], "must be a positive multiple of --num-minibatches"),
    (["--total-timesteps", "100"], "is below one iteration"),
    (["--num-minibatches", "0"], "--num-minibatches must be >= 1"),
    (["--eval-every", "0"], "--eval-every must be >= 1"),
    (["--async-envs"], "--async-envs is for the MuJoCo envs"),
    (["--vae-buffer-size", "0"], "--vae-buffer-size must be >= 1, got 0"),
    (["--update-threads", "0"], "--update-threads must be >= 1, got 0"),
    (["--vae-num-decodes", "-1"], "--vae-num-decodes must be >= 0 (0: all), got -1"),
    (["--vae-num-prefixes", "-3"], "--vae-num-prefixes must be >= 0 (0: all), got -3"),
    (["--gamma", "1.5"], "--gamma must be in [0, 1], got 1.5"),
    (["--gae-lambda", "-0.1"], "--gae-lambda must be in [0, 1], got -0.1"),
    (["--clip-coef", "0"], "--clip-coef must be > 0, got 0.0"),
    (["--exploit-lr", "0"], "--exploit-lr must be > 0, got 0.0"),
    (["--explore-lr", "-1e-4"], "--explore-lr must be > 0, got -0.0001"),
    (["--vae-lr", "nan"], "--vae-lr must be > 0, got nan"),
    (["--credit-exploration", "--authors-boundary"], "which --authors-boundary makes a time limit: add --no-credit"),
    (["--env-id", "AntGoal", "--authors-boundary"], "--credit-exploration (the Ant rows' default) runs pi_psi's GAE"),
    (["--relabel-share", "1.5"], "--relabel-share must be in [0, 1], got 1.5"),
    (["--env-id", "HumanoidDir", "--relabel-share", "0.5"], "--relabel-share needs a goal env"),
])
def test_bad_input_is_rejected_with_one_line(flags, message, monkeypatch):
    """parse_args stops with `milet_ppo_continuous.py: error: ...` (one line) before the script builds anything."""
    import milet_ppo_continuous as milet

    monkeypatch.setattr(sys, "argv", [SCRIPT])
    with pytest.raises(SystemExit) as stop:
        milet.parse_args(flags)
    assert str(stop.value.code).startswith("milet_ppo_continuous.py: error: ") and message in str(stop.value.code)
    assert "\n" not in str(stop.value.code)


@pytest.mark.parametrize("flags, message", [
    (["--env-id", "AntGoall"], "unknown --env-id 'AntGoall'"),
    (["--vae-buffer-size", "0"], "--vae-buffer-size must be >= 1"),  # was a ZeroDivisionError after the folder
    (["--eval-checkpoint", "no/such/milet.pt"], "no checkpoint at no/such/milet.pt"),
])
def test_bad_input_from_the_command_line_writes_nothing(tmp_path, flags, message):
    result = run_script(tmp_path, *flags, check=False)
    assert result.returncode != 0 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert os.listdir(tmp_path) == []


def test_resuming_another_scripts_run_is_one_line_and_leaves_it_whole(tmp_path):
    """milet --resume on a VariBAD run folder (its args have --oracle, which MILET has not) used to end in a
    TypeError; now one line names the flags and the run folder is left as it was."""
    varibad = os.path.join(ROOT, "varibad_ppo_continuous.py")
    launch.run_script(varibad, "--runs-dir", tmp_path, *tiny(1), "--checkpoint-every", "1", check=True)
    run_dir = only_run_dir(tmp_path)
    before = {name: open(os.path.join(run_dir, name), "rb").read() for name in os.listdir(run_dir)}
    result = launch.run_script(SCRIPT, "--resume", run_dir)
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1
    assert "is not a run of milet_ppo_continuous.py" in result.stderr and "--oracle" in result.stderr
    assert {name: open(os.path.join(run_dir, name), "rb").read() for name in os.listdir(run_dir)} == before


@pytest.mark.parametrize("env_id", envs_clustered.ENV_IDS)
def test_every_env_runs_two_iterations_end_to_end(tmp_path, env_id):
    lambda_s = ["--lambda-s", "1"] if "RandParams" in env_id else []
    run_script(tmp_path, "--env-id", env_id, *tiny(), *lambda_s)
    run_dir = only_run_dir(tmp_path)
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    assert summary["env_id"] == env_id and summary["global_step"] == 2 * 4 * 10
    assert len(summary["nmi_per_step"]) == 5
    assert len(summary["test_clusters_pred"]) == len(summary["test_clusters_true"]) == 32
    records = [json.loads(line) for line in open(os.path.join(run_dir, "eval.jsonl"))]
    assert [r["iteration"] for r in records] == [0, 1, 2]
    assert ("exploration_xy" in records[-1]) == ("RandParams" not in env_id)
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(run_dir))
    assert json.load(open(os.path.join(run_dir, "args.json"))) == summary["args"]
    # the references beside the figures: NMI ceiling of the seed-0 test tasks, and PointGoal's analytic oracle
    expected_ceiling = 1.0 if env_id in ("AntU", "HopperRandParams", "WalkerRandParams") else 0.594
    assert round(summary["nmi_ceiling"], 3) == expected_ceiling
    assert all(round(r["nmi_ceiling"], 3) == expected_ceiling for r in records)
    if env_id == "PointGoal":  # episodes of 5 steps here; -19.0 per 100-step episode in the default run
        oracle = envs_clustered.point_goal_oracle_returns(envs_clustered.make_task_split(env_id).test_tasks, 5, 2)
        assert summary["oracle_return_episode_1"] == summary["oracle_return_episode_2"] == oracle[0]
    else:
        assert not any(key.startswith("oracle_") for key in summary)


def test_per_env_defaults_fill_only_the_flags_left_unset():
    import milet_ppo_continuous as milet

    args = milet.parse_args(["--env-id", "HopperRandParams", "--kl-weight", "0.5"])
    assert args.kl_weight == 0.5 and args.lambda_s == 1.0 and args.exploit_lr == 5e-4
    assert args.policy_layers == (128, 128) and args.total_timesteps == 10_000_000
    # every row is complete, and PointGoal's row is what Args() shows (no None defaults left)
    assert all(set(row) == set(milet.ENV_DEFAULTS["AntGoal"]) for row in milet.ENV_DEFAULTS.values())
    assert all(getattr(milet.Args(), name) == value for name, value in milet.ENV_DEFAULTS["PointGoal"].items())
    assert milet.parse_args([]) == milet.Args()
    # each prefix decodes a random 50 (Hopper, Walker) or 100 (Humanoid) steps, as the authors' configs; Ant all
    decodes = {env_id: row["vae_num_decodes"] for env_id, row in milet.ENV_DEFAULTS.items()}
    assert decodes == {"PointGoal": 0, "AntGoal": 0, "AntGoalPartial": 0, "AntU": 0, "HumanoidDir": 100,
                       "HumanoidDirSparse": 100, "HopperRandParams": 50, "WalkerRandParams": 50}


def test_the_ant_rows_explore_with_the_credit_a_wide_start_and_q_c_from_z():
    """Issue 47: the Ant rows' explorer is credited with pi_phi's returns, starts wide (std 1, mean layer gain 1,
    entropy 1e-3), reads q(c) from z's responsibilities and takes eight CBVI updates an iteration (docs/antgoal.md);
    every other row keeps the paper's explorer and one update, and the paper's is one command away
    (docs/paper_settings.md)."""
    import milet_ppo_continuous as milet

    def explorer(args):
        return (args.credit_exploration, args.explore_init_logstd, args.explore_mean_gain, args.explore_ent_coef,
                args.cluster_posterior)

    for env_id in ("AntGoal", "AntGoalPartial", "AntU"):
        ant = milet.parse_args(["--env-id", env_id])
        assert explorer(ant) == (True, 0.0, 1.0, 1e-3, "responsibility")
        assert ant.vae_updates == 8  # eight CBVI updates an iteration where the authors take one
    assert explorer(milet.Args()) == (False, None, 0.01, 1e-2, "head")
    for env_id in ("HumanoidDir", "HumanoidDirSparse", "HopperRandParams", "WalkerRandParams"):
        args = milet.parse_args(["--env-id", env_id])
        assert (args.credit_exploration, args.explore_init_logstd, args.explore_mean_gain,
                args.cluster_posterior, args.vae_updates) == (False, None, 0.01, "head", 1)
    # docs/paper_settings.md's command for the authors' configuration parses to their values
    doc = open(os.path.join(os.path.dirname(SCRIPT), "docs", "paper_settings.md")).read()
    command = doc.split("## The authors' AntGoal configuration")[1].split("```bash")[1].split("```")[0]
    words = command.replace("\\\n", " ").split()
    assert words[:2] == ["python", "milet_ppo_continuous.py"]
    paper = milet.parse_args(words[2:])
    assert explorer(paper) == (False, None, 1.0, 1e-3, "head") and paper.authors_boundary and paper.vae_updates == 1
    assert (paper.exploit_lr, paper.explore_lr, paper.exploit_ent_coef, paper.clip_coef, paper.update_epochs,
            paper.num_minibatches, paper.init_logstd, paper.clip_vloss, paper.target_kl, paper.lambda_i,
            paper.total_timesteps) == (1e-4, 1e-4, 1e-4, 0.05, 2, 8, 0.0, True, None, 1e-3, 50_000_000)
    # the ablation without pi_psi runs on the Ant rows too: the credit is then a no-op
    assert not milet.parse_args(["--env-id", "AntGoal", "--no-exploration-policy"]).exploration_policy


def test_relabelled_trials_enter_the_buffer_with_another_training_goals_rewards(tmp_path):
    """--relabel-share 1: the stored trials keep their states and actions, and their rewards are those of another
    training goal (PointGoal's r = -|xy' - g|_1 - 0.01 |a|^2, solved for g over the training goals)."""
    from cbvi import TrialBuffer

    trials = {}
    for share in ("0", "1"):
        run_script(tmp_path / share, *tiny(1), "--relabel-share", share, "--checkpoint-every", "1")
        state = torch.load(os.path.join(only_run_dir(tmp_path / share), "resume.pt"), weights_only=False)["buffer"]
        buffer = TrialBuffer(state["capacity"], 2, 5, 2, 2)
        buffer.load_state_dict(state)
        trials[share] = [[part.float() for part in buffer.trial(slot)] for slot in range(buffer.size)]
    goals = torch.as_tensor(envs_clustered.make_task_split("PointGoal").train_tasks, dtype=torch.float32)
    explaining_goals = {}
    for share, stored in trials.items():
        explaining_goals[share] = []
        for states, actions, rewards in stored:
            next_xy = states[:, 1:].reshape(-1, 2)
            control = 0.01 * actions.clamp(-1, 1).square().sum(-1)
            predicted = -(next_xy[None] - goals[:, None]).abs().sum(-1) - control  # (goals, T)
            error, best = (predicted - rewards).abs().max(-1).values.min(0)
            assert error < 0.02  # float16 storage
            explaining_goals[share].append(int(best))
    for (states, actions, _), (states_1, actions_1, _) in zip(trials["0"], trials["1"]):
        assert torch.equal(states, states_1) and torch.equal(actions, actions_1)
    assert all(own != other for own, other in zip(explaining_goals["0"], explaining_goals["1"]))


def test_ablation_flags_and_any_cluster_count_run(tmp_path):
    run_script(tmp_path / "a", *tiny(), "--no-exploration-policy", "--no-stacked-gru", "--lambda-i", "0",
               "--lambda-p", "0", "--num-clusters", "1", "--num-exploit-episodes", "2", "--no-policy-cluster-probs")
    summary = json.load(open(os.path.join(only_run_dir(tmp_path / "a"), "summary.json")))
    assert {"test_return_episode_1", "test_return_episode_2", "test_return_episode_3"} <= set(summary)
    assert set(summary["test_clusters_pred"]) == {0}
    run_script(tmp_path / "b", "--env-id", "AntGoal", "--num-clusters", "6", *tiny())  # the usage line
    summary = json.load(open(os.path.join(only_run_dir(tmp_path / "b"), "summary.json")))
    assert summary["args"]["num_clusters"] == 6 and set(summary["test_clusters_pred"]) <= set(range(6))
    assert summary["args"]["credit_exploration"] and summary["args"]["cluster_posterior"] == "responsibility"


def test_checkpoint_reruns_the_same_evaluation(tmp_path):
    """Both checkpoint layouts: --save-model's milet_ppo_continuous.pt and --resume's resume.pt."""
    run_script(tmp_path, *tiny(), "--save-model")
    run_dir = only_run_dir(tmp_path)
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    for checkpoint in ("milet_ppo_continuous.pt", "resume.pt"):
        result = launch.run_script(SCRIPT, "--eval-checkpoint", os.path.join(run_dir, checkpoint))
        assert result.returncode == 0, result.stderr[-3000:]
        rerun = json.loads(result.stdout.strip().splitlines()[-1])
        assert rerun["return_episode_2"] == pytest.approx(summary["test_return_episode_2"], abs=1e-5), checkpoint
        assert rerun["nmi_per_step"] == pytest.approx(summary["nmi_per_step"], abs=1e-9), checkpoint


def test_same_seed_gives_the_same_numbers(tmp_path):
    """Run a is a process of its own, run b runs inside the test process, as most tests' runs do (tests/launch.py):
    the two must agree to the last digit."""
    subprocess.run([sys.executable, SCRIPT, "--runs-dir", str(tmp_path / "a"), *tiny(), "--seed", "3"], check=True,
                   capture_output=True, cwd=ROOT, timeout=600)
    run_script(tmp_path / "b", *tiny(), "--seed", "3")
    first, second = (json.load(open(os.path.join(only_run_dir(tmp_path / n), "summary.json"))) for n in "ab")
    for key in ("test_return_episode_1", "test_return_episode_2", "nmi_per_step", "test_clusters_pred"):
        assert first[key] == second[key]
    run_script(tmp_path / "c", *tiny(), "--seed", "4")  # another seed: other policies, noise and training tasks
    other = json.load(open(os.path.join(only_run_dir(tmp_path / "c"), "summary.json")))
    assert other["test_return_episode_2"] != first["test_return_episode_2"]


def test_nan_loss_stops_with_the_term_named_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    import cbvi

    real_loss, calls = cbvi.CBVI.loss, []

    def loss_turning_nan(self, *batch):
        losses = real_loss(self, *batch)
        calls.append(1)
        if len(calls) == 2:  # the second CBVI update diverges
            losses["kl_z"] = losses["kl_z"] * float("nan")
        return losses

    monkeypatch.setattr(cbvi.CBVI, "loss", loss_turning_nan)
    monkeypatch.setattr(sys, "argv", [SCRIPT, "--runs-dir", str(tmp_path), *tiny(3), "--save-model"])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(SCRIPT, run_name="__main__")
    assert "loss term 'kl_z' is nan at iteration 2" in str(stop.value.code)
    run_dir = only_run_dir(tmp_path)
    checkpoint = torch.load(os.path.join(run_dir, "milet_ppo_continuous.pt"), weights_only=False)
    assert checkpoint["iteration"] == 1
    assert [json.loads(line)["iteration"] for line in open(os.path.join(run_dir, "eval.jsonl"))] == [0, 1]
    assert not os.path.exists(os.path.join(run_dir, "summary.json"))
    assert json.load(open(os.path.join(run_dir, "args.json")))["seed"] == 1  # written when the run started


def kill_and_resume(tmp_path, script: str, flags: list) -> tuple[str, str]:
    """Run `script` with `flags` in one go, and again killed (SIGKILL) right after its first resume.pt appears,
    mid-run, then continued with --resume; CPU, one thread. What the killed run wrote must still parse. Returns the
    two run folders (whole, resumed), for the caller to compare."""
    one_thread = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch.run_script(script, "--runs-dir", tmp_path / "whole", *flags, check=True)  # in-process: one torch thread
    killed = subprocess.Popen([sys.executable, script, "--runs-dir", str(tmp_path / "cut"), *flags], env=one_thread,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    while not (os.path.isdir(tmp_path / "cut") and os.listdir(tmp_path / "cut")
               and os.path.exists(os.path.join(only_run_dir(tmp_path / "cut"), "resume.pt"))):
        assert killed.poll() is None, "the run ended before its first checkpoint"
        time.sleep(0.01)
    killed.kill()
    killed.wait()
    run_dir = only_run_dir(tmp_path / "cut")
    assert not os.path.exists(os.path.join(run_dir, "summary.json")), "the kill came too late to interrupt the run"
    checkpoint = torch.load(os.path.join(run_dir, "resume.pt"), weights_only=False)
    assert checkpoint["iteration"] >= 1
    assert [json.loads(line)["iteration"] for line in open(os.path.join(run_dir, "eval.jsonl"))][0] == 0
    json.load(open(os.path.join(run_dir, "args.json")))
    launch.run_script(script, "--resume", run_dir, check=True)
    return only_run_dir(tmp_path / "whole"), run_dir


@pytest.mark.parametrize("script", [SCRIPT, os.path.join(ROOT, "varibad_ppo_continuous.py"), os.path.join(ROOT, "rl2_ppo_continuous.py")])
def test_a_killed_run_resumes_to_the_same_evaluations_as_an_uninterrupted_run(tmp_path, script):
    """24 iterations in one go == killed after the first checkpoint (iteration 5) and resumed: the resumed run drops
    the evaluations written after its checkpoint and recomputes them identically (eval.jsonl and summary)."""
    flags = [*tiny(24), "--eval-every", "4", "--checkpoint-every", "5", "--no-cuda"]
    if script.endswith("rl2_ppo_continuous.py"):  # RL2 has no inference model: drop its flags
        flags = [f for i, f in enumerate(flags) if not (f.startswith("--vae") or flags[i - 1].startswith("--vae"))]
    whole, resumed = kill_and_resume(tmp_path, script, flags)
    lines = [open(os.path.join(d, "eval.jsonl")).readlines() for d in (whole, resumed)]
    assert len(lines[0]) == 7 and lines[1] == lines[0]
    summaries = [json.load(open(os.path.join(d, "summary.json"))) for d in (whole, resumed)]
    assert summaries[0]["test_return_episode_2"] == summaries[1]["test_return_episode_2"]


def test_a_carried_checkpoint_continues_a_lost_run_from_its_most_recent_trials(tmp_path, monkeypatch):
    """A run lost after its checkpoint of iteration 4 (its machine gone at iteration 8); `plots.py slim --keep-trials
    3` keeps its numbers and a resume.pt whose trial buffer holds the 3 newest of its 16 trials and everything else
    as it was; `--resume` on that copy says so, finishes the run after the evaluations it kept, and carried.jsonl
    records the cut."""
    log_evaluation = meta_test.log_evaluation

    def machine_lost_at_8(writer, run_dir, eval_lines, record):
        if record["iteration"] == 8:
            raise RuntimeError("the machine is gone")
        log_evaluation(writer, run_dir, eval_lines, record)

    monkeypatch.setattr(meta_test, "log_evaluation", machine_lost_at_8)
    assert run_script(tmp_path / "lost", *tiny(12), "--eval-every", "4", "--checkpoint-every", "4",
                      check=False).returncode == 1
    monkeypatch.undo()
    lost, carried = only_run_dir(tmp_path / "lost"), tmp_path / "carried"
    launch.run_script(os.path.join(ROOT, "plots.py"), "slim", lost, "--out", carried, "--keep-trials", "3", check=True)
    full, cut = (torch.load(os.path.join(d, "resume.pt"), weights_only=False) for d in (lost, carried))
    assert (full["iteration"], full["buffer"]["size"], cut["buffer"]["size"]) == (4, 16, 3)
    assert all(torch.equal(a, b) for a, b in zip(cut["buffer"]["trials"], full["buffer"]["trials"][13:]))
    for name in ("cbvi", "exploit_agent", "explore_agent"):
        assert all(torch.equal(cut[name][key], value) for key, value in full[name].items())
    resumed = launch.run_script(SCRIPT, "--resume", carried, check=True)
    assert "resuming a carried checkpoint: its trial buffer keeps the 3 most recent of 16 trials" in resumed.stderr
    records = [json.loads(line) for line in open(carried / "eval.jsonl")]
    assert [r["iteration"] for r in records] == [0, 4, 8, 12] and records[-1]["global_step"] == 12 * 40
    before = [json.loads(line) for line in open(os.path.join(lost, "eval.jsonl"))]
    assert records[1] == before[1] and records[0] == {k: v for k, v in before[0].items()
                                                      if k not in ("exploration_xy", "exploration_clusters")}
    assert [json.loads(line) for line in open(carried / "carried.jsonl")] == [
        {"iteration": 4, "global_step": 160, "trials_kept": 3, "trials_in_buffer": 16}]
    assert os.path.isfile(carried / "summary.json")


@pytest.mark.parametrize("flags, message", [
    (["--seed", "2"], "--resume takes the run's own flags, drop --seed"),
    ([], "no resume.pt in"),
])
def test_bad_resume_is_one_line(tmp_path, flags, message):
    result = launch.run_script(SCRIPT, "--resume", tmp_path, *flags)
    assert result.returncode != 0 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_resuming_a_finished_run_changes_none_of_its_files(tmp_path):
    """--resume of a run that already ended (its resume.pt is from the last iteration) trains nothing and leaves
    eval.jsonl and summary.json (with its measured SPS) exactly as they were; without a summary.json (killed after
    its last checkpoint) it writes one."""
    run_script(tmp_path, *tiny(2))
    run_dir = only_run_dir(tmp_path)
    before = {name: open(os.path.join(run_dir, name)).read() for name in ("eval.jsonl", "summary.json")}
    launch.run_script(SCRIPT, "--resume", run_dir, check=True)
    assert {name: open(os.path.join(run_dir, name)).read() for name in before} == before
    os.remove(os.path.join(run_dir, "summary.json"))  # a run killed after its last checkpoint: the summary is written
    launch.run_script(SCRIPT, "--resume", run_dir, check=True)
    assert json.load(open(os.path.join(run_dir, "summary.json")))["test_return_episode_2"] == \
        json.loads(before["summary.json"])["test_return_episode_2"]


def test_rollouts_feed_the_policies_the_argmax_belief_as_evaluation_does(tmp_path, monkeypatch):
    """Issue 25, item 1: the policies see z under the argmax cluster in training rollouts as in evaluation, so they
    are tested on the input they trained on; the Gumbel-softmax sample is drawn only inside CBVI.loss."""
    import cbvi

    real_loss, real_gumbel, where = cbvi.CBVI.loss, cbvi.F.gumbel_softmax, []
    in_loss = [False]

    def loss(self, *batch):
        in_loss[0] = True
        try:
            return real_loss(self, *batch)
        finally:
            in_loss[0] = False

    def gumbel_softmax(*args, **kwargs):
        where.append("loss" if in_loss[0] else "outside")
        return real_gumbel(*args, **kwargs)

    monkeypatch.setattr(cbvi.CBVI, "loss", loss)
    monkeypatch.setattr(cbvi.F, "gumbel_softmax", gumbel_softmax)
    monkeypatch.setattr(sys, "argv", [SCRIPT, "--runs-dir", str(tmp_path), *tiny(2)])
    runpy.run_path(SCRIPT, run_name="__main__")
    assert where and set(where) == {"loss"}


def test_training_trials_nmi_is_scored_on_the_clusters_of_the_tasks_drawn(tmp_path, monkeypatch):
    """Issue 25, item 3: every evaluation after the first logs the NMI of the clusters inferred on the training
    trials since the last one (at step 20, here the episode's end, and at the exploration's end), against the true
    clusters of the tasks the iterations drew."""
    import sklearn.metrics

    real_nmi, calls = sklearn.metrics.normalized_mutual_info_score, []

    def nmi(true, pred):
        calls.append((list(true), list(pred)))
        return real_nmi(true, pred)

    monkeypatch.setattr(sklearn.metrics, "normalized_mutual_info_score", nmi)
    monkeypatch.setattr(sys, "argv", [SCRIPT, "--runs-dir", str(tmp_path), *tiny(4), "--eval-every", "2"])
    runpy.run_path(SCRIPT, run_name="__main__")
    records = [json.loads(line) for line in open(os.path.join(only_run_dir(tmp_path), "eval.jsonl"))]
    assert "train_nmi_end_of_exploration" not in records[0]
    split, task_rng = envs_clustered.make_task_split("PointGoal"), np.random.default_rng(1)
    drawn = [split.train_clusters[task_rng.integers(500, size=4)].tolist() for _ in range(4)]
    train_calls = [c for c in calls if len(c[0]) == 8]  # 2 iterations x 4 trials; the test tasks' calls have 32
    assert [c[0] for c in train_calls] == [drawn[0] + drawn[1]] * 2 + [drawn[2] + drawn[3]] * 2
    for record, (step_20, end) in zip(records[1:], zip(train_calls[::2], train_calls[1::2])):
        assert record["train_nmi_step_20"] == real_nmi(*step_20)
        assert record["train_nmi_end_of_exploration"] == real_nmi(*end)


def test_cbvi_on_run_trials_rescores_the_runs_own_evaluation_and_retrains(tmp_path):
    """benchmarks/cbvi_on_run_trials.py (issue 28, item 4) on a finished tiny run: the models it rebuilds from
    resume.pt replay the run's last evaluation (its returns), its offline re-encoding of those test trials gives the
    NMI that evaluation logged, and a fresh CBVI trains and is scored."""
    run_script(tmp_path, *tiny(3), "--num-clusters", "2")
    run_dir = only_run_dir(tmp_path)
    last = json.loads(open(os.path.join(run_dir, "eval.jsonl")).read().splitlines()[-1])
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "cbvi_on_run_trials.py"), run_dir,
                             "--updates", "2", "--report-every", "1", "--probe-tasks", "8", "--lambda-i", "0.5",
                             "--gumbel-temperature", "0.5", "--z-ignores-c"],
                            capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    replayed = next(line for line in lines if line.startswith("test trials:"))
    assert f"returns {last['return_episode_1']:.3f} / {last['return_episode_2']:.3f}," in replayed, (replayed, last)
    own = next(line for line in lines if line.startswith("the run's CBVI: NMI"))
    assert f"end {last['nmi_end_of_exploration']:.3f};" in own, (own, last["nmi_end_of_exploration"])
    assert "fresh CBVI, overrides {'lambda_i': 0.5, 'gumbel_temperature': 0.5, 'z_ignores_c': True}" in result.stdout
    # the fresh model is scored before its first update too, then after each
    assert [line.split(":")[0] for line in lines if line.startswith("update ")] == ["update 0", "update 1", "update 2"]
    for line in [own] + [line for line in lines if line.startswith("update ")]:
        firing, silent = map(int, re.search(r"firing on >= 1% of the test steps (\d+) of 32, on none (\d+)", line).groups())
        assert firing + silent <= 32 and re.search(r"q\(c\) logits' std over tasks and steps \d", line), line
    assert sum("z own: reward error" in line and "z shuffled: reward error" in line for line in lines) == 2
