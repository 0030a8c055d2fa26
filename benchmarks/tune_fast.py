"""A tune of the `fast` model's recipe on a fixed 5,000-image validation split, against the shipped recipe.

Starts a throw-away PostgreSQL server (tests/postgres.py), then, one after the other:
  1. the reference: the shipped recipe on the same split (`fashion-cnn cv --model fast --folds 1
     --val-size 5000`), and its final model (`fashion-cnn train --model fast`, tested once);
  2. two `fashion-cnn tune` workers at once, sharing one study in the server (--trials in all, median
     pruning, one CPU thread each on a 2-core machine), scored on the split only: no test set;
  3. the final model of the best configuration (`fashion-cnn train --config best_config.toml`), tested once.
Writes tune_fast.json (and the study's history and importance plots) into --out.

    make bench-tune-fast
    .venv/bin/python benchmarks/tune_fast.py --trials 4 --val-size 500 --limit 3000 \\
        --space epochs=1:2 --out /tmp/tune-check                                   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from common import (
    PostgresServer,
    cpu_snapshot,
    other_cpu_share,
    others_busy_now,
    run_measured,
    run_measured_together,
    save_result,
)

HERE = Path(__file__).resolve().parent
CLI = [sys.executable, "-m", "fashion_cnn"]


def one_run(runs: Path) -> Path:
    [run] = runs.iterdir()
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="trials of the study, both workers together")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per worker")
    parser.add_argument("--limit", type=int, help="first N training images only, for a quick check")
    parser.add_argument("--space", nargs="+", default=[], help="passed to the workers' --space")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where tune_fast.json goes")
    args = parser.parse_args()

    data = ["--limit", str(args.limit)] if args.limit else []
    split = ["--model", "fast", "--folds", "1", "--val-size", str(args.val_size), *data]
    threads = str(args.threads * args.workers)  # the one-process steps use the whole machine
    busy_before = others_busy_now()
    start = cpu_snapshot()
    with tempfile.TemporaryDirectory() as tmp, PostgresServer() as storage:
        tmp = Path(tmp)
        steps = {"reference_cv": run_measured([*CLI, "cv", *split, "--threads", threads, "--out", str(tmp / "ref-cv")]),
                 "reference_train": run_measured([*CLI, "train", "--model", "fast", *data, "--threads", threads,
                                                  "--out", str(tmp / "ref-train")])}
        worker = [*CLI, "tune", *split, "--trials", str(args.trials), "--storage", storage, "--study", "tune-fast",
                  "--threads", str(args.threads)] + (["--space", *args.space] if args.space else [])
        steps["workers"] = run_measured_together([[*worker, "--out", str(tmp / f"worker{k}")]
                                                  for k in range(1, args.workers + 1)])
        # any worker's report covers the whole study; the last to finish saw every trial
        last = max(range(args.workers), key=lambda k: steps["workers"][k]["seconds"])
        tune_dir = one_run(tmp / f"worker{last + 1}")
        report = json.loads((tune_dir / "tune_results.json").read_text())
        best_config = (tune_dir / "best_config.toml").read_text()
        steps["final_train"] = run_measured([*CLI, "train", "--config", str(tune_dir / "best_config.toml"),
                                             "--threads", threads, "--out", str(tmp / "final")])
        reference_val = json.loads((one_run(tmp / "ref-cv") / "cv_results.json").read_text())["mean"]
        reference_test = json.loads((one_run(tmp / "ref-train") / "metrics.json").read_text())["test_accuracy"]
        final_test = json.loads((one_run(tmp / "final") / "metrics.json").read_text())["test_accuracy"]
        args.out.mkdir(parents=True, exist_ok=True)
        for plot in ("history", "importance"):
            if (tune_dir / f"tune_{plot}.png").exists():
                shutil.copyfile(tune_dir / f"tune_{plot}.png", args.out / f"tune_fast_{plot}.png")

    for step in (steps["reference_cv"], steps["reference_train"], steps["final_train"], *steps["workers"]):
        step["command"] = "fashion-cnn " + " ".join(w if not w.startswith(str(tmp)) else "DIR"
                                                    for w in step["command"].split()[1:])
        step["command"] = step["command"].replace(storage, "postgresql://...")
    tune_wall = max(w["seconds"] for w in steps["workers"])
    result = {
        "trials": report["trials"], "objective": report["objective"], "test_set": report["test_set"],
        "best": {k: report["best"][k] for k in ("number", "value", "params")}, "best_config": best_config,
        "reference_val_accuracy": reference_val, "best_val_accuracy": report["best"]["value"],
        "reference_test_accuracy": reference_test, "final_test_accuracy": final_test,
        "tune_wall_seconds": tune_wall, "tune_cpu_seconds": sum(w["cpu_seconds"] for w in steps["workers"]),
        "total_cpu_seconds": sum(s["cpu_seconds"] for s in [*steps["workers"], steps["reference_cv"],
                                                            steps["reference_train"], steps["final_train"]]),
        "steps": steps, "history": report["history"], "importance": report.get("importance"),
        "cpus": os.cpu_count(), "other_processes_cpu_share_before": busy_before,
        "other_processes_cpu_share": other_cpu_share(start),
    }
    save_result(args.out / "tune_fast.json", result)
    counts = ", ".join(f"{n} {k}" for k, n in report["trials"].items() if n)
    print(f"\ntrials: {counts}, {tune_wall / 60:.1f} min wall, {result['tune_cpu_seconds'] / 60:.1f} min CPU "
          f"({args.workers} workers)\nvalidation accuracy ({args.val_size:,} images): shipped recipe "
          f"{100 * reference_val:.2f}%, best trial {100 * report['best']['value']:.2f}% (trial "
          f"{report['best']['number']})\ntest accuracy of the final model: shipped recipe {100 * reference_test:.2f}%, "
          f"tuned {100 * final_test:.2f}%\nCPU time in all: {result['total_cpu_seconds'] / 60:.1f} min; other "
          f"processes used {100 * result['other_processes_cpu_share']:.0f}% of the CPUs\n"
          f"saved {args.out / 'tune_fast.json'}")


if __name__ == "__main__":
    main()
