"""Helpers the benchmark scripts share: how busy the machine is, timing, the Keras side, and, from the
tests, photo renders, the digits folder and a real server in a child process."""

from __future__ import annotations

import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from postgres import PostgresServer  # noqa: E402,F401  (re-exported for tune_fast.py)
from sample_images import CANVAS, Scene, folder_name, render_photo, write_digits_folder, write_photo_folder  # noqa: E402,F401  (re-exported)
from server_harness import server_process  # noqa: E402,F401  (re-exported for serve_load.py)

from fashion_cnn.io import write_json
from fashion_cnn.machine import cpu_model, cpu_snapshot, other_cpu_share, own_cpu_seconds, usable_cpus

# The run starts when its script imports this module (at the top, before any work): what save_result
# records about the machine's load covers the whole run.
STARTED = (datetime.datetime.now().astimezone(), cpu_snapshot(), os.getloadavg())


# --- the machine: what else is running ---------------------------------------------------------------

def others_busy_now(seconds: float = 2.0) -> float:
    """other_cpu_share over the next few seconds, with a warning when the machine is not quiet."""
    since = cpu_snapshot()
    time.sleep(seconds)
    share = other_cpu_share(since)
    if share > 0.1:
        print(f"warning: other processes are using {100 * share:.0f}% of the CPUs; the times will be slower "
              "than on a quiet machine, and threaded torch more so than TF", file=sys.stderr)
    return share


# --- child processes: each one's own wall time, CPU time and peak memory ---------------------------------

def run_measured_together(cmds: list[list[str]]) -> list[dict]:
    """Start every command at once and wait for all; per command its wall seconds, CPU seconds and peak
    RSS (that child and the processes it waited for, such as torchrun's workers, as wait4 gives them; not
    the max over all children as RUSAGE_CHILDREN would)."""
    t0 = time.perf_counter()
    procs = {proc.pid: (k, cmd, proc) for k, cmd in enumerate(cmds) for proc in [subprocess.Popen(cmd)]}
    results: list[dict] = [{} for _ in cmds]
    while procs:
        pid, status, usage = os.wait4(-1, 0)  # whichever child ends first: its own wall time
        if pid not in procs:
            continue
        k, cmd, proc = procs.pop(pid)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: tell Popen
        if proc.returncode:
            raise subprocess.CalledProcessError(proc.returncode, cmd)
        results[k] = {"command": " ".join(cmd[2:]), "seconds": time.perf_counter() - t0,
                      "cpu_seconds": usage.ru_utime + usage.ru_stime,
                      "peak_rss_bytes": usage.ru_maxrss * 1024}  # Linux reports ru_maxrss in KiB
    return results


def run_measured(cmd: list[str]) -> dict:
    """Run cmd to completion: run_measured_together of one command."""
    return run_measured_together([cmd])[0]


def run_job(args: list[str], result_file: str) -> tuple[dict, dict]:
    """One `fashion-cnn ARGS` job in a child process writing its run into a temporary folder: run_measured's
    figures, and the JSON file `result_file` of the run directory it made."""
    with tempfile.TemporaryDirectory() as runs:
        measured = run_measured([sys.executable, "-m", "fashion_cnn", *args, "--out", runs])
        [run_dir] = Path(runs).iterdir()
        return measured, json.loads((run_dir / result_file).read_text())


# --- the data ------------------------------------------------------------------------------------------

def tutorial_fold1(n: int):
    """(train indices, validation indices) of fold 1 of the tutorial's KFold(5, shuffle=True,
    random_state=1): the split the speed benchmarks use, and fold 1 of `fashion-cnn cv` on Fashion-MNIST."""
    import numpy as np

    from fashion_cnn.jobs.crossval import kfold_splits

    return kfold_splits(np.zeros(n, np.int64), 5, 1, stratify=False)[0]


VAL_SIZE = 5_000  # the validation split (`--val-size`) recipes are chosen on and the shipped model held out


def held_out_training_items(n: int, seed: int):
    """n items (uint8 images, labels as numpy arrays) drawn with seed from the VAL_SIZE training images that
    `--val-size` holds out, as it held them out of the shipped model's training: what preprocessing
    is chosen on, never a test image, and never an image the shipped model learnt from."""
    import numpy as np

    from fashion_cnn.data.fmnist import load_fashion_mnist
    from fashion_cnn.training.loop import holdout_split

    data = load_fashion_mnist(download=False)
    _, (images, labels) = holdout_split(data.train_images, data.train_labels, VAL_SIZE)
    picked = np.random.default_rng(seed).choice(len(labels), n, replace=False)
    return images.numpy()[picked], labels.numpy()[picked]


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


def git_commit() -> str:
    """This checkout's commit, with "+changes" when code differs from it ("unknown" outside git); result
    files that benchmarks of the same session wrote do not count."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=HERE, capture_output=True, text=True, check=True).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        return commit + ("+changes" if git("status", "--porcelain", "--untracked-files=no", "--", ":/", ":!/benchmarks/results") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def provenance() -> dict:
    """What a result file says about its run: the command, the commit, the machine, the share of its CPUs
    other processes used from the script's start to now, and when."""
    started, since, load_before = STARTED
    return {"command": shlex.join(["python", *sys.argv]), "commit": git_commit(),
            "machine": {"cpu": cpu_model(), "cpus": len(usable_cpus())},
            "other_processes_cpu_share": other_cpu_share(since), "load_average_before": list(load_before),
            "load_average_after": list(os.getloadavg()), "started": started.isoformat(timespec="seconds"),
            "finished": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def save_result(path: Path, result: dict) -> None:
    """A benchmark's result as JSON at path, with its provenance under "run", said on the terminal. Result
    files are written only here, never by hand."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"run": provenance(), **result})
    print(f"saved {path}")


# --- the Keras side ------------------------------------------------------------------------------------

def run_keras(python: Path, data_dir: Path, split: Path, epochs: int, batch_size: int,
              threads: int | None, seed: int, extra: tuple[str, ...] = ()) -> dict:
    """The Keras side, in a fresh process of .venv-keras's python; its stderr (TF's logs) passes through."""
    cmd = [str(python), str(HERE / "keras_baseline.py"), "--data-dir", str(data_dir), "--split", str(split),
           "--epochs", str(epochs), "--batch-size", str(batch_size), "--seed", str(seed), *extra]
    cmd += ["--threads", str(threads)] if threads else []
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])
