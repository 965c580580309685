import os
import sys

# The fast suite runs one pytest-xdist worker per core (pytest.ini). Each worker, and every script it launches,
# keeps to one torch thread: two workers of two threads each on 2 cores oversubscribe them, and torch then slows
# several-fold. The fast suite took 9 min 51 s before this line and 8 min 3 s after, with the changes of the same
# commit (docs/testing.md). Set before torch is imported; the subprocesses inherit it.
os.environ["OMP_NUM_THREADS"] = "1"

# Tests import the top-level modules (envs_clustered, cbvi, milet_ppo_continuous) from the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
