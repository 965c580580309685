import os
import sys

# The fast suite runs one pytest-xdist worker per core (pytest.ini). Each worker, and every script it launches,
# keeps to one torch thread: two workers of two threads each on 2 cores oversubscribe them, and torch then slows
# several-fold (tests/test_cbvi.py's clustering test: 94 s in the suite against about 10 s alone). Set before torch
# is imported; the subprocesses inherit it.
os.environ["OMP_NUM_THREADS"] = "1"

# Tests import the top-level modules (envs_clustered, cbvi, milet_ppo_continuous) from the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
