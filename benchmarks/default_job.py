"""Wall time and peak memory of the whole default job: `fashion-cnn cv`, then `fashion-cnn train`.

Each runs as a child process writing its run directory into a temporary folder; wait4 gives each child's
own CPU time and peak resident memory. Issue 4's targets: under 3 minutes in all on 2 cores, peak memory
under 1.5 GB. Saves default_job.json in --out.

    make bench-job
    .venv/bin/python benchmarks/default_job.py -- --limit 2000 --epochs 1   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from common import cpu_snapshot, other_cpu_share, others_busy_now, run_measured, save_result

HERE = Path(__file__).resolve().parent
TARGET_SECONDS, TARGET_PEAK_BYTES = 180, 1.5e9


def job_results(runs: Path) -> dict:
    """What the job reported: the cross-validation summary and the final model's test accuracy."""
    found = {}
    for run_dir in sorted(runs.iterdir()):
        if (run_dir / "cv_results.json").exists():
            found["cv"] = json.loads((run_dir / "cv_results.json").read_text())
        if (run_dir / "metrics.json").exists():
            found["test_accuracy"] = json.loads((run_dir / "metrics.json").read_text())["test_accuracy"]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where default_job.json goes")
    parser.add_argument("job_args", nargs="*", help="after --: passed to both `cv` and `train`")
    args = parser.parse_args()

    busy_before = others_busy_now()
    start, load_before = cpu_snapshot(), os.getloadavg()
    with tempfile.TemporaryDirectory() as runs:
        cli = [sys.executable, "-m", "fashion_cnn.app.cli"]
        steps = {job: run_measured(cli + [job, "--out", runs] + args.job_args) for job in ("cv", "train")}
        results = job_results(Path(runs))
    total = sum(s["seconds"] for s in steps.values())
    peak = max(s["peak_rss_bytes"] for s in steps.values())
    result = {
        "job_args": args.job_args,
        "cpus": os.cpu_count(),
        "steps": steps,
        "total_seconds": total,
        "peak_rss_bytes": peak,
        "results": results,
        "meets_targets": {"under_3_minutes": total < TARGET_SECONDS, "peak_under_1.5GB": peak < TARGET_PEAK_BYTES},
        "other_processes_cpu_share_before": busy_before,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "other_processes_cpu_share": other_cpu_share(start),
    }

    print(f"\n{'step':<8} {'wall s':>8} {'CPU s':>8} {'peak RSS MB':>12}")
    for job, s in steps.items():
        print(f"{job:<8} {s['seconds']:>8.1f} {s['cpu_seconds']:>8.1f} {s['peak_rss_bytes'] / 1e6:>12.0f}")
    print(f"{'total':<8} {total:>8.1f} {'':>8} {peak / 1e6:>12.0f}   targets: < {TARGET_SECONDS} s, "
          f"< {TARGET_PEAK_BYTES / 1e6:.0f} MB: {'met' if all(result['meets_targets'].values()) else 'NOT met'}")
    if "cv" in results:
        print(f"cross-validation accuracy {100 * results['cv']['mean']:.2f}% +- {100 * results['cv']['std']:.2f}% "
              f"(folds {', '.join(f'{100 * a:.2f}' for a in results['cv']['fold_accuracies'])}); "
              f"final model, test set: {100 * results['test_accuracy']:.2f}%")
    print(f"other processes used {100 * result['other_processes_cpu_share']:.0f}% of the {os.cpu_count()} CPUs "
          f"during the run, {100 * busy_before:.0f}% just before "
          f"(load average {load_before[0]:.2f} before, {result['load_average_after'][0]:.2f} after)")
    save_result(args.out / "default_job.json", result)


if __name__ == "__main__":
    main()
