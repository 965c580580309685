"""Tests for the gymnasium registration of envs_clustered: every env id is made with gymnasium.make("milet/<EnvId>-v0"),
passes gymnasium's check_env, and runs the task passed to make."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.mujoco.humanoid_v5 import mass_center
from gymnasium.utils.env_checker import check_env

import envs_clustered as E  # importable via tests/conftest.py; importing it registers the ids

H = 5  # short inner episodes keep the file fast
# check_env warns about every Box observation space with infinite bounds (gymnasium's own v5 envs included)
EXPECTED_WARNINGS = ("observation space minimum value is -infinity", "observation space maximum value is infinity")


def test_every_id_is_registered_in_the_milet_namespace():
    for env_id in E.ENV_IDS:
        spec = gym.spec(f"milet/{env_id}-v0")
        assert E.gym_id(env_id) == spec.id
        assert (spec.namespace, spec.name, spec.version) == ("milet", env_id, 0)
        assert spec.entry_point == "envs_clustered:make_env" and spec.kwargs == {"env_id": env_id}
    E.register_envs()  # a second registration leaves the registry alone
    assert gym.spec("milet/AntGoal-v0").kwargs == {"env_id": "AntGoal"}


def trial(env, actions, **reset_kwargs):
    """(observations, rewards, infos) of one whole trial with the given actions."""
    obs, info = env.reset(**reset_kwargs)
    observations, rewards, infos = [obs], [], [info]
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        observations.append(obs), rewards.append(reward), infos.append(info)
        assert not terminated
    assert truncated
    return np.stack(observations), np.array(rewards), infos


def forward_reward(env_id, direction, velocity):
    """The velocity term of the HumanoidDir rewards."""
    forward = direction @ velocity
    if env_id == "HumanoidDirSparse" and forward < E.SPARSE_COS * np.linalg.norm(velocity):
        return 0.0
    return forward


@pytest.mark.parametrize("env_id", E.ENV_IDS)
def test_make_passes_check_env_and_runs_the_task(env_id):
    split = E.make_task_split(env_id, seed=0)
    task, cluster = split.test_tasks[6], split.test_clusters[6]
    env = gym.make(E.gym_id(env_id), task=task, cluster=cluster, episode_length=H, num_episodes=2)
    assert isinstance(env.unwrapped, E.TrialEnv) and env.unwrapped.env_id == env_id
    assert env.unwrapped.trial_length == 2 * H

    # gymnasium's checker on the env itself (make only adds its PassiveEnvChecker and OrderEnforcing wrappers)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    unexpected = [str(w.message) for w in caught if not any(text in str(w.message) for text in EXPECTED_WARNINGS)]
    assert not unexpected

    # the task of make is the task of every step of every trial, and the task the env runs
    actions = np.random.default_rng(0).uniform(env.action_space.low, env.action_space.high,
                                               (2 * H, *env.action_space.shape)).astype(np.float32)
    observations, rewards, infos = trial(env, actions, seed=1)
    again = trial(env, actions)  # a second trial, without options: the same task
    for info in infos + again[2]:
        np.testing.assert_array_equal(info["task"], task)
        assert info["cluster"] == cluster
    np.testing.assert_array_equal(env.unwrapped.task, task)
    assert infos[H]["episode_start"] and infos[H]["episode_index"] == 1

    # make(task=...) is make_env with the task as a reset option: the same trial, number for number
    reference = E.make_env(env_id, episode_length=H, num_episodes=2)
    ref_observations, ref_rewards, _ = trial(reference, actions, seed=1, options={"task": task, "cluster": cluster})
    np.testing.assert_array_equal(observations, ref_observations)
    np.testing.assert_array_equal(rewards, ref_rewards)

    # the reward reads this task: against another task the same step differs by the task's term only
    kind, other = E._kind(env_id), split.test_tasks[7]
    if kind == "params":  # the task is the MDP: every group scaled by its multipliers
        defaults = E.make_env(env_id).model  # not reset: default parameters
        for name, sl in E.param_group_slices(env_id).items():
            value = getattr(env.unwrapped.model, name)
            np.testing.assert_allclose(value, getattr(defaults, name) * task[sl].reshape(value.shape))
    else:
        other_env = gym.make(E.gym_id(env_id), task=other, episode_length=H)
        _, (_, other_info) = env.reset(seed=2), other_env.reset(seed=2)
        com_before = None
        if kind == "dir":  # both humanoids start running along the task, so the sparse reward counts too
            qvel = np.zeros(env.unwrapped.model.nv)
            qvel[:2] = 2.0 * task
            for each in (env, other_env):
                each.unwrapped.set_state(each.unwrapped.data.qpos.copy(), qvel)
            com_before = mass_center(env.unwrapped.model, env.unwrapped.data)
        _, reward, _, _, info = env.step(actions[0])
        _, other_reward, _, _, other_info = other_env.step(actions[0])
        np.testing.assert_array_equal(info["xy"], other_info["xy"])  # the task does not move the robot
        if kind == "goal":
            partial = env_id == "AntGoalPartial"
            task_term = E.goal_reward(info["xy"], task, partial) - E.goal_reward(info["xy"], other, partial)
        else:
            velocity = (mass_center(env.unwrapped.model, env.unwrapped.data) - com_before) / env.unwrapped.sim.dt
            task_term = forward_reward(env_id, task, velocity) - forward_reward(env_id, other, velocity)
        assert task_term != 0.0
        assert reward - other_reward == pytest.approx(task_term, abs=1e-6)
        other_env.close()
    env.close()


def test_cluster_alone_draws_train_tasks_of_that_cluster():
    split = E.make_task_split("PointGoal", seed=4)
    env = gym.make("milet/PointGoal-v0", cluster=3, seed=4)
    cluster_3 = split.train_tasks[split.train_clusters == 3]
    for reset_seed in (None, 0, None, None):
        _, info = env.reset(seed=reset_seed)
        assert info["cluster"] == 3
        assert np.abs(cluster_3 - info["task"]).max(axis=1).min() == 0.0
    _, info = env.reset(options={"task": [1.0, 1.0]})  # a reset option overrides make's cluster for one trial
    np.testing.assert_array_equal(info["task"], [1.0, 1.0])
    assert env.reset()[1]["cluster"] == 3


def test_without_task_make_draws_as_make_env():
    """No task, no cluster: the trials draw the same meta-training tasks as before the registry (training runs)."""
    split = E.make_task_split("PointGoal", seed=4)
    made, built = gym.make("milet/PointGoal-v0", seed=4), E.make_env("PointGoal", seed=4)
    draws = np.random.default_rng([4, 0])  # the task generator of slot 0
    for _ in range(3):
        expected = split.train_tasks[draws.integers(len(split.train_tasks))]
        np.testing.assert_array_equal(made.reset()[1]["task"], expected)
        np.testing.assert_array_equal(built.reset()[1]["task"], expected)


def test_bad_task_or_cluster_raises():
    with pytest.raises(ValueError, match="shape"):
        gym.make("milet/AntGoal-v0", task=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="cluster"):
        gym.make("milet/PointGoal-v0", cluster=4)


def test_make_vec_builds_the_native_vector_envs():
    envs = gym.make_vec("milet/PointGoal-v0", num_envs=3, episode_length=H)
    assert isinstance(envs, E.PointGoalVectorEnv) and envs.num_envs == 3 and envs.trial_length == 2 * H
    tasks = E.make_task_split("PointGoal").test_tasks[:3]
    np.testing.assert_array_equal(envs.reset(options={"tasks": tasks})[1]["task"], tasks)
    envs = gym.make_vec("milet/AntGoal-v0", num_envs=2, episode_length=H)
    assert isinstance(envs, E.MujocoVectorEnv)
    envs.close()
