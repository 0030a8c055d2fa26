"""torchrun on this machine: cross-validation folds on 2 processes against 1, and the strong model's
data-parallel training speed on 1 and 2 processes.

Each job runs as a child process (`python -m fashion_cnn`, or `python -m torch.distributed.run
--nproc-per-node 2 -m fashion_cnn`) writing into a temporary folder, on Fashion-MNIST:
- cv: `cv --folds 2` on one process with all cores' threads (the default), on one process with
  C/2 threads, and on 2 processes with C/2 threads each (C: this machine's cores); the 2-process run must
  give the fold accuracies of the one with the same threads per process;
- strong: `train --model strong` on the first --steps x 128 images for 2 epochs; the second epoch's
  images/s (the first includes one-time set-up), on one process with C threads and on 2 with C/2 each.
Saves distributed.json in --out.

    .venv/bin/python benchmarks/distributed.py               # docs/benchmarks/distributed.md
    .venv/bin/python benchmarks/distributed.py --small       # a quick check of the script
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
from pathlib import Path

from common import cpu_snapshot, other_cpu_share, others_busy_now, run_measured, save_result

HERE = Path(__file__).resolve().parent
BATCH = 128  # the strong model's recipe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(processes: int, *args: str) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "fashion_cnn", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
            "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "fashion_cnn", *args]


def run_job(processes: int, threads: int, out: Path, *args: str) -> tuple[dict, Path]:
    """One job, measured; its run directory."""
    measured = run_measured(command(processes, *args, "--threads", str(threads), "--out", str(out)))
    [run_dir] = out.iterdir()
    return {"processes": processes, "threads_per_process": threads, **measured}, run_dir


def cv_runs(epochs: int, folds: int, limit: int | None, cores: int, tmp: Path) -> dict:
    args = ["cv", "--folds", str(folds), "--epochs", str(epochs), *(["--limit", str(limit)] if limit else [])]
    runs = {}
    for name, processes, threads in (("1 process", 1, cores), ("1 process, half the threads", 1, cores // 2),
                                     ("2 processes", 2, cores // 2)):
        run, run_dir = run_job(processes, threads, tmp / f"cv-{processes}-{threads}", *args)
        results = json.loads((run_dir / "cv_results.json").read_text())
        runs[name] = {**run, "job_seconds": results["seconds_this_session"],
                      "fold_accuracies": results["fold_accuracies"]}
        print(f"cv, {name} ({threads} threads each): {run['seconds']:.1f} s wall, {run['cpu_seconds']:.1f} s CPU, "
              f"folds {', '.join(f'{100 * a:.2f}%' for a in results['fold_accuracies'])}", flush=True)
    same = runs["2 processes"]["fold_accuracies"] == runs["1 process, half the threads"]["fold_accuracies"]
    return {"args": args, "runs": runs, "same_numbers_as_one_process_with_the_same_threads": same,
            "speedup_over_one_process": runs["1 process"]["seconds"] / runs["2 processes"]["seconds"]}


def strong_runs(steps: int, cores: int, tmp: Path) -> dict:
    images = steps * BATCH
    args = ["train", "--model", "strong", "--limit", str(images), "--epochs", "2"]
    runs = {}
    for processes, threads in ((1, cores), (2, cores // 2)):
        run, run_dir = run_job(processes, threads, tmp / f"strong-{processes}", *args)
        history = json.loads((run_dir / "metrics.json").read_text())["history"]
        runs[f"{processes} process" + "es" * (processes > 1)] = {
            **run, "epoch_seconds": [row["seconds"] for row in history],
            "images_per_second": images / history[-1]["seconds"], "loss": [row["loss"] for row in history]}
        print(f"strong, {processes} process(es) x {threads} threads: {images / history[-1]['seconds']:.0f} "
              f"images/s (epoch 2; epoch 1: {images / history[0]['seconds']:.0f})", flush=True)
    one, two = runs["1 process"]["images_per_second"], runs["2 processes"]["images_per_second"]
    return {"args": args, "steps_per_epoch": steps, "batch_size": BATCH, "runs": runs,
            "two_over_one": two / one}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where distributed.json goes")
    parser.add_argument("--epochs", type=int, default=10, help="cv epochs per fold (the recipe's 10)")
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40, help="strong: steps of 128 images per epoch")
    parser.add_argument("--small", action="store_true", help="1 cv epoch on 4,000 images, 4 strong steps")
    args = parser.parse_args()
    from fashion_cnn.machine import cpu_model

    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        sys.exit("needs 2 cores or more")
    epochs, limit, steps = (1, 4000, 4) if args.small else (args.epochs, None, args.steps)
    busy_before = others_busy_now()
    start, load_before = cpu_snapshot(), os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        result = {"machine": cpu_model(), "cores": cores, "small": args.small,
                  "cv": cv_runs(epochs, args.folds, limit, cores, Path(tmp)),
                  "strong": strong_runs(steps, cores, Path(tmp))}
    result |= {"other_processes_cpu_share_before": busy_before, "other_processes_cpu_share": other_cpu_share(start),
               "load_average_before": load_before, "load_average_after": os.getloadavg()}
    print(f"cv: 2 processes {result['cv']['speedup_over_one_process']:.2f}x the speed of one; same fold "
          f"accuracies as one process with the same threads: {result['cv']['same_numbers_as_one_process_with_the_same_threads']}")
    print(f"strong: 2 processes {result['strong']['two_over_one']:.2f}x the images/s of one")
    print(f"other processes used {100 * result['other_processes_cpu_share']:.0f}% of the {cores} CPUs during the "
          f"run, {100 * busy_before:.0f}% just before")
    save_result(args.out / "distributed.json", result)


if __name__ == "__main__":
    main()
