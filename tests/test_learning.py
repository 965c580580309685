"""The learning checks: one pinned-seed PointGoal run of each method must learn: MILET to cluster the test tasks and to
exploit, VariBAD, RL2, PEARL and MetaCURE (which have no clusters) to exploit. MILET's check is its default run (2M
frames, 625 iterations); the others run CHECK_FLAGS, a shorter budget than their default, so that the five checks
fit CI's time on a slow 2-core machine (docs/testing.md has the timings).

Each check averages the evaluations in the last 20% of its training (MILET: iterations 500, 525, ..., 625 with
--eval-every 25), because one deterministic evaluation on 32 test tasks is noisy, and compares them with the same
seed's calibration run of the same command, whose figures `benchmarks/calibrate_learning_check.py --write` recorded
in learning_calibration.json (with the date and commit):
  * the episode-2 (exploitation) test return must beat the untrained policy's (the iteration-0 evaluation, about
    -259: mean actions near 0 keep the point at the start, a strong baseline, since moving towards the wrong goal
    costs more than standing still) by at least KEEP = 0.6 of the calibrated gain;
  * for MILET, the late NMI at the end of the exploration episode must reach KEEP of the calibrated NMI and stay
    above NMI_CHANCE, the 99.5th percentile of the NMI of ONE random assignment of the 32 test tasks to the K = 4
    clusters (`chance_nmi_quantile`; one, not an average of six: the late evaluations of a run are correlated);
  * for MILET, episode 2 must beat episode 1 (the exploration episode pays for what the second one earns).

The margin. A CPU run on one thread repeats itself exactly on the same machine and code, so the pinned seed's check
fails when the code learns less: a run that keeps less than 60% of its calibrated gain fails. Each bar also sits
below every calibrated seed's figure (checked below; RL2's seed 2 is the one exception, docs/testing.md), so that a
run that diverges like another seed, as one on another CPU, whose summation order can differ, still passes.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from test_milet import ROOT, only_run_dir

SCRIPTS = {**{method: os.path.join(ROOT, f"{method}_ppo_continuous.py") for method in ("milet", "varibad", "rl2")},
           **{method: os.path.join(ROOT, f"{method}_sac_continuous.py") for method in ("pearl", "metacure")}}
CALIBRATION_PATH = os.path.join(ROOT, "tests", "learning_calibration.json")  # benchmarks/calibrate_learning_check.py
# What each check runs on top of the script's PointGoal defaults, and how many evaluations its late window (the last
# 20% of iterations) holds. MILET: its default run. VariBAD and RL2: 1,024,000 of their default 2M frames (320
# iterations; the learning rate anneals over these). PEARL and MetaCURE: 128,000 and 160,000 of their default 256,000
# (40 and 50 iterations).
CHECK_FLAGS = {"milet": ["--eval-every", "25"],  # iterations 500, 525, ..., 625
               "varibad": ["--total-timesteps", "1024000", "--eval-every", "16"],  # 256, 272, ..., 320
               "rl2": ["--total-timesteps", "1024000", "--eval-every", "16"],
               "pearl": ["--total-timesteps", "128000", "--eval-every", "4"],  # 32, 36, 40
               "metacure": ["--total-timesteps", "160000", "--eval-every", "5"]}  # 40, 45, 50
LATE_EVALUATIONS = {"milet": 6, "varibad": 5, "rl2": 5, "pearl": 3, "metacure": 3}
CHECKED_SEED = {"milet": 2, "varibad": 1, "rl2": 1, "pearl": 1, "metacure": 1}  # the seed each check runs
KEEP = 0.6  # the share of the pinned seed's calibrated gain and NMI a check run must keep
NMI_CHANCE = 0.298  # chance_nmi_quantile(), checked below
WEAK_SEEDS = {("rl2", 2)}  # RL2's seed 2 gains 9.9 at 1.024M frames, below seed 1's bar (docs/testing.md)


def calibration() -> dict:
    """{method: {seed: figures}} from learning_calibration.json; each check compares with its CHECKED_SEED's row."""
    with open(CALIBRATION_PATH) as f:
        return {method: {int(seed): row for seed, row in seeds.items()} for method, seeds in json.load(f).items()}


def thresholds(method: str) -> dict:
    """What the pinned seed's run must reach: KEEP of its calibrated gain and (MILET) NMI, the NMI above chance."""
    row = calibration()[method][CHECKED_SEED[method]]
    limits = {"late_episode_2_gain": KEEP * row["late_episode_2_gain"]}
    if "late_nmi" in row:
        limits["late_nmi"] = max(KEEP * row["late_nmi"], NMI_CHANCE)
    return limits


def learning_figures(run_dir: str, fraction: float = 0.8) -> dict:
    """Late averages (evaluations at >= `fraction` of training) of the episode-2 gain and, where the method has
    clusters, of the NMI."""
    records = [json.loads(line) for line in open(os.path.join(run_dir, "eval.jsonl"))]
    late = [r for r in records if r["global_step"] >= fraction * records[-1]["global_step"]]
    figures = {"late_evaluations": len(late),
               "late_episode_2_gain": float(np.mean([r["return_episode_2"] for r in late]) - records[0]["return_episode_2"]),
               "late_return_episode_1": float(np.mean([r["return_episode_1"] for r in late])),
               "late_return_episode_2": float(np.mean([r["return_episode_2"] for r in late])),
               "final_return_episode_1": records[-1]["return_episode_1"],
               "final_return_episode_2": records[-1]["return_episode_2"]}
    if "nmi_end_of_exploration" in records[0]:
        figures["late_nmi"] = float(np.mean([r["nmi_end_of_exploration"] for r in late]))
    return figures


def chance_nmi_quantile(quantile: float = 0.995, num_clusters: int = 4, draws: int = 4_000) -> float:
    """Quantile of the NMI of a uniformly random assignment of the 32 test tasks to `num_clusters` clusters."""
    rng = np.random.default_rng(0)
    true = np.arange(32) % 4  # 8 test tasks per true cluster, as make_task_split
    scores = [normalized_mutual_info_score(true, rng.integers(num_clusters, size=32)) for _ in range(draws)]
    return float(np.quantile(scores, quantile))


def test_every_check_has_a_calibration_of_its_pinned_seed_with_room_to_fail():
    """The pinned seeds are calibrated, with the flags their check runs; the NMI floor is chance's 99.5th percentile;
    and each threshold is a real bar: above zero gain, and for MILET's NMI above chance, so that a run that stopped
    learning fails."""
    assert NMI_CHANCE == pytest.approx(chance_nmi_quantile(), abs=1e-3)
    rows = calibration()
    for method, seed in CHECKED_SEED.items():
        assert seed in rows[method], f"{method} seed {seed} has no calibration"
        assert ("late_nmi" in rows[method][seed]) == (method == "milet")  # only MILET has clusters
        assert thresholds(method)["late_episode_2_gain"] > 20.0, method
        assert rows[method][seed]["flags"] == " ".join(CHECK_FLAGS[method]), f"{method}: calibrated with other flags"
    for method in CHECKED_SEED:
        for name, bar in thresholds(method).items():  # below every calibrated seed: a run that diverges like one of them passes
            lowest = min(row[name] for seed, row in rows[method].items() if (method, seed) not in WEAK_SEEDS)
            assert bar < lowest, f"{method}: the {name} bar {bar:.3f} is not below every calibrated seed"
    for seed, row in rows["milet"].items():
        assert row["late_return_episode_2"] > row["late_return_episode_1"], f"MILET seed {seed}"


# The order in which pytest-xdist's two workers receive the checks: two each at the start, in this order (MILET, PEARL;
# MetaCURE, VariBAD), the fifth (RL2) to the worker whose first check ends first. On the slow machine of 2026-12-05
# (one core each: MetaCURE 37 minutes, MILET about 27, VariBAD 14, RL2 12, PEARL 11) that is MILET, PEARL and RL2
# (about 50 minutes) beside MetaCURE and VariBAD (51); no order can beat half the total, 50.5.
CHECK_ORDER = ("milet", "pearl", "metacure", "varibad", "rl2")


@pytest.mark.learning
@pytest.mark.parametrize("method", CHECK_ORDER)
def test_default_pointgoal_run_learns(tmp_path, method):
    env = dict(os.environ, OMP_NUM_THREADS="1")  # one thread, as in the calibration, for identical numbers
    result = subprocess.run([sys.executable, SCRIPTS[method], *CHECK_FLAGS[method], "--runs-dir", str(tmp_path),
                             "--seed", str(CHECKED_SEED[method])], capture_output=True, text=True, cwd=ROOT, env=env,
                            timeout=4200)  # 70 minutes: MetaCURE took 37 on the slow machine of 2026-12-05
    assert result.returncode == 0, result.stderr[-3000:]
    figures = learning_figures(only_run_dir(tmp_path))
    assert figures["late_evaluations"] == LATE_EVALUATIONS[method]
    calibrated = calibration()[method][CHECKED_SEED[method]]
    for name, limit in thresholds(method).items():
        assert figures[name] >= limit, (f"{method} seed {CHECKED_SEED[method]}: {name} {figures[name]:.3f} is below "
                                        f"{limit:.3f} (its calibration: {calibrated[name]:.3f})")
    if method == "milet":
        assert figures["late_return_episode_2"] > figures["late_return_episode_1"], \
            "MILET's exploitation episode does not beat its exploration episode"
    else:
        assert "late_nmi" not in figures  # no clusters: nothing to score
