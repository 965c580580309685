"""The paper's figures, drawn from the files a training run writes to runs/<run_name>/.

A tyro command-line tool with one subcommand per figure (and `slim`, a small copy of a run folder, and `frames`, a
--capture-video MP4 as a frame strip or a GIF); every function can also be imported.

    python plots.py curves runs/PointGoal__*   --out docs/curves.png     # Fig. 2 and 4: test return over frames, + NMI
    python plots.py traces runs/<run> [<run>]  --out docs/traces.png     # Fig. 3a-b, 5, 8: exploration traces by cluster
    python plots.py nmi runs/PointGoal__*      --out docs/nmi.png        # Fig. 3c: NMI over the exploration episode
    python plots.py params runs/<rand-params run> --out params.png       # Fig. 7: multipliers per inferred cluster
    python plots.py schedules --out schedules.png                        # Fig. 6: gamma_h(t) and gamma_c(t)
    python plots.py table runs/*                                         # Markdown table of final returns and NMI
    python plots.py late runs/*                                          # late averages with standard errors
    python plots.py compare milet varibad runs/*                         # P(milet improves on varibad), with its CI
    python plots.py profiles runs/PointGoal__* --out profiles.png        # performance profiles of the final scores
    python plots.py clusters runs/PointGoal__* --out clusters.png        # Table 1 as a figure: K = 2..8 and auto
    python plots.py weights runs/<auto run> --out weights.png            # --num-clusters auto: E[pi] over training
    python plots.py slim runs/<one run> --out docs/run_data/<name>       # a small copy of a run to keep in git
    python plots.py slim runs/<run> --out docs/run_data/<name> --keep-trials 200  # + a resume.pt to continue elsewhere
    python plots.py frames runs/<run>/videos/<video>.mp4 --out strip.png  # --capture-video: 6 frames side by side
    python plots.py frames runs/<run>/videos/<video>.mp4 --out trial.gif  # --capture-video: the trial as a GIF

Runs are grouped into lines by a field of their arguments (`--group-by`, default `exp_name`). The statistics over
the runs (seeds) of a group are those of Agarwal et al. (NeurIPS 2021), computed by the `rliable` package: the
interquartile mean (IQM, the 25% trimmed mean; with 3 runs or fewer it is the plain mean) with a 95% stratified
bootstrap confidence interval, the probability of improvement, and performance profiles. `--stat mean` gives the
mean and a band of one standard deviation instead. Bootstrap CIs use `--reps` resamples drawn from `--bootstrap-seed`, so
the same runs give the same numbers. Every figure uses the final evaluation of each run unless `--record` picks
another. Reads `eval.jsonl` (one line per evaluation) and `summary.json`/the run folder name.
"""
import contextlib
import functools
import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Annotated, Literal, Optional, Union

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import scipy.stats  # noqa: E402
import torch  # noqa: E402
import tyro  # noqa: E402
from sklearn.metrics import normalized_mutual_info_score  # noqa: E402

import envs_clustered  # noqa: E402
import meta_test  # noqa: E402
from cbvi import TrialBuffer  # noqa: E402

# Eq. 12's schedule parameters: the defaults of milet_ppo_continuous.Args (a test checks that they agree; a helper
# module does not import a training script)
SCHEDULE_DEFAULTS = dict(a_h=0.1, b_h=0.1, s_h=0.1, a_c=0.2, b_c=0.1, s_c=0.1)
CLUSTER_COLOURS = plt.get_cmap("tab10")  # inferred cluster k is drawn in colour k in every figure
Stat = Literal["iqm", "mean"]  # IQM with a 95% bootstrap CI (rliable), or mean +- std
REPS, SEED = 2000, 0  # bootstrap resamples and the seed they are drawn from
BAND_TITLES = {"iqm": "IQM over runs, band = 95% bootstrap CI", "mean": "mean over runs, band = 1 std"}


class PlotError(ValueError):
    """Bad input for a figure; the command line prints it as one line."""


@dataclass
class Run:
    path: str
    env_id: str
    seed: int
    args: dict
    records: list  # the eval.jsonl lines, in order


def load_run(path: str) -> Run:
    """Read one run folder; its env, seed and arguments come from args.json, else summary.json, else the folder name."""
    path = path.rstrip("/")
    eval_file = os.path.join(path, "eval.jsonl")
    if not os.path.isdir(path):
        raise PlotError(f"no run folder at {path}")
    if not os.path.isfile(eval_file) or os.path.getsize(eval_file) == 0:
        raise PlotError(f"{path} has no evaluations yet (eval.jsonl is missing or empty)")
    records = [json.loads(line) for line in open(eval_file) if line.strip()]
    args_file, summary_file = os.path.join(path, "args.json"), os.path.join(path, "summary.json")
    if os.path.isfile(args_file):  # written when the run starts
        args = json.load(open(args_file))
    elif os.path.isfile(summary_file):  # written at the end (runs from before args.json existed)
        args = json.load(open(summary_file))["args"]
    else:  # only the folder name: runs/<env_id>__<exp_name>__<seed>__<time>
        match = re.fullmatch(r"(\w+?)__(.+)__(\d+)__\d+", os.path.basename(path))
        if match is None:
            raise PlotError(f"{path}: no args.json or summary.json, and the folder name is not <env_id>__<exp_name>__<seed>__<time>")
        args = {"env_id": match[1], "exp_name": match[2], "seed": int(match[3])}
    return Run(path, args["env_id"], int(args["seed"]), args, records)


def load_runs(paths: list[str]) -> list[Run]:
    if not paths:
        raise PlotError("give at least one run folder")
    return [load_run(p) for p in paths]


def method_of(args: dict) -> str:
    """Which script wrote a run, read from a flag only that script has (args.json holds no script name)."""
    for flag, method in (("num_clusters", "milet"), ("intrinsic_weight", "metacure"), ("context_size", "pearl"),
                         ("gru_hidden_size", "rl2")):
        if flag in args:
            return method
    if "latent_dim" in args:  # VariBAD's script, and its --oracle reference
        return "oracle" if args.get("oracle") else "varibad"
    return "?"


def group_runs(runs: list[Run], group_by: str = "exp_name", one_env: bool = True) -> dict[str, list[Run]]:
    """{group name: runs}, by the value of the argument group_by, or by the script with group_by = "method" (for
    runs of one method under different exp names); one_env rejects runs of different environments in one figure."""
    envs = sorted({run.env_id for run in runs})
    if one_env and len(envs) > 1:
        raise PlotError(f"runs of different environments in one figure: {', '.join(envs)}; plot each env separately")
    groups: dict[str, list[Run]] = {}
    for run in runs:
        name = method_of(run.args) if group_by == "method" else str(run.args.get(group_by, "?"))
        groups.setdefault(name, []).append(run)
    return groups


def final_record(run: Run, index: int = -1) -> dict:
    """The evaluation number `index` of a run (-1 = the last)."""
    if not -len(run.records) <= index < len(run.records):
        raise PlotError(f"{run.path} has {len(run.records)} evaluations; there is no evaluation {index}")
    return run.records[index]


def _episode_keys(runs: list[Run]) -> list[str]:
    """return_episode_1, 2, ...: the same for every run, or a PlotError."""
    keys = {tuple(sorted((k for k in run.records[0] if re.fullmatch(r"return_episode_\d+", k)), key=lambda k: int(k.split("_")[-1])))
            for run in runs}
    if len(keys) > 1:
        raise PlotError("runs with different numbers of episodes per trial (--num-exploit-episodes) in one figure")
    return list(keys.pop())


# ------------------------------------------------------------------------------------------ statistics (rliable)
@contextlib.contextmanager
def _seeded(seed: int):
    """rliable 1.2 draws its bootstrap resamples from numpy's global generator (whatever random_state it is given):
    seed that one for the block and put its state back after, so the same runs always give the same CIs."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _bootstrap(score_dict: dict, func, reps: int, seed: int):
    """rliable's stratified bootstrap: ({key: func(scores)}, {key: 2 x ... lower and upper 95% bounds})."""
    from rliable import library as rly  # imported here, not at the top: it takes about 2 s (arch, pandas)

    with _seeded(seed):
        return rly.get_interval_estimates(score_dict, func, reps=reps)


def _matrix(scores) -> np.ndarray:
    """runs x tasks; a flat list is one score per run on one task."""
    scores = np.asarray(scores, dtype=float)
    return scores.reshape(len(scores), -1)


def _estimate(scores, statistic, reps: int, seed: int) -> tuple[float, float, float]:
    """(statistic(*scores), lower, upper): a scalar rliable statistic of one score matrix (or a pair) and its CI."""
    point, interval = _bootstrap({"x": scores}, lambda *x: np.array([statistic(*x)]), reps, seed)
    return float(point["x"][0]), float(interval["x"][0, 0]), float(interval["x"][1, 0])


def iqm_ci(scores, reps: int = REPS, seed: int = SEED) -> tuple[float, float, float]:
    """(IQM, lower, upper): the interquartile mean of the scores (runs x tasks, or one per run) and its 95%
    stratified bootstrap confidence interval."""
    from rliable import metrics

    return _estimate(_matrix(scores), metrics.aggregate_iqm, reps, seed)


def improvement_ci(scores_a, scores_b, reps: int = REPS, seed: int = SEED) -> tuple[float, float, float]:
    """(P(A > B), lower, upper): the probability that a run of A scores above a run of B on a task (a tie counts
    half), averaged over the tasks, with its 95% stratified bootstrap CI. Scores: runs x tasks, or one per run."""
    from rliable import metrics

    return _estimate((_matrix(scores_a), _matrix(scores_b)), metrics.probability_of_improvement, reps, seed)


def iqm_curve_ci(rows, reps: int = REPS, seed: int = SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The IQM over runs at every evaluation (rows: runs x evaluations) and its 95% stratified bootstrap band."""
    scores = np.asarray(rows, dtype=float)[:, None, :]  # runs x 1 task x evaluations
    # rliable's aggregate_iqm at each evaluation, all at once: its 25% trimmed mean (scipy) along the runs axis
    point, interval = _bootstrap({"x": scores}, lambda x: scipy.stats.trim_mean(x[:, 0], 0.25, axis=0), reps, seed)
    return point["x"], interval["x"][0], interval["x"][1]


def _band(ax, x, rows, label, colour=None, stat: Stat = "iqm", reps: int = REPS, seed: int = SEED):
    """The line over rows (runs) and its band: IQM and 95% bootstrap CI, or mean and +-1 std; returns the line."""
    rows = np.asarray(rows, dtype=float)
    if stat == "iqm":
        centre, low, high = iqm_curve_ci(rows, reps, seed)
    else:
        centre, spread = rows.mean(0), rows.std(0)
        low, high = centre - spread, centre + spread
    (line,) = ax.plot(x, centre, label=f"{label} (n={len(rows)})", color=colour)
    ax.fill_between(x, low, high, alpha=0.2, color=line.get_color())
    return centre


def _cell(values, stat: Stat, digits: int, reps: int, seed: int, spread: bool = True) -> str:
    """A table cell over runs: 'IQM [lower, upper]' or 'mean ± std' (spread=False: the mean alone)."""
    if stat == "mean":
        return f"{np.mean(values):.{digits}f}" + (f" ± {np.std(values):.{digits}f}" if spread else "")
    if len(values) == 1:
        return f"{values[0]:.{digits}f} (1 run, no CI)"
    point, low, high = iqm_ci(values, reps, seed)
    return f"{point:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _reference_line(ax, runs: list[Run], key: str, label: str, colour: str, record_index: int = -1) -> None:
    """A dashed horizontal line at a reference the runs logged (its mean over those that did; methods without
    clusters log no NMI ceiling)."""
    values = [final_record(run, record_index)[key] for run in runs if key in final_record(run, record_index)]
    if values:
        ax.axhline(float(np.mean(values)), ls="--", lw=1.2, color=colour, label=label)


def plot_curves(runs: list[Run], group_by: str = "exp_name", stat: Stat = "iqm", reps: int = REPS, seed: int = SEED,
                log_frames: bool = False):
    """Fig. 2/4: test return per episode of the trial against frames, and NMI at the end of exploration; on the goal
    envs a second row, the median distance to the goal at the end of each episode. A group of one run is drawn with
    the band of +-1 standard error of its mean return over the test tasks (return_episode_k_sem). log_frames puts
    frames on a log axis (methods whose budgets differ a hundredfold; frame 0 drops off it, and the untrained policy
    stays as its dashed line)."""
    groups = group_runs(runs, group_by)
    keys = _episode_keys(runs)
    distance_keys = [f"final_distance_episode_{k[len('return_episode_'):]}_median" for k in keys]
    has_distance = all(key in run.records[0] for run in runs for key in distance_keys)
    has_nmi = any("nmi_end_of_exploration" in run.records[0] for run in runs)  # methods without clusters log none
    rows, columns = (2 if has_distance else 1), len(keys) + has_nmi
    fig, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.6 * rows), squeeze=False)
    panels = list(zip(axes[0], keys + ["nmi_end_of_exploration"] * has_nmi))
    if has_distance:
        panels += list(zip(axes[1], distance_keys))
        if has_nmi:
            axes[1][-1].axis("off")
    for group_index, (name, members) in enumerate(groups.items()):
        # the band needs every run at every point: keep the evaluation steps that all runs of the group share
        steps = sorted(set.intersection(*({r["global_step"] for r in run.records} for run in members)))
        if len(steps) < 2:
            shortest = min(members, key=lambda run: run.records[-1]["global_step"])
            raise PlotError(f"the runs of group {name!r} share {len(steps)} evaluation step(s); is one still "
                            f"running or evaluated on another schedule? (shortest: {shortest.path})")
        if any(run.records[-1]["global_step"] > steps[-1] for run in members):
            print(f"plots.py: group {name!r}: runs differ in length; curves stop at frame {steps[-1]}", file=sys.stderr)
        by_step = [{r["global_step"]: r for r in run.records} for run in members]
        colour = f"C{group_index % 10}"
        for ax, key in panels:
            if not all(key in runs_at[s] for runs_at in by_step for s in steps):  # no clusters: no NMI
                continue
            sem_key = f"{key}_sem"
            if len(members) == 1 and all(sem_key in by_step[0][s] for s in steps):  # one run: its s.e. over tasks
                centre = np.array([by_step[0][s][key] for s in steps])
                sem = np.array([by_step[0][s][sem_key] for s in steps])
                (line,) = ax.plot(steps, centre, label=f"{name} (n=1) ± 1 s.e. over test tasks", color=colour)
                ax.fill_between(steps, centre - sem, centre + sem, alpha=0.2, color=line.get_color())
            else:
                _band(ax, steps, [[runs_at[s][key] for s in steps] for runs_at in by_step], name, colour, stat,
                      reps, seed)
    for k, ax in enumerate(axes[0]):  # references: the oracle and the untrained policy (iteration 0), the NMI ceiling
        if k < len(keys):
            _reference_line(ax, runs, f"oracle_{keys[k]}", "oracle (knows the goal)", "k")
            _reference_line(ax, runs, keys[k], "untrained policy", "0.5", record_index=0)
        else:
            _reference_line(ax, runs, "nmi_ceiling", "ceiling (nearest centre of the true tasks)", "k")
        title = "NMI at the end of the exploration episode" if k == len(keys) else (
            f"episode {k + 1} ({'exploration' if k == 0 else 'exploitation'})")
        ax.set(title=title, xlabel="environment frames", ylabel="NMI" if k == len(keys) else "test return")
        ax.grid(alpha=0.3)
    for k, key in enumerate(distance_keys if has_distance else []):  # reference: where the untrained policy ends
        ax = axes[1][k]
        _reference_line(ax, runs, key, "untrained policy", "0.5", record_index=0)
        ax.set(title=f"episode {k + 1}: median final distance to the goal", xlabel="environment frames",
               ylabel="distance (m)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    if log_frames:
        for ax in axes.flat:
            ax.set_xscale("log", nonpositive="mask")  # frame 0 (the untrained policy) is left off, not drawn at the edge
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{runs[0].env_id}: {BAND_TITLES[stat]}")
    fig.tight_layout()
    return fig


def plot_traces(runs: Union[Run, list[Run]], record_index: int = -1):
    """Fig. 3a-b: exploration-episode xy traces on the test tasks, one panel per run side by side (one row), each
    step coloured by the inferred cluster. A run that infers no clusters (VariBAD, RL2; Fig. 3b) has each trace
    coloured by its task's true cluster instead."""
    runs = [runs] if isinstance(runs, Run) else runs
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 5.5), squeeze=False, sharex=True, sharey=True)
    for ax, run in zip(axes[0], runs):
        _draw_traces(ax, run, record_index)
    fig.tight_layout()
    return fig


def _draw_traces(ax, run: Run, record_index: int):
    """One run's panel of plot_traces."""
    record = final_record(run, record_index)
    if "exploration_xy" not in record:
        raise PlotError(f"{run.env_id} logs no xy traces (only goal and direction envs do)")
    split = envs_clustered.make_task_split(run.env_id, seed=run.args.get("task_seed", 0))
    traces = np.asarray(record["exploration_xy"])
    inferred = "exploration_clusters" in record
    if inferred:
        clusters, goal_clusters = np.asarray(record["exploration_clusters"]), record["test_clusters_pred"]
    else:  # every step of a task's trace in its true cluster's colour
        goal_clusters = record["test_clusters_true"]
        clusters = np.repeat(np.asarray(goal_clusters)[:, None], traces.shape[1] - 1, axis=1)
    for trace, steps in zip(traces, clusters):
        ax.plot(trace[:, 0], trace[:, 1], color="0.8", lw=0.6, zorder=1)
        ax.scatter(trace[1:, 0], trace[1:, 1], c=[CLUSTER_COLOURS(k % 10) for k in steps], s=4, zorder=2)
    scale = 1.0 if envs_clustered._kind(run.env_id) == "goal" else envs_clustered.GOAL_RADIUS  # directions at r=2
    goals = split.test_tasks * scale
    ax.scatter(goals[:, 0], goals[:, 1], marker="x", s=60, lw=2, zorder=3,
               c=[CLUSTER_COLOURS(k % 10) for k in goal_clusters])
    centres = envs_clustered.cluster_centres(run.env_id) * scale
    ax.scatter(centres[:, 0], centres[:, 1], marker="*", s=250, c="k", zorder=4, label="true cluster centre")
    for k in sorted(set(np.unique(clusters)) | set(goal_clusters)):
        ax.scatter([], [], color=CLUSTER_COLOURS(k % 10), label=f"{'inferred' if inferred else 'true'} cluster {k}")
    colouring = "coloured by its final cluster" if inferred else "coloured by its true cluster"
    ax.set(xlabel="x", ylabel="y", aspect="equal",
           title=f"{run.env_id}, {method_of(run.args)} seed {run.seed}: exploration traces, "
                 f"step {record['global_step']:,}\n(x = test goal, {colouring})")
    ax.legend(fontsize=7, loc="best")


def plot_nmi(runs: list[Run], group_by: str = "exp_name", record_index: int = -1, stat: Stat = "iqm",
             reps: int = REPS, seed: int = SEED):
    """Fig. 3c: NMI(true, argmax q(c | tau_:t)) against the step t of the exploration episode."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, members in group_runs(runs, group_by).items():
        if any("nmi_per_step" not in final_record(run, record_index) for run in members):
            print(f"plots.py: group {name!r} infers no clusters (no NMI); left out", file=sys.stderr)
            continue
        rows = [final_record(run, record_index)["nmi_per_step"] for run in members]
        if len({len(r) for r in rows}) > 1:
            raise PlotError(f"group {name}: runs with different episode lengths")
        _band(ax, np.arange(1, len(rows[0]) + 1), rows, name, None, stat, reps, seed)
    _reference_line(ax, runs, "nmi_ceiling", "ceiling (nearest centre of the true tasks)", "k", record_index)
    chance = [c for c in (record_nmi_chance(final_record(run, record_index)) for run in runs) if c is not None]
    if chance:  # Fig. 3c's lower reference: each run's final labels shuffled over the test tasks
        ax.axhline(float(np.mean(chance)), ls=":", lw=1.2, color="0.4", label="chance (the final labels shuffled)")
    ax.set(xlabel="time step t of the exploration episode", ylabel="NMI", ylim=(-0.02, 1.02),
           title=f"{runs[0].env_id}: cluster inference on the test tasks\n({BAND_TITLES[stat]})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_cluster_counts(runs: list[Run], group_by: str = "exp_name", late: float = 0.8):
    """Table 1 as a figure, plus --num-clusters auto: per group (K = 2, 4, ..., auto), the late-average episode-2
    return, the late-average NMI with its reference, and the clusters found (evaluations at >= `late` of training)."""
    groups = group_runs(runs, group_by)
    keys = [("return_episode_2", "episode-2 return"), ("nmi_end_of_exploration", "NMI, end of exploration"),
            ("num_clusters_found", "clusters found (test tasks)")]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for x, (name, members) in enumerate(groups.items()):
        for ax, (key, _) in zip(axes, keys):
            values = []
            for run in members:
                last = run.records[-1]["global_step"]
                late_records = [r for r in run.records if r["global_step"] >= late * last and key in r]
                if not late_records:
                    raise PlotError(f"{run.path} logs no {key}")
                values.append(float(np.mean([r[key] for r in late_records])))
            ax.scatter(np.full(len(values), x), values, color="0.5", s=14, zorder=3)
            ax.errorbar(x, np.mean(values), yerr=np.std(values), fmt="o", color="C0", capsize=4)
    _reference_line(axes[0], runs, "oracle_return_episode_2", "oracle", "g")
    _reference_line(axes[1], runs, "nmi_ceiling", "nearest-centre reference", "k")
    for ax, (_, label) in zip(axes, keys):
        ax.set_xticks(range(len(groups)), list(groups), rotation=20)
        ax.set(title=label)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{runs[0].env_id}: late averages per run (grey) and mean +- std per group (blue)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_cluster_weights(run: Run):
    """--num-clusters auto (beyond the paper): the learned cluster weights E[pi] over training, stacked, and the
    clusters in use: the clusters found (holding a test task) and the effective number exp(H(E[pi]))."""
    records = [r for r in run.records if "cluster_weights" in r]
    if not records:
        raise PlotError(f"{run.path} logs no cluster_weights (a run of an older version?)")
    steps = [r["global_step"] for r in records]
    weights = np.array([r["cluster_weights"] for r in records])  # (evaluations, K)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    axes[0].stackplot(steps, weights.T, colors=[CLUSTER_COLOURS(k % 10) for k in range(weights.shape[1])],
                      labels=[f"cluster {k}" for k in range(weights.shape[1])])
    axes[0].set(title="cluster weights E[pi], stacked", xlabel="environment frames", ylabel="weight", ylim=(0, 1))
    axes[0].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes[1].plot(steps, [r["num_clusters_found"] for r in records], "o-", ms=3, label="clusters found (test tasks)")
    axes[1].plot(steps, np.exp(scipy.stats.entropy(weights, axis=1)), label="exp(entropy of E[pi])")
    axes[1].axhline(weights.shape[1], ls="--", color="k", label=f"K_max = {weights.shape[1]}")
    axes[1].set(title="clusters in use", xlabel="environment frames", ylim=(0, weights.shape[1] + 0.5))
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"{run.env_id}, seed {run.seed}: cluster weights over training", fontsize=9)
    fig.tight_layout()
    return fig


def params_table(run: Run, record_index: int = -1) -> tuple[np.ndarray, list[int]]:
    """(inferred clusters x parameter groups) mean multiplier of the test tasks, and the inferred cluster ids."""
    if envs_clustered._kind(run.env_id) != "params":
        raise PlotError(f"params needs a rand-params run (HopperRandParams, WalkerRandParams), not {run.env_id}")
    split = envs_clustered.make_task_split(run.env_id, seed=run.args.get("task_seed", 0))
    predicted = np.asarray(final_record(run, record_index)["test_clusters_pred"])
    slices = envs_clustered.param_group_slices(run.env_id).values()
    group_means = np.stack([split.test_tasks[:, sl].mean(1) for sl in slices], axis=1)  # (tasks, groups)
    ids = sorted(set(predicted.tolist()))
    return np.stack([group_means[predicted == k].mean(0) for k in ids]), ids


def plot_params(run: Run, record_index: int = -1):
    """Fig. 7: mean multiplier of each parameter group among the test tasks of each inferred cluster."""
    table, ids = params_table(run, record_index)
    fig, ax = plt.subplots(figsize=(6, 1.2 + 0.6 * len(ids)))
    image = ax.imshow(table, cmap="viridis", aspect="auto")
    for (i, j), value in np.ndenumerate(table):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="w", fontsize=8)
    ax.set_xticks(range(len(envs_clustered.PARAM_GROUPS)), envs_clustered.PARAM_GROUPS)
    ax.set_yticks(range(len(ids)), [f"inferred cluster {k}" for k in ids])
    ax.set_title(f"{run.env_id}: mean multiplier per inferred cluster")
    fig.colorbar(image, ax=ax, label="multiplier")
    fig.tight_layout()
    return fig


def plot_schedules(horizon: int = 100, **params):
    """Fig. 6: the exploration-reward weights gamma_h(t) and gamma_c(t) of Eq. 12; params: a_h, ..., s_c."""
    params = {**SCHEDULE_DEFAULTS, **params}
    t = np.arange(horizon + 1, dtype=float)
    fig, ax = plt.subplots(figsize=(5, 3.4))
    gamma_h = params["b_h"] - params["a_h"] * np.exp(-params["s_h"] * (horizon - t))  # Eq. 12
    gamma_c = -params["b_c"] + params["a_c"] * np.exp(-params["s_c"] * (horizon - t))  # Eq. 12
    ax.plot(t, gamma_h, label=r"$\gamma_h(t)$ (entropy reward $r_h$)")
    ax.plot(t, gamma_c, label=r"$\gamma_c(t)$ (consistency reward $r_c$)")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set(xlabel="time step t of the exploration episode", ylabel="weight", title="Eq. 12 schedules")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def results_table(runs: list[Run], group_by: str = "exp_name", record_index: int = -1, stat: Stat = "iqm",
                  reps: int = REPS, seed: int = SEED) -> str:
    """Markdown: one row per (env, group), final test returns and NMI over its runs (IQM [95% CI] or mean ± std);
    the NMI also as a fraction of its ceiling (the best any clustering of the true test tasks reaches), where the
    runs logged it."""
    keys = _episode_keys(runs)
    lines = ["| Environment | Group | Runs | " + " | ".join(f"Episode {k.split('_')[-1]} return" for k in keys)
             + " | NMI (end of exploration) | NMI / ceiling |", "|---" * (len(keys) + 5) + "|"]
    for env_id in sorted({run.env_id for run in runs}):
        for name, members in group_runs([r for r in runs if r.env_id == env_id], group_by).items():
            finals = [final_record(run, record_index) for run in members]
            cells = [_cell([f[k] for f in finals], stat, 1, reps, seed) for k in keys]
            nmi = [f["nmi_end_of_exploration"] for f in finals if "nmi_end_of_exploration" in f]
            nmi_cell = _cell(nmi, stat, 3, reps, seed) if len(nmi) == len(finals) else "n/a (no clusters)"
            ceilings = [f["nmi_ceiling"] for f in finals if "nmi_ceiling" in f]
            fraction = (f"{_cell(np.divide(nmi, ceilings), stat, 2, reps, seed, spread=False)} (ceiling {ceilings[0]:.3f})"
                        if len(nmi) == len(ceilings) == len(finals) else "n/a")
            lines.append(f"| {env_id} | {name} | {len(members)} | " + " | ".join(cells) + f" | {nmi_cell} | {fraction} |")
    if stat == "iqm":
        lines.append(f"\nIQM over the runs [95% stratified bootstrap CI, {reps} resamples] (rliable); with 3 runs or "
                     "fewer the IQM is the mean.")
    return "\n".join(lines)


def comparison_table(runs: list[Run], a: str, b: str, group_by: str = "exp_name", record_index: int = -1,
                     reps: int = REPS, seed: int = SEED) -> str:
    """Markdown: per env, the probability that group a improves on group b (rliable's probability of improvement)
    on the final return of each exploitation episode and, where both infer clusters, on the NMI, with 95% bootstrap
    CIs; and over all envs at once where both groups have the same number of runs on every env."""
    if a == b:
        raise PlotError(f"compare needs two different groups, not {a!r} twice")
    keys = _episode_keys(runs)[1:] + ["nmi_end_of_exploration"]  # the exploitation episodes, then the NMI
    by_env = {env: group_runs([r for r in runs if r.env_id == env], group_by) for env in sorted({r.env_id for r in runs})}
    names = sorted(set().union(*by_env.values()))
    for name in (a, b):
        if name not in names:
            raise PlotError(f"no group {name!r} among the runs (grouped by {group_by}); the groups are {', '.join(names)}")
    shared = [env for env, groups in by_env.items() if a in groups and b in groups]
    if not shared:
        raise PlotError(f"groups {a!r} and {b!r} have no environment in common")

    def values(env: str, name: str, key: str) -> list:  # the final value of each run; None where it logged none
        return [final_record(run, record_index).get(key) for run in by_env[env][name]]

    def cell(envs: list[str], key: str) -> str:  # P(a > b) on runs x envs matrices, averaged over the envs
        matrices = []
        for name in (a, b):
            columns = [values(env, name, key) for env in envs]
            if any(v is None for column in columns for v in column):
                return f"n/a ({name} infers no clusters)"
            if len({len(column) for column in columns}) > 1:
                return "n/a (a different number of runs on some env)"
            matrices.append(np.column_stack(columns))
        return "{:.2f} [{:.2f}, {:.2f}]".format(*improvement_ci(*matrices, reps, seed))

    titles = [f"episode {k.split('_')[-1]} return" if k != keys[-1] else "NMI" for k in keys]
    lines = [f"| Environment | {a} runs | {b} runs | " + " | ".join(f"P({a} > {b}), {t}" for t in titles) + " |",
             "|---" * (len(keys) + 3) + "|"]
    rows = [(env, [env]) for env in shared] + ([(f"all {len(shared)} envs", shared)] if len(shared) > 1 else [])
    for label, envs in rows:
        counts = [{len(by_env[env][name]) for env in envs} for name in (a, b)]
        lines.append(f"| {label} | " + " | ".join(str(c.pop()) if len(c) == 1 else "-" for c in counts) + " | "
                     + " | ".join(cell(envs, key) for key in keys) + " |")
    lines.append(f"\nP({a} > {b}): the probability that a run of {a} ends above a run of {b} (a tie counts half; 0.5 = "
                 f"no difference), rliable's probability of improvement [95% stratified bootstrap CI, {reps} resamples].")
    return "\n".join(lines)


@functools.lru_cache(maxsize=None)  # the late table asks for each record's value three times
def nmi_chance(true_clusters, predicted_clusters, shuffles: int = 200, seed: int = SEED) -> float:
    """The NMI that predicted labels with the same cluster sizes reach by chance: the mean NMI against the true clusters
    over `shuffles` random permutations of the predicted labels (about 0.13 for 32 tasks in 4 clusters of 8 each)."""
    rng = np.random.default_rng(seed)
    return float(np.mean([normalized_mutual_info_score(true_clusters, rng.permutation(predicted_clusters))
                          for _ in range(shuffles)]))


def record_nmi_chance(record: dict) -> Optional[float]:
    """nmi_chance of one evaluation record's test labels; None for a record without inferred clusters."""
    if "test_clusters_pred" not in record:
        return None
    return nmi_chance(tuple(record["test_clusters_true"]), tuple(record["test_clusters_pred"]))


def late_table(runs: list[Run], group_by: str = "exp_name", late: float = 0.8,
               frames: Optional[tuple[float, float]] = None) -> str:
    """Markdown: per run, the late average of every episode's test return, of its median final distance to the goal
    (goal envs), of the NMI at the end of exploration and after 20 steps (where logged) and of that NMI's chance
    level (the mean NMI of the same predicted labels shuffled over the test tasks): the mean over the
    evaluations at >= `late` of the run's last frame (or, given `frames`, at START <= frame <= END), +- the standard
    error over those evaluations; per group of several runs, the mean of the runs' late averages +- its standard
    error over the runs (seeds)."""
    keys = _episode_keys(runs)
    columns = keys + [f"final_distance_episode_{k[len('return_episode_'):]}_median" for k in keys]
    columns += ["exploration_reach_median", "nmi_end_of_exploration", "nmi_chance_end_of_exploration",
                "nmi_after_20_steps", "train_nmi_end_of_exploration", "train_nmi_step_20", "train_r_h", "train_kl_c",
                "train_evidence_same_cluster"]

    def value(record: dict, key: str):
        """the record's value of `key`, None where it logged none; nmi_after_20_steps is read off nmi_per_step"""
        if key == "nmi_after_20_steps":
            per_step = record.get("nmi_per_step", [])
            return per_step[19] if len(per_step) > 19 else None
        if key == "nmi_chance_end_of_exploration":
            return record_nmi_chance(record)
        return record.get(key)

    columns = [c for c in columns if any(value(r, c) is not None for run in runs for r in run.records)]

    def late_values(run: Run, key: str) -> list:
        start, end = frames or (late * run.records[-1]["global_step"], float("inf"))
        values = [value(r, key) for r in run.records if start <= r["global_step"] <= end]
        return [v for v in values if v is not None]

    def cell(values, single: Optional[str] = None) -> str:
        """mean ± standard error; with one value and a `single` label, that value and the label instead"""
        if not values:
            return "-"
        small = np.mean(np.abs(values)) < 10
        mean = f"{np.mean(values):.3g}" if small else f"{np.mean(values):.1f}"
        if len(values) == 1 and single:
            return f"{mean} ({single})"
        sem = np.std(values, ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
        return f"{mean} ± {sem:.2g}" if small else f"{mean} ± {sem:.1f}"

    header = ["group", "run (seed)", "frames", "evals" if frames else "late evals"] + [c.replace("_", " ") for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, members in group_runs(runs, group_by).items():
        for run in members:
            lines.append(f"| {name} | {os.path.basename(run.path.rstrip('/'))} ({run.seed}) | "
                         f"{run.records[-1]['global_step'] / 1e6:.2f}M | {len(late_values(run, keys[0]))} | "
                         + " | ".join(cell(late_values(run, c)) for c in columns) + " |")
        if len(members) > 1:
            means = [[float(np.mean(late_values(run, c))) for run in members if late_values(run, c)] for c in columns]
            lines.append(f"| **{name}** | mean of {len(members)} runs ± s.e. over runs | | | "
                         + " | ".join(cell(values, single=f"1 of {len(members)} runs") for values in means) + " |")
    return "\n".join(lines)


def plot_profiles(runs: list[Run], group_by: str = "exp_name", record_index: int = -1, reps: int = REPS, seed: int = SEED):
    """Performance profiles (Agarwal et al. 2021): for every threshold tau, the fraction of a group's runs whose
    final score is above tau, with a 95% bootstrap band; one axis per episode's return, and the NMI of the groups
    that infer clusters."""
    from rliable import library as rly, plot_utils

    groups = group_runs(runs, group_by)
    keys = _episode_keys(runs) + ["nmi_end_of_exploration"]
    colours = {name: f"C{index % 10}" for index, name in enumerate(groups)}  # as in the curves
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        scores = {f"{name} (n={len(members)})": np.array([[final_record(run, record_index)[key]] for run in members])
                  for name, members in groups.items() if all(key in final_record(run, record_index) for run in members)}
        if not scores:
            continue
        values = np.concatenate(list(scores.values())).ravel()
        margin = 0.05 * (values.max() - values.min()) + 1e-6
        taus = np.linspace(values.min() - margin, values.max() + margin, 101)
        with _seeded(seed):
            profiles, bands = rly.create_performance_profile(scores, taus, reps=reps)
        plot_utils.plot_performance_profiles(
            profiles, taus, performance_profile_cis=bands, ax=ax, labelsize="medium", ticklabelsize="medium",
            colors={label: colours[label.rsplit(" (n=", 1)[0]] for label in scores},
            xlabel=r"final NMI $\tau$" if key == keys[-1] else fr"final episode {key.split('_')[-1]} return $\tau$",
            ylabel=r"fraction of runs above $\tau$")
        ax.set_title("NMI at the end of the exploration episode" if key == keys[-1] else
                     f"episode {key.split('_')[-1]} ({'exploration' if key == keys[0] else 'exploitation'})")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{runs[0].env_id}: performance profiles of the final evaluation, band = 95% bootstrap CI")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------ command line
@dataclass
class Figure:
    out: str = "figure.png"
    """output file; the suffix picks the format (.png, .svg, .pdf)"""


@dataclass
class Statistics:
    stat: Stat = "iqm"
    """iqm: interquartile mean over runs with a 95% stratified bootstrap CI (rliable); mean: mean +- std"""
    reps: int = REPS
    """bootstrap resamples for the confidence intervals"""
    bootstrap_seed: int = SEED
    """seed of the bootstrap resamples (the same runs give the same CIs)"""


@dataclass
class RunGroups(Figure, Statistics):
    runs: tyro.conf.Positional[list[str]] = field(default_factory=list)
    """run folders (runs/<run_name>)"""
    group_by: str = "exp_name"
    """argument that groups runs into lines (or method: milet, varibad, oracle, rl2, pearl, metacure)"""


@dataclass
class Curves(RunGroups):
    """Fig. 2/4: test return per episode against frames, IQM (or mean) over the runs of each group, plus NMI."""
    log_frames: bool = False
    """frames on a log axis, for methods whose budgets differ a hundredfold (MetaCURE's against PPO's)"""


@dataclass
class Traces(Figure):
    """Fig. 3a-b: exploration traces, one panel per run side by side, coloured by the inferred cluster (or, for a run
    without clusters such as VariBAD's, by the true one)."""
    runs: tyro.conf.Positional[list[str]] = field(default_factory=list)
    """run folders (runs/<run_name>), one panel each"""
    record: int = -1
    """which evaluation of each run (index into eval.jsonl; -1 = the last)"""


@dataclass
class Nmi(RunGroups):
    """Fig. 3c: NMI against the step of the exploration episode, one line per group."""
    record: int = -1
    """which evaluation of each run (index into eval.jsonl; -1 = the last)"""


@dataclass
class Params(Figure):
    """Fig. 7: mean parameter multipliers per inferred cluster (HopperRandParams, WalkerRandParams)."""
    run: tyro.conf.Positional[str] = ""
    """one run folder"""
    record: int = -1
    """which evaluation (index into eval.jsonl; -1 = the last)"""


@dataclass
class Schedules(Figure):
    """Fig. 6: gamma_h(t) and gamma_c(t)."""
    horizon: int = 100
    """episode length H"""
    a_h: float = SCHEDULE_DEFAULTS["a_h"]
    """gamma_h(t) = b_h - a_h exp(-s_h (H - t))"""
    b_h: float = SCHEDULE_DEFAULTS["b_h"]
    s_h: float = SCHEDULE_DEFAULTS["s_h"]
    a_c: float = SCHEDULE_DEFAULTS["a_c"]
    """gamma_c(t) = -b_c + a_c exp(-s_c (H - t))"""
    b_c: float = SCHEDULE_DEFAULTS["b_c"]
    s_c: float = SCHEDULE_DEFAULTS["s_c"]


@dataclass
class Table(Statistics):
    """Markdown table of the final test returns and NMI per env and group: IQM [95% CI] (or mean +- std) over runs."""
    runs: tyro.conf.Positional[list[str]] = field(default_factory=list)
    """run folders"""
    group_by: str = "exp_name"
    """argument that groups runs into rows (or method: milet, varibad, oracle, rl2, pearl, metacure)"""
    out: Optional[str] = None
    """also write the table to this file"""


@dataclass
class Late:
    """Markdown table of late averages (the evaluations in the last 20% of frames) with their standard errors."""
    runs: tyro.conf.Positional[list[str]] = field(default_factory=list)
    """run folders"""
    group_by: str = "exp_name"
    """argument that groups runs (or method: milet, varibad, oracle, rl2, pearl, metacure)"""
    late: float = 0.8
    """the late window starts at this fraction of each run's last frame"""
    frames: Optional[tuple[float, float]] = None
    """average over the evaluations with START <= frame <= END instead, both ends included (e.g. --frames 1.6e6 3e6:
    runs of different lengths compared over the same frames)"""
    out: Optional[str] = None
    """also write the table to this file"""


@dataclass
class Compare:
    """Markdown table: the probability that group A improves on group B, per env, with 95% bootstrap CIs."""
    a: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="A")]
    """group A (a value of --group-by, e.g. milet)"""
    b: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="B")]
    """group B"""
    runs: tyro.conf.Positional[list[str]] = field(default_factory=list)
    """run folders of both groups"""
    group_by: str = "exp_name"
    """argument that groups runs (or method: milet, varibad, oracle, rl2, pearl, metacure)"""
    record: int = -1
    """which evaluation of each run (index into eval.jsonl; -1 = the last)"""
    reps: int = REPS
    """bootstrap resamples for the confidence intervals"""
    bootstrap_seed: int = SEED
    """seed of the bootstrap resamples"""
    out: Optional[str] = None
    """also write the table to this file"""


@dataclass
class Clusters(Figure):
    """Table 1 as a figure: episode-2 return, NMI and clusters found per number of clusters K (and auto)."""
    runs: tyro.conf.Positional[list[str]] = field(default_factory=list)
    """run folders of one env"""
    group_by: str = "exp_name"
    """argument that groups runs (e.g. exp_name k2, k4, auto; or method)"""


@dataclass
class Weights(Figure):
    """--num-clusters auto: the learned cluster weights of one run over training, and the clusters in use."""
    run: tyro.conf.Positional[str] = ""
    """one run folder"""


@dataclass
class Profiles(Figure):
    """Performance profiles of the final returns and NMI, one line per group, with 95% bootstrap bands."""
    runs: tyro.conf.Positional[list[str]] = field(default_factory=list)
    """run folders of one env"""
    group_by: str = "exp_name"
    """argument that groups runs into lines (or method: milet, varibad, oracle, rl2, pearl, metacure)"""
    record: int = -1
    """which evaluation of each run (index into eval.jsonl; -1 = the last)"""
    reps: int = REPS
    """bootstrap resamples for the bands"""
    bootstrap_seed: int = SEED
    """seed of the bootstrap resamples"""


@dataclass
class Slim:
    """Copy a run's args.json, summary.json and eval.jsonl into a small folder that every subcommand reads: the
    per-task exploration traces are kept in the last evaluation only (a 1e7-frame AntGoal run: 4 MB -> about 0.1)."""
    run: tyro.conf.Positional[str] = ""
    """one run folder"""
    out: str = "slim_run"
    """the folder to write (e.g. docs/run_data/<name>; runs/ folders are ignored by git); files in it are replaced"""
    keep_trials: Optional[int] = None
    """also carry the run's resume.pt, its trial buffer cut to this many most recent trials (AntGoal: 23 kB each),
    so that `--resume <out>` continues it on another machine, not bit-identically (logged in carried.jsonl)"""


@dataclass
class Frames:
    """A --capture-video MP4 (runs/<run_name>/videos/) for the docs: a strip of evenly spaced frames side by side
    (--out .png), or an animated GIF (--out .gif)."""
    video: tyro.conf.Positional[str] = ""
    """one MP4"""
    out: str = "frames.png"
    """output file; the suffix picks what: .png a frame strip, .gif an animation"""
    count: int = 6
    """frames in the strip, from the first to the last"""
    every: int = 2
    """the GIF keeps every this many-th frame, played at the video's speed"""


def video_frames(video: str, out: str, count: int = 6, every: int = 2) -> str:
    """Write ``out`` from the MP4 ``video`` (see ``Frames``), via a temporary file and a rename."""
    import imageio.v3 as iio

    suffix = os.path.splitext(out)[1]
    if suffix not in (".png", ".gif"):
        raise PlotError(f"--out {out}: the suffix picks the output, .png (a frame strip) or .gif")
    if count < 1 or every < 1:
        raise PlotError(f"--count and --every must be >= 1, got {count} and {every}")
    if not os.path.isfile(video):
        raise PlotError(f"no video at {video}")
    frames = iio.imread(video, plugin="FFMPEG", index=None)  # (n, height, width, 3)
    if suffix == ".png":
        picks = frames[np.linspace(0, len(frames) - 1, count).round().astype(int)]
        gap = np.full((frames.shape[1], 4, 3), 255, dtype=np.uint8)  # a white line between frames
        iio.imwrite(out + ".tmp" + suffix, np.concatenate([part for frame in picks for part in (frame, gap)][:-1], 1))
    else:
        milliseconds = 1000 * every / iio.immeta(video, plugin="FFMPEG")["fps"]
        iio.imwrite(out + ".tmp" + suffix, frames[::every], duration=milliseconds, loop=0)
    os.replace(out + ".tmp" + suffix, out)
    return out


def slim_run(run_path: str, out: str, keep_trials: Optional[int] = None) -> str:
    """Write the slim copy of ``run_path`` into ``out`` (see ``Slim``); every file is written atomically. Without
    ``keep_trials`` a resume.pt that an earlier carry left in ``out`` is removed: it would resume another iteration."""
    run = load_run(run_path)
    in_place = os.path.realpath(run.path) == os.path.realpath(out)
    if keep_trials is not None:
        if keep_trials < 1:
            raise PlotError(f"--keep-trials must be >= 1, got {keep_trials}")
        if not os.path.isfile(os.path.join(run.path, "resume.pt")):
            raise PlotError(f"no resume.pt in {run.path} to carry")
        if in_place:
            raise PlotError("--keep-trials writes a cut copy of resume.pt: give an --out other than the run folder")
    os.makedirs(out, exist_ok=True)
    if not in_place:
        for name in ("args.json", "summary.json", "carried.jsonl"):
            if os.path.isfile(os.path.join(run.path, name)):
                meta_test.write_atomic(os.path.join(out, name), open(os.path.join(run.path, name)).read())
            elif name == "carried.jsonl" and os.path.isfile(os.path.join(out, name)):
                os.remove(os.path.join(out, name))  # an earlier carry's log: not this run's history
        if keep_trials is None and os.path.isfile(os.path.join(out, "resume.pt")):
            os.remove(os.path.join(out, "resume.pt"))
    if keep_trials is not None:
        carry_checkpoint(run.path, out, keep_trials)
    for record in run.records:  # runs from before the key: keep the reach of the traces the copy drops
        if "exploration_xy" in record and "exploration_reach_median" not in record:
            record["exploration_reach_median"] = meta_test.exploration_reach(np.array(record["exploration_xy"]))
    traces = ("exploration_xy", "exploration_clusters")
    lines = [json.dumps(record if i == len(run.records) - 1 else {k: v for k, v in record.items() if k not in traces})
             for i, record in enumerate(run.records)]
    meta_test.write_atomic(os.path.join(out, "eval.jsonl"), "\n".join(lines) + "\n")
    return out


def carry_checkpoint(run_path: str, out: str, keep_trials: int) -> None:
    """out/resume.pt: the run's checkpoint with each trial buffer (cbvi.TrialBuffer) cut to its ``keep_trials`` most
    recent trials, marked as carried, and a line added to the run's carried.jsonl (copied to out) that says where."""
    state = torch.load(os.path.join(run_path, "resume.pt"), weights_only=False)
    buffers = [name for name, value in state.items() if isinstance(value, dict) and "capacity" in value]
    if not buffers:
        raise PlotError(f"{run_path}/resume.pt holds no trial buffer (RL2, PEARL, MetaCURE): copy it as it is")
    if any("trials" not in state[name] for name in buffers):
        raise PlotError(f"{run_path}/resume.pt is from before 2026-12-01 (uncompressed buffer): resume it once, "
                        f"so that its next checkpoint has today's layout, then carry that")
    in_buffer = sum(state[name]["size"] for name in buffers)
    for name in buffers:
        state[name] = TrialBuffer.most_recent(state[name], keep_trials)
    note = {"iteration": state["iteration"], "global_step": state["global_step"],
            "trials_kept": sum(state[name]["size"] for name in buffers), "trials_in_buffer": in_buffer}
    state["carried"] = note
    meta_test.torch_save_atomic(os.path.join(out, "resume.pt"), state)
    log = os.path.join(run_path, "carried.jsonl")
    earlier = open(log).read() if os.path.isfile(log) else ""
    meta_test.write_atomic(os.path.join(out, "carried.jsonl"), earlier + json.dumps(note) + "\n")


Command = Union[
    Annotated[Curves, tyro.conf.subcommand("curves")], Annotated[Traces, tyro.conf.subcommand("traces")],
    Annotated[Nmi, tyro.conf.subcommand("nmi")], Annotated[Params, tyro.conf.subcommand("params")],
    Annotated[Schedules, tyro.conf.subcommand("schedules")], Annotated[Table, tyro.conf.subcommand("table")],
    Annotated[Compare, tyro.conf.subcommand("compare")], Annotated[Profiles, tyro.conf.subcommand("profiles")],
    Annotated[Clusters, tyro.conf.subcommand("clusters")], Annotated[Weights, tyro.conf.subcommand("weights")],
    Annotated[Slim, tyro.conf.subcommand("slim")], Annotated[Late, tyro.conf.subcommand("late")],
    Annotated[Frames, tyro.conf.subcommand("frames")],
]


def main(command) -> Optional[str]:
    """Run one subcommand; returns the file written (or the table)."""
    if isinstance(command, Slim):
        return slim_run(command.run, command.out, command.keep_trials)
    if command.out:  # a new folder in --out is made, as the training scripts make runs/
        os.makedirs(os.path.dirname(command.out) or ".", exist_ok=True)
    if isinstance(command, Frames):
        return video_frames(command.video, command.out, command.count, command.every)
    if isinstance(command, (Table, Compare, Late)):
        runs = load_runs(command.runs)
        if isinstance(command, Late):
            text = late_table(runs, command.group_by, command.late, command.frames)
        elif isinstance(command, Table):
            text = results_table(runs, command.group_by, -1, command.stat, command.reps, command.bootstrap_seed)
        else:
            text = comparison_table(runs, command.a, command.b, command.group_by, command.record, command.reps,
                                    command.bootstrap_seed)
        if command.out:
            meta_test.write_atomic(command.out, text + "\n")
        return text
    suffix = os.path.splitext(command.out)[1]
    if suffix not in (".png", ".svg", ".pdf"):
        raise PlotError(f"--out {command.out}: the suffix picks the format, one of .png, .svg, .pdf")
    if isinstance(command, Schedules):
        fig = plot_schedules(command.horizon, **{name: getattr(command, name) for name in SCHEDULE_DEFAULTS})
    elif isinstance(command, Nmi):
        fig = plot_nmi(load_runs(command.runs), command.group_by, command.record, command.stat, command.reps,
                       command.bootstrap_seed)
    elif isinstance(command, Curves):
        fig = plot_curves(load_runs(command.runs), command.group_by, command.stat, command.reps, command.bootstrap_seed,
                          command.log_frames)
    elif isinstance(command, Clusters):
        fig = plot_cluster_counts(load_runs(command.runs), command.group_by)
    elif isinstance(command, Profiles):
        fig = plot_profiles(load_runs(command.runs), command.group_by, command.record, command.reps,
                            command.bootstrap_seed)
    elif isinstance(command, Weights):
        fig = plot_cluster_weights(load_run(command.run))
    elif isinstance(command, Params):
        fig = plot_params(load_run(command.run), command.record)
    else:
        fig = plot_traces(load_runs(command.runs), command.record)
    fig.savefig(command.out + ".tmp" + suffix, dpi=120)  # then a rename: never a half-written figure
    plt.close(fig)
    os.replace(command.out + ".tmp" + suffix, command.out)
    return command.out


if __name__ == "__main__":
    try:
        print(main(tyro.cli(Command)))
    except PlotError as error:
        sys.exit(f"plots.py: error: {error}")
