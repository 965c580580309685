#!/usr/bin/env bash
# MILET against its Appendix E ablations, K = 2/4/6/8 clusters, VariBAD, RL2 and PEARL, on the same protocol
# (meta_test.py), in a bounded number of parallel workers; then the results table and curves from plots.py.
#
#   bash benchmarks/compare_methods.sh quick   # PointGoal, 3 seeds, 30 runs of 1M frames: 81 minutes on 2 CPU cores for
#                                              # the 27 PPO runs; PEARL (off-policy, 200 gradient steps per 3,200 frames)
#                                              # took 32 minutes for one 1M-frame run on a shared core (docs/pearl.md)
#   bash benchmarks/compare_methods.sh full    # the paper's environments and frame budgets, for a bigger machine
#
# Environment variables override the mode: ENV_IDS, SEEDS, WORKERS (parallel runs), FRAMES (empty: each script's
# default budget for the env), OUT (runs and figures). Each run uses one CPU thread (OMP_NUM_THREADS=1), so a seed
# gives the same numbers on every CPU run. Runs that finished before are not repeated, and runs that were interrupted
# continue from their last resume.pt (--resume): delete OUT to start over.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-quick}
case "$mode" in
  quick) ENV_IDS=${ENV_IDS:-PointGoal}; SEEDS=${SEEDS:-"1 2 3"}; WORKERS=${WORKERS:-2}; FRAMES=${FRAMES-1000000} ;;
  full)  ENV_IDS=${ENV_IDS:-"AntGoal AntGoalPartial AntU HumanoidDir HumanoidDirSparse HopperRandParams WalkerRandParams"}
         SEEDS=${SEEDS:-"1 2 3"}; WORKERS=${WORKERS:-$(nproc)}; FRAMES=${FRAMES-} ;;
  *) echo "compare_methods.sh: error: the mode is quick or full, not '$mode'" >&2; exit 2 ;;
esac
OUT=${OUT:-benchmarks/compare_runs/$mode}
mkdir -p "$OUT/runs" "$OUT/logs"

# name | script | flags (every run gets --env-id, --seed, --exp-name <name>, --runs-dir and the frame budget)
VARIANTS="milet|milet_ppo_continuous.py|
milet_no_exploration|milet_ppo_continuous.py|--no-exploration-policy
milet_no_sgru|milet_ppo_continuous.py|--no-stacked-gru
milet_no_cr|milet_ppo_continuous.py|--lambda-i 0 --lambda-p 0
milet_k2|milet_ppo_continuous.py|--num-clusters 2
milet_k6|milet_ppo_continuous.py|--num-clusters 6
milet_k8|milet_ppo_continuous.py|--num-clusters 8
varibad|varibad_ppo_continuous.py|
rl2|rl2_ppo_continuous.py|
pearl|pearl_sac_continuous.py|"
# (milet is K = 4, the default)

jobs=()
for env_id in $ENV_IDS; do
  while IFS='|' read -r name script flags; do
    for seed in $SEEDS; do
      jobs+=("$env_id|$name|$script|$flags|$seed")
    done
  done <<< "$VARIANTS"
done
echo "compare_methods.sh: $mode: ${#jobs[@]} runs, $WORKERS at a time, frames: ${FRAMES:-default per env}; runs in $OUT/runs"

run_one() {
  IFS='|' read -r env_id name script flags seed <<< "$1"
  done_mark="$OUT/logs/${env_id}__${name}__${seed}.done"
  [ -f "$done_mark" ] && return 0
  budget=(); [ -n "$FRAMES" ] && budget=(--total-timesteps "$FRAMES")
  # an unfinished run (a resume.pt and no summary.json) continues from its checkpoint instead of starting again
  unfinished=$(find "$OUT/runs/$env_id/$name/$seed" -name resume.pt -printf '%h\n' 2>/dev/null | head -n 1)
  if [ -n "$unfinished" ] && [ ! -f "$unfinished/summary.json" ]; then
    cmd=(python "$script" --resume "$unfinished")
  else
    # shellcheck disable=SC2206
    cmd=(python "$script" --env-id "$env_id" --seed "$seed" --exp-name "$name" --runs-dir "$OUT/runs/$env_id/$name/$seed" "${budget[@]}" $flags)
  fi
  if OMP_NUM_THREADS=1 "${cmd[@]}" >> "$OUT/logs/${env_id}__${name}__${seed}.log" 2>&1; then
    touch "$done_mark"; echo "done: $env_id $name seed $seed"
  else
    echo "FAILED: $env_id $name seed $seed (see $OUT/logs/${env_id}__${name}__${seed}.log)" >&2
    return 1
  fi
}
export -f run_one
export OUT FRAMES
start=$(date +%s)
failed=0
printf '%s\n' "${jobs[@]}" | xargs -P "$WORKERS" -I{} bash -c 'run_one "$@"' _ {} || failed=1  # xargs: 123 if any failed
echo "compare_methods.sh: all runs took $(( ($(date +%s) - start) / 60 )) minutes"

# Results: one table for every env, and per env the curves of all variants and the NMI of the clustered ones
finished=$(find "$OUT/runs" -name summary.json -printf '%h\n' | sort)
[ -z "$finished" ] && { echo "compare_methods.sh: error: no run finished; see $OUT/logs" >&2; exit 1; }
# shellcheck disable=SC2086
python plots.py table $finished --out "$OUT/table.md" > /dev/null
for env_id in $ENV_IDS; do
  runs=$(printf '%s\n' $finished | grep "^$OUT/runs/$env_id/" || true)
  [ -z "$runs" ] && continue
  python plots.py curves $runs --out "$OUT/${env_id}_curves.png"
  python plots.py nmi $runs --out "$OUT/${env_id}_nmi.png"
done
cat "$OUT/table.md"
[ "$failed" = 0 ] || { echo "compare_methods.sh: some runs FAILED (above); the table leaves them out" >&2; exit 1; }
