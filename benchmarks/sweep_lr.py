"""The tutorial's experiment, "try changing the learning rate": the baseline at five learning rates, each
cross-validated (5 folds, 10 epochs), by `fashion-cnn sweep` in a child process. The reference is the
tutorial's own 0.01, one of the points. Copies the sweep's table and plots into --out
(sweep_lr.json, sweep_lr.csv, sweep_lr_curves.png, sweep_lr_metric.png) for docs/benchmarks/experiments.md.

    make bench-sweep-lr
    .venv/bin/python benchmarks/sweep_lr.py --folds 2 --epochs 1 -- --limit 2000   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from common import cpu_snapshot, other_cpu_share, others_busy_now, run_measured, save_result

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lr", type=float, nargs="+", default=[0.001, 0.003, 0.01, 0.03, 0.1])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where sweep_lr.* go")
    parser.add_argument("sweep_args", nargs="*", help="after --: more options for `fashion-cnn sweep`")
    args = parser.parse_args()

    busy_before = others_busy_now()
    start = cpu_snapshot()
    with tempfile.TemporaryDirectory() as runs:
        command = [sys.executable, "-m", "fashion_cnn", "sweep", "--lr", *map(str, args.lr), "--folds",
                   str(args.folds), "--epochs", str(args.epochs), "--out", runs, *args.sweep_args]
        measured = run_measured(command)
        [run] = Path(runs).iterdir()
        sweep = json.loads((run / "sweep_results.json").read_text())
        args.out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run / "sweep_results.csv", args.out / "sweep_lr.csv")
        for plot in ("curves", "metric"):
            shutil.copyfile(run / f"sweep_{plot}.png", args.out / f"sweep_lr_{plot}.png")
    points = [{k: v for k, v in p.items() if k not in ("curve", "run_dir", "name")} for p in sweep["points"]]
    best = max(points, key=lambda p: (p["val_accuracy"], -p["val_loss"]))
    result = {"command": "fashion-cnn " + " ".join(measured["command"].split()[1:]).replace(runs, "runs"),
              "points": points, "best_lr": best["values"]["lr"], "curves": {p["values"]["lr"]: p["curve"] for p in
                                                                          sweep["points"]},
              "seconds": measured["seconds"], "cpu_seconds": measured["cpu_seconds"], "cpus": os.cpu_count(),
              "other_processes_cpu_share_before": busy_before, "other_processes_cpu_share": other_cpu_share(start)}
    save_result(args.out / "sweep_lr.json", result)
    print(f"\nbest learning rate {best['values']['lr']:g}: {100 * best['val_accuracy']:.2f}% +- "
          f"{100 * best['val_accuracy_std']:.2f}%; {measured['seconds'] / 60:.1f} min wall, "
          f"{measured['cpu_seconds'] / 60:.1f} min CPU; other processes used "
          f"{100 * result['other_processes_cpu_share']:.0f}% of the CPUs\nsaved {args.out / 'sweep_lr.json'}")


if __name__ == "__main__":
    main()
