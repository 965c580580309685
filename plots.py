"""The paper's figures, drawn from the files a training run writes to runs/<run_name>/.

A tyro command-line tool with one subcommand per figure; every function can also be imported.

    python plots.py curves runs/PointGoal__*   --out docs/curves.png     # Fig. 2 and 4: test return over frames, + NMI
    python plots.py traces runs/<one run>      --out docs/traces.png     # Fig. 3a, 5, 8: exploration traces by cluster
    python plots.py nmi runs/PointGoal__*      --out docs/nmi.png        # Fig. 3c: NMI over the exploration episode
    python plots.py params runs/<rand-params run> --out params.png       # Fig. 7: multipliers per inferred cluster
    python plots.py schedules --out schedules.png                        # Fig. 6: gamma_h(t) and gamma_c(t)
    python plots.py table runs/*                                         # Markdown table of final returns and NMI

Runs are grouped into lines by a field of their arguments (`--group-by`, default `exp_name`); a band is the
standard deviation over the runs (seeds) of a group. Every figure uses the final evaluation of each run unless
`--record` picks another. Reads `eval.jsonl` (one line per evaluation) and `summary.json`/the run folder name.
"""
import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Annotated, Optional, Union

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tyro  # noqa: E402

import envs_clustered  # noqa: E402
import meta_test  # noqa: E402

# Eq. 12's schedule parameters: the defaults of milet_ppo_continuous.Args (a test checks that they agree; a helper
# module does not import a training script)
SCHEDULE_DEFAULTS = dict(a_h=0.1, b_h=0.1, s_h=0.1, a_c=0.2, b_c=0.1, s_c=0.1)
CLUSTER_COLOURS = plt.get_cmap("tab10")  # inferred cluster k is drawn in colour k in every figure


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


def group_runs(runs: list[Run], group_by: str = "exp_name", one_env: bool = True) -> dict[str, list[Run]]:
    """{group name: runs}; one_env rejects runs of different environments in one figure."""
    envs = sorted({run.env_id for run in runs})
    if one_env and len(envs) > 1:
        raise PlotError(f"runs of different environments in one figure: {', '.join(envs)}; plot each env separately")
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(str(run.args.get(group_by, "?")), []).append(run)
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


def _mean_band(ax, x, rows, label, colour=None):
    """Mean line and a +-1 std band over rows (runs); returns the mean."""
    rows = np.asarray(rows, dtype=float)
    mean, std = rows.mean(0), rows.std(0)
    (line,) = ax.plot(x, mean, label=f"{label} (n={len(rows)})", color=colour)
    ax.fill_between(x, mean - std, mean + std, alpha=0.2, color=line.get_color())
    return mean


def _reference_line(ax, runs: list[Run], key: str, label: str, colour: str, record_index: int = -1) -> None:
    """A dashed horizontal line at a reference the runs logged (its mean over those that did; methods without
    clusters log no NMI ceiling)."""
    values = [final_record(run, record_index)[key] for run in runs if key in final_record(run, record_index)]
    if values:
        ax.axhline(float(np.mean(values)), ls="--", lw=1.2, color=colour, label=label)


def plot_curves(runs: list[Run], group_by: str = "exp_name"):
    """Fig. 2/4: test return per episode of the trial against frames, and NMI at the end of exploration."""
    groups = group_runs(runs, group_by)
    keys = _episode_keys(runs)
    fig, axes = plt.subplots(1, len(keys) + 1, figsize=(4.5 * (len(keys) + 1), 3.6), squeeze=False)
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
        for ax, key in zip(axes[0], keys + ["nmi_end_of_exploration"]):
            if all(key in runs_at[s] for runs_at in by_step for s in steps):  # methods without clusters log no NMI
                _mean_band(ax, steps, [[runs_at[s][key] for s in steps] for runs_at in by_step], name, f"C{group_index % 10}")
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
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{runs[0].env_id}: mean over runs, band = 1 std")
    fig.tight_layout()
    return fig


def plot_traces(run: Run, record_index: int = -1):
    """Fig. 3a: exploration-episode xy traces on the test tasks, each step coloured by the inferred cluster."""
    record = final_record(run, record_index)
    if "exploration_xy" not in record:
        raise PlotError(f"{run.env_id} logs no xy traces (only goal and direction envs do)")
    if "exploration_clusters" not in record:
        raise PlotError(f"{run.path} infers no clusters (VariBAD, RL2): there is nothing to colour the traces by")
    split = envs_clustered.make_task_split(run.env_id, seed=run.args.get("task_seed", 0))
    traces, clusters = np.asarray(record["exploration_xy"]), np.asarray(record["exploration_clusters"])
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    for trace, steps in zip(traces, clusters):
        ax.plot(trace[:, 0], trace[:, 1], color="0.8", lw=0.6, zorder=1)
        ax.scatter(trace[1:, 0], trace[1:, 1], c=[CLUSTER_COLOURS(k % 10) for k in steps], s=4, zorder=2)
    scale = 1.0 if envs_clustered._kind(run.env_id) == "goal" else envs_clustered.GOAL_RADIUS  # directions at r=2
    goals = split.test_tasks * scale
    ax.scatter(goals[:, 0], goals[:, 1], marker="x", s=60, lw=2, zorder=3,
               c=[CLUSTER_COLOURS(k % 10) for k in record["test_clusters_pred"]])
    centres = envs_clustered.cluster_centres(run.env_id) * scale
    ax.scatter(centres[:, 0], centres[:, 1], marker="*", s=250, c="k", zorder=4, label="true cluster centre")
    for k in sorted(set(np.unique(clusters)) | set(record["test_clusters_pred"])):
        ax.scatter([], [], color=CLUSTER_COLOURS(k % 10), label=f"inferred cluster {k}")
    ax.set(xlabel="x", ylabel="y", aspect="equal",
           title=f"{run.env_id} exploration traces, step {record['global_step']:,}\n(x = test goal, coloured by its final cluster)")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def plot_nmi(runs: list[Run], group_by: str = "exp_name", record_index: int = -1):
    """Fig. 3c: NMI(true, argmax q(c | tau_:t)) against the step t of the exploration episode."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, members in group_runs(runs, group_by).items():
        if any("nmi_per_step" not in final_record(run, record_index) for run in members):
            print(f"plots.py: group {name!r} infers no clusters (no NMI); left out", file=sys.stderr)
            continue
        rows = [final_record(run, record_index)["nmi_per_step"] for run in members]
        if len({len(r) for r in rows}) > 1:
            raise PlotError(f"group {name}: runs with different episode lengths")
        _mean_band(ax, np.arange(1, len(rows[0]) + 1), rows, name)
    _reference_line(ax, runs, "nmi_ceiling", "ceiling (nearest centre of the true tasks)", "k", record_index)
    ax.set(xlabel="time step t of the exploration episode", ylabel="NMI", ylim=(-0.02, 1.02),
           title=f"{runs[0].env_id}: cluster inference on the test tasks")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
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


def results_table(runs: list[Run], group_by: str = "exp_name", record_index: int = -1) -> str:
    """Markdown: one row per (env, group), final test returns and NMI as mean +- std over its runs; the NMI also as a
    fraction of its ceiling (the best any clustering of the true test tasks reaches), where the runs logged it."""
    keys = _episode_keys(runs)
    lines = ["| Environment | Group | Runs | " + " | ".join(f"Episode {k.split('_')[-1]} return" for k in keys)
             + " | NMI (end of exploration) | NMI / ceiling |", "|---" * (len(keys) + 5) + "|"]
    for env_id in sorted({run.env_id for run in runs}):
        for name, members in group_runs([r for r in runs if r.env_id == env_id], group_by).items():
            finals = [final_record(run, record_index) for run in members]
            cells = [f"{np.mean([f[k] for f in finals]):.1f} ± {np.std([f[k] for f in finals]):.1f}" for k in keys]
            nmi = [f["nmi_end_of_exploration"] for f in finals if "nmi_end_of_exploration" in f]
            nmi_cell = f"{np.mean(nmi):.3f} ± {np.std(nmi):.3f}" if len(nmi) == len(finals) else "n/a (no clusters)"
            ceilings = [f["nmi_ceiling"] for f in finals if "nmi_ceiling" in f]
            fraction = (f"{np.mean(np.divide(nmi, ceilings)):.2f} (ceiling {ceilings[0]:.3f})"
                        if len(nmi) == len(ceilings) == len(finals) else "n/a")
            lines.append(f"| {env_id} | {name} | {len(members)} | " + " | ".join(cells) + f" | {nmi_cell} | {fraction} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ command line
@dataclass
class Figure:
    out: str = "figure.png"
    """output file; the suffix picks the format (.png, .svg, .pdf)"""


@dataclass
class Curves(Figure):
    """Fig. 2/4: test return per episode against frames, mean +- std over the runs of each group, plus NMI."""
    runs: tyro.conf.Positional[list[str]] = field(default_factory=list)
    """run folders (runs/<run_name>)"""
    group_by: str = "exp_name"
    """argument that groups runs into lines"""


@dataclass
class Traces(Figure):
    """Fig. 3a: exploration traces of one run, coloured by the inferred cluster."""
    run: tyro.conf.Positional[str] = ""
    """one run folder"""
    record: int = -1
    """which evaluation (index into eval.jsonl; -1 = the last)"""


@dataclass
class Nmi(Curves):
    """Fig. 3c: NMI against the step of the exploration episode, one line per group."""
    record: int = -1
    """which evaluation of each run (index into eval.jsonl; -1 = the last)"""


@dataclass
class Params(Traces):
    """Fig. 7: mean parameter multipliers per inferred cluster (HopperRandParams, WalkerRandParams)."""


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
class Table:
    """Markdown table of the final test returns and NMI (mean +- std over runs) per env and group."""
    runs: tyro.conf.Positional[list[str]] = field(default_factory=list)
    """run folders"""
    group_by: str = "exp_name"
    """argument that groups runs into rows"""
    out: Optional[str] = None
    """also write the table to this file"""


Command = Union[
    Annotated[Curves, tyro.conf.subcommand("curves")], Annotated[Traces, tyro.conf.subcommand("traces")],
    Annotated[Nmi, tyro.conf.subcommand("nmi")], Annotated[Params, tyro.conf.subcommand("params")],
    Annotated[Schedules, tyro.conf.subcommand("schedules")], Annotated[Table, tyro.conf.subcommand("table")],
]


def main(command) -> Optional[str]:
    """Run one subcommand; returns the file written (or the table)."""
    if command.out:  # a new folder in --out is made, as the training scripts make runs/
        os.makedirs(os.path.dirname(command.out) or ".", exist_ok=True)
    if isinstance(command, Table):
        text = results_table(load_runs(command.runs), command.group_by)
        if command.out:
            meta_test.write_atomic(command.out, text + "\n")
        return text
    suffix = os.path.splitext(command.out)[1]
    if suffix not in (".png", ".svg", ".pdf"):
        raise PlotError(f"--out {command.out}: the suffix picks the format, one of .png, .svg, .pdf")
    if isinstance(command, Schedules):
        fig = plot_schedules(command.horizon, **{name: getattr(command, name) for name in SCHEDULE_DEFAULTS})
    elif isinstance(command, Nmi):
        fig = plot_nmi(load_runs(command.runs), command.group_by, command.record)
    elif isinstance(command, Curves):
        fig = plot_curves(load_runs(command.runs), command.group_by)
    elif isinstance(command, Params):
        fig = plot_params(load_run(command.run), command.record)
    else:
        fig = plot_traces(load_run(command.run), command.record)
    fig.savefig(command.out + ".tmp" + suffix, dpi=120)  # then a rename: never a half-written figure
    plt.close(fig)
    os.replace(command.out + ".tmp" + suffix, command.out)
    return command.out


if __name__ == "__main__":
    try:
        print(main(tyro.cli(Command)))
    except PlotError as error:
        sys.exit(f"plots.py: error: {error}")
