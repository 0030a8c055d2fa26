"""Means over seeds: the tutorial's baseline (5-fold cross-validation, then the final model) and the fast
model, each run with seeds 1..N on this machine, one run at a time, as a user runs them.

Each job is a child process (`python -m fashion_cnn ...`) writing into a temporary folder; wait4 gives its
own CPU time. Per job: the mean and standard deviation over seeds (sample std, n - 1) of its accuracy, the
number of seeds, each seed's accuracy with its 95% bootstrap interval over the test images (as `train`
writes it), and the wall and CPU time. The split is the tutorial's for every seed (`--split-seed` stays 1):
seeds change the initial weights, the batches and the augmentation, which is what "another run" means.
Saves seeds.json in --out.

    python benchmarks/seeds.py                                    # 3 seeds, every job: 36 minutes on 2 cores
    python benchmarks/seeds.py --seeds 2 --jobs baseline-final -- --limit 3000 --epochs 1   # a quick check
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

from common import HERE, cpu_snapshot, other_cpu_share, others_busy_now, run_job, save_result

from fashion_cnn.machine import cpu_model

# job -> (the CLI's arguments, the result file the run writes, that file's accuracy key)
JOBS = {
    "baseline-cv": (["cv"], "cv_results.json", "mean"),
    "baseline-final": (["train"], "metrics.json", "test_accuracy"),
    "fast-final": (["train", "--model", "fast"], "metrics.json", "test_accuracy"),
}


def run_seed(job: str, seed: int, extra: list[str]) -> dict:
    """One job with one seed: its accuracy (and interval or folds), wall and CPU seconds."""
    args, result_file, key = JOBS[job]
    measured, result = run_job([*args, "--seed", str(seed), *extra], result_file)
    row = {"seed": seed, "accuracy": result[key], "seconds": measured["seconds"],
           "cpu_seconds": measured["cpu_seconds"], "command": measured["command"]}
    if "test_interval" in result:
        row["interval"] = result["test_interval"]["accuracy"]
        row["interval_level"] = result["test_interval"]["level"]
        row["macro_f1"] = result["test_macro_f1"]
    if "fold_accuracies" in result:
        row["fold_accuracies"] = result["fold_accuracies"]
    return row


def summary(rows: list[dict]) -> dict:
    """Mean and sample std over seeds (std 0 for one seed) of accuracy and times."""
    def mean_std(key: str) -> tuple[float, float]:
        values = [row[key] for row in rows]
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    (acc, acc_std), (wall, _), (cpu, _) = mean_std("accuracy"), mean_std("seconds"), mean_std("cpu_seconds")
    return {"seeds": len(rows), "accuracy_mean": acc, "accuracy_std": acc_std, "seconds_mean": wall,
            "cpu_seconds_mean": cpu, "runs": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 1..N (default 3)")
    parser.add_argument("--jobs", nargs="+", choices=JOBS, default=list(JOBS))
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where seeds.json goes")
    parser.add_argument("job_args", nargs="*", help="after --: passed to every job (quick checks)")
    args = parser.parse_args()

    busy_before, start, load_before = others_busy_now(), cpu_snapshot(), os.getloadavg()
    jobs = {}
    for job in args.jobs:
        rows = []
        for seed in range(1, args.seeds + 1):
            rows.append(run_seed(job, seed, args.job_args))
            print(f"{job} seed {seed}: {100 * rows[-1]['accuracy']:.2f}% in {rows[-1]['seconds']:.0f} s", flush=True)
        jobs[job] = summary(rows)
    result = {"job_args": args.job_args, "jobs": jobs,
              "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "other_processes_cpu_share_before": busy_before,
                          "load_average_before": load_before, "load_average_after": os.getloadavg(),
                          "other_processes_cpu_share": other_cpu_share(start)}}
    print(f"\n{'job':<16} {'seeds':>5} {'accuracy, mean +- std':>22} {'wall s':>8} {'CPU s':>8}")
    for job, s in jobs.items():
        print(f"{job:<16} {s['seeds']:>5} {100 * s['accuracy_mean']:>13.2f}% +- {100 * s['accuracy_std']:.2f} "
              f"{s['seconds_mean']:>8.1f} {s['cpu_seconds_mean']:>8.1f}")
    save_result(args.out / "seeds.json", result)


if __name__ == "__main__":
    main()
