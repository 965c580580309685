"""Speed and memory of a short milet_ppo_continuous.py run: SPS, the share of wall time spent stepping
environments, and the peak resident memory (RSS) with the default CBVI trial buffer; for a MuJoCo id, the native
vector env and the gymnasium reference path (--gymnasium-envs) side by side, each in its own process, in one call.

    python benchmarks/bench_milet.py --env-id AntGoal --iterations 10
    python benchmarks/bench_milet.py --env-id AntGoal --iterations 10 --torch-threads 2 --physics-threads 1
    python benchmarks/bench_milet.py --env-id PointGoal --iterations 100
    python benchmarks/bench_milet.py --env-id AntGoal --iterations 4 --one-path --resume   # also a resumed run's peak

Runs the script in this process (runpy), after wrapping the vector envs' step methods with a timer. The run
evaluates only before and after training (--eval-every is set past the end); those two evaluations are part of
the wall time and of the script's own SPS figure (sps_script), but not of train_sps (frames / (wall - eval_s)).
The benchmark fills every slot of the trial buffer with copies of the run's first trials (real, compressible
as real data are), so a short run holds the memory of a full one, as after a long run. The run ends with a
resume.pt checkpoint, which is inside the peak.
"""
import argparse
import json
import os
import resource
import runpy
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import gymnasium as gym  # noqa: E402

import cbvi  # noqa: E402
import envs_clustered  # noqa: E402


def timed(cls, totals):
    """Wrap cls.step so that its wall time accumulates in totals[num_envs]."""
    original = cls.step

    def step(self, actions):
        start = time.perf_counter()
        try:
            return original(self, actions)
        finally:
            totals[self.num_envs] = totals.get(self.num_envs, 0.0) + time.perf_counter() - start

    cls.step = step


def remember_buffers(buffers):
    """Keep every TrialBuffer the script creates in buffers, to report its size. The buffer compresses each trial
    (cbvi.py), so a full one is simulated with real data: the first batch of trials the run adds is copied into
    every slot (the untrained policy's trials; docs/benchmarks.md compares their compression with a trained run's).
    A short run then holds the memory of a full one, as after a long run."""
    original_init, original_add = cbvi.TrialBuffer.__init__, cbvi.TrialBuffer.add

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        buffers.append(self)

    def add(self, *args, **kwargs):
        original_add(self, *args, **kwargs)
        if self.size < self.capacity:
            batch = self.size
            for slot in range(batch, self.capacity):
                self._store(slot, self.blocks[slot % batch, :self.lengths[slot % batch]].numpy())
            self.size = self.capacity

    cbvi.TrialBuffer.__init__, cbvi.TrialBuffer.add = init, add


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env-id", default="AntGoal", choices=envs_clustered.ENV_IDS)
    parser.add_argument("--iterations", type=int, default=10, help="training iterations of 16 trials x 200 steps")
    parser.add_argument("--one-path", action="store_true", help="measure only the flags given, in this process")
    parser.add_argument("--resume", action="store_true",
                        help="then --resume the finished run in a fresh process and report that process's peak RSS "
                             "(loading resume.pt with its full buffer; the finished run trains no further)")
    args, extra = parser.parse_known_args()
    if not args.one_path:  # both paths, each in a fresh process (peak RSS is per process)
        paths = [("native", [])] + ([("gymnasium", ["--gymnasium-envs"])] if args.env_id != "PointGoal" else [])
        results = {}
        for name, flags in paths:
            command = [sys.executable, os.path.abspath(__file__), "--one-path", *sys.argv[1:], *flags]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results[name] = json.loads(out.strip().splitlines()[-1])
            print(f"{name}: {json.dumps(results[name])}", flush=True)
        if "gymnasium" in results:
            print(f"training SPS, native / gymnasium reference: {results['native']['train_sps'] / results['gymnasium']['train_sps']:.2f}")
        return
    totals, buffers = {}, []
    remember_buffers(buffers)
    timed(gym.vector.SyncVectorEnv, totals)
    timed(envs_clustered.PointGoalVectorEnv, totals)
    timed(envs_clustered.MujocoVectorEnv, totals)
    import meta_test

    evaluate, eval_wall = meta_test.evaluate, [0.0]

    def timed_evaluate(*args, **kwargs):  # the script's two evaluations, taken out of the training SPS
        start = time.perf_counter()
        try:
            return evaluate(*args, **kwargs)
        finally:
            eval_wall[0] += time.perf_counter() - start

    meta_test.evaluate = timed_evaluate
    with tempfile.TemporaryDirectory() as runs_dir:
        sys.argv = ["milet_ppo_continuous.py", "--env-id", args.env_id, "--runs-dir", runs_dir, "--eval-every", "1000000",
                    "--total-timesteps", str(args.iterations * 16 * 200), *extra]
        start = time.perf_counter()
        runpy.run_path(os.path.join(ROOT, "milet_ppo_continuous.py"), run_name="__main__")
        wall = time.perf_counter() - start
        (run_dir,) = os.listdir(runs_dir)
        summary = json.load(open(os.path.join(runs_dir, run_dir, "summary.json")))
        if args.resume:
            subprocess.run([sys.executable, os.path.join(ROOT, "milet_ppo_continuous.py"), "--resume",
                            os.path.join(runs_dir, run_dir)], capture_output=True, check=True, cwd=ROOT)
            resume_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the only child waited for
    train_env_time, eval_env_time = totals.get(16, 0.0), totals.get(32, 0.0)
    result = {
        "env_id": args.env_id, "frames": summary["global_step"], "wall_s": round(wall, 1), "sps_script": summary["sps"],
        "eval_s": round(eval_wall[0], 1), "train_sps": round(summary["global_step"] / (wall - eval_wall[0])),
        "train_env_step_s": round(train_env_time, 1), "eval_env_step_s": round(eval_env_time, 1),
        "env_step_share": round((train_env_time + eval_env_time) / wall, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),  # Linux: KiB
        "buffer_trials": summary["args"]["vae_buffer_size"],
        "buffer_mib": round(sum(b.nbytes for b in buffers) / 2**20),
        **({"resume_peak_rss_mib": round(resume_peak / 1024)} if args.resume else {}),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
