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
  * what --resume needs: `load_resume`, `random_state`, `restore_random_state` and `resume_run`.
"""
import argparse
import atexit
import dataclasses
import json
import os
import random
import sys
import time
from typing import Callable, Optional

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
    for step in range(num_episodes * episode_length):
        episode = step // episode_length
        action = act(obs, step)
        obs, reward, _, _, info = eval_envs.step(action.cpu().numpy())
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
    return state, type(args)(**{k: tuple(v) if isinstance(v, list) else v for k, v in state["args"].items()})


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
