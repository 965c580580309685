"""benchmarks/sweep.py: the commands it expands to, skip and resume, the bounded local pool, a whole tiny quick sweep
through submitit's local executor with its results, and the Slurm submission script that submitit writes."""
import json
import os
import pickle
import re
import shutil
import subprocess
import sys

import launch
from test_milet import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import sweep  # noqa: E402

SWEEP = os.path.join(ROOT, "benchmarks", "sweep.py")
# every script takes these: 2 iterations of 4 trials of 2 x 5 steps (--frames 80), evaluated after each
TINY = ["--frames", "80", "--extra-flags=--episode-length 5 --num-envs 4 --num-minibatches 2 --eval-every 1 --no-cuda"]


def run_sweep(*flags, env=None):
    return subprocess.run([sys.executable, SWEEP, *flags], capture_output=True, text=True, cwd=ROOT, timeout=900, env=env)


def test_quick_preset_expands_into_the_documented_commands(tmp_path):
    runs = sweep.expand(sweep.Args(out=str(tmp_path)))
    assert len(runs) == 33 and {r.env_id for r in runs} == {"PointGoal"} and {r.seed for r in runs} == {1, 2, 3}
    commands = {(r.variant, r.seed): r.command() for r in runs}
    folder = os.path.join(tmp_path, "runs", "PointGoal")
    assert commands["milet", 1] == ["python", "milet_ppo_continuous.py", "--env-id", "PointGoal", "--seed", "1", "--exp-name",
                                    "milet", "--runs-dir", f"{folder}/milet/1", "--total-timesteps", "1000000"]
    assert commands["milet_no_cr", 2][-4:] == ["--lambda-i", "0", "--lambda-p", "0"]
    assert commands["milet_k6", 3][-2:] == ["--num-clusters", "6"]
    assert commands["rl2", 3][:2] == ["python", "rl2_ppo_continuous.py"] and "--runs-dir" in commands["rl2", 3]
    assert commands["metacure", 1][:2] == ["python", "metacure_sac_continuous.py"]  # issue 26
    full = sweep.expand(sweep.Args(preset="full", variants=("varibad",), seeds=(1,), out=str(tmp_path)))
    assert [r.env_id for r in full] == ["AntGoal", "AntGoalPartial", "AntU", "HumanoidDir", "HumanoidDirSparse",
                                        "HopperRandParams", "WalkerRandParams"]
    assert "--total-timesteps" not in full[0].command()  # the full preset keeps each script's budget for the env


def test_finished_runs_are_skipped_and_unfinished_ones_resumed(tmp_path):
    (run,) = sweep.expand(sweep.Args(variants=("varibad",), seeds=(4,), out=str(tmp_path)))
    assert run.state() == ("start", None)
    stale = os.path.join(run.runs_dir, "PointGoal__varibad__4__1")  # killed before its first checkpoint
    os.makedirs(stale)
    assert run.state() == ("start", None)
    cut = os.path.join(run.runs_dir, "PointGoal__varibad__4__2")
    os.makedirs(cut)
    open(os.path.join(cut, "resume.pt"), "w").close()
    assert run.command() == ["python", "varibad_ppo_continuous.py", "--resume", cut]
    # on a Slurm timeout submitit requeues the callable itself, which looks at the folder again when it starts
    assert run.checkpoint().function is run
    open(os.path.join(cut, "summary.json"), "w").close()
    assert run.state() == ("finished", cut)
    assert run() == cut and not os.path.exists(run.log)  # a finished run is not run again


def test_the_local_pool_never_runs_more_than_workers_at_once():
    class Job:
        def __init__(self, pool):
            self.pool, self.polls = pool, 0

        def done(self):
            self.polls += 1
            if self.polls == 3:
                self.pool.running -= 1
            return self.polls >= 3

        def result(self):
            return "ok"

    class Executor:
        running = most = submitted = 0

        def submit(self, run):
            self.running, self.submitted = self.running + 1, self.submitted + 1
            self.most = max(self.most, self.running)
            return Job(self)

    executor = Executor()
    runs = sweep.expand(sweep.Args(out="/nonexistent"))[:7]
    assert sweep.run_local(executor, runs, workers=2) == []
    assert executor.submitted == 7 and executor.most == 2


def test_bad_names_are_one_line_errors():
    for flags, message in ((["--variants", "milet", "milett"], "unknown variant milett; valid: milet, milet_no_exploration"),
                           (["--envs", "AntGoall"], "unknown env AntGoall; valid: PointGoal, AntGoal")):
        result = launch.run_script(SWEEP, *flags, "--dry-run")  # in-process (tests/launch.py)
        assert result.returncode != 0 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_quick_sweep_runs_end_to_end_on_submitits_local_executor_and_resumes(tmp_path):
    out = tmp_path / "sweep"
    flags = ["--preset", "quick", "--executor", "local", "--workers", "1", "--variants", "milet", "varibad", "rl2",
             "--seeds", "1", "2", *TINY, "--out", str(out), "--reps", "200"]
    first = run_sweep(*flags)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "6 runs: 0 finished, 0 to resume, 6 to start" in first.stdout
    run_dirs = {(v, s): sweep.TrainRun("PointGoal", v, s, str(out)).state() for v in ("milet", "varibad", "rl2") for s in (1, 2)}
    assert all(state == "finished" for state, _ in run_dirs.values())
    log = open(out / "logs" / "PointGoal__varibad__2.log").read()
    assert (f"$ OMP_NUM_THREADS=1 python varibad_ppo_continuous.py --env-id PointGoal --seed 2 --exp-name varibad "
            f"--runs-dir {out}/runs/PointGoal/varibad/2 --total-timesteps 80 --episode-length 5") in log
    args = json.load(open(os.path.join(run_dirs["varibad", 2][1], "args.json")))
    assert args["seed"] == 2 and args["exp_name"] == "varibad" and args["total_timesteps"] == 80

    # the rliable table, the comparisons of MILET with the others, and the figures
    table = (out / "table.md").read_text()
    for group in ("milet", "varibad", "rl2"):
        assert re.search(rf"\| PointGoal \| {group} \| 2 \| -?\d+\.\d \[-?\d+\.\d, -?\d+\.\d\] \|", table), table
    assert table in first.stdout
    compare = (out / "compare.md").read_text()
    assert "## milet against varibad" in compare and "## milet against rl2" in compare
    assert re.search(r"\| PointGoal \| 2 \| 2 \| (0|1)\.\d\d \[\d\.\d\d, \d\.\d\d\] \| n/a \(rl2 infers no clusters\) \|", compare)
    for figure in ("curves", "nmi", "profiles"):
        assert (out / f"PointGoal_{figure}.png").read_bytes()[:4] == b"\x89PNG"

    # an interrupted run (a resume.pt, no summary.json) resumes in its folder; a lost one starts again
    cut = run_dirs["milet", 1][1]
    eval_lines = open(os.path.join(cut, "eval.jsonl")).read()
    os.remove(os.path.join(cut, "summary.json"))
    shutil.rmtree(out / "runs" / "PointGoal" / "rl2" / "2")
    second = run_sweep(*flags)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "6 runs: 4 finished, 1 to resume, 1 to start" in second.stdout
    assert sweep.TrainRun("PointGoal", "milet", 1, str(out)).state() == ("finished", cut)
    assert open(os.path.join(cut, "eval.jsonl")).read() == eval_lines
    assert f"$ OMP_NUM_THREADS=1 python milet_ppo_continuous.py --resume {cut}\n" in open(out / "logs" / "PointGoal__milet__1.log").read()
    assert sweep.TrainRun("PointGoal", "rl2", 2, str(out)).state()[0] == "finished"


def test_the_slurm_script_submitit_writes(tmp_path):
    """No Slurm here: a stand-in sbatch records the script and answers with a job id; nothing is trained."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/submitted.sh\necho "Submitted batch job 4242"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit checks that srun exists
    for tool in ("sbatch", "srun"):
        os.chmod(bin_dir / tool, 0o755)
    out = tmp_path / "sweep"
    result = run_sweep("--preset", "full", "--executor", "slurm", "--variants", "milet", "varibad", "--envs", "AntGoal",
                       "HumanoidDir", "--seeds", "1", "2", "3", "--workers", "4", "--slurm-partition", "cpu",
                       "--slurm-account", "proj42", "--timeout-min", "720", "--cpus-per-task", "4", "--mem-gb", "24",
                       "--slurm-setup", "module load python/3.11", "--no-wait", "--out", str(out),
                       env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "submitted Slurm job 4242 (12 runs)" in result.stdout and "--report-only" in result.stdout
    script = (tmp_path / "submitted.sh").read_text()
    sbatch = dict(re.findall(r"^#SBATCH --([\w-]+)=(.*)$", script, flags=re.M))
    assert sbatch["partition"] == "cpu" and sbatch["account"] == "proj42"
    assert sbatch["time"] == "720" and sbatch["cpus-per-task"] == "4" and sbatch["mem"] == "24GB"
    assert sbatch["nodes"] == "1" and sbatch["ntasks-per-node"] == "1"
    assert sbatch["array"] == "0-11%4"  # 2 envs x 2 variants x 3 seeds, 4 at a time
    assert sbatch["signal"] == "USR2@90"  # the warning before the time limit, on which submitit requeues the job
    assert sbatch["job-name"] == "milet_sweep" and sbatch["output"].startswith(f"{out}/submitit/")
    assert "module load python/3.11" in script and f"{sys.executable} -u -m submitit.core._submit" in script
    # the array's jobs: one pickled TrainRun per run, the command chosen when the job starts
    pickles = sorted((out / "submitit").glob("4242_*/4242_*_submitted.pkl"))
    assert len(pickles) == 12
    jobs = [pickle.load(open(p, "rb")).function for p in pickles]
    assert sorted((j.env_id, j.variant, j.seed) for j in jobs) == sorted(
        (e, v, s) for e in ("AntGoal", "HumanoidDir") for v in ("milet", "varibad") for s in (1, 2, 3))
    assert jobs[0].command()[:3] == ["python", sweep.VARIANTS[jobs[0].variant][0], "--env-id"]
    assert not (out / "runs").exists()


def test_compare_methods_sh_is_a_thin_wrapper_of_sweep_py(tmp_path):
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    script = os.path.join(ROOT, "benchmarks", "compare_methods.sh")
    result = subprocess.run(["bash", script, "quick", "--dry-run", "--out", str(tmp_path)], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "quick: 33 runs: 0 finished, 0 to resume, 33 to start" in result.stdout
    assert result.stdout.count("\nstart    python ") == 33
    wrong = subprocess.run(["bash", script, "fast"], capture_output=True, text=True, env=env, timeout=60)
    assert wrong.returncode == 2 and "the mode is quick or full, not 'fast'" in wrong.stderr
