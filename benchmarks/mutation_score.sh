#!/usr/bin/env bash
# The mutation score of the learning code (issue 27; docs/testing.md): mutmut mutates gae, ppo_update (MILET,
# VariBAD, RL2), exploration_rewards, reward_weights, shaped_rewards and CBVI.loss one change at a time, and runs the
# fast tests that cover them (pyproject.toml) against each mutant. Not part of the test suite: about 10-20 minutes
# on one core. Run from the repository root in the project's virtual environment.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet mutmut==3.8.1
rm -rf mutants
export OMP_NUM_THREADS=1
mutmut run --max-children "${MAX_CHILDREN:-1}" \
  "milet_ppo_continuous.x_gae__mutmut_*" "varibad_ppo_continuous.x_gae__mutmut_*" "rl2_ppo_continuous.x_gae__mutmut_*" \
  "milet_ppo_continuous.x_ppo_update__mutmut_*" "varibad_ppo_continuous.x_ppo_update__mutmut_*" \
  "rl2_ppo_continuous.x_ppo_update__mutmut_*" "milet_ppo_continuous.x_exploration_rewards__mutmut_*" \
  "milet_ppo_continuous.x_reward_weights__mutmut_*" "milet_ppo_continuous.x_shaped_rewards__mutmut_*" \
  "cbvi.xǁCBVIǁloss__mutmut_*" > /dev/null
# one line per mutant of those functions: killed, survived (or timeout), as mutmut reports them
mutmut results --all true | grep -E "x_(gae|ppo_update|exploration_rewards|reward_weights|shaped_rewards)__|CBVIǁloss__" \
  | awk -F': ' '{count[$2]++} END {for (s in count) print s, count[s]}'
