#!/usr/bin/env bash
# The sweep of MILET, its ablations, K = 2/4/6/8, VariBAD, RL2, PEARL and MetaCURE now runs through submitit in benchmarks/sweep.py
# (on this machine or on a Slurm cluster; docs/sweeps.md). This wrapper keeps the old command working:
#
#   bash benchmarks/compare_methods.sh quick [sweep.py flags]   # = python benchmarks/sweep.py --preset quick [flags]
#   bash benchmarks/compare_methods.sh full  [sweep.py flags]   # = python benchmarks/sweep.py --preset full [flags]
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
