"""Score a trained oracle on another env of the same robot and tasks (issue 28: AntGoalPartial shares AntGoal's oracle).

The oracle (`varibad_ppo_continuous.py --oracle`) is told the task. AntGoalPartial has AntGoal's robot, goals and
test tasks, only its reward differs (max(3 - L1 distance, 0) in place of minus the L1 distance), so the AntGoal
oracle's policy, walking to the goal it is told, is the reference there too. This script loads an oracle run's
policy and observation normaliser (its resume.pt, or a final_policy.pt of 'agent' and 'rms' beside its args.json),
runs the project's meta-test (`varibad_ppo_continuous.evaluate`: the same 32 test tasks, mean actions, the same
seeds) on `--env-id`, and prints the returns and the median final distance of episode 2. On the run's own env it
replays the run's last evaluation.

    python benchmarks/oracle_on_env.py docs/run_data/antgoal/issue24_oracle_s1_targetkl002 --env-id AntGoalPartial

`--other-tasks` lets it score an env whose test tasks differ (AntU's goals, uniform on the circle, with AntGoal's
oracle): how well the policy told the goal generalises to those goals, a reference but not that env's oracle.
"""
import argparse
import dataclasses
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import envs_clustered  # noqa: E402
import varibad_ppo_continuous as varibad  # noqa: E402
from gymnasium.wrappers.utils import RunningMeanStd  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("run", help="an oracle run folder: args.json and resume.pt or final_policy.pt")
parser.add_argument("--env-id", required=True, help="the env to score it on (same robot and task layout)")
parser.add_argument("--other-tasks", action="store_true",
                    help="score it on the env's own test tasks though they are not the ones it trained on (AntU's "
                         "uniform goals for AntGoal's oracle): a reference that generalises, not that env's oracle")
opts = parser.parse_args()
torch.set_num_threads(1)

saved = json.load(open(os.path.join(opts.run, "args.json")))
args = varibad.Args(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
if not args.oracle:
    sys.exit(f"error: {opts.run} is not an --oracle run")
checkpoint = next((os.path.join(opts.run, name) for name in ("resume.pt", "final_policy.pt")
                   if os.path.isfile(os.path.join(opts.run, name))), None)
if checkpoint is None:
    sys.exit(f"error: {opts.run} holds neither resume.pt nor final_policy.pt")
args = dataclasses.replace(args, env_id=opts.env_id, physics_threads=1)
args.trial_length = (1 + args.num_exploit_episodes) * args.episode_length

split = envs_clustered.make_task_split(args.env_id, seed=args.task_seed)
trained_split = envs_clustered.make_task_split(saved["env_id"], seed=args.task_seed)
if split.test_tasks.shape != trained_split.test_tasks.shape or not np.allclose(split.test_tasks,
                                                                              trained_split.test_tasks):
    if not opts.other_tasks:
        sys.exit(f"error: {args.env_id}'s test tasks are not those of {saved['env_id']}, which the oracle was told "
                 "(--other-tasks scores it on them all the same)")
    print(f"note: scoring on {args.env_id}'s own test tasks, not the {saved['env_id']} tasks it trained on",
          file=sys.stderr)
eval_envs = varibad.make_env(args, len(split.test_tasks) * args.eval_trials, args.seed + 1)
obs_dim, action_dim = eval_envs.single_observation_space.shape[0], eval_envs.single_action_space.shape[0]
state = torch.load(checkpoint, map_location="cpu", weights_only=False)
input_dim = obs_dim + 1 + split.train_tasks.shape[1]  # state, time t / T and the true task
trained_input_dim, trained_action_dim = state["agent"]["critic.0.weight"].shape[1], state["agent"]["actor_logstd"].numel()
if (input_dim, action_dim) != (trained_input_dim, trained_action_dim):
    sys.exit(f"error: {args.env_id} is another robot or task layout than {saved['env_id']}: policy input "
             f"{input_dim} and {action_dim} actions, the oracle takes {trained_input_dim} and {trained_action_dim}")
agent = varibad.Agent(input_dim, action_dim, args.policy_layers, args.init_logstd)
agent.load_state_dict(state["agent"])
obs_rms = RunningMeanStd(shape=(obs_dim,))
obs_rms.mean, obs_rms.var, obs_rms.count = state["rms"][0]
vae = varibad.VariBADVAE(obs_dim, action_dim, args)  # evaluate() asks it for an initial belief the oracle ignores

record = varibad.evaluate(args, vae, agent.eval(), obs_rms, eval_envs, split, "cpu")
print(json.dumps({"run": opts.run, "checkpoint": os.path.basename(checkpoint), "trained_on": saved["env_id"],
                  "env_id": args.env_id, "iteration": state.get("iteration"),
                  **{key: record[key] for key in ("return_episode_1", "return_episode_2") if key in record},
                  **{key: value for key, value in record.items() if "distance" in key}}))
