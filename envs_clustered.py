"""Clustered meta-RL environments and the trial structure used by MILET.

What this file implements
-------------------------
* Sec. 3 of the paper: a *trial* = N+1 inner episodes (1 exploration + N exploitation) of fixed
  length H in one task.  Here a trial is ONE gymnasium episode of ``num_episodes * H`` steps
  (defaults: 2 x 100).  Between inner episodes the robot state is reset, the task is kept.
* Sec. 5 and App. C: the task distributions (four clusters per env) and reward functions.

Env ids (``ENV_IDS``; gymnasium ids ``milet/<EnvId>-v0``)
---------------------------------------------------------
  PointGoal          2-D point, velocity control, goals as AntGoal (fast sanity-check env)
  AntGoal            Ant-v5, goal = 2 (cos s*pi, sin s*pi), s ~ N(c_k, 0.2^2), c_k = 0.25 + 0.5 k
  AntGoalPartial     AntGoal with goal reward max(3 - L1, 0) (sparse outside an L1 ball of radius 3)
  AntU               AntGoal with s ~ U(0, 2); label = quadrant floor(s / 0.5)
  HumanoidDir        Humanoid-v5, reward d . v_xy(centre of mass), d = (cos s*pi, sin s*pi)
  HumanoidDirSparse  HumanoidDir, velocity reward only where cos(angle(v_xy, d)) >= 0.8
  HopperRandParams   Hopper-v5, cluster k scales one model parameter group, multipliers ~ N(3, 1.5^2)
  WalkerRandParams   Walker2d-v5, same groups, multipliers ~ N(6, 1^2)
Parameter groups (cluster k): 0 body_mass, 1 dof_damping, 2 body_inertia, 3 geom_friction.

Where things are documented
---------------------------
* Tasks / task vectors / clusters: ``make_task_split`` and ``sample_tasks``.
* Observations: ``PointGoalEnv`` (xy), ``MujocoTrialEnv`` (the v5 observation, with x, y for Ant and
  Humanoid), all cast to float32.
* info dicts, trial bookkeeping and the keywords of ``gymnasium.make``: ``TrialEnv`` (single env) and
  ``make_vector_env`` (vector env); the gymnasium ids: "Using the envs from gymnasium.make" below.
* Vector envs: PointGoal is one numpy batch (``PointGoalVectorEnv``); the MuJoCo ids are stepped natively, all
  slots in C across threads (``MujocoVectorEnv``), with gymnasium's v5 envs behind ``native=False`` as the
  reference that the native path matches step for step (tests/test_envs.py).
* Rewards: ``goal_reward`` (goal envs) and ``relabel_rewards``, the rewards of a goal env's transitions under
  another goal (hindsight task relabelling of the CBVI's data, ``--relabel-share``; not in the paper).
* References for the results: ``nmi_ceiling`` (the NMI of the most likely cluster given each true test task) and
  ``point_goal_oracle_returns`` (the analytic PointGoal policy that knows the goal).
  A training script may equally derive the inner-episode index of transition t (0-based step of
  the trial) as t // H; ``info["episode_index"]`` describes the returned obs instead.

Using the envs from gymnasium.make
----------------------------------
Importing this module registers every env id as ``milet/<EnvId>-v0`` (``gym_id``; entry point ``make_env``, vector
entry point ``make_vector_env``). One gymnasium episode is one trial: ``num_episodes`` inner episodes (1 exploration
+ N exploitation) of ``episode_length`` steps in one task, the robot reset between them (``info["episode_start"]``),
``truncated`` after the last step, never ``terminated``. Keywords (``TrialEnv``): episode_length (100),
num_episodes (2), seed (0: the task split that random trials draw from), task (fixed task of every trial), cluster
(its label; alone: draw tasks of this cluster only); MuJoCo ids pass any other keyword (render_mode, ...) to the v5
env. A reset option ``{"task": ..., "cluster": ...}`` picks the task of one trial instead::

    import gymnasium as gym
    import envs_clustered  # registers milet/<EnvId>-v0

    split = envs_clustered.make_task_split("AntGoal", seed=0)       # 500 train / 32 test tasks, 4 clusters
    env = gym.make("milet/AntGoal-v0", task=split.test_tasks[5], cluster=split.test_clusters[5],
                   episode_length=100, num_episodes=2)             # the goal of every trial
    obs, info = env.reset(seed=0)                                   # info["task"] is the goal, info["cluster"] 1
    truncated = False
    while not truncated:                                            # 200 steps; the Ant is reset after step 100
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    obs, info = env.reset(options={"task": [0.0, 2.0]})           # one trial with another goal
    cluster_2 = gym.make("milet/HumanoidDir-v0", cluster=2)         # every trial a train direction of cluster 2
    envs = gym.make_vec("milet/AntGoal-v0", num_envs=8)             # the native vector env (make_vector_env):
    obs, info = envs.reset(options={"tasks": split.test_tasks[:8]}) # no autoreset, slot i runs row i

Deviations from the paper / the authors' code (all deliberate)
--------------------------------------------------------------
* gymnasium v5 MuJoCo models and MuJoCo 3+ instead of gym 0.17 / mujoco-py / MuJoCo 1.50.
* The first observation of an exploitation episode is the reset state (the authors' code passed the
  previous terminal state); the true successor state is in ``info["next_state"]``.
* No early termination in any env (Hopper's +1 is a constant bonus, not a health check).
* Rand-param multipliers are floored at 0.1 (the paper only says negatives are floored); all task
  sets are reproducible from a seed (the authors' rand-param tasks were not seeded).
* AntU task *splits* are stratified: slot cluster k draws s ~ U(0.5k, 0.5(k+1)), so the union is
  still U(0, 2) but the split is balanced like the other envs.
* PointGoal is not in the paper; it is Ant's reward without contact cost, for quick experiments.
  Its control cost uses the clipped action; the MuJoCo envs charge theirs on the raw action the policy sent (MuJoCo
  clamps the control to ctrlrange), as gymnasium and the authors' envs do: the training scripts do not clip.
"""

from __future__ import annotations

import copy
import functools
import os
from dataclasses import dataclass

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium.envs.mujoco.ant_v5 import AntEnv
from gymnasium.envs.mujoco.hopper_v5 import HopperEnv
from gymnasium.envs.mujoco.humanoid_v5 import HumanoidEnv
from gymnasium.envs.mujoco.walker2d_v5 import Walker2dEnv
from gymnasium.spaces import Box
from gymnasium.vector import AutoresetMode, AsyncVectorEnv, SyncVectorEnv, VectorEnv
from gymnasium.vector.utils import batch_space
from sklearn.metrics import normalized_mutual_info_score

ENV_IDS = ("PointGoal", "AntGoal", "AntGoalPartial", "AntU", "HumanoidDir", "HumanoidDirSparse",
           "HopperRandParams", "WalkerRandParams")
NUM_CLUSTERS = 4  # true number of clusters in every env

CENTRES_S = np.array([0.25, 0.75, 1.25, 1.75])  # cluster centres, as angle / pi
ANGLE_STD = 0.2                                  # std of s within a cluster (AntGoal, HumanoidDir)
GOAL_RADIUS = 2.0
PARTIAL_THRESHOLD = 3.0                          # AntGoalPartial: reward region |x - g|_1 <= 3
SPARSE_COS = 0.8                                 # HumanoidDirSparse: cos(v, d) threshold
PARAM_GROUPS = ("body_mass", "dof_damping", "body_inertia", "geom_friction")  # group k = cluster k
MULTIPLIER_DIST = {"HopperRandParams": (3.0, 1.5), "WalkerRandParams": (6.0, 1.0)}  # (mean, std)
MIN_MULTIPLIER = 0.1
_XML = {"HopperRandParams": "hopper.xml", "WalkerRandParams": "walker2d_v5.xml"}


_KINDS = {"PointGoal": "goal", "AntGoal": "goal", "AntGoalPartial": "goal", "AntU": "goal",
          "HumanoidDir": "dir", "HumanoidDirSparse": "dir",
          "HopperRandParams": "params", "WalkerRandParams": "params"}
GOAL_ENV_IDS = tuple(env_id for env_id, kind in _KINDS.items() if kind == "goal")  # reward follows from x, y


def _kind(env_id: str) -> str:
    """Task family of an env id: 'goal' (xy goal), 'dir' (unit direction) or 'params'."""
    if env_id not in ENV_IDS:
        raise ValueError(f"unknown env_id {env_id!r}; valid ids: {', '.join(ENV_IDS)}")
    return _KINDS[env_id]


# ----------------------------------------------------------------------------------------------
# Tasks
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def param_group_slices(env_id: str) -> dict[str, slice]:
    """Where each parameter group lives in a rand-params task vector (order of PARAM_GROUPS).

    Lengths are nbody, nv, nbody*3, ngeom*3 of gymnasium's default Hopper/Walker2d XML.
    """
    if _kind(env_id) != "params":
        raise ValueError(f"{env_id} has no parameter groups")
    from gymnasium.envs import mujoco as gym_mujoco  # only to locate gymnasium's own XML assets
    path = os.path.join(os.path.dirname(gym_mujoco.__file__), "assets", _XML[env_id])
    model = mujoco.MjModel.from_xml_path(path)
    slices, start = {}, 0
    for name in PARAM_GROUPS:
        size = getattr(model, name).size
        slices[name] = slice(start, start + size)
        start += size
    return slices


def cluster_centres(env_id: str) -> np.ndarray | None:
    """(4, 2) ground-truth centre goals (goal envs) or unit directions (dir envs); None for params."""
    kind = _kind(env_id)
    if kind == "params":
        return None
    radius = GOAL_RADIUS if kind == "goal" else 1.0
    return radius * np.stack([np.cos(CENTRES_S * np.pi), np.sin(CENTRES_S * np.pi)], axis=1)


def sample_tasks(env_id: str, clusters: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One task per entry of ``clusters`` (ints in 0..3), drawn with ``rng``.

    Task vectors: goal envs -> goal xy (2,); dir envs -> unit direction (2,);
    rand params -> flat multipliers of all four groups (ones for the unscaled groups).
    """
    kind, clusters = _kind(env_id), np.asarray(clusters, dtype=np.int64)
    if kind == "params":
        mean, std = MULTIPLIER_DIST[env_id]
        slices = list(param_group_slices(env_id).values())
        tasks = np.ones((len(clusters), slices[-1].stop))
        for i, k in enumerate(clusters):
            sl = slices[k]
            tasks[i, sl] = np.maximum(rng.normal(mean, std, sl.stop - sl.start), MIN_MULTIPLIER)
        return tasks
    if env_id == "AntU":  # stratified U(0, 2): slot cluster k covers its quadrant
        s = rng.uniform(0.5 * clusters, 0.5 * (clusters + 1))
    else:
        s = rng.normal(CENTRES_S[clusters], ANGLE_STD)
    radius = GOAL_RADIUS if kind == "goal" else 1.0
    return radius * np.stack([np.cos(s * np.pi), np.sin(s * np.pi)], axis=1)


@dataclass
class TaskSplit:
    train_tasks: np.ndarray     # (num_train, task_dim) float
    train_clusters: np.ndarray  # (num_train,) int, = index % num_clusters
    test_tasks: np.ndarray      # (num_test, task_dim) float
    test_clusters: np.ndarray   # (num_test,) int, = index % num_clusters
    env_id: str = ""            # the env the tasks belong to


OOD_HELD_OUT_CLUSTER = NUM_CLUSTERS - 1  # direction envs: this cluster is left out of meta-training with --ood-eval


def make_task_split(env_id: str, *, num_train: int = 500, num_test: int = 32, seed: int = 0,
                    num_clusters: int = NUM_CLUSTERS, hold_out_ood: bool = False) -> TaskSplit:
    """Meta-train and meta-test task sets, reproducible from ``seed``.

    The cluster of index i is i % num_clusters in each split (balanced: 32 test tasks = 8 per
    cluster). Train tasks are drawn first, then test tasks, from np.random.default_rng(seed).
    ``num_clusters`` < 4 uses only the first clusters. ``hold_out_ood`` (--ood-eval) on the direction envs
    leaves cluster OOD_HELD_OUT_CLUSTER (the last) out of both sets: ``make_ood_tasks`` draws from it.
    """
    if hold_out_ood and _kind(env_id) == "dir":
        num_clusters = min(num_clusters, OOD_HELD_OUT_CLUSTER)
    if not 1 <= num_clusters <= NUM_CLUSTERS:
        raise ValueError(f"num_clusters must be in 1..{NUM_CLUSTERS}")
    rng = np.random.default_rng(seed)
    train_clusters = np.arange(num_train) % num_clusters
    test_clusters = np.arange(num_test) % num_clusters
    train_tasks = sample_tasks(env_id, train_clusters, rng)
    test_tasks = sample_tasks(env_id, test_clusters, rng)
    return TaskSplit(train_tasks, train_clusters, test_tasks, test_clusters, env_id)


OOD_GOAL_RADIUS = 3.5


def make_ood_tasks(env_id: str, n: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(tasks, nearest clusters) outside the meta-training distribution, reproducible from ``seed`` (beyond the
    paper: its conclusion names OOD detection as future work).
      * goal envs: the training clusters' angles, at radius 3.5 instead of 2;
      * direction envs: the tasks of cluster OOD_HELD_OUT_CLUSTER, which meta-training leaves out with --ood-eval;
      * rand-params: two parameter groups scaled at once (training scales one).
    The clusters are balanced (index % 4); for rand-params the first scaled group is reported."""
    kind, rng = _kind(env_id), np.random.default_rng(seed)
    clusters = np.arange(n) % NUM_CLUSTERS
    if kind == "dir":
        clusters = np.full(n, OOD_HELD_OUT_CLUSTER)
        return sample_tasks(env_id, clusters, rng), clusters
    if kind == "goal":
        return sample_tasks(env_id, clusters, rng) * (OOD_GOAL_RADIUS / GOAL_RADIUS), clusters
    second = (clusters + 1 + rng.integers(NUM_CLUSTERS - 1, size=n)) % NUM_CLUSTERS  # another group, at random
    # each factor scales one group and holds ones elsewhere, so their product scales both groups
    return sample_tasks(env_id, clusters, rng) * sample_tasks(env_id, second, rng), clusters


def nmi_ceiling(split: TaskSplit) -> float:
    """The NMI reference: the NMI between the true test clusters and the nearest-centre assignment of the TRUE test
    task parameters (``infer_cluster`` without the split), the most likely cluster given the task. The goal and
    direction clusters overlap (s ~ N(c_k, 0.2^2), centres 0.5 apart), so some test tasks lie nearer another centre
    (seed-0 split: 0.594). It bounds what inference from the task can reach in expectation, not on every sample: on
    32 tasks a run can exceed it by chance (one PointGoal evaluation reached 0.648). Rand-params: the scaled group
    is the cluster, so 1.0."""
    nearest = [infer_cluster(split.env_id, task) for task in split.test_tasks]
    return float(normalized_mutual_info_score(split.test_clusters, nearest))


def point_goal_oracle_returns(goals: np.ndarray, episode_length: int, num_episodes: int) -> np.ndarray:
    """Mean return per episode of the analytic PointGoal policy that knows the goal: each axis moves towards the
    goal as fast as the action box allows, a = clip((g - pos) / 0.1, -1, 1), which minimises the L1 distance at every
    step. The reference for PointGoal returns (32 seed-0 test tasks, H = 100: -19.0 per episode)."""
    returns = np.zeros((num_episodes, len(goals)))
    for episode in range(num_episodes):
        pos = np.zeros_like(goals)
        for _ in range(episode_length):
            pos, reward = point_goal_step(pos, np.clip((goals - pos) / 0.1, -1.0, 1.0), goals)
            returns[episode] += reward
    return returns.mean(axis=1)


def infer_cluster(env_id: str, task: np.ndarray, split: TaskSplit | None = None) -> int:
    """Ground-truth cluster of a task.

    First looks the task up in ``split`` (exact label, also for tasks that drifted across a
    quadrant boundary: with s ~ N(c_k, 0.2^2) about 21% of AntGoal tasks lie nearer another centre).
    Otherwise: goal/dir envs -> nearest centre by angle (= quadrant); params -> the scaled group
    (-1 if no group is scaled).
    """
    task = np.asarray(task, dtype=np.float64)
    if split is not None:
        for tasks, clusters in ((split.train_tasks, split.train_clusters),
                                (split.test_tasks, split.test_clusters)):
            hit = np.flatnonzero(np.abs(tasks - task).max(axis=1) < 1e-9)
            if hit.size:
                return int(clusters[hit[0]])
    if _kind(env_id) == "params":
        scaled = [k for k, sl in enumerate(param_group_slices(env_id).values())
                  if np.any(task[sl] != 1.0)]
        return scaled[0] if scaled else -1
    s = np.arctan2(task[1], task[0]) / np.pi % 2.0
    return int(s // 0.5) % NUM_CLUSTERS


def _choose_task(env_id, split, rng, options, slot):
    """(task, cluster) for a new trial from reset options (see ``TrialEnv.reset``)."""
    if "task" in options:
        task, cluster = options["task"], options.get("cluster")
    elif "tasks" in options:
        task = options["tasks"][slot]
        cluster = options["clusters"][slot] if "clusters" in options else None
    else:  # draw a meta-training task, of cluster options["cluster"] if one is given
        candidates = np.arange(len(split.train_tasks))
        if options.get("cluster") is not None:
            candidates = np.flatnonzero(split.train_clusters == options["cluster"])
            if candidates.size == 0:
                raise ValueError(f"no meta-training task of cluster {options['cluster']!r} in {env_id}'s split "
                                 f"(clusters 0..{split.train_clusters.max()})")
        i = candidates[rng.integers(len(candidates))]  # without a cluster: the same draw as rng.integers(len(tasks))
        return split.train_tasks[i].copy(), int(split.train_clusters[i])
    task = np.array(task, dtype=np.float64)
    return task, int(infer_cluster(env_id, task, split) if cluster is None else cluster)


# ----------------------------------------------------------------------------------------------
# Shared reward pieces
# ----------------------------------------------------------------------------------------------
def goal_reward(xy: np.ndarray, goal: np.ndarray, partial: bool = False) -> np.ndarray:
    """-|xy - goal|_1, or max(3 - |xy - goal|_1, 0) for the partial (sparse) variant."""
    l1 = np.abs(xy - goal).sum(axis=-1)
    return np.maximum(PARTIAL_THRESHOLD - l1, 0.0) if partial else -l1


def relabel_rewards(env_id: str, rewards: np.ndarray, next_xy: np.ndarray, tasks: np.ndarray,
                    new_tasks: np.ndarray) -> np.ndarray:
    """Hindsight task relabelling (goal envs; not in the paper): the rewards that the same transitions would have
    earned in ``new_tasks``. Goals move no body, so only the goal term of the reward changes: r' = r - goal_reward(xy,
    g) + goal_reward(xy, g'). rewards (..., B), next_xy (..., B, 2): the robot's xy after each step; tasks, new_tasks
    (B, 2): the goals the trials ran in and the goals they are relabelled with."""
    if env_id not in GOAL_ENV_IDS:
        raise ValueError(f"relabelling needs a goal env (the reward must follow from xy), not {env_id}")
    partial = env_id == "AntGoalPartial"
    return rewards - goal_reward(next_xy, tasks, partial) + goal_reward(next_xy, new_tasks, partial)


def point_goal_step(pos: np.ndarray, action: np.ndarray, goal: np.ndarray):
    """PointGoal dynamics and reward for one (pos (2,)) or many (pos (n, 2)) points."""
    a = np.clip(action, -1.0, 1.0)
    new_pos = pos + 0.1 * a
    return new_pos, goal_reward(new_pos, goal) - 0.01 * np.square(a).sum(axis=-1)


# ----------------------------------------------------------------------------------------------
# Single-task trial environments
# ----------------------------------------------------------------------------------------------
class TrialEnv(gym.Env):
    """One task slot; one gymnasium episode = one trial of ``num_episodes * episode_length`` steps.

    The trial (Sec. 3): inner episode 0 explores, episodes 1..N exploit, each of H = ``episode_length`` steps, all in
    the trial's task; between inner episodes the robot is reset and the task kept. Construction (``make_env`` or
    ``gymnasium.make("milet/<EnvId>-v0", ...)``, same keywords):
      episode_length  H (default 100)
      num_episodes    N + 1, inner episodes per trial (default 2: 1 exploration + 1 exploitation)
      seed            seeds the task split ``make_task_split(env_id, seed=seed)`` that random trials draw from and
                      cluster labels are looked up in, and the task draws until ``reset(seed=...)`` (default 0)
      slot            which row of a ``{"tasks": ...}`` reset option this env takes (vector envs; default 0)
      task            the task of every trial: goal xy (2,), direction (2,) or multipliers (see ``sample_tasks``);
                      None (default): every trial draws a meta-training task
      cluster         the label of ``task`` (None: looked up / inferred as below); without a task, trials draw
                      meta-training tasks of this cluster only
    ``task`` and ``cluster`` are default reset options: a reset whose options carry a task or cluster overrides them
    for that trial.

    reset(seed=None, options=None) starts a trial (inner episode 0). options:
      {"task": task[, "cluster": k]}          task for this trial
      {"tasks": array[, "clusters": array]}   row ``slot`` (one dict serves a whole vector env)
      {"cluster": k}                          a random meta-training task of cluster k
      none of these                           the constructor's task / cluster, else a random meta-training task
                                              (env's np_random)
    Without a cluster the label is looked up in the env's split (``make_task_split(env_id, seed)``)
    or inferred (``infer_cluster``); passing it explicitly is the safest.

    step(action): ``terminated`` is always False; ``truncated`` is True only on the last step of the trial (a step
    after it raises: reset). When inner episode t // H ends (not the last), the robot is reset in the same task and the
    RETURNED obs is the reset state of the next inner episode. info keys on every step:
      next_state     true successor s_{t+1} (= obs, except at a boundary: the terminal state)
      episode_index  inner episode of the returned obs (transition t belongs to episode t // H)
      episode_start  True when the returned obs starts a new inner episode
      task, cluster  ground truth (evaluation only)
      xy             robot xy after the step (terminal xy at a boundary); goal/dir envs only
    reset() info: task, cluster, episode_index=0, episode_start=True, xy where applicable.
    """

    def __init__(self, env_id: str, episode_length: int = 100, num_episodes: int = 2,
                 seed: int = 0, slot: int = 0, task=None, cluster: int | None = None):
        if episode_length < 1 or num_episodes < 1:
            raise ValueError("episode_length and num_episodes must be >= 1")
        self.env_id, self.slot = env_id, slot
        self.episode_length, self.num_episodes = episode_length, num_episodes
        self.trial_length = episode_length * num_episodes
        self.split = make_task_split(env_id, seed=seed)
        self.np_random = np.random.default_rng([seed, slot])  # draws train tasks
        self.default_options = self._task_options(task, cluster)  # {} unless a task / cluster is given
        self.task, self.cluster, self._t = None, None, self.trial_length

    def _task_options(self, task, cluster) -> dict:
        """The constructor's task / cluster as reset options, checked."""
        options = {}
        if task is not None:
            task = np.array(task, dtype=np.float64)
            task_shape = self.split.train_tasks.shape[1:]
            if task.shape != task_shape:
                raise ValueError(f"a {self.env_id} task has shape {task_shape}, got {task.shape}")
            options["task"] = task
        if cluster is not None:
            if int(cluster) != cluster or not 0 <= cluster < NUM_CLUSTERS:
                raise ValueError(f"cluster must be an int in 0..{NUM_CLUSTERS - 1}, got {cluster!r}")
            options["cluster"] = int(cluster)
        return options

    # --- hooks for subclasses ---
    def _apply_task(self, task):  # change the MDP (rand params); goal/dir tasks only store it
        pass

    def _reset_state(self, seed=None) -> np.ndarray:  # reset the robot, return obs
        raise NotImplementedError

    def _step_state(self, action) -> tuple[np.ndarray, float]:  # (s_{t+1}, r_t)
        raise NotImplementedError

    def _xy(self):  # robot xy, or None
        return None

    def rng_state(self) -> list:
        """States of every random generator of this slot (task draws; MuJoCo: also reset noise), for --resume."""
        return [generator.bit_generator.state for generator in self._generators()]

    def set_rng_state(self, states_per_slot: list) -> None:
        """Restore this slot's generators from ``states_per_slot[self.slot]`` (one list serves a whole vector env)."""
        for generator, state in zip(self._generators(), states_per_slot[self.slot]):
            generator.bit_generator.state = state

    def _generators(self):
        return [self.np_random]

    # --- trial logic ---
    def _info(self, **extra):
        info = {"task": self.task.copy(), "cluster": self.cluster, **extra}
        xy = self._xy()
        if xy is not None:
            info["xy"] = xy
        return info

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        options = options or {}
        if not any(key in options for key in ("task", "tasks", "cluster")):
            options = {**options, **self.default_options}
        self.task, self.cluster = _choose_task(self.env_id, self.split, self.np_random, options, self.slot)
        self._apply_task(self.task)
        self._t = 0
        obs = self._reset_state(seed)
        return obs, self._info(episode_index=0, episode_start=True)

    def step(self, action):
        if self._t >= self.trial_length:
            raise RuntimeError("the trial is over: call reset()")
        next_state, reward = self._step_state(np.asarray(action))
        info = self._info(next_state=next_state)  # xy of s_{t+1}, before any reset
        self._t += 1
        truncated = self._t == self.trial_length
        episode_start = self._t % self.episode_length == 0 and not truncated
        obs = self._reset_state() if episode_start else next_state
        info["episode_index"] = min(self._t // self.episode_length, self.num_episodes - 1)
        info["episode_start"] = episode_start
        return obs, float(reward), False, truncated, info


class PointGoalEnv(TrialEnv):
    """2-D point at the origin; obs = xy (float32); action in [-1, 1]^2 moves it by 0.1 * a.

    ``milet/PointGoal-v0``; task = goal xy (2,), r = -|xy - g|_1 - 0.01 |clip(a)|^2. Keywords: ``TrialEnv``'s only.
    """

    def __init__(self, **trial_kwargs):
        super().__init__("PointGoal", **trial_kwargs)
        self.observation_space = Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = Box(-1.0, 1.0, (2,), np.float32)
        self.pos = np.zeros(2)

    def _reset_state(self, seed=None):
        self.pos = np.zeros(2)
        return self.pos.astype(np.float32)

    def _step_state(self, action):
        self.pos, reward = point_goal_step(self.pos, action, self.task)
        return self.pos.astype(np.float32), reward

    def _xy(self):
        return self.pos.copy()


class MujocoTrialEnv(TrialEnv):
    """Trial env around a gymnasium v5 MuJoCo env (``self.sim``), whose reward we replace.

    The observation is the v5 observation cast to float32. ``model``, ``data``, ``set_state`` and
    ``init_qpos``/``init_qvel`` are those of the simulator (so ``env.unwrapped.model`` works). Keywords beyond
    ``TrialEnv``'s (``sim_kwargs``: render_mode, frame_skip, ...) go to the v5 env, over ``sim_defaults``.
    """

    sim_class: type = None
    sim_defaults: dict = {}

    def __init__(self, env_id, sim_kwargs, **trial_kwargs):
        super().__init__(env_id, **trial_kwargs)
        self.sim = self.sim_class(**{**self.sim_defaults, **sim_kwargs})
        self.observation_space = Box(-np.inf, np.inf, self.sim.observation_space.shape, np.float32)
        self.action_space = self.sim.action_space
        self.render_mode = self.sim.render_mode
        self.sim.reset(seed=int(self.np_random.integers(2**31)))

    model = property(lambda self: self.sim.model)
    data = property(lambda self: self.sim.data)
    init_qpos = property(lambda self: self.sim.init_qpos)
    init_qvel = property(lambda self: self.sim.init_qvel)

    def set_state(self, qpos, qvel):
        self.sim.set_state(qpos, qvel)

    def _reset_state(self, seed=None):
        return self.sim.reset(seed=seed)[0].astype(np.float32)

    def _generators(self):
        return [self.np_random, self.sim.np_random]

    def _xy(self):
        return self.sim.data.qpos[:2].copy()  # torso xy (= obs[:2])

    def render(self):
        return self.sim.render()

    def close(self):
        self.sim.close()


class AntGoalEnv(MujocoTrialEnv):
    """Ant-v5 (obs includes torso x, y and clipped contact forces) navigating to a goal xy.

    ``milet/AntGoal-v0``, ``milet/AntGoalPartial-v0``, ``milet/AntU-v0``; task = goal xy g (2,), e.g.
    ``gymnasium.make("milet/AntGoal-v0", task=[0.0, 2.0])``.

    r = -|xy - g|_1 (partial: max(3 - |xy - g|_1, 0)) - 0.01 |a|^2 - 5e-4 |clip(cfrc_ext, -1, 1)|^2
    """

    sim_class = AntEnv
    sim_defaults = dict(ctrl_cost_weight=0.01, healthy_reward=0.0, terminate_when_unhealthy=False,
                        exclude_current_positions_from_observation=False)

    def __init__(self, env_id, sim_kwargs, **trial_kwargs):
        super().__init__(env_id, sim_kwargs, **trial_kwargs)
        self.partial = env_id == "AntGoalPartial"

    def _step_state(self, action):
        obs, _, _, _, info = self.sim.step(action)
        reward = goal_reward(self.sim.data.qpos[:2], self.task, self.partial)
        return obs.astype(np.float32), reward + info["reward_ctrl"] + info["reward_contact"]


class HumanoidDirEnv(MujocoTrialEnv):
    """Humanoid-v5 (actions in [-0.4, 0.4], obs includes torso x, y) running in direction d.

    ``milet/HumanoidDir-v0``, ``milet/HumanoidDirSparse-v0``; task = unit direction d (2,), e.g.
    ``gymnasium.make("milet/HumanoidDir-v0", task=[0.0, 1.0])``.

    r = d . v_xy(centre of mass) - 0.1 |ctrl|^2 - min(5e-7 |cfrc_ext|^2, 10)   (v5 cost defaults);
    sparse variant: the velocity term counts only where cos(v_xy, d) >= 0.8.
    """

    sim_class = HumanoidEnv
    sim_defaults = dict(healthy_reward=0.0, terminate_when_unhealthy=False,
                        exclude_current_positions_from_observation=False)

    def __init__(self, env_id, sim_kwargs, **trial_kwargs):
        super().__init__(env_id, sim_kwargs, **trial_kwargs)
        self.sparse = env_id == "HumanoidDirSparse"

    def _step_state(self, action):
        obs, _, _, _, info = self.sim.step(action)
        v = np.array([info["x_velocity"], info["y_velocity"]])  # centre-of-mass velocity
        forward = float(self.task @ v)
        if self.sparse and forward < SPARSE_COS * np.linalg.norm(self.task) * np.linalg.norm(v):
            forward = 0.0
        return obs.astype(np.float32), forward + info["reward_ctrl"] + info["reward_contact"]


class RandParamsEnv(MujocoTrialEnv):
    """Hopper-v5 / Walker2d-v5 whose model parameters are scaled by the task's multipliers.

    ``milet/HopperRandParams-v0``, ``milet/WalkerRandParams-v0``; task = the multipliers of all four groups, one
    flat vector (``param_group_slices``; cluster k scales group k), e.g. a row of ``make_task_split(...).test_tasks``.

    On every task change: model.<group> = default.<group> * multipliers (all four groups, so the
    previous task's scaling is undone). r = x velocity (+1 for Hopper) - 1e-3 |a|^2.
    """

    sim_defaults = dict(terminate_when_unhealthy=False)

    def __init__(self, env_id, sim_kwargs, **trial_kwargs):
        self.sim_class = HopperEnv if env_id == "HopperRandParams" else Walker2dEnv
        super().__init__(env_id, sim_kwargs, **trial_kwargs)
        self.alive_bonus = 1.0 if env_id == "HopperRandParams" else 0.0
        self.slices = param_group_slices(env_id)
        self.defaults = {name: getattr(self.model, name).copy() for name in PARAM_GROUPS}

    def _apply_task(self, task):
        for name, sl in self.slices.items():
            default = self.defaults[name]
            getattr(self.model, name)[:] = default * task[sl].reshape(default.shape)

    def _xy(self):  # planar robots: no xy in info
        return None

    def _step_state(self, action):
        obs, _, _, _, info = self.sim.step(action)
        reward = info["x_velocity"] + self.alive_bonus - 1e-3 * np.square(action).sum()
        return obs.astype(np.float32), reward


def make_env(env_id: str, *, episode_length: int = 100, num_episodes: int = 2, seed: int = 0,
             slot: int = 0, task=None, cluster: int | None = None, **kwargs) -> gym.Env:
    """Trial env for one task slot (see ``TrialEnv`` for the keywords); kwargs go to the underlying v5 env.

    The entry point of every registered id: ``gymnasium.make("milet/<EnvId>-v0", **keywords)`` calls
    ``make_env("<EnvId>", **keywords)``.
    """
    kind = _kind(env_id)
    trial = dict(episode_length=episode_length, num_episodes=num_episodes, seed=seed, slot=slot, task=task,
                 cluster=cluster)
    if env_id == "PointGoal":
        if kwargs:
            raise TypeError(f"PointGoal takes no extra kwargs, got {sorted(kwargs)}")
        return PointGoalEnv(**trial)
    cls = {"goal": AntGoalEnv, "dir": HumanoidDirEnv, "params": RandParamsEnv}[kind]
    return cls(env_id, kwargs, **trial)


# ----------------------------------------------------------------------------------------------
# Vector environments
# ----------------------------------------------------------------------------------------------
class PointGoalVectorEnv(VectorEnv):
    """Native numpy batch of ``num_envs`` PointGoal trial envs, step-for-step equal to
    ``make_env("PointGoal", slot=i)`` (same dynamics function, same task-drawing RNGs).

    All sub-envs run in lockstep and are never auto-reset: reset all of them at every trial.
    info values are arrays over sub-envs: next_state/xy (n, 2), task (n, 2), cluster,
    episode_index (n,) int, episode_start (n,) bool (no gymnasium "_key" masks).
    """

    def __init__(self, num_envs: int, episode_length: int = 100, num_episodes: int = 2,
                 seed: int = 0):
        self.num_envs = num_envs
        self.episode_length, self.num_episodes = episode_length, num_episodes
        self.trial_length = episode_length * num_episodes
        self.single_observation_space = Box(-np.inf, np.inf, (2,), np.float32)
        self.single_action_space = Box(-1.0, 1.0, (2,), np.float32)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.metadata = {"autoreset_mode": AutoresetMode.DISABLED}
        self.split = make_task_split("PointGoal", seed=seed)
        self.rngs = [np.random.default_rng([seed, i]) for i in range(num_envs)]
        self.pos = np.zeros((num_envs, 2))
        self._t = self.trial_length

    def _info(self, **extra):
        return {"task": self.tasks.copy(), "cluster": self.clusters.copy(), "xy": self.pos.copy(),
                **extra}

    def reset(self, *, seed=None, options=None):
        if seed is not None:  # like SyncVectorEnv: sub-env i gets seed + i
            self.rngs = [np.random.default_rng(seed + i) for i in range(self.num_envs)]
        chosen = [_choose_task("PointGoal", self.split, self.rngs[i], options or {}, i)
                  for i in range(self.num_envs)]
        self.tasks = np.stack([task for task, _ in chosen])
        self.clusters = np.array([cluster for _, cluster in chosen])
        self.pos = np.zeros((self.num_envs, 2))
        self._t = 0
        info = self._info(episode_index=np.zeros(self.num_envs, dtype=np.int64),
                          episode_start=np.ones(self.num_envs, dtype=bool))
        return self.pos.astype(np.float32), info

    def step(self, actions):
        if self._t >= self.trial_length:
            raise RuntimeError("the trial is over: call reset()")
        self.pos, rewards = point_goal_step(self.pos, np.asarray(actions), self.tasks)
        next_state = self.pos.astype(np.float32)
        info = self._info(next_state=next_state)
        self._t += 1
        truncated = self._t == self.trial_length
        episode_start = self._t % self.episode_length == 0 and not truncated
        obs = next_state
        if episode_start:
            self.pos = np.zeros((self.num_envs, 2))
            obs = self.pos.astype(np.float32)
        n = self.num_envs
        info["episode_index"] = np.full(n, min(self._t // self.episode_length,
                                               self.num_episodes - 1))
        info["episode_start"] = np.full(n, episode_start)
        return obs, rewards, np.zeros(n, bool), np.full(n, truncated), info


# Native batched MuJoCo stepping: per env id, what gymnasium's v5 class does (its XML, frame skip, reset noise,
# observation and costs), with the settings that make_env gives it. Checked against the v5 path by
# tests/test_envs.py::test_native_mujoco_vector_env_matches_gymnasium.
_SIM = {  # kind -> (gymnasium XML, frame_skip, reset noise scale, qvel noise is Gaussian)
    "goal": ("ant.xml", 5, 0.1, True), "dir": ("humanoid.xml", 5, 1e-2, False),
    "HopperRandParams": ("hopper.xml", 4, 5e-3, False), "WalkerRandParams": ("walker2d_v5.xml", 4, 5e-3, False),
}


class MujocoVectorEnv(VectorEnv):
    """``num_envs`` MuJoCo trial slots stepped in C, across ``physics_threads`` threads (MuJoCo releases the GIL in
    mj_step), with observations and rewards built for all slots by numpy in one pass.

    Step for step the same numbers as ``make_vector_env(..., native=False)`` (gymnasium's v5 envs in a
    SyncVectorEnv): the same XML, frame skip, reset noise, observation and reward, and per slot the same random
    generators, seeded the same way, so even the reset noise matches draw for draw. One MjModel serves every slot,
    except for rand-params, where each slot owns a copy whose parameter groups its task scales. The API, info keys
    and trial logic are those of ``PointGoalVectorEnv`` (arrays over slots, no "_key" masks, no auto-reset).
    """

    def __init__(self, env_id: str, num_envs: int, episode_length: int = 100, num_episodes: int = 2,
                 seed: int = 0, physics_threads: int = 2):
        from concurrent.futures import ThreadPoolExecutor

        from gymnasium.envs import mujoco as gym_mujoco
        from gymnasium.utils.seeding import np_random
        self.env_id, self.kind, self.num_envs = env_id, _kind(env_id), num_envs
        self.episode_length, self.num_episodes = episode_length, num_episodes
        self.trial_length = episode_length * num_episodes
        xml, self.frame_skip, self.noise_scale, self.gaussian_qvel = _SIM[env_id if self.kind == "params" else self.kind]
        model = mujoco.MjModel.from_xml_path(os.path.join(os.path.dirname(gym_mujoco.__file__), "assets", xml))
        self.models = [copy.deepcopy(model) for _ in range(num_envs)] if self.kind == "params" else [model] * num_envs
        self.datas = [mujoco.MjData(m) for m in self.models]
        self.init_qpos, self.init_qvel = self.datas[0].qpos.copy(), self.datas[0].qvel.copy()
        self.dt = model.opt.timestep * self.frame_skip
        if self.kind == "params":
            self.slices = param_group_slices(env_id)
            self.defaults = {name: getattr(model, name).copy() for name in PARAM_GROUPS}
        obs_dim = self._observe()[0].shape[1]
        self.single_observation_space = Box(-np.inf, np.inf, (obs_dim,), np.float32)
        low, high = model.actuator_ctrlrange.T.astype(np.float32)
        self.single_action_space = Box(low, high, dtype=np.float32)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.metadata = {"autoreset_mode": AutoresetMode.DISABLED}
        self.split = make_task_split(env_id, seed=seed)
        # the generators of TrialEnv slot i: its own (task draws), and its simulator's (reset noise), which the
        # reference seeds from the first and resets once at construction
        self.rngs = [np.random.default_rng([seed, i]) for i in range(num_envs)]
        self.sim_rngs = [np_random(int(rng.integers(2**31)))[0] for rng in self.rngs]
        for i in range(num_envs):
            self._reset_slot(i)
        self.pool = ThreadPoolExecutor(physics_threads) if physics_threads > 1 else None
        self.blocks = np.array_split(np.arange(num_envs), max(physics_threads, 1))
        self._t = self.trial_length

    # --- physics ---
    def _reset_slot(self, i):  # gymnasium's MujocoEnv.reset + reset_model + set_state
        model, data, rng = self.models[i], self.datas[i], self.sim_rngs[i]
        mujoco.mj_resetData(model, data)
        qpos = self.init_qpos + rng.uniform(low=-self.noise_scale, high=self.noise_scale, size=model.nq)
        qvel = self.init_qvel + (self.noise_scale * rng.standard_normal(model.nv) if self.gaussian_qvel else
                                 rng.uniform(low=-self.noise_scale, high=self.noise_scale, size=model.nv))
        data.qpos[:], data.qvel[:] = qpos, qvel
        mujoco.mj_forward(model, data)

    def _step_block(self, block, actions):  # gymnasium's do_simulation, for a block of slots, in one thread
        for i in block:
            self.datas[i].ctrl[:] = actions[i]
            mujoco.mj_step(self.models[i], self.datas[i], nstep=self.frame_skip)
            mujoco.mj_rnePostConstraint(self.models[i], self.datas[i])

    def _gather(self, field):
        return np.stack([getattr(data, field) for data in self.datas])

    def _mass_centre_xy(self):  # humanoid_v5.mass_center for every slot
        mass = self.models[0].body_mass
        return (np.einsum("b,nbj->nj", mass, self._gather("xipos")) / mass.sum())[:, :2]

    def _observe(self):
        """(observations float64, cfrc_ext) of every slot, as the v5 _get_obs with our make_env settings."""
        qpos, qvel, cfrc_ext = self._gather("qpos"), self._gather("qvel"), self._gather("cfrc_ext")
        n = len(qpos)
        if self.kind == "goal":  # Ant: positions with x, y, velocities, contact forces clipped to [-1, 1]
            parts = [qpos, qvel, np.clip(cfrc_ext, -1.0, 1.0)[:, 1:].reshape(n, -1)]
        elif self.kind == "dir":  # Humanoid: + com inertia, com velocity, actuator forces, contact forces
            parts = [qpos, qvel, self._gather("cinert")[:, 1:].reshape(n, -1), self._gather("cvel")[:, 1:].reshape(n, -1),
                     self._gather("qfrc_actuator")[:, 6:], cfrc_ext[:, 1:].reshape(n, -1)]
        else:  # Hopper / Walker2d: positions without x, velocities clipped to [-10, 10]
            parts = [qpos[:, 1:], np.clip(qvel, -10.0, 10.0)]
        return np.concatenate(parts, axis=1), cfrc_ext

    # --- trial logic, as PointGoalVectorEnv ---
    def _info(self, xy, **extra):
        info = {"task": self.tasks.copy(), "cluster": self.clusters.copy(), **extra}
        if self.kind != "params":
            info["xy"] = xy
        return info

    def reset(self, *, seed=None, options=None):
        from gymnasium.utils.seeding import np_random
        if seed is not None:  # like SyncVectorEnv over TrialEnvs: slot i and its simulator get seed + i
            self.rngs = [np_random(seed + i)[0] for i in range(self.num_envs)]
            self.sim_rngs = [np_random(seed + i)[0] for i in range(self.num_envs)]
        chosen = [_choose_task(self.env_id, self.split, self.rngs[i], options or {}, i) for i in range(self.num_envs)]
        self.tasks = np.stack([task for task, _ in chosen])
        self.clusters = np.array([cluster for _, cluster in chosen])
        for i in range(self.num_envs):
            if self.kind == "params":  # model.<group> = default.<group> * multipliers, every group
                for name, sl in self.slices.items():
                    getattr(self.models[i], name)[:] = self.defaults[name] * self.tasks[i, sl].reshape(self.defaults[name].shape)
            self._reset_slot(i)
        self._t = 0
        n = self.num_envs
        info = self._info(self._gather("qpos")[:, :2], episode_index=np.zeros(n, dtype=np.int64),
                          episode_start=np.ones(n, dtype=bool))
        return self._observe()[0].astype(np.float32), info

    def step(self, actions):
        if self._t >= self.trial_length:
            raise RuntimeError("the trial is over: call reset()")
        actions = np.asarray(actions)
        before = self._mass_centre_xy() if self.kind == "dir" else self._gather("qpos")[:, 0]
        if self.pool is None:
            self._step_block(range(self.num_envs), actions)
        else:
            list(self.pool.map(self._step_block, self.blocks, [actions] * len(self.blocks)))
        obs, cfrc_ext = self._observe()
        qpos = self._gather("qpos")
        if self.kind == "goal":  # the AntGoal reward (AntGoalEnv), with Ant-v5's control and contact costs
            ctrl_cost = 0.01 * np.square(actions).sum(axis=1)
            contact_cost = 5e-4 * np.square(np.clip(cfrc_ext, -1.0, 1.0)).sum(axis=(1, 2))
            rewards = goal_reward(qpos[:, :2], self.tasks, self.env_id == "AntGoalPartial") - ctrl_cost - contact_cost
        elif self.kind == "dir":  # the HumanoidDir reward (HumanoidDirEnv), with Humanoid-v5's costs
            velocity = (self._mass_centre_xy() - before) / self.dt
            forward = (self.tasks * velocity).sum(axis=1)
            if self.env_id == "HumanoidDirSparse":
                aligned = forward >= SPARSE_COS * np.linalg.norm(self.tasks, axis=1) * np.linalg.norm(velocity, axis=1)
                forward = np.where(aligned, forward, 0.0)
            ctrl_cost = 0.1 * np.square(self._gather("ctrl")).sum(axis=1)
            contact_cost = np.clip(5e-7 * np.square(cfrc_ext).sum(axis=(1, 2)), -np.inf, 10.0)
            rewards = forward - ctrl_cost - contact_cost
        else:  # the rand-params reward (RandParamsEnv)
            alive_bonus = 1.0 if self.env_id == "HopperRandParams" else 0.0
            rewards = (qpos[:, 0] - before) / self.dt + alive_bonus - 1e-3 * np.square(actions).sum(axis=1)
        next_state = obs.astype(np.float32)
        info = self._info(qpos[:, :2].copy(), next_state=next_state)
        self._t += 1
        truncated = self._t == self.trial_length
        episode_start = self._t % self.episode_length == 0 and not truncated
        if episode_start:  # the next inner episode starts from a reset robot, in the same task
            for i in range(self.num_envs):
                self._reset_slot(i)
            obs = self._observe()[0]
        n = self.num_envs
        info["episode_index"] = np.full(n, min(self._t // self.episode_length, self.num_episodes - 1))
        info["episode_start"] = np.full(n, episode_start)
        return obs.astype(np.float32), rewards, np.zeros(n, bool), np.full(n, truncated), info

    def close_extras(self, **kwargs):
        if self.pool is not None:
            self.pool.shutdown()


def rng_states(envs: VectorEnv) -> list:
    """Per slot, the states of its random generators (the MuJoCo ones include reset noise), for a checkpoint."""
    envs = envs.unwrapped
    if isinstance(envs, PointGoalVectorEnv):
        return [[rng.bit_generator.state] for rng in envs.rngs]
    if isinstance(envs, MujocoVectorEnv):
        return [[rng.bit_generator.state, sim_rng.bit_generator.state] for rng, sim_rng in zip(envs.rngs, envs.sim_rngs)]
    return list(envs.call("rng_state"))


def set_rng_states(envs: VectorEnv, states: list) -> None:
    """Restore what ``rng_states`` returned, so a resumed run draws the same reset noise and tasks."""
    envs = envs.unwrapped
    if isinstance(envs, PointGoalVectorEnv):
        for rng, (state,) in zip(envs.rngs, states):
            rng.bit_generator.state = state
    elif isinstance(envs, MujocoVectorEnv):
        for rng, sim_rng, (state, sim_state) in zip(envs.rngs, envs.sim_rngs, states):
            rng.bit_generator.state, sim_rng.bit_generator.state = state, sim_state
    else:
        envs.call("set_rng_state", states)


def make_vector_env(env_id: str, num_envs: int, *, episode_length: int = 100,
                    num_episodes: int = 2, seed: int = 0, asynchronous: bool = False, native: bool = True,
                    physics_threads: int = 2, **kwargs) -> VectorEnv:
    """``num_envs`` trial envs with autoreset disabled; sub-env i is task slot i.

    Per trial the caller resets all sub-envs at once, usually with
    ``envs.reset(options={"tasks": tasks, "clusters": clusters})``: sub-env i takes row i of both
    arrays (shape (num_envs, task_dim) and (num_envs,)). Without tasks each sub-env draws a
    meta-training task itself (of cluster k with ``options={"cluster": k}``). After ``num_episodes * episode_length`` steps all sub-envs report
    truncated and must be reset. info holds the ``TrialEnv`` keys batched over sub-envs; use
    ``np.stack(info["next_state"])`` to get a float (num_envs, obs_dim) array for every env id.
    PointGoal returns the native ``PointGoalVectorEnv``. The MuJoCo ids return the native ``MujocoVectorEnv``
    (``physics_threads`` threads); with ``native=False`` (or ``asynchronous``) the reference path instead:
    gymnasium's v5 envs, one ``TrialEnv`` per slot, in a Sync/AsyncVectorEnv (kwargs go to the v5 envs).
    """
    _kind(env_id)
    if env_id == "PointGoal":
        if kwargs or asynchronous:
            raise TypeError("PointGoal's native vector env takes no kwargs / asynchronous")
        return PointGoalVectorEnv(num_envs, episode_length, num_episodes, seed)
    if native and not asynchronous and not kwargs:
        return MujocoVectorEnv(env_id, num_envs, episode_length, num_episodes, seed, physics_threads)
    fns = [functools.partial(make_env, env_id, episode_length=episode_length,
                             num_episodes=num_episodes, seed=seed, slot=i, **kwargs)
           for i in range(num_envs)]
    cls = AsyncVectorEnv if asynchronous else SyncVectorEnv
    return cls(fns, autoreset_mode=AutoresetMode.DISABLED)


# ----------------------------------------------------------------------------------------------
# gymnasium registry
# ----------------------------------------------------------------------------------------------
GYM_NAMESPACE = "milet"


def gym_id(env_id: str) -> str:
    """The registered gymnasium id of an env id: "AntGoal" -> "milet/AntGoal-v0"."""
    _kind(env_id)
    return f"{GYM_NAMESPACE}/{env_id}-v0"


def register_envs() -> None:
    """Register every env id with gymnasium (done on import): ``gymnasium.make`` builds it with ``make_env``,
    ``gymnasium.make_vec`` with ``make_vector_env``. Ids already registered are left alone."""
    for env_id in ENV_IDS:
        if gym_id(env_id) not in gym.registry:
            gym.register(gym_id(env_id), entry_point=f"{__name__}:make_env",
                         vector_entry_point=f"{__name__}:make_vector_env", kwargs={"env_id": env_id})


register_envs()
