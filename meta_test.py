"""Meta-test evaluation (the paper's Algorithm 2) and the run files, shared by the three training scripts.

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
-> cluster_probs or None`, which update its own recurrent state. `start_run` makes the run folder, args.json and the
tensorboard writer; `write_atomic` writes eval.jsonl, summary.json and args.json so that an interrupted run never
leaves half a file. `load_resume`, `random_state`, `restore_random_state`, `torch_save_atomic` and `resume_run` are what
--resume needs in every script: the checkpoint, every random generator, and the run folder reopened.
"""
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

SUMMARY_KEYS = ("nmi_end_of_exploration", "nmi_per_step", "nmi_ceiling", "test_clusters_true", "test_clusters_pred")


@torch.no_grad()
def evaluate(eval_envs, split, seed: int, num_episodes: int, episode_length: int,
             act: Callable[[np.ndarray, int], torch.Tensor],
             observe: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], Optional[torch.Tensor]]) -> dict:
    """Run one trial on every test task of `split` and return the record that goes into eval.jsonl."""
    num_tasks = len(split.test_tasks)
    obs, info = eval_envs.reset(seed=seed, options={"tasks": split.test_tasks, "clusters": split.test_clusters})
    episode_returns, predicted_clusters = np.zeros((num_episodes, num_tasks)), []
    xy_trace = [np.stack(info["xy"])] if "xy" in info else None
    for step in range(num_episodes * episode_length):
        episode = step // episode_length
        action = act(obs, step)
        obs, reward, _, _, info = eval_envs.step(action.cpu().numpy())
        next_state = torch.as_tensor(np.stack(info["next_state"]), dtype=torch.float32, device=action.device)
        cluster_probs = observe(action, next_state, torch.as_tensor(reward, dtype=torch.float32, device=action.device), step)
        episode_returns[episode] += reward
        if episode == 0:
            if cluster_probs is not None:
                predicted_clusters.append(cluster_probs.argmax(-1).cpu().numpy())
            if xy_trace is not None:
                xy_trace.append(np.stack(info["xy"]))
    result = {f"return_episode_{k + 1}": float(episode_returns[k].mean()) for k in range(num_episodes)}
    if split.env_id == "PointGoal":
        oracle = envs_clustered.point_goal_oracle_returns(split.test_tasks, episode_length, num_episodes)
        result.update({f"oracle_return_episode_{k + 1}": float(oracle[k]) for k in range(num_episodes)})
    result.update(test_clusters_true=split.test_clusters.tolist(), test_returns_per_task=np.round(episode_returns, 3).tolist())
    if predicted_clusters:
        # NMI(true cluster, argmax q(c | tau_:t)) after every step t = 1..H of the exploration episode (Fig. 3c)
        nmi_per_step = [float(normalized_mutual_info_score(split.test_clusters, pred)) for pred in predicted_clusters]
        # the reference: the best NMI any clustering of the true test tasks reaches (envs_clustered.nmi_ceiling)
        result.update(nmi_per_step=nmi_per_step, nmi_end_of_exploration=nmi_per_step[-1],
                      nmi_ceiling=envs_clustered.nmi_ceiling(split),
                      test_clusters_pred=predicted_clusters[-1].tolist(),
                      exploration_clusters=np.stack(predicted_clusters).T.tolist())  # (tasks, H): argmax per step
    if xy_trace is not None:  # (tasks, H+1, 2): the exploration episode's xy trace, for Fig. 3a
        result["exploration_xy"] = np.round(np.stack(xy_trace).transpose(1, 0, 2), 3).tolist()
    return result


def summary(args, global_step: int, sps: int, record: dict) -> dict:
    """summary.json: the run, its final test returns and, where the method infers clusters, the NMI figures."""
    return {"env_id": args.env_id, "seed": args.seed, "global_step": global_step, "sps": sps,
            **{f"test_{k}": v for k, v in record.items() if k.startswith("return_episode_")},
            **{k: v for k, v in record.items() if k.startswith("oracle_return_episode_")},
            **{k: record[k] for k in SUMMARY_KEYS if k in record}, "args": vars(args)}


def start_run(args):
    """Create runs/<env_id>__<exp_name>__<seed>__<time>/ with args.json and a tensorboard writer (wandb with --track)."""
    run_name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_dir = os.path.join(args.runs_dir, run_name)
    if args.track:
        import wandb

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True,
                   config=vars(args), name=run_name, save_code=True)
    writer = SummaryWriter(run_dir)
    write_atomic(os.path.join(run_dir, "args.json"), json.dumps(vars(args), indent=1))
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n%s" % "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))
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
    return SummaryWriter(run_dir, purge_step=global_step + 1), eval_lines, json.loads(eval_lines[-1])


def write_atomic(path: str, text: str) -> None:
    """Write a whole file via a temporary file and a rename, so an interruption never leaves half a file."""
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def log_evaluation(writer, run_dir: str, eval_lines: list, record: dict) -> None:
    """Append one evaluation to eval.jsonl (rewritten whole, atomically) and to tensorboard's eval/ tags."""
    eval_lines.append(json.dumps(record) + "\n")
    for key in [k for k in record if k.startswith("return_episode_") or k == "nmi_end_of_exploration"]:
        writer.add_scalar(f"eval/{key}", record[key], record["global_step"])
    write_atomic(os.path.join(run_dir, "eval.jsonl"), "".join(eval_lines))
