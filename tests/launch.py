"""Run a script of the repository inside the test process, as `python script.py argv...` would run it.

Why: each launched Python process spends 3-4 s importing torch, torch._dynamo (pulled in by the first Adam step) and
scikit-learn with scipy before it trains its first frame, and the fast suite runs over a hundred tiny runs. Run
in-process, a tiny run takes about half a second once the modules are loaded (docs/testing.md).

What stays a real process: a run that a test kills mid-way, the submitit sweep, and the learning checks.

`run_script` returns a `subprocess.CompletedProcess` as `subprocess.run(..., capture_output=True, text=True)` would:
`sys.exit("message")` gives returncode 1 and the message on stderr, an uncaught exception its traceback. The
process-wide state a script changes is put back afterwards: the torch thread count (the scripts set it), the torch,
numpy and `random` generators, the working directory, `sys.argv` and `sys.path`.
"""
import contextlib
import io
import os
import random
import runpy
import signal
import subprocess
import sys
import traceback

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _time_out(signum, frame):
    raise TimeoutError("the in-process run passed its timeout")


def run_script(script: str, *argv: str, check: bool = False, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python script argv...` in this process, from the repository root. check=True asserts it exited with 0; a run
    still going after `timeout` seconds stops with a TimeoutError (SIGALRM), as subprocess.run(timeout=600) did."""
    path = script if os.path.isabs(script) else os.path.join(ROOT, script)
    argv = [str(a) for a in argv]
    saved = (sys.argv, list(sys.path), os.getcwd(), torch.get_num_threads(), torch.get_rng_state(),
             np.random.get_state(), random.getstate())
    stdout, stderr, returncode = io.StringIO(), io.StringIO(), 0
    sys.argv, sys.path[0:0] = [path, *argv], [os.path.dirname(path)]
    os.chdir(ROOT)
    previous_handler = signal.signal(signal.SIGALRM, _time_out)
    signal.alarm(timeout)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                runpy.run_path(path, run_name="__main__")
            except SystemExit as stop:  # as the interpreter reports it: None -> 0, a message -> stderr and 1
                if isinstance(stop.code, str):
                    print(stop.code, file=sys.stderr)
                    returncode = 1
                else:
                    returncode = stop.code or 0
            except TimeoutError:
                raise
            except Exception:  # noqa: BLE001  (an uncaught exception: its traceback, exit status 1)
                traceback.print_exc()
                returncode = 1
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous_handler)
        sys.argv, sys.path[:] = saved[0], saved[1]
        os.chdir(saved[2])
        torch.set_num_threads(saved[3])
        torch.set_rng_state(saved[4])
        np.random.set_state(saved[5])
        random.setstate(saved[6])
    result = subprocess.CompletedProcess([sys.executable, path, *argv], returncode, stdout.getvalue(), stderr.getvalue())
    if check:
        assert returncode == 0, result.stderr[-3000:]
    return result
