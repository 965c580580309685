"""plots.py's statistics (rliable) on small synthetic groups whose answers are known by hand: the IQM, its
bootstrap CI, the probability of improvement, performance profiles, and the table, compare and curves built on them."""
import json
import os
import re

import numpy as np
import pytest
from rliable import metrics

import launch
import plots
from test_milet import ROOT

PLOTS = os.path.join(ROOT, "plots.py")


def fake_run(group, seed, ep2, nmi=None, env_id="PointGoal", ep1=None, steps=(0, 100, 200)):
    """A run whose evaluations all score ep2 (episode 2) and ep1 (episode 1, default ep2 - 10); nmi=None: no clusters."""
    record = {"return_episode_1": ep2 - 10 if ep1 is None else ep1, "return_episode_2": ep2}
    if nmi is not None:
        record.update(nmi_end_of_exploration=nmi, nmi_ceiling=0.5)
    records = [{"iteration": i, "global_step": step, **record} for i, step in enumerate(steps)]
    return plots.Run(f"runs/{env_id}__{group}__{seed}", env_id, seed, {"env_id": env_id, "exp_name": group, "seed": seed}, records)


def write_run(root, run):
    """The run folder plots.py reads: args.json and eval.jsonl."""
    path = os.path.join(root, os.path.basename(run.path))
    os.makedirs(path)
    json.dump(run.args, open(os.path.join(path, "args.json"), "w"))
    open(os.path.join(path, "eval.jsonl"), "w").write("".join(json.dumps(r) + "\n" for r in run.records))
    return path


def test_iqm_is_the_mean_of_the_middle_half_and_ignores_an_outlier():
    point, low, high = plots.iqm_ci([1, 2, 3, 4, 5, 6, 7, 8])
    assert point == pytest.approx((3 + 4 + 5 + 6) / 4)  # 8 runs: the 2 lowest and the 2 highest are cut
    assert 1 <= low <= point <= high <= 8
    assert plots.iqm_ci([1, 2, 3, 4, 5, 6, 7, 1000])[0] == pytest.approx(4.5)  # the mean would be 128.5
    assert plots.iqm_ci([1, 2, 9])[0] == pytest.approx(4.0)  # 3 runs: int(0.25 * 3) = 0 cut, the plain mean


def test_the_bootstrap_ci_holds_the_estimate_narrows_with_more_runs_and_repeats_with_its_seed():
    rng = np.random.default_rng(0)
    few, many = rng.normal(size=5), rng.normal(size=200)
    for scores in (few, many):
        point, low, high = plots.iqm_ci(scores)
        assert low <= point <= high
    assert np.ptp(plots.iqm_ci(many)[1:]) < np.ptp(plots.iqm_ci(few)[1:])
    assert plots.iqm_ci(few, seed=3) == plots.iqm_ci(few, seed=3) != plots.iqm_ci(few, seed=4)
    np.random.seed(7)  # rliable resamples with numpy's global generator: plots.py seeds it and then restores it
    plots.iqm_ci(few)
    after = np.random.rand()
    np.random.seed(7)
    assert np.random.rand() == after
    assert plots.iqm_ci([7.0, 7.0, 7.0]) == (7.0, 7.0, 7.0)  # no spread, no interval


def test_probability_of_improvement_of_known_groups():
    better, worse = [10, 11, 12, 13, 14], [0, 1, 2, 3, 4]
    assert plots.improvement_ci(better, worse) == (1.0, 1.0, 1.0)  # every resample keeps every pair in order
    assert plots.improvement_ci(worse, better) == (0.0, 0.0, 0.0)
    assert plots.improvement_ci(better, better)[0] == 0.5  # identical groups
    # A = 3, 4, 5 against B = 1, 2, 4: 3 beats 2 of B, 4 beats 2 and ties 1, 5 beats 3 -> 7.5 of 9 pairs
    point, low, high = plots.improvement_ci([3, 4, 5], [1, 2, 4])
    assert point == pytest.approx(7.5 / 9) and 0 <= low <= point <= high <= 1
    # runs x tasks: A dominates on task 1 and equals B on task 2 -> the mean over tasks of 1 and 0.5
    a, b = np.array([[5.0, 1.0], [6.0, 2.0]]), np.array([[0.0, 1.0], [1.0, 2.0]])
    assert plots.improvement_ci(a, b)[0] == pytest.approx(0.75)


def test_iqm_curve_is_rliables_iqm_at_every_evaluation():
    rows = np.random.default_rng(1).normal(size=(6, 9))  # 6 runs, 9 evaluations
    centre, low, high = plots.iqm_curve_ci(rows)
    np.testing.assert_allclose(centre, [metrics.aggregate_iqm(rows[:, [t]]) for t in range(9)])
    assert np.all(low <= centre + 1e-12) and np.all(centre <= high + 1e-12) and np.all(high - low > 0)


def test_table_reports_the_iqm_with_its_ci_per_env_and_group():
    runs = ([fake_run("milet", s, ep2, nmi) for s, ep2, nmi in zip(range(1, 6), [-100, -90, -80, -70, 500], [.1, .2, .3, .4, .5])]
            + [fake_run("varibad", 1, -120)])
    table = plots.results_table(runs)
    milet = next(line for line in table.splitlines() if "| milet |" in line)
    ep2_iqm, low, high = plots.iqm_ci([-100, -90, -80, -70, 500])
    assert ep2_iqm == pytest.approx(-80)  # 5 runs: the lowest and the highest are cut; the outlier 500 is ignored
    assert milet.startswith("| PointGoal | milet | 5 | -90.0 [") and f"| -80.0 [{low:.1f}, {high:.1f}] |" in milet
    assert "| 0.300 [" in milet and "| 0.60 [" in milet and "(ceiling 0.500) |" in milet  # NMI / ceiling: 0.3 / 0.5
    varibad = next(line for line in table.splitlines() if "| varibad |" in line)
    assert varibad == "| PointGoal | varibad | 1 | -130.0 (1 run, no CI) | -120.0 (1 run, no CI) | n/a (no clusters) | n/a |"
    assert "95% stratified bootstrap CI, 2000 resamples" in table


def test_compare_gives_the_probability_of_improvement_per_env_and_over_all_envs():
    runs = [fake_run(group, seed, base + seed, nmi, env_id=env)
            for env in ("PointGoal", "AntGoal")
            for group, base, nmi in (("milet", 0, 0.4), ("varibad", -50, None), ("rl2", -50, None))
            for seed in (1, 2, 3)]
    table = plots.comparison_table(runs, "milet", "varibad", reps=200)
    lines = table.splitlines()
    assert lines[0] == "| Environment | milet runs | varibad runs | P(milet > varibad), episode 2 return | P(milet > varibad), NMI |"
    assert lines[2] == "| AntGoal | 3 | 3 | 1.00 [1.00, 1.00] | n/a (varibad infers no clusters) |"
    assert lines[3] == "| PointGoal | 3 | 3 | 1.00 [1.00, 1.00] | n/a (varibad infers no clusters) |"
    assert lines[4] == "| all 2 envs | 3 | 3 | 1.00 [1.00, 1.00] | n/a (varibad infers no clusters) |"
    same = plots.comparison_table(runs, "varibad", "rl2", reps=200)  # the same scores: no improvement either way
    assert "| PointGoal | 3 | 3 | 0.50 [" in same
    uneven = plots.comparison_table(runs[:-1], "milet", "rl2", reps=200)  # rl2 lost a run on AntGoal
    assert "| all 2 envs | 3 | - | n/a (a different number of runs on some env) |" in uneven


@pytest.mark.parametrize("a, b, message", [
    ("milett", "varibad", "no group 'milett' among the runs (grouped by exp_name); the groups are milet, varibad"),
    ("milet", "milet", "compare needs two different groups"),
])
def test_compare_rejects_bad_groups(a, b, message):
    runs = [fake_run("milet", 1, 0.0, 0.3), fake_run("varibad", 1, 0.0)]
    with pytest.raises(plots.PlotError, match=re.escape(message)):
        plots.comparison_table(runs, a, b)


def test_compare_needs_a_shared_env():
    with pytest.raises(plots.PlotError, match="have no environment in common"):
        plots.comparison_table([fake_run("milet", 1, 0.0), fake_run("varibad", 1, 0.0, env_id="AntGoal")], "milet", "varibad")


def test_curves_draw_the_iqm_and_its_band_or_the_mean():
    ep2 = [-100, -90, -80, -70, 500]
    runs = [fake_run("milet", s, e) for s, e in zip(range(1, 6), ep2)]
    for stat, expected in (("iqm", -80.0), ("mean", np.mean(ep2))):
        fig = plots.plot_curves(runs, stat=stat)
        (line,) = [line for line in fig.axes[1].lines if line.get_label() == "milet (n=5)"]
        np.testing.assert_allclose(line.get_ydata(), expected)
        assert plots.BAND_TITLES[stat] in fig.texts[0].get_text()
        band = fig.axes[1].collections[0].get_paths()[0].vertices[:, 1]  # the fill between the band's bounds
        assert band.min() <= expected <= band.max()


def test_performance_profile_is_the_fraction_of_runs_above_each_threshold():
    ep2 = [-100, -90, -80, -70]
    fig = plots.plot_profiles([fake_run("milet", s, e) for s, e in zip(range(1, 5), ep2)], reps=200)
    (line,) = [line for line in fig.axes[1].lines if line.get_label() == "milet (n=4)"]
    expected = [np.mean(np.array(ep2) > tau) for tau in line.get_xdata()]
    np.testing.assert_allclose(line.get_ydata(), expected)
    assert line.get_ydata()[0] == 1 and line.get_ydata()[-1] == 0


def test_command_line_table_and_compare_on_run_folders(tmp_path):
    paths = [write_run(tmp_path, fake_run(group, seed, base + seed, 0.3 if group == "milet" else None))
             for group, base in (("milet", 0), ("varibad", -50)) for seed in (1, 2, 3)]
    table = launch.run_script(PLOTS, "table", *paths, "--reps", "200")
    assert table.returncode == 0, table.stderr
    assert "| PointGoal | milet | 3 | -8.0 [-9.0, -7.0] | 2.0 [1.0, 3.0] | 0.300 [0.300, 0.300] |" in table.stdout
    out = tmp_path / "compare.md"
    compare = launch.run_script(PLOTS, "compare", "milet", "varibad", *paths, "--out", str(out), "--reps", "200")
    assert compare.returncode == 0, compare.stderr
    assert "| PointGoal | 3 | 3 | 1.00 [1.00, 1.00] | n/a (varibad infers no clusters) |" in out.read_text()
    for args, message in ([["compare", "milet", "rl2", *paths], "no group 'rl2' among the runs"],
                          [["compare", "milet", "varibad", str(tmp_path / "missing")], "no run folder at"]):
        result = launch.run_script(PLOTS, *args)
        assert result.returncode != 0 and message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
