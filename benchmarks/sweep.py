"""MILET, its Appendix E ablations, K = 2/4/6/8 clusters, VariBAD, RL2, PEARL and MetaCURE over envs x seeds, through submitit: in a
bounded pool on this machine (`--executor local`, the default) or as a Slurm job array (`--executor slurm`); then
the rliable table, the comparisons and the figures of plots.py. docs/sweeps.md says how to run it.

    python benchmarks/sweep.py --preset quick                # PointGoal, 11 variants x seeds 1-3, 1M frames, 2 at a time
    python benchmarks/sweep.py --preset quick --dry-run      # what would run: each run's state and exact command
    python benchmarks/sweep.py --preset full --executor slurm --slurm-partition cpu --timeout-min 1440

Each run is one command, as typed by hand:
    python <script> --env-id ENV --seed S --exp-name VARIANT --runs-dir OUT/runs/ENV/VARIANT/S [--total-timesteps F] [flags]
with OMP_NUM_THREADS=1 (the same numbers for a seed on every CPU run); its output goes to OUT/logs/. A run whose
folder holds a summary.json has finished and is skipped; one with a resume.pt and no summary.json continues with
`--resume <its run folder>`. The command is chosen when the job starts, so a Slurm job that reaches its time limit
is requeued by submitit and continues from the run's last resume.pt; after any interruption, the same command again
skips what finished and resumes the rest. When every run has finished it writes OUT/table.md (IQM and 95% CIs),
OUT/compare.md (the probability that MILET improves on each other variant) and, per env, OUT/<env>_curves.png,
<env>_nmi.png and <env>_profiles.png.
"""
import glob
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Literal, Optional

import cloudpickle
import submitit
import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import envs_clustered  # noqa: E402
import plots  # noqa: E402

# name: (script, flags). Every run also gets --env-id, --seed, --exp-name <name>, --runs-dir and the frame budget.
VARIANTS = {
    "milet": ("milet_ppo_continuous.py", ()),  # K = 4 clusters, the default
    "milet_no_exploration": ("milet_ppo_continuous.py", ("--no-exploration-policy",)),
    "milet_no_sgru": ("milet_ppo_continuous.py", ("--no-stacked-gru",)),
    "milet_no_cr": ("milet_ppo_continuous.py", ("--lambda-i", "0", "--lambda-p", "0")),
    "milet_k2": ("milet_ppo_continuous.py", ("--num-clusters", "2")),
    "milet_k6": ("milet_ppo_continuous.py", ("--num-clusters", "6")),
    "milet_k8": ("milet_ppo_continuous.py", ("--num-clusters", "8")),
    "varibad": ("varibad_ppo_continuous.py", ()),
    "rl2": ("rl2_ppo_continuous.py", ()),
    "pearl": ("pearl_sac_continuous.py", ()),  # off-policy: about 45 minutes per 1M frames on one core (docs/pearl.md)
    "metacure": ("metacure_sac_continuous.py", ()),  # off-policy too: about 20-40 minutes per 256k frames on one core
}
PRESETS = {  # frames None: each script's default budget for the env (the paper's)
    "quick": dict(envs=("PointGoal",), seeds=(1, 2, 3), frames=1_000_000, workers=2),
    "full": dict(envs=tuple(e for e in envs_clustered.ENV_IDS if e != "PointGoal"), seeds=(1, 2, 3), frames=None,
                 workers=os.cpu_count()),
}


class SweepError(ValueError):
    """Bad input; the command line prints it as one line."""


@dataclass
class Args:
    preset: Literal["quick", "full"] = "quick"
    """quick: PointGoal, seeds 1-3, 1M frames; full: the paper's seven MuJoCo envs, seeds 1-3, each env's frames"""
    envs: Optional[tuple[str, ...]] = None
    """environments (default: the preset's)"""
    variants: tuple[str, ...] = tuple(VARIANTS)
    """variants to run (default: all eleven)"""
    seeds: Optional[tuple[int, ...]] = None
    """seeds (default: the preset's)"""
    frames: Optional[int] = None
    """--total-timesteps of every new run (default: the preset's; 0 = each script's default for the env)"""
    extra_flags: str = ""
    """flags added to every new run's command, e.g. --extra-flags="--eval-every 5" (not to resumed runs)"""
    out: Optional[str] = None
    """folder of the sweep: runs/, logs/, submitit/ and the results (default: benchmarks/compare_runs/<preset>)"""
    executor: Literal["local", "slurm"] = "local"
    """local: a bounded pool of processes on this machine; slurm: one job array on a Slurm cluster"""
    workers: Optional[int] = None
    """runs at a time (local; default: the preset's) or the array's parallelism (slurm; default: no limit)"""
    timeout_min: int = 1440
    """time limit of one job in minutes (Slurm's --time); a job that reaches it is requeued and resumes"""
    cpus_per_task: int = 2
    """Slurm: CPU cores per run"""
    mem_gb: float = 16
    """Slurm: memory per run in GB (a generous guess: AntGoal's trial buffer takes 447 MiB)"""
    slurm_partition: Optional[str] = None
    """Slurm: partition (default: the cluster's)"""
    slurm_account: Optional[str] = None
    """Slurm: account to charge"""
    slurm_qos: Optional[str] = None
    """Slurm: quality of service"""
    slurm_setup: tuple[str, ...] = ()
    """Slurm: shell lines run before each job, e.g. "module load python/3.11" """
    wait: bool = True
    """wait for the jobs and then write the results; --no-wait submits and exits (then use --report-only)"""
    report_only: bool = False
    """run nothing: write the table, comparisons and figures of the runs that have finished"""
    dry_run: bool = False
    """run nothing: print each run's state and command"""
    reps: int = plots.REPS
    """bootstrap resamples for the confidence intervals"""


@dataclass
class TrainRun(submitit.helpers.Checkpointable):
    """One run of the sweep, the callable that a submitit job calls. It looks at the run's folder when called: a
    requeued job (Checkpointable) therefore resumes from the last resume.pt, and a finished run is not run again."""
    env_id: str
    variant: str
    seed: int
    out: str  # absolute
    frames: Optional[int] = None
    extra_flags: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.env_id}__{self.variant}__{self.seed}"

    @property
    def runs_dir(self) -> str:
        return os.path.join(self.out, "runs", self.env_id, self.variant, str(self.seed))

    @property
    def log(self) -> str:
        return os.path.join(self.out, "logs", f"{self.name}.log")

    def state(self) -> tuple[str, Optional[str]]:
        """("finished", run folder), ("resume", run folder) or ("start", None); the newest folder wins."""
        folders = sorted(glob.glob(os.path.join(self.runs_dir, "*", "")), key=os.path.getmtime, reverse=True)
        for state, marker in (("finished", "summary.json"), ("resume", "resume.pt")):
            found = [f.rstrip("/") for f in folders if os.path.isfile(os.path.join(f, marker))]
            if found:
                return state, found[0]
        return "start", None

    def command(self) -> list[str]:
        """The command, from the repository root, with "python" first."""
        script, flags = VARIANTS[self.variant]
        state, run_dir = self.state()
        if state == "resume":
            return ["python", script, "--resume", run_dir]
        budget = ["--total-timesteps", str(self.frames)] if self.frames else []
        return ["python", script, "--env-id", self.env_id, "--seed", str(self.seed), "--exp-name", self.variant,
                "--runs-dir", self.runs_dir, *budget, *flags, *self.extra_flags]

    def __call__(self) -> str:
        state, run_dir = self.state()
        if state == "finished":
            return run_dir
        command = self.command()
        os.makedirs(os.path.dirname(self.log), exist_ok=True)
        with open(self.log, "a") as log:
            log.write(f"$ OMP_NUM_THREADS=1 {shlex.join(command)}\n")
            log.flush()
            # subprocess.run kills the run if this job is stopped (a timeout or Ctrl-C raise here); resume.pt stays
            result = subprocess.run([sys.executable, *command[1:]], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                    env={**os.environ, "OMP_NUM_THREADS": "1"})
        state, run_dir = self.state()
        if result.returncode != 0 or state != "finished":
            raise RuntimeError(f"{self.name} failed (exit code {result.returncode}); see {self.log}")
        return run_dir


cloudpickle.register_pickle_by_value(sys.modules[__name__])  # jobs unpickle TrainRun without this file on sys.path


def expand(args: Args) -> list[TrainRun]:
    """envs x variants x seeds, in that order; a SweepError on an unknown name."""
    preset = PRESETS[args.preset]
    envs, seeds = args.envs or preset["envs"], args.seeds or preset["seeds"]
    for kind, names, valid in (("env", envs, envs_clustered.ENV_IDS), ("variant", args.variants, tuple(VARIANTS))):
        unknown = [n for n in names if n not in valid]
        if unknown:
            raise SweepError(f"unknown {kind} {', '.join(unknown)}; valid: {', '.join(valid)}")
    if not (envs and args.variants and seeds):
        raise SweepError("give at least one env, variant and seed")
    frames = preset["frames"] if args.frames is None else (args.frames or None)
    out = os.path.abspath(args.out or os.path.join(ROOT, "benchmarks", "compare_runs", args.preset))
    return [TrainRun(env_id, variant, seed, out, frames, tuple(shlex.split(args.extra_flags)))
            for env_id in envs for variant in args.variants for seed in seeds]


def make_executor(args: Args, out: str, workers: Optional[int]):
    """submitit's executor; its pickles, logs and (Slurm) submission scripts go to OUT/submitit/."""
    executor = submitit.AutoExecutor(folder=os.path.join(out, "submitit", "%j"), cluster=args.executor)
    executor.update_parameters(name="milet_sweep", timeout_min=args.timeout_min)
    if args.executor == "slurm":
        executor.update_parameters(cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb, tasks_per_node=1, nodes=1,
                                   slurm_partition=args.slurm_partition, slurm_account=args.slurm_account,
                                   slurm_qos=args.slurm_qos, slurm_array_parallelism=workers,
                                   slurm_setup=list(args.slurm_setup) or None)
    return executor


def collect(job, run: TrainRun, failed: list) -> None:
    try:
        job.result()
        print(f"done: {run.name}", flush=True)
    except Exception as error:  # the job's traceback is in OUT/submitit/; the run's output in OUT/logs/
        failed.append(run)
        print(f"FAILED: {run.name}: {str(error).strip().splitlines()[-1]} (see {run.log})", file=sys.stderr, flush=True)


def run_local(executor, runs: list[TrainRun], workers: int) -> list[TrainRun]:
    """At most `workers` jobs at a time (submitit's local executor starts every job it is given at once)."""
    pending, running, failed = list(runs), {}, []
    try:
        while pending or running:
            while pending and len(running) < workers:
                run = pending.pop(0)
                running[executor.submit(run)] = run
            time.sleep(0.5)
            for job in [job for job in running if job.done()]:
                collect(job, running.pop(job), failed)
    except KeyboardInterrupt:
        for job in running:
            job.cancel()
        sys.exit("sweep.py: interrupted; the same command resumes the unfinished runs")
    return failed


def run_slurm(executor, runs: list[TrainRun], wait: bool) -> Optional[list[TrainRun]]:
    """One job array; None when not waiting for it."""
    with executor.batch():
        jobs = [executor.submit(run) for run in runs]
    print(f"sweep.py: submitted Slurm job {jobs[0].job_id.split('_')[0]} ({len(jobs)} runs); submitit's files in "
          f"{os.path.dirname(str(jobs[0].paths.submission_file))}", flush=True)
    if not wait:
        return None
    failed = []
    for job in submitit.helpers.as_completed(jobs, poll_frequency=60):
        collect(job, runs[jobs.index(job)], failed)
    return failed


def report(runs: list[TrainRun], reps: int) -> Optional[str]:
    """Write the table, the comparisons and the figures of the finished runs; returns the table."""
    finished = [(run, run_dir) for run in runs for state, run_dir in [run.state()] if state == "finished"]
    if not finished:
        return None
    out = runs[0].out
    loaded = [plots.load_run(run_dir) for _, run_dir in finished]
    table = plots.results_table(loaded, reps=reps)
    plots.meta_test.write_atomic(os.path.join(out, "table.md"), table + "\n")
    variants = list(dict.fromkeys(str(run.args["exp_name"]) for run in loaded))
    if "milet" in variants:
        sections = [f"## milet against {other}\n\n{plots.comparison_table(loaded, 'milet', other, reps=reps)}\n"
                    for other in variants if other != "milet"]
        plots.meta_test.write_atomic(os.path.join(out, "compare.md"), "\n".join(sections))
    for env_id in sorted({run.env_id for run in loaded}):
        env_runs = [run for run in loaded if run.env_id == env_id]
        figures = {"curves": plots.plot_curves, "profiles": plots.plot_profiles}
        if any("nmi_per_step" in run.records[-1] for run in env_runs):
            figures["nmi"] = plots.plot_nmi
        for kind, plot in figures.items():
            try:
                fig = plot(env_runs, reps=reps)
            except plots.PlotError as error:
                print(f"sweep.py: no {env_id} {kind} figure: {error}", file=sys.stderr)
                continue
            fig.savefig(os.path.join(out, f"{env_id}_{kind}.png"), dpi=120)
            plots.plt.close(fig)
    return table


def main(args: Args) -> int:
    runs = expand(args)
    out = runs[0].out
    workers = args.workers or (PRESETS[args.preset]["workers"] if args.executor == "local" else None)
    states = [run.state()[0] for run in runs]
    todo = [run for run, state in zip(runs, states) if state != "finished"]
    print(f"sweep.py: {args.preset}: {len(runs)} runs: {states.count('finished')} finished, {states.count('resume')} to "
          f"resume, {states.count('start')} to start; frames: {runs[0].frames or 'each env default'}; in {out}", flush=True)
    if args.dry_run:
        for run, state in zip(runs, states):
            print(f"{state:8} {shlex.join(run.command()) if state != 'finished' else run.state()[1]}")
        return 0
    failed = []
    if todo and not args.report_only:
        print(f"sweep.py: submitit's {args.executor} executor, at most {workers or 'all'} at a time; logs in "
              f"{os.path.join(out, 'logs')}", flush=True)
        executor = make_executor(args, out, workers)
        if args.executor == "local":
            failed = run_local(executor, todo, workers)
        else:
            failed = run_slurm(executor, todo, args.wait)
            if failed is None:
                print("sweep.py: not waiting; when the jobs have finished, the same command with --report-only "
                      "writes the results (without it, runs still queued would be submitted again)")
                return 0
    table = report(runs, args.reps)
    if table is None:
        print(f"sweep.py: error: no run has finished; see {os.path.join(out, 'logs')}", file=sys.stderr)
        return 1
    print(table)
    unfinished = sum(run.state()[0] != "finished" for run in runs)
    if failed or unfinished:
        print(f"sweep.py: {unfinished} of {len(runs)} runs have not finished (above: the ones that failed); the "
              "results leave them out; the same command resumes them", file=sys.stderr)
        return 1
    print(f"sweep.py: results in {out}: table.md, compare.md, <env>_curves.png, <env>_nmi.png, <env>_profiles.png")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(tyro.cli(Args)))
    except (SweepError, plots.PlotError) as error:
        sys.exit(f"sweep.py: error: {error}")
