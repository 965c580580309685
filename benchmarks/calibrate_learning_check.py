"""Calibrate the learning checks of tests/test_learning.py: run one method's exact command for several seeds and
print its figures per seed, with the lowest of each (the thresholds must sit below these, with a margin).

    python benchmarks/calibrate_learning_check.py --method milet --seeds 1 2 3 4 5 --jobs 2
    python benchmarks/calibrate_learning_check.py --method milet --seeds 2 --jobs 1 --write   # update the JSON

--method is milet, varibad, rl2, pearl or metacure; each runs its check's CHECK_FLAGS (tests/test_learning.py). Runs go
to benchmarks/calibration_runs/<method>/ (git-ignored). On one core of the slow machine of 2026-12-05 a run takes 11
(PEARL) to 37 (MetaCURE) minutes; use --jobs 1 on a shared machine. --write records each seed's figures, the flags,
the date and the commit in tests/learning_calibration.json, which the learning checks read their reference figures
from.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
from test_learning import CALIBRATION_PATH, CHECK_FLAGS, SCRIPTS, learning_figures  # noqa: E402


def run_seed(script: str, seed: int, runs_dir: str, flags: list) -> dict:
    seed_dir = os.path.join(runs_dir, f"seed{seed}")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, script, "--runs-dir", seed_dir, "--seed", str(seed), *flags],
                   check=True, capture_output=True, cwd=ROOT, env=env)
    newest = max((os.path.join(seed_dir, name) for name in os.listdir(seed_dir)), key=os.path.getmtime)  # this run
    return {"seed": seed, **learning_figures(newest)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=sorted(SCRIPTS), default="milet")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one CPU thread each)")
    parser.add_argument("--runs-dir", default=os.path.join(ROOT, "benchmarks", "calibration_runs"),
                        help="runs go to RUNS_DIR/<method>/seed<S>/")
    parser.add_argument("--write", action="store_true", help=f"record the figures in {CALIBRATION_PATH}")
    cli = parser.parse_args()
    with ThreadPoolExecutor(cli.jobs) as pool:
        rows = list(pool.map(lambda seed: run_seed(SCRIPTS[cli.method], seed, os.path.join(cli.runs_dir, cli.method), CHECK_FLAGS[cli.method]),
                             cli.seeds))
    print(f"command: {os.path.basename(SCRIPTS[cli.method])} {' '.join(CHECK_FLAGS[cli.method])} --seed S")
    print("| seed | " + " | ".join(k for k in rows[0] if k != "seed") + " |")
    for row in rows:
        print(f"| {row['seed']} | " + " | ".join(f"{v:.3f}" for k, v in row.items() if k != "seed") + " |")
    print("lowest: " + json.dumps({k: round(min(r[k] for r in rows), 3) for k in rows[0] if k != "seed"}))
    if cli.write:  # one entry per (method, seed), replaced by a new calibration of that seed
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":!tests/learning_calibration.json"], capture_output=True,
                               text=True, cwd=ROOT).stdout.strip()
        calibration = json.load(open(CALIBRATION_PATH)) if os.path.exists(CALIBRATION_PATH) else {}
        for row in rows:
            calibration.setdefault(cli.method, {})[str(row["seed"])] = {
                **{k: round(v, 3) for k, v in row.items() if k != "seed"}, "date": time.strftime("%Y-%m-%d"),
                "flags": " ".join(CHECK_FLAGS[cli.method]),
                "commit": commit.stdout.strip() + ("+changes" if dirty else "")}
        with open(CALIBRATION_PATH, "w") as f:
            json.dump(calibration, f, indent=1, sort_keys=True)
            f.write("\n")
