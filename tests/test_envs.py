"""Tests for envs_clustered: trial structure, rewards, task splits, rand params, vector envs."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.mujoco.humanoid_v5 import mass_center

import envs_clustered as E  # importable via tests/conftest.py

H = 20  # short inner episodes keep the MuJoCo tests fast
RESET_NOISE = {"AntGoal": 0.1, "AntGoalPartial": 0.1, "AntU": 0.1, "HumanoidDir": 1e-2,
               "HumanoidDirSparse": 1e-2, "HopperRandParams": 5e-3, "WalkerRandParams": 5e-3}


def run_trial(env, **reset_kwargs):
    obs, info = env.reset(**reset_kwargs)
    steps = [(obs, None, False, False, info)]
    while not steps[-1][3]:
        steps.append(env.step(env.action_space.sample()))
        assert len(steps) <= env.trial_length + 1, "trial did not end"
    return steps


@pytest.mark.parametrize("env_id", E.ENV_IDS)
def test_trial_structure(env_id):
    env = E.make_env(env_id, episode_length=H, num_episodes=2, seed=3)
    env.action_space.seed(0)
    steps = run_trial(env, seed=1)
    reset_info = steps[0][4]
    task, cluster = reset_info["task"], reset_info["cluster"]
    assert reset_info["episode_index"] == 0 and reset_info["episode_start"] is True
    assert ("xy" in reset_info) == (E._kind(env_id) != "params")
    assert len(steps) - 1 == 2 * H
    for t, (obs, reward, terminated, truncated, info) in enumerate(steps[1:]):
        assert obs.shape == env.observation_space.shape and obs.dtype == np.float32
        assert np.isfinite(reward)
        assert terminated is False
        assert truncated == (t == 2 * H - 1)
        np.testing.assert_array_equal(info["task"], task)
        assert info["cluster"] == cluster
        boundary = t == H - 1
        assert info["episode_start"] == boundary
        assert info["episode_index"] == (t + 1) // H - (t == 2 * H - 1)
        if boundary:
            assert np.abs(info["next_state"] - obs).max() > 1e-3
        else:
            np.testing.assert_array_equal(info["next_state"], obs)
        if "xy" in info and env_id != "PointGoal":
            np.testing.assert_allclose(info["xy"], info["next_state"][:2], atol=1e-5)
    # the observation after the boundary is a fresh reset state
    obs_after = steps[H][0]
    if env_id == "PointGoal":
        np.testing.assert_array_equal(obs_after, [0.0, 0.0])
    else:
        skip = env.sim.observation_structure["skipped_qpos"]
        qpos = obs_after[:env.model.nq - skip]
        assert np.abs(qpos - env.init_qpos[skip:]).max() <= RESET_NOISE[env_id] + 1e-6
    with pytest.raises(RuntimeError):
        env.step(env.action_space.sample())


def test_pointgoal_default_length_and_reward_by_hand():
    env = E.make_env("PointGoal")
    goal = np.array([1.0, -0.5])
    obs, _ = env.reset(options={"task": goal, "cluster": 3})
    np.testing.assert_array_equal(obs, [0, 0])
    obs, r, _, _, info = env.step(np.array([0.5, 2.0]))  # second component clipped to 1
    np.testing.assert_allclose(obs, [0.05, 0.1], atol=1e-7)
    expected = -(abs(0.05 - 1.0) + abs(0.1 + 0.5)) - 0.01 * (0.25 + 1.0)
    assert r == pytest.approx(expected)
    assert info["cluster"] == 3
    for t in range(1, 200):
        obs, r, term, trunc, info = env.step(np.ones(2))
        assert trunc == (t == 199) and not term
        if t == 99:
            assert info["episode_start"] and info["episode_index"] == 1
            np.testing.assert_array_equal(obs, [0, 0])
            np.testing.assert_allclose(info["xy"], [0.05 + 9.9, 0.1 + 9.9])


@pytest.mark.parametrize("env_id", ["AntGoal", "AntGoalPartial"])
def test_ant_reward_formula(env_id):
    env = E.make_env(env_id, episode_length=H)
    goal = np.array([0.0, 2.0])
    env.reset(options={"task": goal})
    for torso_xy in ([0.5, 1.0], [6.0, -3.0]):  # inside / outside the partial reward region
        qpos, qvel = env.init_qpos.copy(), np.zeros(env.model.nv)
        qpos[:2] = torso_xy
        env.set_state(qpos, qvel)
        action = np.full(8, 0.5)
        obs, r, _, _, info = env.step(action)
        xy = env.data.qpos[:2]
        np.testing.assert_allclose(obs[:2], xy, atol=1e-6)
        l1 = np.abs(xy - goal).sum()
        goal_r = max(3.0 - l1, 0.0) if env_id == "AntGoalPartial" else -l1
        contact = 5e-4 * np.square(np.clip(env.data.cfrc_ext, -1, 1)).sum()
        assert r == pytest.approx(goal_r - 0.01 * np.square(action).sum() - contact, abs=1e-6)
        if env_id == "AntGoalPartial":
            assert (goal_r > 0) == (torso_xy[0] == 0.5)


@pytest.mark.parametrize("env_id", E.GOAL_ENV_IDS)
def test_relabelled_rewards_are_those_of_the_same_actions_in_the_new_task(env_id):
    """--relabel-share's rewards: a trial's transitions re-scored under another goal equal a rollout of the same
    actions, from the same reset, in that goal's task (goals move no body)."""
    split = E.make_task_split(env_id, seed=0)
    tasks = split.train_tasks[[3, 10]]  # goals in different clusters
    rewards, next_xy = [], []
    for task in tasks:
        env = E.make_env(env_id, episode_length=H, task=task)
        env.reset(seed=5)
        actions = np.random.default_rng(0).uniform(-1, 1, (2 * H, *env.action_space.shape))
        steps = [env.step(action) for action in actions]
        rewards.append([step[1] for step in steps])
        next_xy.append([step[4]["next_state"][:2] for step in steps])
    assert np.abs(np.subtract(*rewards)).max() > 0.1  # the two tasks pay differently
    relabelled = E.relabel_rewards(env_id, np.array(rewards[0])[:, None], np.array(next_xy[0])[:, None],
                                   tasks[None, 0], tasks[None, 1])[:, 0]
    np.testing.assert_allclose(relabelled, rewards[1], atol=1e-5)
    with pytest.raises(ValueError, match="needs a goal env"):
        E.relabel_rewards("HumanoidDir", relabelled, np.zeros((2 * H, 2)), tasks[0], tasks[1])


@pytest.mark.parametrize("env_id", ["HumanoidDir", "HumanoidDirSparse"])
def test_humanoid_reward_formula(env_id):
    env = E.make_env(env_id, episode_length=H)
    d = np.array([np.cos(0.75 * np.pi), np.sin(0.75 * np.pi)])
    env.reset(options={"task": d})
    for sign in (1.0, -1.0):  # running along d / against d
        qvel = np.zeros(env.model.nv)
        qvel[:2] = 2.0 * sign * d
        env.set_state(env.init_qpos, qvel)
        com_before = mass_center(env.model, env.data)
        action = np.full(env.action_space.shape, 0.2)
        _, r, _, _, _ = env.step(action)
        v = (mass_center(env.model, env.data) - com_before) / env.sim.dt
        forward = d @ v
        if env_id == "HumanoidDirSparse" and forward < 0.8 * np.linalg.norm(v):
            forward = 0.0
        ctrl = 0.1 * np.square(action).sum()
        contact = min(5e-7 * np.square(env.data.cfrc_ext).sum(), 10.0)
        assert r == pytest.approx(forward - ctrl - contact, abs=1e-6)
        assert (forward > 1.0) if sign > 0 else (forward <= 0.0)
        if env_id == "HumanoidDirSparse" and sign < 0:
            assert r == pytest.approx(-ctrl - contact, abs=1e-9)


@pytest.mark.parametrize("env_id, bonus", [("HopperRandParams", 1.0), ("WalkerRandParams", 0.0)])
def test_rand_params_reward_formula(env_id, bonus):
    env = E.make_env(env_id, episode_length=H)
    env.reset(seed=0)
    x_before = env.data.qpos[0]
    action = np.full(env.action_space.shape, 0.7)
    _, r, _, _, _ = env.step(action)
    forward = (env.data.qpos[0] - x_before) / env.sim.dt
    assert r == pytest.approx(forward + bonus - 1e-3 * np.square(action).sum(), abs=1e-9)


def circular_mean_deg(xy):
    angle = np.arctan2(np.sin(np.arctan2(xy[:, 1], xy[:, 0])).mean(),
                       np.cos(np.arctan2(xy[:, 1], xy[:, 0])).mean())
    return np.degrees(angle) % 360


@pytest.mark.parametrize("env_id, radius", [("AntGoal", 2.0), ("HumanoidDir", 1.0),
                                            ("AntU", 2.0), ("PointGoal", 2.0)])
def test_task_split_statistics(env_id, radius):
    split = E.make_task_split(env_id, num_train=8000, seed=0)
    assert split.train_tasks.shape == (8000, 2) and split.test_tasks.shape == (32, 2)
    np.testing.assert_allclose(np.linalg.norm(split.train_tasks, axis=1), radius)
    np.testing.assert_array_equal(split.train_clusters, np.arange(8000) % 4)
    np.testing.assert_array_equal(np.bincount(split.test_clusters), [8, 8, 8, 8])
    for k in range(4):
        mean = circular_mean_deg(split.train_tasks[split.train_clusters == k])
        assert abs(mean - (45 + 90 * k)) < 3.0  # standard error ~0.8 deg (AntU ~0.6)
        if env_id != "AntU":  # s ~ N(c_k, 0.2^2): spread of the angle around the centre
            angle = np.arctan2(*split.train_tasks[split.train_clusters == k].T[::-1]) / np.pi
            assert abs(np.std((angle - E.CENTRES_S[k] + 1) % 2 - 1) - 0.2) < 0.01
    np.testing.assert_allclose(E.cluster_centres(env_id)[1], radius * np.array([-1, 1]) / 2**0.5)
    if env_id == "AntU":  # stratified: every task lies in its slot's quadrant
        s = np.arctan2(split.train_tasks[:, 1], split.train_tasks[:, 0]) / np.pi % 2
        np.testing.assert_array_equal(np.floor(s / 0.5), split.train_clusters)
    again, other = E.make_task_split(env_id, num_train=8000, seed=0), E.make_task_split(
        env_id, num_train=8000, seed=1)
    for name in ("train_tasks", "test_tasks"):
        np.testing.assert_array_equal(getattr(split, name), getattr(again, name))
        assert not np.allclose(getattr(split, name), getattr(other, name))


def test_cluster_labels_from_split_and_fallback():
    env = E.make_env("AntGoal", episode_length=H, seed=0)
    split = env.split
    # with s ~ N(c_k, 0.2^2) many tasks lie nearer another centre; the lookup keeps the true label
    for tasks, clusters in ((split.train_tasks, split.train_clusters),
                            (split.test_tasks, split.test_clusters)):
        for i in range(0, len(tasks), 7):
            _, info = env.reset(options={"task": tasks[i]})
            assert info["cluster"] == clusters[i]
    _, info = env.reset(options={"task": [-1.5, -1.0]})  # novel task: nearest centre (225 deg)
    assert info["cluster"] == 2
    _, info = env.reset(options={"tasks": split.test_tasks, "clusters": split.test_clusters})
    assert info["cluster"] == split.test_clusters[0]  # slot 0
    _, info = env.reset()  # a random meta-training task
    assert any(np.array_equal(info["task"], t) for t in split.train_tasks)


@pytest.mark.parametrize("env_id", ["HopperRandParams", "WalkerRandParams"])
def test_rand_params_groups(env_id):
    env = E.make_env(env_id, episode_length=H, seed=0, slot=0)
    split = E.make_task_split(env_id, seed=0)
    slices = E.param_group_slices(env_id)
    m = env.model
    assert [sl.stop - sl.start for sl in slices.values()] == [m.nbody, m.nv, 3 * m.nbody,
                                                              3 * m.ngeom]
    assert split.train_tasks.shape == (500, list(slices.values())[-1].stop)
    mean = {"HopperRandParams": 3.0, "WalkerRandParams": 6.0}[env_id]
    big = E.make_task_split(env_id, num_train=400, seed=1)
    for k, name in enumerate(E.PARAM_GROUPS):
        mult = big.train_tasks[big.train_clusters == k][:, slices[name]]
        assert abs(mult.mean() - mean) < 0.4 and mult.min() >= 0.1
    defaults = {name: getattr(m, name).copy() for name in E.PARAM_GROUPS}
    for k in range(4):
        i = 4 + k  # a test task of cluster k
        _, info = env.reset(options={"task": split.test_tasks[i]})
        assert info["cluster"] == k
        for j, name in enumerate(E.PARAM_GROUPS):
            value = getattr(env.unwrapped.model, name)
            if j == k:
                assert not np.allclose(value, defaults[name])
                expected = defaults[name] * split.test_tasks[i][slices[name]].reshape(value.shape)
                np.testing.assert_allclose(value, expected)
            else:  # other groups (including the previous task's group) are back at defaults
                np.testing.assert_array_equal(value, defaults[name])
        obs, *_ = env.step(env.action_space.sample())
        assert np.isfinite(obs).all()
    # a hand-made task with no lookup entry: the label is the scaled group
    task = np.ones(split.train_tasks.shape[1])
    task[slices["dof_damping"]] = 2.0
    assert env.reset(options={"task": task})[1]["cluster"] == 1


def test_unknown_id_lists_valid_ids():
    for fn in (E.make_env, E.make_task_split, E.cluster_centres):
        with pytest.raises(ValueError) as err:
            fn("AntGoal-v9")
        assert all(env_id in str(err.value) for env_id in E.ENV_IDS)
    with pytest.raises(ValueError):
        E.make_vector_env("Nope", 2)


def test_pointgoal_vector_matches_single():
    n, h = 3, 5
    venv = E.make_vector_env("PointGoal", n, episode_length=h, seed=7)
    envs = [E.make_env("PointGoal", episode_length=h, seed=7, slot=i) for i in range(n)]
    split = E.make_task_split("PointGoal", seed=7)
    rng = np.random.default_rng(0)
    for options in ({"tasks": split.test_tasks[:n], "clusters": split.test_clusters[:n]}, None):
        obs, info = venv.reset(options=options)
        singles = [env.reset(options=options) for env in envs]
        np.testing.assert_array_equal(obs, np.stack([o for o, _ in singles]))
        for key in ("task", "cluster", "xy", "episode_index", "episode_start"):
            np.testing.assert_array_equal(info[key], [i[key] for _, i in singles])
        for t in range(2 * h):
            actions = rng.uniform(-1.5, 1.5, (n, 2)).astype(np.float32)
            obs, rew, term, trunc, info = venv.step(actions)
            outs = [env.step(a) for env, a in zip(envs, actions)]
            np.testing.assert_array_equal(obs, np.stack([o[0] for o in outs]))
            np.testing.assert_array_equal(rew, [o[1] for o in outs])
            np.testing.assert_array_equal(term, [o[2] for o in outs])
            np.testing.assert_array_equal(trunc, [o[3] for o in outs])
            np.testing.assert_array_equal(np.stack(info["next_state"]),
                                          np.stack([o[4]["next_state"] for o in outs]))
            for key in ("task", "cluster", "xy", "episode_index", "episode_start"):
                np.testing.assert_array_equal(info[key], [o[4][key] for o in outs])
        assert trunc.all()


def test_sync_vector_env_assigns_tasks_per_slot():
    split = E.make_task_split("AntGoal", seed=0)
    envs = E.make_vector_env("AntGoal", 2, episode_length=2, seed=0)
    assert envs.metadata["autoreset_mode"].value == "Disabled"
    tasks, clusters = split.test_tasks[[1, 6]], split.test_clusters[[1, 6]]
    obs, info = envs.reset(seed=0, options={"tasks": tasks, "clusters": clusters})
    np.testing.assert_array_equal(info["task"], tasks)
    np.testing.assert_array_equal(info["cluster"], clusters)
    for t in range(4):
        obs, rew, term, trunc, info = envs.step(envs.action_space.sample())
        next_state = np.stack(info["next_state"])
        assert next_state.shape == obs.shape == (2, 107) and next_state.dtype == np.float32
        assert info["episode_start"].tolist() == [t == 1] * 2
        assert info["episode_index"].tolist() == [min((t + 1) // 2, 1)] * 2
        assert info["xy"].shape == (2, 2) and not term.any()
    assert trunc.all()
    obs, info = envs.reset(options={"tasks": tasks[::-1], "clusters": clusters[::-1]})
    np.testing.assert_array_equal(info["cluster"], clusters[::-1])
    envs.close()


@pytest.mark.parametrize("env_id", [e for e in E.ENV_IDS if e != "PointGoal"])
def test_native_mujoco_vector_env_matches_gymnasium(env_id):
    """The native batched env against the gymnasium-v5 reference path, from the same seeds with the same actions,
    over three whole trials: a seeded reset with given tasks, an unseeded one with tasks drawn by the slots, and one
    with tasks but no clusters. Observations, rewards, next_state and xy agree to 1e-6, across every inner-episode
    reset (whose noise comes from the same generator stream, draw for draw); then restoring the generators' states
    (--resume) replays the same next trial."""
    n, h = 3, 15
    reference = E.make_vector_env(env_id, n, episode_length=h, seed=5, native=False)
    native = E.make_vector_env(env_id, n, episode_length=h, seed=5, physics_threads=2)
    assert isinstance(native, E.MujocoVectorEnv) and isinstance(reference, gym.vector.SyncVectorEnv)
    assert native.single_observation_space == reference.single_observation_space
    assert native.single_action_space == reference.single_action_space
    split = E.make_task_split(env_id, seed=5)
    rng = np.random.default_rng(0)
    low, high = native.single_action_space.low, native.single_action_space.high
    for seed, options in ((3, {"tasks": split.test_tasks[:n], "clusters": split.test_clusters[:n]}), (None, None),
                          (None, {"tasks": split.test_tasks[n:2 * n]})):
        (ref_obs, ref_info), (obs, info) = reference.reset(seed=seed, options=options), native.reset(seed=seed, options=options)
        np.testing.assert_allclose(obs, ref_obs, rtol=1e-6, atol=1e-6)
        for key in ("task", "cluster", "episode_index", "episode_start"):
            np.testing.assert_array_equal(info[key], ref_info[key])
        for t in range(2 * h):
            actions = rng.uniform(1.5 * low, 1.5 * high, (n, len(low))).astype(np.float32)  # also outside the box
            ref_out, out = reference.step(actions), native.step(actions)
            for got, want in zip(out[:4], ref_out[:4]):
                np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(out[4]["next_state"], np.stack(ref_out[4]["next_state"]), rtol=1e-6, atol=1e-6)
            for key in ("xy", "task", "cluster", "episode_index", "episode_start"):
                if key in ref_out[4]:
                    np.testing.assert_allclose(out[4][key], np.stack(ref_out[4][key]), rtol=1e-6, atol=1e-6)
            assert ("xy" in out[4]) == ("xy" in ref_out[4])
    saved = E.rng_states(native)
    first = [native.reset()[0], *(native.step(np.zeros((n, len(low)), np.float32))[0] for _ in range(h + 1))]
    E.set_rng_states(native, saved)
    again = [native.reset()[0], *(native.step(np.zeros((n, len(low)), np.float32))[0] for _ in range(h + 1))]
    np.testing.assert_array_equal(np.stack(first), np.stack(again))


def test_nmi_ceiling_and_point_goal_oracle_references():
    """The best NMI of a clustering of the true seed-0 test tasks: 0.594 where clusters overlap (8 of 32 goals lie
    nearer another centre), 1.0 where the scaled group names the cluster; the analytic PointGoal oracle: -19.0."""
    for env_id in E.ENV_IDS:
        split = E.make_task_split(env_id, seed=0)
        overlapping = E._kind(env_id) != "params" and env_id != "AntU"
        assert round(E.nmi_ceiling(split), 3) == (0.594 if overlapping else 1.0)
    split = E.make_task_split("PointGoal", seed=0)
    nearest = np.array([E.infer_cluster("PointGoal", task) for task in split.test_tasks])
    assert (nearest != split.test_clusters).sum() == 8
    oracle = E.point_goal_oracle_returns(split.test_tasks, 100, 2)
    assert oracle[0] == oracle[1] and round(oracle[0], 1) == -19.0
    still = np.mean([E.goal_reward(np.zeros(2), g) * 100 for g in split.test_tasks])  # the untrained policy
    assert round(still, 1) == -258.9 and oracle[0] > still


def test_humanoid_policy_acts_in_unit_box_rescaled_to_the_env():
    """The policies act in [-1, 1] and the training script's make_env rescales to Humanoid's +-0.4 box (the authors'
    policies did the same); without it, std-1 Gaussian actions clipped to +-0.4 saturate 69% of the components.
    Nothing clips the action: MuJoCo clamps the control to ctrlrange, and the env charges the cost on what was sent."""
    import milet_ppo_continuous as milet
    args = milet.parse_args(["--env-id", "HumanoidDir", "--num-envs", "2", "--num-minibatches", "1",
                             "--episode-length", "3"])
    envs = milet.make_env(args, 2, seed=0)
    assert isinstance(envs, gym.wrappers.vector.RescaleAction)
    assert (envs.single_action_space.low == -1).all() and (envs.single_action_space.high == 1).all()
    assert envs.unwrapped.single_action_space.high.max() == np.float32(0.4)
    np.testing.assert_allclose(envs.actions(np.full((2, 17), 0.5, np.float32)), 0.2, rtol=1e-6)
    np.testing.assert_allclose(envs.actions(np.full((2, 17), 3.0, np.float32)), 1.2, rtol=1e-6)  # not clipped
    ant = milet.parse_args(["--env-id", "AntGoal"])
    assert isinstance(milet.make_env(ant, 2, seed=0), E.MujocoVectorEnv)  # already [-1, 1]: no wrapper at all
