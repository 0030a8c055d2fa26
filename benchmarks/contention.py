"""The baseline on a busy machine: its epoch time with 0, 1 and 2 competing busy processes, fashion-cnn's
default settings vs `--threads 1` vs Keras/TF under the same load.

Each training runs in a fresh process (`fashion-cnn train --limit N` on the first N training images; Keras's
keras_baseline.py on the same images, validating on the next 1,000) while `busy` child processes spin
(`python3 -c "while True: pass"`). The three are interleaved, A B C / B C A / C A B..., `--repeats` rounds
per load level, so drifts in what else the machine does hit all three alike. Per training: wall seconds per
epoch, CPU seconds of the training process, the thread changes fashion-cnn logged; per load level: the
share of the CPUs other processes used just before the spinners started. Saves contention.json in --out.

    python benchmarks/contention.py --keras-python .venv-keras/bin/python      # docs/benchmarks/busy-machine.md
    python benchmarks/contention.py --limit 4800 --epochs 2 --repeats 1       # a quick check
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import HERE, others_busy_now, run_keras, save_result

from fashion_cnn.data.fmnist import find_data_dir
from fashion_cnn.machine import cpu_model, usable_cpus

CONFIGS = ("default", "threads1", "keras")
LABELS = {"default": "fashion-cnn, default", "threads1": "fashion-cnn, --threads 1", "keras": "Keras/TF"}


def children_cpu_seconds() -> float:
    t = os.times()
    return t.children_user + t.children_system


def run_fashion_cnn(data_dir: Path, limit: int, epochs: int, seed: int, threads: int | None) -> dict:
    """`fashion-cnn train` in a fresh process: seconds per epoch from its metrics.csv, the thread changes
    its log reports, and its CPU seconds."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "fashion_cnn", "train", "--data-dir", str(data_dir), "--limit", str(limit),
               "--epochs", str(epochs), "--seed", str(seed), "--out", out]
        cmd += ["--threads", str(threads)] if threads else []
        cpu0 = children_cpu_seconds()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        [run_dir] = Path(out).iterdir()
        rows = (run_dir / "metrics.csv").read_text().splitlines()
        header = rows[0].split(",")
        history = [dict(zip(header, map(float, row.split(",")))) for row in rows[1:]]
        log = (run_dir / "log.txt").read_text().splitlines()
        return {"train_seconds": [row["seconds"] for row in history],
                "epoch_cpu_seconds": [row["cpu_seconds"] for row in history],
                "process_cpu_seconds": children_cpu_seconds() - cpu0,
                "log": [line.split(" ", 2)[2] for line in log if "other processes" in line]}


def run_one(config: str, args: argparse.Namespace, split: Path, seed: int) -> dict:
    if config == "keras":
        cpu0 = children_cpu_seconds()
        result = run_keras(args.keras_python, args.data_dir, split, args.epochs, 32, None, seed)
        return {"train_seconds": result["train_seconds"], "process_cpu_seconds": children_cpu_seconds() - cpu0}
    return run_fashion_cnn(args.data_dir, args.limit, args.epochs, seed, 1 if config == "threads1" else None)


def steady(seconds: list[float]) -> float:
    """Mean seconds per epoch after the first (Keras traces its graph in epoch 1); epoch 1 if alone."""
    return statistics.mean(seconds[1:] or seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=48_000, help="training images (the first N)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the three trainings per load level")
    parser.add_argument("--busy", type=int, nargs="+", default=[0, 1, 2], help="competing busy processes")
    parser.add_argument("--keras-python", type=Path, default=HERE.parent / ".venv-keras/bin/python")
    parser.add_argument("--data-dir", type=Path, help="Fashion-MNIST directory (default: fashion-cnn's search)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    args.data_dir = find_data_dir(args.data_dir)

    levels = []
    with tempfile.TemporaryDirectory() as tmp:
        split = Path(tmp) / "split.npz"
        np.savez(split, train_idx=np.arange(args.limit), val_idx=np.arange(args.limit, args.limit + 1000))
        for busy in args.busy:
            background = others_busy_now()
            spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
            runs = {config: [] for config in CONFIGS}
            try:
                for r in range(args.repeats):
                    for config in CONFIGS[r % 3:] + CONFIGS[:r % 3]:
                        print(f"{busy} busy, round {r + 1}/{args.repeats}: {LABELS[config]}...", file=sys.stderr)
                        runs[config].append(run_one(config, args, split, seed=1 + r))
            finally:
                for p in spinners:
                    p.kill()
                    p.wait()
            summary = {config: statistics.mean(steady(run["train_seconds"]) for run in runs[config])
                       for config in CONFIGS}
            levels.append({"busy_processes": busy, "other_cpu_share_before": background,
                           "seconds_per_epoch": summary, "keras_over_default": summary["keras"] / summary["default"],
                           "runs": runs})

    header = f"{'busy processes':>14} | " + " | ".join(f"{LABELS[c]:>24}" for c in CONFIGS) + " | Keras / default"
    lines = [header, "-" * len(header)]
    for level in levels:
        lines.append(f"{level['busy_processes']:>14} | " + " | ".join(
            f"{level['seconds_per_epoch'][c]:>22.2f} s" for c in CONFIGS) + f" | {level['keras_over_default']:.2f}x")
    table = "\n".join(lines)
    print(f"\nseconds per training epoch (epochs 2-{args.epochs}), {args.limit} images, batch 32, "
          f"means of {args.repeats} runs; {cpu_model()}, {len(usable_cpus())} CPUs\n\n{table}")
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"config": {"limit": args.limit, "epochs": args.epochs, "repeats": args.repeats, "busy": args.busy},
              "machine": {"cpu": cpu_model(), "cpus": len(usable_cpus())}, "levels": levels, "table": table}
    save_result(args.out / "contention.json", result)
    print(f"saved {args.out / 'contention.json'}")


if __name__ == "__main__":
    main()
