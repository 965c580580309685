"""How often the AntGoal ant ends upside down under an untrained Gaussian policy, by its std (issue 24, cause 2).

Zero-mean Gaussian actions of each std, clipped to the box as MuJoCo's ctrlrange clamps them, for one 100-step
episode on the first 256 training tasks of the seed-0 split (the native env, reset noise from --seed). Prints, per
std, the share of ants whose torso's up axis points below the horizon at the last step of the episode, the share
that were upside down at any step, and the mean episode return. There is no termination and no healthy reward, so an ant that
flips stays flipped and scores the standing-still return or worse.

    python benchmarks/ant_flips.py                 # std 1 (the authors' initial policy), 0.6, 0.37
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import envs_clustered  # noqa: E402


def upright(qpos: np.ndarray) -> np.ndarray:
    """The z component of the torso's up axis, from its quaternion (w, x, y, z) = qpos[3:7]: 1 upright, < 0 flipped."""
    return 1 - 2 * (qpos[:, 4] ** 2 + qpos[:, 5] ** 2)


def flips(std: float, num_tasks: int = 256, horizon: int = 100, seed: int = 0) -> dict:
    split = envs_clustered.make_task_split("AntGoal")
    envs = envs_clustered.make_vector_env("AntGoal", num_tasks, episode_length=horizon, seed=seed, physics_threads=1)
    envs.reset(seed=seed, options={"tasks": split.train_tasks[:num_tasks], "clusters": split.train_clusters[:num_tasks]})
    rng, episode_return, up = np.random.default_rng(seed), np.zeros(num_tasks), []
    for _ in range(horizon):  # the first episode of the trial
        actions = np.clip(std * rng.standard_normal((num_tasks, 8)), -1, 1).astype(np.float32)
        _, reward, _, _, info = envs.step(actions)
        episode_return += reward
        up.append(upright(info["next_state"][:, :7]))  # Ant's observation starts with qpos (x, y, z, quaternion)
    up = np.array(up)
    return {"std": std, "flipped_at_end": float((up[-1] < 0).mean()), "flipped_ever": float((up < 0).any(0).mean()),
            "mean_return": float(episode_return.mean())}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stds", type=float, nargs="+", default=[1.0, 0.6, 0.37])
    parser.add_argument("--seed", type=int, default=0)
    cli = parser.parse_args()
    for std in cli.stds:
        row = flips(std, seed=cli.seed)
        print(f"std {row['std']:.2f}: upside down at the end {row['flipped_at_end']:.0%}, "
              f"at some step {row['flipped_ever']:.0%}, mean episode return {row['mean_return']:.1f}")
