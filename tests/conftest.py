import os
import sys

# Tests import the top-level modules (envs_clustered, cbvi, milet_ppo_continuous) from the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
