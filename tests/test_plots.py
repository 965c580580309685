"""plots.py on tiny real training runs: every figure is written, shows what the runs logged, and bad input fails in one line."""
import json
import os

import numpy as np
import pytest

import launch
import plots
from test_milet import ROOT, SCRIPT, tiny

PLOTS = os.path.join(ROOT, "plots.py")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two seeds of a tiny PointGoal run, one tiny HopperRandParams run, one PointGoal run of another group and one
    with --num-clusters auto."""
    root = tmp_path_factory.mktemp("runs")
    made = {}
    for name, flags in {"seed1": ["--seed", "1"], "seed2": ["--seed", "2"],
                        "ablation": ["--no-exploration-policy", "--exp-name", "ablation"],
                        "hopper": ["--env-id", "HopperRandParams", "--lambda-s", "1"],
                        "auto": ["--num-clusters", "auto", "--max-clusters", "6", "--exp-name", "auto"]}.items():
        launch.run_script(SCRIPT, "--runs-dir", str(root / name), *tiny(3), *flags, check=True)
        (made[name],) = [str(p) for p in (root / name).iterdir()]
    return made


def records(path):
    return [json.loads(line) for line in open(os.path.join(path, "eval.jsonl"))]


def test_curves_plot_the_mean_over_seeds_of_what_was_logged(runs, tmp_path):
    fig = plots.plot_curves(plots.load_runs([runs["seed1"], runs["seed2"], runs["ablation"]]))
    seeds = [records(runs["seed1"]), records(runs["seed2"])]
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["episode 1 (exploration)", "episode 2 (exploitation)",
                                               "NMI at the end of the exploration episode",
                                               "episode 1: median final distance to the goal",
                                               "episode 2: median final distance to the goal", ""]
    for ax, key in zip(axes, ["return_episode_1", "return_episode_2", "nmi_end_of_exploration",
                              "final_distance_episode_1_median", "final_distance_episode_2_median"]):
        milet_line = next(line for line in ax.lines if line.get_label().startswith("milet_ppo_continuous"))
        np.testing.assert_allclose(milet_line.get_xdata(), [r["global_step"] for r in seeds[0]])
        np.testing.assert_allclose(milet_line.get_ydata(), np.mean([[r[key] for r in s] for s in seeds], axis=0))
        assert any(line.get_label().startswith("ablation (n=1)") for line in ax.lines)
    # a group of one run: its band is +-1 standard error of the mean return over the test tasks
    ablation = records(runs["ablation"])
    band = axes[1].collections[-1].get_paths()[0].vertices[:, 1]
    sem_low = [r["return_episode_2"] - r["return_episode_2_sem"] for r in ablation]
    sem_high = [r["return_episode_2"] + r["return_episode_2_sem"] for r in ablation]
    np.testing.assert_allclose([band.min(), band.max()], [min(sem_low), max(sem_high)], rtol=1e-6)
    # the references, dashed: PointGoal's oracle and the untrained policy beside the returns, the ceiling beside NMI
    last, untrained = seeds[0][-1], records(runs["ablation"])[0]  # iteration 0 of all three runs: their mean
    untrained = [np.mean([r[0][f"return_episode_{k}"] for r in (*seeds, [untrained])]) for k in (1, 2)]
    for ax, references in zip(axes, [{"oracle (knows the goal)": last["oracle_return_episode_1"],
                                      "untrained policy": untrained[0]},
                                     {"oracle (knows the goal)": last["oracle_return_episode_2"],
                                      "untrained policy": untrained[1]},
                                     {"ceiling (nearest centre of the true tasks)": last["nmi_ceiling"]}]):
        for label, value in references.items():
            (line,) = [line for line in ax.lines if line.get_label() == label]
            assert line.get_linestyle() == "--" and np.allclose(line.get_ydata(), value)


def test_curves_on_a_log_frame_axis_draw_the_same_lines(runs, tmp_path):
    paths = [runs["seed1"], runs["ablation"]]
    linear, logarithmic = (plots.plot_curves(plots.load_runs(paths), log_frames=log) for log in (False, True))
    assert {ax.get_xscale() for ax in linear.axes} == {"linear"}
    assert {ax.get_xscale() for ax in logarithmic.axes} == {"log"}
    for ax_linear, ax_log in zip(linear.axes, logarithmic.axes):
        assert [line.get_label() for line in ax_linear.lines] == [line.get_label() for line in ax_log.lines]
        for a, b in zip(ax_linear.lines, ax_log.lines):
            np.testing.assert_array_equal(a.get_xydata(), b.get_xydata())
    out = tmp_path / "log.png"  # the flag on the command line, run as the other subcommands are
    result = launch.run_script(PLOTS, "curves", *paths, "--log-frames", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


def test_traces_show_the_logged_xy_and_clusters(runs):
    fig = plots.plot_traces(plots.load_run(runs["seed1"]))
    last = records(runs["seed1"])[-1]
    xy = np.asarray(last["exploration_xy"])
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.lines[0].get_xydata(), xy[0])  # first test task's trace, start included
    steps = ax.collections[0]  # the coloured points of task 0: one per step, coloured by the logged cluster
    np.testing.assert_allclose(steps.get_offsets(), xy[0, 1:])
    expected = [plots.CLUSTER_COLOURS(k) for k in last["exploration_clusters"][0]]
    np.testing.assert_allclose(steps.get_facecolors(), expected)


def test_traces_of_a_run_without_clusters_are_coloured_by_the_true_cluster():
    """A committed VariBAD AntGoal run (no clusters inferred, Fig. 3b): each test task's trace in its true cluster's
    colour, and the title says so."""
    run = os.path.join(ROOT, "docs", "run_data", "antgoal", "issue24_varibad_s1")
    last = records(run)[-1]
    ax = plots.plot_traces(plots.load_run(run)).axes[0]
    np.testing.assert_allclose(ax.lines[5].get_xydata(), np.asarray(last["exploration_xy"])[5])
    expected = plots.CLUSTER_COLOURS(last["test_clusters_true"][5])
    np.testing.assert_allclose(ax.collections[5].get_facecolors(), [expected] * (len(last["exploration_xy"][5]) - 1))
    assert "coloured by its true cluster" in ax.get_title()


def test_traces_of_several_runs_are_panels_side_by_side(runs):
    """Fig. 3a beside 3b: one panel per run, in the order given, each drawn as the run's own one-panel figure."""
    varibad = os.path.join(ROOT, "docs", "run_data", "antgoal", "issue24_varibad_s1")
    milet = os.path.join(ROOT, "docs", "run_data", "antgoal", "vae8_s1")
    fig = plots.plot_traces(plots.load_runs([milet, varibad]))
    assert len(fig.axes) == 2
    for ax, path in zip(fig.axes, (milet, varibad)):
        alone = plots.plot_traces(plots.load_run(path)).axes[0]
        assert ax.get_title() == alone.get_title()
        np.testing.assert_allclose(ax.lines[3].get_xydata(), alone.lines[3].get_xydata())
        np.testing.assert_allclose(ax.collections[3].get_facecolors(), alone.collections[3].get_facecolors())
    assert "final cluster" in fig.axes[0].get_title() and "true cluster" in fig.axes[1].get_title()


def test_nmi_plots_the_per_step_nmi_of_the_last_evaluation(runs):
    fig = plots.plot_nmi(plots.load_runs([runs["seed1"], runs["seed2"]]))
    expected = np.mean([records(runs[s])[-1]["nmi_per_step"] for s in ("seed1", "seed2")], axis=0)
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), expected)
    np.testing.assert_allclose(fig.axes[0].lines[0].get_xdata(), np.arange(1, 6))
    chance = np.mean([plots.nmi_chance(tuple(records(runs[s])[-1]["test_clusters_true"]),
                                       tuple(records(runs[s])[-1]["test_clusters_pred"])) for s in ("seed1", "seed2")])
    chance_line = [line for line in fig.axes[0].lines if line.get_label().startswith("chance")]
    assert len(chance_line) == 1 and np.allclose(chance_line[0].get_ydata(), chance)


def test_params_heatmap_is_the_mean_multiplier_per_inferred_cluster(runs):
    import envs_clustered

    run = plots.load_run(runs["hopper"])
    split = envs_clustered.make_task_split("HopperRandParams", seed=0)
    predicted = np.asarray(records(runs["hopper"])[-1]["test_clusters_pred"])
    body_mass = envs_clustered.param_group_slices("HopperRandParams")["body_mass"]
    first = sorted(set(predicted))[0]
    expected = split.test_tasks[predicted == first][:, body_mass].mean()
    fig = plots.plot_params(run)
    np.testing.assert_allclose(fig.axes[0].images[0].get_array()[0, 0], expected)


def test_schedules_are_the_training_scripts_eq_12():
    """plots.py draws Fig. 6 with its own copy of Eq. 12 and the training script's default parameters."""
    import torch

    import milet_ppo_continuous as milet

    args = milet.Args()
    assert plots.SCHEDULE_DEFAULTS == {name: getattr(args, name) for name in plots.SCHEDULE_DEFAULTS}
    fig = plots.plot_schedules(horizon=100)
    h_line, c_line = fig.axes[0].lines[:2]
    gamma_h, gamma_c = milet.reward_weights(torch.arange(101, dtype=torch.float32), 100, args)
    np.testing.assert_allclose(h_line.get_ydata(), gamma_h, atol=1e-7)
    np.testing.assert_allclose(c_line.get_ydata(), gamma_c, atol=1e-7)


def test_table_numbers_match_a_computation_of_their_own(runs):
    # --stat mean: the table as it was before the IQM became the default (tests/test_plots_stats.py checks the IQM)
    table = plots.results_table(plots.load_runs([runs["seed1"], runs["seed2"], runs["hopper"]]), stat="mean")
    finals = [records(runs[s])[-1] for s in ("seed1", "seed2")]
    ep2 = [f["return_episode_2"] for f in finals]
    nmi = [f["nmi_end_of_exploration"] for f in finals]
    row = next(line for line in table.splitlines() if line.startswith("| PointGoal |"))
    assert f"{np.mean(ep2):.1f} ± {np.std(ep2):.1f}" in row
    assert f"{np.mean(nmi):.3f} ± {np.std(nmi):.3f}" in row
    assert "| 2 |" in row
    ceiling = finals[0]["nmi_ceiling"]
    assert f"| {np.mean(np.divide(nmi, ceiling)):.2f} (ceiling {ceiling:.3f}) |" in row
    assert any(line.startswith("| HopperRandParams |") for line in table.splitlines())


def test_weights_plot_the_logged_cluster_weights_and_clusters_found(runs):
    logged = records(runs["auto"])
    weights = np.array([r["cluster_weights"] for r in logged])
    assert weights.shape[1] == 6 and np.allclose(weights.sum(1), 1, atol=1e-3)
    assert not np.allclose(weights[-1], weights[0])  # the weights were learned, not left at U(6)
    stack_ax, in_use_ax = plots.plot_cluster_weights(plots.load_run(runs["auto"])).axes
    # the top of the stack of cluster k is the cumulative sum of the logged weights up to k
    for k, band in enumerate(stack_ax.collections):
        top = band.get_paths()[0].vertices[:, 1].max()
        assert np.isclose(top, np.cumsum(weights, axis=1)[:, k].max())
    found, effective, k_max = in_use_ax.lines
    np.testing.assert_allclose(found.get_ydata(), [r["num_clusters_found"] for r in logged])
    expected = np.exp(-(weights * np.log(weights / weights.sum(1, keepdims=True))).sum(1) / weights.sum(1))
    np.testing.assert_allclose(effective.get_ydata(), expected, rtol=1e-6)
    assert np.allclose(k_max.get_ydata(), 6)
    # a fixed-K run logs U(K): its effective number of clusters stays K
    fixed = plots.plot_cluster_weights(plots.load_run(runs["seed1"])).axes[1].lines[1].get_ydata()
    assert np.allclose(fixed, 4, atol=1e-3)


@pytest.mark.parametrize("subcommand", ["curves", "traces", "nmi", "params", "schedules", "weights"])
def test_every_subcommand_writes_a_non_empty_image(runs, tmp_path, subcommand):
    target = {"curves": [runs["seed1"], runs["seed2"]], "traces": [runs["seed1"]], "nmi": [runs["seed1"]],
              "params": [runs["hopper"]], "schedules": [], "weights": [runs["auto"]]}[subcommand]
    out = tmp_path / f"{subcommand}.png"
    result = launch.run_script(PLOTS, subcommand, *target, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


def test_bad_input_is_one_line_without_traceback(runs, tmp_path):
    empty = tmp_path / "PointGoal__x__1__1"
    empty.mkdir()
    (empty / "eval.jsonl").write_text("")
    running = tmp_path / "PointGoal__milet_ppo_continuous__3__1"  # a run still in progress: one evaluation so far
    running.mkdir()
    (running / "eval.jsonl").write_text(open(os.path.join(runs["seed1"], "eval.jsonl")).readline())
    cases = [(["traces", str(tmp_path / "missing")], "no run folder"),
             (["nmi", str(empty)], "has no evaluations yet"),
             (["curves", runs["seed1"], runs["hopper"]], "runs of different environments in one figure"),
             (["traces", runs["seed1"], "--record", "99"], "there is no evaluation 99"),
             (["traces", runs["seed1"], "--out", str(tmp_path / "traces.jpg")], "one of .png, .svg, .pdf"),
             (["curves"], "give at least one run folder"),
             (["curves", runs["seed1"], str(running)], "share 1 evaluation step(s); is one still running")]
    for args, message in cases:
        result = launch.run_script(PLOTS, *args)
        assert result.returncode != 0 and message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_late_table_is_the_late_mean_and_its_standard_error(runs):
    """plots.py late: per run, the mean over the evaluations in the last 20% of frames +- their standard error; per
    group of several runs, the mean of the runs' late averages +- the standard error over the runs."""
    table = plots.late_table(plots.load_runs([runs["seed1"], runs["seed2"]]), late=0.5)
    lates = []
    for name in ("seed1", "seed2"):
        rs = records(runs[name])
        late = [r["return_episode_2"] for r in rs if r["global_step"] >= 0.5 * rs[-1]["global_step"]]
        lates.append(np.mean(late))
        row = next(line for line in table.splitlines() if os.path.basename(runs[name]) in line)
        assert f"{np.mean(late):.1f} ± {np.std(late, ddof=1) / np.sqrt(len(late)):.1f}" in row
        assert f"| {len(late)} |" in row
    group = next(line for line in table.splitlines() if "mean of 2 runs" in line)
    assert f"{np.mean(lates):.1f} ± {np.std(lates, ddof=1) / np.sqrt(2):.1f}" in group
    # a column that only one run of the group logs (an older run without the reach): that run's value, labelled
    loaded = plots.load_runs([runs["seed1"], runs["seed2"]])
    for record in loaded[1].records:
        record.pop("exploration_reach_median")
    group = next(line for line in plots.late_table(loaded, late=0.5).splitlines() if "mean of 2 runs" in line)
    seed1 = records(runs["seed1"])
    reach = np.mean([r["exploration_reach_median"] for r in seed1 if r["global_step"] >= 0.5 * seed1[-1]["global_step"]])
    assert f"{reach:.3g} (1 of 2 runs)" in group and "nan" not in group
    # the NMI after 20 steps is nmi_per_step[19] (tiny runs explore fewer steps: give them 25 known ones)
    for index, record in enumerate(loaded[0].records):
        record["nmi_per_step"] = [0.0] * 19 + [0.1 * index] * 6
    table = plots.late_table(loaded[:1], late=0.5)
    step_20 = [0.1 * i for i, r in enumerate(loaded[0].records) if r["global_step"] >= 0.5 * seed1[-1]["global_step"]]
    header, row = table.splitlines()[0].split("|"), table.splitlines()[2].split("|")
    assert row[header.index(" nmi after 20 steps ")].strip().startswith(f"{np.mean(step_20):.3g} ± "), row
    window = plots.late_table(plots.load_runs([runs["seed1"]]), frames=(40, 80))  # --frames 40 80: evaluations 1, 2
    values = [r["return_episode_2"] for r in records(runs["seed1"])[1:3]]
    assert [r["global_step"] for r in records(runs["seed1"])[1:3]] == [40, 80]
    assert "| 2 | " in window and f"{np.mean(values):.1f} ± {np.std(values, ddof=1) / np.sqrt(2):.1f}" in window


def test_slim_copy_keeps_every_number_and_the_last_traces(runs, tmp_path):
    out = tmp_path / "slim"
    result = launch.run_script(PLOTS, "slim", runs["seed1"], "--out", str(out))
    assert result.returncode == 0, result.stderr
    full, slim = records(runs["seed1"]), records(out)
    assert slim[-1] == full[-1] and len(slim) == len(full) > 1
    for kept, record in zip(slim[:-1], full[:-1]):
        assert kept == {k: v for k, v in record.items() if k not in ("exploration_xy", "exploration_clusters")}
        assert "exploration_xy" in record and "exploration_xy" not in kept and "exploration_reach_median" in kept
    assert sorted(os.listdir(out)) == ["args.json", "eval.jsonl", "summary.json"]
    np.testing.assert_allclose(plots.plot_curves(plots.load_runs([str(out)])).axes[1].lines[0].get_ydata(),
                               [r["return_episode_2"] for r in full])



def test_slim_copy_of_a_run_from_before_the_reach_key_keeps_the_reach_of_its_traces(runs, tmp_path):
    """A run logged before exploration_reach_median existed: its slim copy, which drops the traces, gets the reach
    computed from them: what an evaluation logs today, within the traces' rounding to 1 mm."""
    old = tmp_path / "old"
    old.mkdir()
    full = records(runs["seed1"])
    for name in ("args.json", "summary.json"):
        (old / name).write_text(open(os.path.join(runs["seed1"], name)).read())
    (old / "eval.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "exploration_reach_median"})
                                            + "\n" for r in full))
    launch.run_script(PLOTS, "slim", str(old), "--out", str(tmp_path / "slim"), check=True)
    assert [r["exploration_reach_median"] for r in records(tmp_path / "slim")] == \
        pytest.approx([r["exploration_reach_median"] for r in full], abs=2e-3)
    assert len({r["exploration_reach_median"] for r in full}) > 1  # the runs move: the reach is not a constant


@pytest.mark.parametrize("run, out, message", [
    ("seed1", None, "--keep-trials must be >= 1, got 0"),
    (os.path.join(ROOT, "docs", "run_data", "antgoal", "issue25_milet_s1_1e7"), None, "no resume.pt in"),
    ("seed1", "seed1", "give an --out other than the run folder"),
])
def test_carrying_a_checkpoint_that_cannot_be_carried_is_one_line_and_writes_nothing(runs, tmp_path, run, out, message):
    """Bad --keep-trials, no checkpoint, or --out the run folder itself (the cut would replace the full resume.pt):
    one line, and no file is written or changed."""
    run = runs.get(run, run)
    out = run if out else str(tmp_path / "out")
    before = {name: open(os.path.join(run, name), "rb").read() for name in os.listdir(run)}
    keep = "0" if "must be >= 1" in message else "3"
    result = launch.run_script(PLOTS, "slim", run, "--out", out, "--keep-trials", keep)
    assert result.returncode != 0 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert {name: open(os.path.join(run, name), "rb").read() for name in os.listdir(run)} == before
    assert out == run or not os.path.exists(out)


def test_a_plain_slim_over_a_carried_copy_drops_its_resume_and_its_log(runs, tmp_path):
    """Slimming a run into a folder that holds an earlier carry (the run since finished) leaves no resume.pt of the
    earlier iteration and no carried.jsonl of a cut this run never had."""
    out = tmp_path / "copy"
    launch.run_script(PLOTS, "slim", runs["seed2"], "--out", str(out), "--keep-trials", "2", check=True)
    assert sorted(os.listdir(out)) == ["args.json", "carried.jsonl", "eval.jsonl", "resume.pt", "summary.json"]
    launch.run_script(PLOTS, "slim", runs["seed2"], "--out", str(out), check=True)
    assert sorted(os.listdir(out)) == ["args.json", "eval.jsonl", "summary.json"]


def test_curves_of_runs_without_clusters_have_no_nmi_panel():
    """A committed AntGoal oracle run (docs/run_data, no clusters): returns and final distances, no empty NMI axis."""
    run = os.path.join(ROOT, "docs", "run_data", "antgoal", "sweep", "r1_default")
    axes = plots.plot_curves(plots.load_runs([run])).axes
    assert [ax.get_title() for ax in axes] == ["episode 1 (exploration)", "episode 2 (exploitation)",
                                               "episode 1: median final distance to the goal",
                                               "episode 2: median final distance to the goal"]
    np.testing.assert_allclose(axes[3].lines[0].get_ydata(),
                               [r["final_distance_episode_2_median"] for r in records(run)])


def test_group_by_method_names_the_script_that_wrote_each_committed_run():
    """--group-by method groups one method's runs made under different exp names (VariBAD seed 1 ran as
    issue24_varibad, seeds 2-3 as issue25_varibad), read from a flag only that script has."""
    data = os.path.join(ROOT, "docs", "run_data")
    expected = {"antgoal/issue25_milet_s1_1e7": "milet", "antgoal/issue24_varibad_s1": "varibad",
                "antgoal/issue25_varibad_s2": "varibad", "antgoal/issue24_oracle_s1_targetkl002": "oracle",
                "antgoal/issue25_rl2_s1": "rl2", "pearl/pearl_2M_seed1": "pearl",
                "pointgoal/metacure_s1": "metacure"}
    runs = plots.load_runs([os.path.join(data, name) for name in expected])
    assert [plots.method_of(run.args) for run in runs] == list(expected.values())
    groups = plots.group_runs([r for r in runs if r.env_id == "AntGoal"], "method")
    assert {name: len(members) for name, members in groups.items()} == {"milet": 1, "varibad": 2, "oracle": 1, "rl2": 1}
    assert plots.method_of({"env_id": "AntGoal", "exp_name": "x", "seed": 1}) == "?"  # a folder name alone says nothing


def test_nmi_chance_is_the_nmi_of_shuffled_predictions(runs):
    """plots.py late's chance column: the NMI that the predicted labels reach once shuffled over the tasks. One
    predicted cluster scores 0 however it is shuffled; a perfect clustering of 32 tasks in 4 clusters of 8 scores 1,
    and about 0.13 shuffled (the floor that docs/results.md quotes for NMI on 32 test tasks)."""
    true = tuple(k % 4 for k in range(32))
    assert plots.nmi_chance(true, (2,) * 32) == 0.0
    shuffled = plots.nmi_chance(true, true)
    assert 0.09 < shuffled < 0.17, shuffled
    assert plots.nmi_chance(true, true, seed=1) != shuffled  # the shuffles are random, the mean of 200 is stable
    assert abs(plots.nmi_chance(true, true, seed=1) - shuffled) < 0.02
    # the late table averages each late evaluation's chance level, as it does the NMI itself
    rs = records(runs["seed1"])
    late = [plots.nmi_chance(tuple(r["test_clusters_true"]), tuple(r["test_clusters_pred"]))
            for r in rs if r["global_step"] >= 0.5 * rs[-1]["global_step"]]
    table = plots.late_table(plots.load_runs([runs["seed1"]]), late=0.5).splitlines()
    header, row = table[0].split("|"), table[2].split("|")
    assert row[header.index(" nmi chance end of exploration ")].strip().startswith(f"{np.mean(late):.3g} ± "), row
