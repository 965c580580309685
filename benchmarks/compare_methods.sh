#!/usr/bin/env bash
# The sweep of MILET, its ablations, K = 2/4/6/8, VariBAD, RL2 and PEARL now runs through submitit in benchmarks/sweep.py
# (on this machine or on a Slurm cluster; docs/sweeps.md). This wrapper keeps the old command working:
#
<<<<<<< HEAD
#   bash benchmarks/compare_methods.sh quick [sweep.py flags]   # = python benchmarks/sweep.py --preset quick [flags]
#   bash benchmarks/compare_methods.sh full  [sweep.py flags]   # = python benchmarks/sweep.py --preset full [flags]
=======
#   bash benchmarks/compare_methods.sh quick   # PointGoal, 3 seeds, 30 runs of 1M frames: 81 minutes on 2 CPU cores for
#                                              # the 27 PPO runs; PEARL (off-policy, 200 gradient steps per 3,200 frames)
#                                              # took 32 minutes for one 1M-frame run on a shared core (docs/pearl.md)
#   bash benchmarks/compare_methods.sh full    # the paper's environments and frame budgets, for a bigger machine
>>>>>>> issue18-pearl
#
# The old environment variables are flags now: ENV_IDS -> --envs, SEEDS -> --seeds, WORKERS -> --workers,
# FRAMES -> --frames, OUT -> --out.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-quick}
case "$mode" in
  quick|full) ;;
  *) echo "compare_methods.sh: error: the mode is quick or full, not '$mode'" >&2; exit 2 ;;
esac
shift || true
exec python benchmarks/sweep.py --preset "$mode" "$@"
