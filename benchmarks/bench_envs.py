"""Environment throughput against the physical limit, per MuJoCo env id, in one run.

    python benchmarks/bench_envs.py                 # every MuJoCo id, 16 slots, 2 threads
    python benchmarks/bench_envs.py --env-ids AntGoal --trials 10

For each id, env-steps per second (one vector step of 16 slots = 16 env-steps) of:
  * bare mj_step, 1 thread: a Python loop of mujoco.mj_step(model, data, nstep=frame_skip) over 16 MjData, no
    observation, reward or reset: what one core's physics allows;
  * bare rollout, all threads: mujoco.rollout.Rollout(nthread=threads) stepping the 16 states for a whole trial in
    C: the physical limit of the machine;
  * the native vector env (envs_clustered.MujocoVectorEnv, physics_threads=threads);
  * the gymnasium-v5 reference path (SyncVectorEnv of TrialEnvs, make_vector_env(native=False));
with the ratios native / limit and native / reference. Actions are pre-sampled uniform in the action box, so only
stepping is timed; the env paths include their inner-episode resets, observations and rewards.
Also PointGoal's numpy vector env, for scale.
"""
import argparse
import os
import sys
import time

import mujoco
import numpy as np
from mujoco import rollout

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import envs_clustered as E  # noqa: E402


def env_steps_per_second(envs, actions, trials):
    steps, start = 0, time.perf_counter()
    for _ in range(trials):
        envs.reset()
        for a in actions:
            envs.step(a)
        steps += actions.shape[0] * actions.shape[1]
    return steps / (time.perf_counter() - start)


def bare_mj_step(native, actions, trials):
    """One thread: mj_step on each slot's MjData, nothing else."""
    steps, start = 0, time.perf_counter()
    for _ in range(trials):
        for a in actions:
            for i, data in enumerate(native.datas):
                data.ctrl[:] = a[i]
                mujoco.mj_step(native.models[i], data, nstep=native.frame_skip)
        steps += actions.shape[0] * actions.shape[1]
    return steps / (time.perf_counter() - start)


def bare_rollout(native, actions, trials, threads):
    """All threads: a whole trial of every slot in one mujoco.rollout call (the substeps repeat each action)."""
    n, frame_skip = actions.shape[1], native.frame_skip
    state_spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
    initial = np.stack([np.empty(mujoco.mj_stateSize(m, state_spec)) for m in native.models])
    for i, (m, d) in enumerate(zip(native.models, native.datas)):
        mujoco.mj_getState(m, d, initial[i], state_spec)
    control = np.repeat(actions.transpose(1, 0, 2), frame_skip, axis=1).astype(np.float64)  # (n, T * skip, nu)
    datas = [mujoco.MjData(native.models[0]) for _ in range(threads)]
    steps, start = 0, time.perf_counter()
    with rollout.Rollout(nthread=threads) as runner:
        for _ in range(trials):
            runner.rollout(native.models, datas, initial, control)
            steps += actions.shape[0] * n
    return steps / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env-ids", nargs="+", default=[e for e in E.ENV_IDS if e != "PointGoal"])
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="physics threads of the native env and of rollout")
    parser.add_argument("--trials", type=int, default=5, help="trials of 2 x 100 steps per measurement")
    args = parser.parse_args()
    print(f"{args.num_envs} slots, {args.threads} threads, {os.cpu_count()} CPUs; env-steps/s")
    print("| env id | bare mj_step, 1 thread | bare rollout, all threads (limit) | native vector env | gymnasium reference"
          " | native / limit | native / reference |\n|---|---|---|---|---|---|---|")
    for env_id in args.env_ids:
        native = E.make_vector_env(env_id, args.num_envs, seed=0, physics_threads=args.threads)
        reference = E.make_vector_env(env_id, args.num_envs, seed=0, native=False)
        space = native.single_action_space
        actions = np.random.default_rng(0).uniform(space.low, space.high, (native.trial_length, args.num_envs,
                                                                           space.shape[0])).astype(np.float32)
        native.reset()
        figures = [bare_mj_step(native, actions, args.trials), bare_rollout(native, actions, args.trials, args.threads),
                   env_steps_per_second(native, actions, args.trials), env_steps_per_second(reference, actions, args.trials)]
        print(f"| {env_id} | " + " | ".join(f"{f:,.0f}" for f in figures)
              + f" | {figures[2] / figures[1]:.2f} | {figures[2] / figures[3]:.2f} |", flush=True)
        native.close()
        reference.close()
    points = E.make_vector_env("PointGoal", args.num_envs, seed=0)
    actions = np.random.default_rng(0).uniform(-1, 1, (points.trial_length, args.num_envs, 2))
    print(f"\nPointGoal numpy vector env: {env_steps_per_second(points, actions, 50):,.0f} env-steps/s")


if __name__ == "__main__":
    main()
