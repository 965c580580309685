"""The shared protocol: meta-test evaluation (the paper's Algorithm 2), input checks and run files of every script.

MILET (milet_ppo_continuous.py), VariBAD (varibad_ppo_continuous.py) and RL2 (rl2_ppo_continuous.py) are
evaluated by this one function, so the protocol is the same for all three (Sec. 5):
  * the same 32 held-out test tasks of `envs_clustered.make_task_split`, one per vector-env slot;
  * the same trial: 1 exploration episode and N exploitation episodes of H steps, with deterministic actions;
  * the same references: on PointGoal, the returns of the analytic policy that knows the goal
    (`oracle_return_episode_k`) and, beside every NMI, `nmi_ceiling` (envs_clustered.nmi_ceiling);
  * the same record: the return of every episode, the exploration episode's xy trace (goal envs) and, for a method
    with a cluster posterior, the NMI between the true cluster and argmax q(c | tau_:t) after every step t of the
    exploration episode (Fig. 3c). A method without clusters returns no cluster probabilities: NMI is omitted.

Each method supplies two callables: `act(obs, step) -> action` and `observe(action, next_state, reward, step)
-> cluster_probs or None`, which update its own recurrent state.

What else every script shares, and nothing of any algorithm:
  * `TOTAL_TIMESTEPS`, the frame budget per env, so that all methods get the same frames;
  * the input checks, each stopping with one clear line: `peek_env_id`, `check_trial_args`, `check_finite`
    (NaN losses) and `exit_with_error`;
  * the run files: `start_run` (run folder, args.json, tensorboard), `log_evaluation` (eval.jsonl), `summary`,
    and `write_atomic` / `torch_save_atomic`, so that an interruption never leaves half a file;
  * what --resume needs: `load_resume`, `random_state`, `restore_random_state` and `resume_run`;
  * --capture-video: `check_video_support` (before anything is written) and `capture_video` (after the final
    evaluation: MP4s of its trial for one test task per cluster, drawn by `render_trial`; the last section below).
"""
import argparse
import atexit
import dataclasses
import json
import os
import random
import sys
import time
import warnings
from typing import Callable, Optional

import mujoco
import numpy as np
import torch
from sklearn.metrics import normalized_mutual_info_score
from torch.utils.tensorboard import SummaryWriter

import envs_clustered

# The frame budget per env, the paper's (docs/paper_settings.md) except PointGoal, ours; the same for every method.
TOTAL_TIMESTEPS = {"PointGoal": 2_000_000, "AntGoal": 50_000_000, "AntGoalPartial": 50_000_000, "AntU": 50_000_000,
                   "HumanoidDir": 30_000_000, "HumanoidDirSparse": 30_000_000, "HopperRandParams": 10_000_000,
                   "WalkerRandParams": 10_000_000}
SUMMARY_KEYS = ("nmi_end_of_exploration", "nmi_per_step", "nmi_ceiling", "test_clusters_true", "test_clusters_pred",
                "num_clusters_found", "cluster_weights")


def eval_tasks(split, num_slots: int) -> tuple[np.ndarray, np.ndarray]:
    """The test tasks and clusters of `split`, each repeated for num_slots / len(test_tasks) trials (--eval-trials),
    task by task: slot i holds test task i // trials, with its own reset noise."""
    trials, remainder = divmod(num_slots, len(split.test_tasks))
    if trials < 1 or remainder:
        raise ValueError(f"{num_slots} eval slots is not a multiple of the {len(split.test_tasks)} test tasks")
    return np.repeat(split.test_tasks, trials, axis=0), np.repeat(split.test_clusters, trials)


@torch.no_grad()
def evaluate(eval_envs, split, seed: int, num_episodes: int, episode_length: int,
             act: Callable[[np.ndarray, int], torch.Tensor],
             observe: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], Optional[torch.Tensor]]) -> dict:
    """Run trials on every test task of `split` (one per eval slot; eval_envs may hold several slots per task) and
    return the record that goes into eval.jsonl."""
    num_tasks = len(split.test_tasks)
    tasks, clusters = eval_tasks(split, eval_envs.num_envs)
    trials = len(tasks) // num_tasks
    obs, info = eval_envs.reset(seed=seed, options={"tasks": tasks, "clusters": clusters})
    episode_returns, predicted_clusters = np.zeros((num_episodes, len(tasks))), []
    is_goal = envs_clustered._kind(split.env_id) == "goal"  # the goal envs: the final distance to the goal
    final_distance = np.zeros((num_episodes, len(tasks)))
    xy_trace = [np.stack(info["xy"])] if "xy" in info else None
    video = None
    if _video_request["record"]:  # capture_video's replay: keep the states of one slot per true cluster
        video = _video_request["trial"] = TrialStates(split.env_id, tasks, clusters, num_episodes, trials)
        _video_request["record"] = False  # this trial only: --ood-eval's later trials are not the test tasks
    for step in range(num_episodes * episode_length):
        episode = step // episode_length
        if video is not None and step % episode_length == 0:
            video.add(episode, obs)  # the state the episode starts in
        action = act(obs, step)
        obs, reward, _, _, info = eval_envs.step(action.cpu().numpy())
        if video is not None:
            video.add(episode, np.stack(info["next_state"]))
        next_state = torch.as_tensor(np.stack(info["next_state"]), dtype=torch.float32, device=action.device)
        reward_tensor = torch.as_tensor(reward, dtype=torch.float32, device=action.device)
        cluster_probs = observe(action, next_state, reward_tensor, step)
        episode_returns[episode] += reward
        if episode == 0:
            if cluster_probs is not None:
                predicted_clusters.append(cluster_probs.argmax(-1).cpu().numpy())
            if xy_trace is not None:
                xy_trace.append(np.stack(info["xy"]))
        if is_goal and (step + 1) % episode_length == 0:  # info["xy"] is the robot's xy after this last step
            final_distance[episode] = np.linalg.norm(np.stack(info["xy"]) - tasks, axis=-1)
    per_task = episode_returns.reshape(num_episodes, num_tasks, trials).mean(-1)  # each task's mean over trials
    result = {}
    for k in range(num_episodes):
        result[f"return_episode_{k + 1}"] = float(per_task[k].mean())
        # the standard error of that mean over the test tasks (of each task's mean over its --eval-trials)
        result[f"return_episode_{k + 1}_sem"] = float(per_task[k].std(ddof=1) / np.sqrt(num_tasks))
    if is_goal:  # the physical reference: how far from the goal each episode ends
        for k in range(num_episodes):
            result[f"final_distance_episode_{k + 1}"] = float(final_distance[k].mean())
            result[f"final_distance_episode_{k + 1}_median"] = float(np.median(final_distance[k]))
    if split.env_id == "PointGoal":
        oracle = envs_clustered.point_goal_oracle_returns(split.test_tasks, episode_length, num_episodes)
        result.update({f"oracle_return_episode_{k + 1}": float(oracle[k]) for k in range(num_episodes)})
    result.update(eval_trials=trials, test_clusters_true=clusters.tolist(),
                  test_returns_per_task=np.round(episode_returns, 3).tolist())
    if predicted_clusters:
        # NMI(true cluster, argmax q(c | tau_:t)) after every step t = 1..H of the exploration episode (Fig. 3c)
        nmi_per_step = [float(normalized_mutual_info_score(clusters, pred)) for pred in predicted_clusters]
        # the reference: the NMI of the most likely cluster given each true test task (envs_clustered.nmi_ceiling)
        result.update(nmi_per_step=nmi_per_step, nmi_end_of_exploration=nmi_per_step[-1],
                      nmi_ceiling=envs_clustered.nmi_ceiling(split),
                      test_clusters_pred=predicted_clusters[-1].tolist(),
                      exploration_clusters=np.stack(predicted_clusters).T.tolist())  # (tasks, H): argmax per step
    if xy_trace is not None:  # (tasks, H+1, 2): the exploration episode's xy trace, for Fig. 3a
        xy = np.stack(xy_trace).transpose(1, 0, 2)
        result.update(exploration_reach_median=exploration_reach(xy), exploration_xy=np.round(xy, 3).tolist())
    return result


def exploration_reach(xy: np.ndarray) -> float:
    """How far the exploration gets, from its xy traces (tasks, H+1, 2): per task the largest distance from its
    start, the median over the tasks."""
    return float(np.median(np.linalg.norm(xy - xy[:, :1], axis=-1).max(1)))


def exit_with_error(message: str) -> None:
    """Stop with one line naming the script, as argparse does; files written so far stay whole (written atomically)."""
    sys.exit(f"{os.path.basename(sys.argv[0])}: error: {message}")


def peek_env_id(argv: Optional[list], env_defaults: dict) -> str:
    """--env-id from the command line (PointGoal if absent), read before tyro so that tyro can parse the other flags
    on top of that env's row of defaults. An unknown id stops here with the list of valid ones."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--env-id", "--env_id", default="PointGoal")
    env_id = parser.parse_known_args(sys.argv[1:] if argv is None else argv)[0].env_id
    if env_id not in env_defaults:
        exit_with_error(f"unknown --env-id {env_id!r}; valid ids: {', '.join(env_defaults)}")
    return env_id


def check_trial_args(args, more_positive_flags: tuple = ()) -> None:
    """The checks every script of the shared protocol makes (MILET, VariBAD, RL2) on its settings."""
    for flag in ("num_minibatches", "update_epochs", "eval_every", "eval_trials", "episode_length", "num_exploit_episodes",
                 "physics_threads", "torch_threads", *more_positive_flags):
        if getattr(args, flag) < 1:
            exit_with_error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if getattr(args, "target_kl", None) is not None and not args.target_kl > 0:
        exit_with_error(f"--target-kl must be > 0 (or left unset), got {args.target_kl}")
    for flag in ("gamma", "gae_lambda"):
        if not 0 <= getattr(args, flag) <= 1:
            exit_with_error(f"--{flag.replace('_', '-')} must be in [0, 1], got {getattr(args, flag)}")
    for flag in ("vae_num_prefixes", "vae_num_decodes"):  # those the script has; 0 means all
        if hasattr(args, flag) and getattr(args, flag) < 0:
            exit_with_error(f"--{flag.replace('_', '-')} must be >= 0 (0: all), got {getattr(args, flag)}")
    for flag in ("clip_coef", "learning_rate", "exploit_lr", "explore_lr", "vae_lr"):  # those the script has
        if hasattr(args, flag) and not getattr(args, flag) > 0:
            exit_with_error(f"--{flag.replace('_', '-')} must be > 0, got {getattr(args, flag)}")
    if args.async_envs and args.env_id == "PointGoal":
        exit_with_error("--async-envs is for the MuJoCo envs; PointGoal is already one batched numpy env")
    if args.num_envs < 1 or args.num_envs % args.num_minibatches:
        exit_with_error(f"--num-envs ({args.num_envs}) must be a positive multiple of "
                        f"--num-minibatches ({args.num_minibatches})")
    one_iteration = args.num_envs * (1 + args.num_exploit_episodes) * args.episode_length
    if args.total_timesteps < one_iteration:
        exit_with_error(f"--total-timesteps ({args.total_timesteps}) is below one iteration ({one_iteration} frames)")


def check_finite(losses: dict, iteration: int) -> None:
    """Stop at the first NaN or infinite loss term, naming it. The run's files stay whole (eval.jsonl, args.json and
    checkpoints are written atomically; the tensorboard writer is closed at exit)."""
    for name, value in losses.items():
        if not torch.isfinite(value).all():
            exit_with_error(f"loss term '{name}' is {value.item()} at iteration {iteration}; stopping "
                        "(the logs and any --save-model checkpoint written so far are kept)")


def summary(args, global_step: int, sps: int, record: dict) -> dict:
    """summary.json: the run, its final test returns and, where the method infers clusters, the NMI figures."""
    return {"env_id": args.env_id, "seed": args.seed, "global_step": global_step, "sps": sps,
            **{f"test_{k}": v for k, v in record.items() if k.startswith(("return_episode_", "final_distance_"))},
            **{k: v for k, v in record.items() if k.startswith("oracle_return_episode_")},
            **{k: record[k] for k in SUMMARY_KEYS if k in record},
            **{k: v for k, v in record.items() if k.startswith("ood_")}, "args": vars(args)}


def start_run(args):
    """Create runs/<env_id>__<exp_name>__<seed>__<time>/ with args.json and a tensorboard writer (wandb: --track)."""
    run_name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_dir = os.path.join(args.runs_dir, run_name)
    if args.track:
        import wandb

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True,
                   config=vars(args), name=run_name, save_code=True)
    writer = SummaryWriter(run_dir)
    atexit.register(writer.close)  # flush the events however the run ends (a NaN loss stops it with sys.exit)
    write_atomic(os.path.join(run_dir, "args.json"), json.dumps(vars(args), indent=1))
    table = "\n".join(f"|{k}|{v}|" for k, v in vars(args).items())
    writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{table}")
    return run_dir, writer


def load_resume(args):
    """--resume: (the checkpoint, the run's own args). The run keeps its own flags: giving another is an error."""
    script, path = os.path.basename(sys.argv[0]), os.path.join(args.resume, "resume.pt")
    defaults = type(args)()
    changed = [f"--{k.replace('_', '-')}" for k, v in vars(args).items() if k != "resume" and v != getattr(defaults, k)]
    if changed:
        sys.exit(f"{script}: error: --resume takes the run's own flags, drop {' '.join(changed)}")
    if not os.path.isfile(path):
        sys.exit(f"{script}: error: no resume.pt in {args.resume}")
    state = torch.load(path, weights_only=False)
    unknown = sorted(set(state["args"]) - {field.name for field in dataclasses.fields(args)})
    if unknown:  # e.g. a VariBAD run given to MILET: its flags mean nothing here
        sys.exit(f"{script}: error: {path} is not a run of {script} (flags it does not have: "
                 f"{', '.join('--' + k.replace('_', '-') for k in unknown)}); resume it with the script that wrote it")
    carried = state.get("carried")  # plots.py slim --keep-trials: the run goes on, from fewer trials than it had
    if carried and carried["trials_kept"] < carried["trials_in_buffer"]:
        print(f"{script}: resuming a carried checkpoint: its trial buffer keeps the {carried['trials_kept']} most "
              f"recent of {carried['trials_in_buffer']} trials, so the run continues, but not as an uninterrupted run "
              f"would (carried.jsonl)", file=sys.stderr)
    state["args"]["resume"] = args.resume
    run_args = type(args)(**{k: tuple(v) if isinstance(v, list) else v for k, v in state["args"].items()})
    if getattr(run_args, "capture_video", False):  # a --capture-video run: check it can render before it goes on
        check_video_support()
    return state, run_args


def random_state(task_rng, envs) -> dict:
    """Every random generator a training run draws from, for resume.pt: Python's, numpy's, torch's, the task
    sampler's and each environment slot's (task draws and reset noise)."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "tasks": task_rng.bit_generator.state, "envs": envs_clustered.rng_states(envs)}


def restore_random_state(state: dict, task_rng, envs) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    task_rng.bit_generator.state = state["tasks"]
    envs_clustered.set_rng_states(envs, state["envs"])


def torch_save_atomic(path: str, state: dict) -> None:
    """torch.save via a temporary file and a rename: an interruption leaves the previous checkpoint whole."""
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def resume_run(run_dir: str, iteration: int, global_step: int):
    """Reopen a run folder for --resume at a checkpoint taken after `iteration` (frame `global_step`): the
    evaluations up to that iteration (later ones, written before the interruption, are dropped and will be
    recomputed identically) and a tensorboard writer that purges the events logged after the checkpoint."""
    records = [json.loads(line) for line in open(os.path.join(run_dir, "eval.jsonl"))]
    eval_lines = [json.dumps(r) + "\n" for r in records if r["iteration"] <= iteration]
    write_atomic(os.path.join(run_dir, "eval.jsonl"), "".join(eval_lines))
    writer = SummaryWriter(run_dir, purge_step=global_step + 1)
    atexit.register(writer.close)
    return writer, eval_lines, json.loads(eval_lines[-1])


def write_atomic(path: str, text: str) -> None:
    """Write a whole file via a temporary file and a rename, so an interruption never leaves half a file."""
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def log_evaluation(writer, run_dir: str, eval_lines: list, record: dict) -> None:
    """Append one evaluation to eval.jsonl (rewritten whole, atomically) and to tensorboard's eval/ tags."""
    eval_lines.append(json.dumps(record) + "\n")
    for key in [k for k in record if k.startswith(("return_episode_", "final_distance_")) or k == "nmi_end_of_exploration"]:
        writer.add_scalar(f"eval/{key}", record[key], record["global_step"])
    write_atomic(os.path.join(run_dir, "eval.jsonl"), "".join(eval_lines))


# ------------------------------------------------------------------------------------------ --capture-video
# --capture-video: MP4s of the final meta-test trial of one test task per true cluster, both (all) episodes, in
# <run_dir>/videos/. `capture_video` replays the final evaluation (the same policy, seed and deterministic actions,
# so the same trial), `evaluate` keeps the observed states of the chosen slots, and `render_trial` draws them
# afterwards into one MjModel with MuJoCo's offscreen renderer: the vector envs and training are untouched.
# Headless machines render through EGL (MUJOCO_GL=egl, Mesa's software renderer): the 4 AntGoal videos of 202
# frames at 320x240 took 61 s on 2 cores that two training runs kept busy.
VIDEO_SIZE = (320, 240)  # width, height of a frame
VIDEO_FPS = 20           # one frame per env step: real time on the Ant envs (dt 0.05 s)
TRAIL_COLOURS = ((1.0, 0.55, 0.0, 1.0), (0.2, 0.45, 1.0, 1.0))  # the torso's trail: exploration, exploitation
MARKER_COLOUR = (0.9, 0.1, 0.1, 0.9)  # the goal disc, the direction arrow
# PointGoal has no MuJoCo model: a render-only one, a ball that slides in x and y (qpos = the point's xy)
POINT_MODEL_XML = """
<mujoco>
  <asset>
    <texture name="grid" type="2d" builtin="checker" rgb1=".1 .2 .3" rgb2=".2 .3 .4" width="64" height="64"/>
    <material name="grid" texture="grid" texrepeat="8 8" reflectance=".1"/>
  </asset>
  <worldbody>
    <light pos="0 0 6" dir="0 0 -1" directional="true"/>
    <geom name="floor" type="plane" size="8 8 .1" material="grid"/>
    <body name="point" pos="0 0 .15">
      <joint name="x" type="slide" axis="1 0 0"/>
      <joint name="y" type="slide" axis="0 1 0"/>
      <geom type="sphere" size=".15" rgba=".95 .95 .95 1"/>
    </body>
  </worldbody>
</mujoco>"""
_video_request = {"record": False, "trial": None}  # capture_video asks evaluate to record its next trial


class TrialStates:
    """The states of one meta-test trial that --capture-video renders: the first slot of each true cluster (one test
    task per cluster), per episode the state it starts in and the state after each of its H steps."""

    def __init__(self, env_id: str, tasks: np.ndarray, clusters: np.ndarray, num_episodes: int, trials: int):
        self.env_id = env_id
        self.slots = [int(np.flatnonzero(clusters == k)[0]) for k in np.unique(clusters)]
        self.test_task_index = [slot // trials for slot in self.slots]  # into split.test_tasks
        self.tasks, self.clusters = tasks[self.slots], clusters[self.slots]
        self.episodes = [[] for _ in range(num_episodes)]  # per episode, per step: (slots, obs_dim)

    def add(self, episode: int, states: np.ndarray) -> None:
        self.episodes[episode].append(np.asarray(states, dtype=np.float32)[self.slots])

    def slot_states(self, i: int) -> np.ndarray:
        """(num_episodes, H + 1, obs_dim): the states of the i-th chosen slot."""
        return np.stack([np.stack(steps) for steps in self.episodes])[:, :, i]


def check_video_support() -> None:
    """--capture-video: stop now, before any run folder is made or touched, with one line saying what to install,
    where the MP4 encoder is missing or MuJoCo cannot render offscreen (MUJOCO_GL, read when mujoco is imported)."""
    try:
        import imageio.v3  # noqa: F401
        import imageio_ffmpeg
        imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as error:
        exit_with_error(f"--capture-video writes MP4s with imageio and imageio-ffmpeg ({error}): "
                        "pip install -r requirements.txt")
    try:
        with warnings.catch_warnings():  # glfw without a display warns before it fails: the one line below says it
            warnings.simplefilter("ignore")
            with mujoco.Renderer(mujoco.MjModel.from_xml_string(POINT_MODEL_XML), 16, 16) as renderer:
                renderer.render()
    except Exception as error:  # ImportError, mujoco.FatalError, RuntimeError, ...: each backend fails its own way
        backend = os.environ.get("MUJOCO_GL") or "unset (glfw, which needs a display)"
        reason = (str(error).splitlines() or [""])[0]
        reason = reason if len(reason) <= 120 else reason[:117] + "..."
        exit_with_error(f"--capture-video renders with MuJoCo offscreen, and MUJOCO_GL={backend} failed "
                        f"({type(error).__name__}: {reason}); install EGL (apt-get install libegl1) and set "
                        "MUJOCO_GL=egl, or OSMesa (apt-get install libosmesa6) and set MUJOCO_GL=osmesa")


def render_model(env_id: str) -> mujoco.MjModel:
    """The MjModel a trial of env_id is drawn in: gymnasium's XML of the env (rand-params: unscaled, which looks the
    same), or PointGoal's render-only ball."""
    if env_id == "PointGoal":
        model = mujoco.MjModel.from_xml_string(POINT_MODEL_XML)
    else:
        from gymnasium.envs import mujoco as gym_mujoco  # only to locate gymnasium's own XML assets
        kind = envs_clustered._kind(env_id)
        xml = envs_clustered._SIM[env_id if kind == "params" else kind][0]
        model = mujoco.MjModel.from_xml_path(os.path.join(os.path.dirname(gym_mujoco.__file__), "assets", xml))
    model.vis.quality.shadowsize = 1024  # plenty for small frames; the default 4096 doubles software GL's time
    return model


def qpos_from_states(env_id: str, model: mujoco.MjModel, states: np.ndarray) -> np.ndarray:
    """The qpos of each observed state, states (episodes, H + 1, obs_dim) -> (episodes, H + 1, nq). The Ant and
    Humanoid observations start with the whole qpos, PointGoal's is its xy; Hopper and Walker2d observe all but x,
    which is integrated from the observed x velocity (trapezoid rule, from 0 at each episode's start; the reset
    noise aside, within 5 mm of the true x over a 100-step Hopper episode)."""
    if envs_clustered._kind(env_id) != "params":
        return states[..., :model.nq].astype(np.float64)
    frame_skip = envs_clustered._SIM[env_id][1]
    x_velocity = states[..., model.nq - 1].astype(np.float64)  # qvel[0], after qpos[1:]
    steps = 0.5 * (x_velocity[:, 1:] + x_velocity[:, :-1]) * model.opt.timestep * frame_skip
    x = np.concatenate([np.zeros((len(states), 1)), np.cumsum(steps, axis=1)], axis=1)
    return np.concatenate([x[..., None], states[..., :model.nq - 1]], axis=-1)


def _add_geom(scene: mujoco.MjvScene, geom_type, size, pos, rgba, label: str = ""):
    """One decoration in the scene (not in the model), if the scene has room; returns it (None if full)."""
    if scene.ngeom >= scene.maxgeom:
        return None
    geom = scene.geoms[scene.ngeom]
    mujoco.mjv_initGeom(geom, geom_type, np.asarray(size, dtype=np.float64), np.asarray(pos, dtype=np.float64),
                        np.eye(3).ravel(), np.asarray(rgba, dtype=np.float32))
    geom.label = label
    scene.ngeom += 1
    return geom


def _top_left(camera: mujoco.MjvGLCamera, aspect: float) -> np.ndarray:
    """A point that the camera sees near the top-left corner of the frame, where a label stays put on screen."""
    forward, up = np.array(camera.forward), np.array(camera.up)
    left, top = -0.85 * camera.frustum_top * aspect, 0.8 * camera.frustum_top  # on the near plane
    return np.array(camera.pos) + forward + (left * np.cross(forward, up) + top * up) / camera.frustum_near


def render_trial(env_id: str, states: np.ndarray, task: np.ndarray, size: tuple[int, int] = VIDEO_SIZE) -> np.ndarray:
    """The frames (episodes * (H + 1), height, width, 3) uint8 of one recorded slot (TrialStates.slot_states), drawn
    with mujoco.Renderer, one frame per state. Added to the scene: goal envs the goal (a red disc labelled "goal"),
    direction envs the direction (a red arrow from the torso's feet), the torso's trail, orange in the exploration
    episode and blue after it, and at the top left the episode's number and role. Camera: goal envs a fixed view
    over the start and the goal, direction envs follow the torso, rand-params envs follow x from the side."""
    kind = envs_clustered._kind(env_id)
    model = render_model(env_id)
    data = mujoco.MjData(model)
    qpos = qpos_from_states(env_id, model, np.asarray(states))
    camera = mujoco.MjvCamera()  # a free camera, looking along +y
    camera.azimuth = 90.0
    if kind == "goal":
        camera.lookat[:2], camera.distance, camera.elevation = task / 2, 2.0 * np.linalg.norm(task) + 4.0, -65.0
    frames = []
    with mujoco.Renderer(model, size[1], size[0], font_scale=mujoco.mjtFontScale.mjFONTSCALE_100) as renderer:
        for episode, episode_qpos in enumerate(qpos):
            title = f"episode {episode + 1}: {'exploration' if episode == 0 else 'exploitation'}"
            for step, position in enumerate(episode_qpos):
                data.qpos[:] = position
                mujoco.mj_forward(model, data)
                if kind == "dir":
                    camera.lookat[:], camera.distance, camera.elevation = (*position[:2], 0.8), 4.5, -25.0
                elif kind == "params":
                    camera.lookat[:], camera.distance, camera.elevation = (position[0], 0.0, 1.0), 3.5, -15.0
                renderer.update_scene(data, camera)
                scene = renderer.scene
                if kind == "goal":
                    _add_geom(scene, mujoco.mjtGeom.mjGEOM_CYLINDER, (0.3, 0.3, 0.01), (*task, 0.01), MARKER_COLOUR,
                              "goal")
                elif kind == "dir":
                    arrow = _add_geom(scene, mujoco.mjtGeom.mjGEOM_ARROW, (0, 0, 0), (0, 0, 0), MARKER_COLOUR)
                    if arrow is not None:
                        mujoco.mjv_connector(arrow, mujoco.mjtGeom.mjGEOM_ARROW, 0.06, np.r_[position[:2], 0.05],
                                             np.r_[position[:2] + 1.2 * task, 0.05])
                if kind != "params":  # the torso's xy so far, each episode in its colour
                    for past in range(episode + 1):
                        last = step + 1 if past == episode else len(qpos[past])
                        for xy in qpos[past, :last, :2]:
                            _add_geom(scene, mujoco.mjtGeom.mjGEOM_SPHERE, (0.04, 0.04, 0.04), (*xy, 0.04),
                                      TRAIL_COLOURS[min(past, 1)])
                corner = _top_left(scene.camera[0], size[0] / size[1])
                _add_geom(scene, mujoco.mjtGeom.mjGEOM_LABEL, (0, 0, 0), corner, (1, 1, 1, 1), title)
                frames.append(renderer.render())
    return np.stack(frames)


def write_mp4(path: str, frames: np.ndarray, fps: int = VIDEO_FPS) -> None:
    """An H.264 MP4 (yuv420p, playable in browsers) of frames (n, height, width, 3) uint8, via imageio's ffmpeg,
    written to a temporary file and renamed, so an interruption never leaves half a video."""
    import imageio.v3 as iio

    iio.imwrite(path + ".tmp.mp4", frames, plugin="FFMPEG", fps=fps, codec="libx264",
                output_params=["-movflags", "+faststart"])
    os.replace(path + ".tmp.mp4", path)


def capture_video(run_dir: str, final_record: dict, replay_final_evaluation: Callable[[], dict],
                  size: tuple[int, int] = VIDEO_SIZE) -> list[str]:
    """--capture-video, after the final evaluation: <run_dir>/videos/test_task_<i>_cluster_<k>.mp4 for one test task
    per true cluster, its whole meta-test trial (exploration episode, then the exploitation episodes).
    ``replay_final_evaluation`` re-runs the script's evaluation: the same policy, seed and deterministic actions
    give the final evaluation's trial (checked against the returns in ``final_record``), and `evaluate` records its
    states. Returns the paths written."""
    start = time.time()
    _video_request["record"] = True
    try:
        replay = replay_final_evaluation()
    finally:
        _video_request["record"] = False
    trial, _video_request["trial"] = _video_request["trial"], None
    if replay["test_returns_per_task"] != final_record.get("test_returns_per_task"):
        print("capture_video: the replayed trial's returns differ from the final evaluation's (the videos show the "
              "replay)", file=sys.stderr)
    os.makedirs(os.path.join(run_dir, "videos"), exist_ok=True)
    paths = []
    for i, (slot, task_index, cluster) in enumerate(zip(trial.slots, trial.test_task_index, trial.clusters)):
        path = os.path.join(run_dir, "videos", f"test_task_{task_index:02d}_cluster_{cluster}.mp4")
        write_mp4(path, render_trial(trial.env_id, trial.slot_states(i), trial.tasks[i], size))
        returns = ", ".join(f"{episode[slot]:.1f}" for episode in replay["test_returns_per_task"])
        print(f"{path}: test task {task_index}, cluster {cluster}, returns per episode {returns}")
        paths.append(path)
    print(f"capture_video: {len(paths)} videos in {time.time() - start:.0f} s")
    return paths
