"""Environment throughput: PointGoal native vector env (16 envs) and AntGoal (single env).

Run from the repository root:  python benchmarks/bench_envs.py
Steps/s counts env-steps: one vector step of 16 envs = 16 env-steps. Actions are pre-sampled so
that only the environment is timed.
"""

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from envs_clustered import make_env, make_vector_env  # noqa: E402


def bench_point_goal_vector(num_envs=16, num_trials=200):
    envs = make_vector_env("PointGoal", num_envs, seed=0)
    actions = np.random.default_rng(0).uniform(-1, 1, (envs.trial_length, num_envs, 2))
    steps, start = 0, time.perf_counter()
    for _ in range(num_trials):
        envs.reset()
        for a in actions:
            envs.step(a)
        steps += num_envs * len(actions)
    return steps / (time.perf_counter() - start)


def bench_ant_goal_single(num_trials=25):
    env = make_env("AntGoal", seed=0)
    actions = np.random.default_rng(0).uniform(-1, 1, (env.trial_length, 8))
    steps, start = 0, time.perf_counter()
    for _ in range(num_trials):
        env.reset()
        for a in actions:
            env.step(a)
        steps += len(actions)
    return steps / (time.perf_counter() - start)


if __name__ == "__main__":
    print(f"PointGoal vector env (16 envs): {bench_point_goal_vector():,.0f} env-steps/s")
    print(f"AntGoal single env:             {bench_ant_goal_single():,.0f} env-steps/s")
