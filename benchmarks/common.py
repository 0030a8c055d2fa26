"""Helpers the benchmark scripts share: how busy the machine is, timing, the Keras side, and, from the
tests, photo renders, the digits folder and a real server in a child process."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from sample_images import (CANVAS, folder_name, render_photo, write_digits_folder,  # noqa: E402,F401  (re-exported)
                           write_photo_folder)
from server_harness import server_process  # noqa: E402,F401  (re-exported for serve_load.py)


# --- the machine: what else is running ---------------------------------------------------------------

def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, from /proc/stat, in clock ticks."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def own_cpu_seconds() -> float:
    """CPU seconds used by this process and its finished children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def cpu_snapshot() -> tuple[tuple[int, int], float]:
    return cpu_jiffies(), own_cpu_seconds()


def other_cpu_share(since: tuple[tuple[int, int], float]) -> float:
    """Share of all CPUs that processes other than this one and its children used since the snapshot:
    0 means the machine was otherwise quiet."""
    (busy0, total0), own0 = since
    busy1, total1 = cpu_jiffies()
    tick = os.sysconf("SC_CLK_TCK")
    others = (busy1 - busy0) / tick - (own_cpu_seconds() - own0)
    return max(0.0, others / ((total1 - total0) / tick))


def others_busy_now(seconds: float = 2.0) -> float:
    """other_cpu_share over the next few seconds, with a warning when the machine is not quiet."""
    since = cpu_snapshot()
    time.sleep(seconds)
    share = other_cpu_share(since)
    if share > 0.1:
        print(f"warning: other processes are using {100 * share:.0f}% of the CPUs; the times will be slower "
              "than on a quiet machine, and threaded torch more so than TF", file=sys.stderr)
    return share


# --- the data ------------------------------------------------------------------------------------------

def tutorial_fold1(n: int):
    """(train indices, validation indices) of fold 1 of the tutorial's KFold(5, shuffle=True,
    random_state=1): the split the speed benchmarks' recorded results used (`fashion-cnn cv` now stratifies)."""
    import numpy as np
    from sklearn.model_selection import KFold

    return next(KFold(n_splits=5, shuffle=True, random_state=1).split(np.zeros((n, 1))))


# --- timing; keras_baseline.py has its own copies, as it runs without torch in .venv-keras ------------

def seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measured(fn) -> tuple[object, dict]:
    """fn()'s result, and its wall and CPU seconds (this process and its finished children, all threads)
    with the share of the CPUs that other processes used meanwhile: on a busy machine, CPU seconds are
    the steadier measure."""
    since, wall, cpu = cpu_snapshot(), time.perf_counter(), own_cpu_seconds()
    result = fn()
    return result, {"wall_s": time.perf_counter() - wall, "cpu_s": own_cpu_seconds() - cpu,
                    "other_cpu_share": other_cpu_share(since)}


def median_seconds(fn, repeats: int) -> float:
    return statistics.median(seconds(fn) for _ in range(repeats))


# --- the Keras side ------------------------------------------------------------------------------------

def run_keras(python: Path, data_dir: Path, split: Path, epochs: int, batch_size: int,
              threads: int | None, seed: int, extra: tuple[str, ...] = ()) -> dict:
    """The Keras side, in a fresh process of .venv-keras's python; its stderr (TF's logs) passes through."""
    cmd = [str(python), str(HERE / "keras_baseline.py"), "--data-dir", str(data_dir), "--split", str(split),
           "--epochs", str(epochs), "--batch-size", str(batch_size), "--seed", str(seed), *extra]
    cmd += ["--threads", str(threads)] if threads else []
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])
