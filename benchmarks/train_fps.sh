#!/usr/bin/env bash
# Training frames per second of each method on each env, to plan long runs (issue 28: which runs fit in a session,
# and how to pair them two at a time). Each figure is a 10-iteration run (16 trials x 200 steps x 10 = 32,000 frames)
# with no evaluation inside it: the script's own SPS (summary.json "sps"), which leaves out the evaluations at
# iteration 0 and at the end. With --eval-every 25 a long run also spends time in one evaluation (32 test trials)
# every 25 iterations.
#
#   OMP_NUM_THREADS=1 bash benchmarks/train_fps.sh                       # the default envs and methods
#   OMP_NUM_THREADS=1 ENVS="HopperRandParams" METHODS="oracle" bash benchmarks/train_fps.sh
#
# Run it as a long run runs (one torch thread, --physics-threads 1), beside what else is running: the figures are
# that machine's at that time, so say what ran beside it when you quote them.
set -euo pipefail
cd "$(dirname "$0")/.."
ENVS=${ENVS:-"HopperRandParams WalkerRandParams HumanoidDir AntGoalPartial HumanoidDirSparse"}
METHODS=${METHODS:-"milet varibad oracle"}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "| env | method | training frames/s |"
echo "|---|---|---|"
for env in $ENVS; do
  for method in $METHODS; do
    case "$method" in
      milet) command=(python milet_ppo_continuous.py) ;;
      varibad) command=(python varibad_ppo_continuous.py) ;;
      oracle) command=(python varibad_ppo_continuous.py --oracle) ;;
      rl2) command=(python rl2_ppo_continuous.py) ;;
      *) echo "train_fps.sh: error: unknown method '$method' (milet, varibad, oracle, rl2)" >&2; exit 2 ;;
    esac
    "${command[@]}" --env-id "$env" --total-timesteps 32000 --eval-every 1000 --physics-threads 1 \
      --runs-dir "$out/$env-$method" --exp-name fps > "$out/log" 2>&1 || { cat "$out/log" >&2; exit 1; }
    sps=$(python -c 'import glob, json, sys; print(json.load(open(glob.glob(sys.argv[1] + "/*/summary.json")[0]))["sps"])' "$out/$env-$method")
    echo "| $env | $method | $sps |"
  done
done
