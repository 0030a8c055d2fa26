"""Your own data, end to end: scikit-learn's 1,797 handwritten digits written as a folder of PNG files
(tests/sample_images.py), imported (cold, then from the cache), then 5-fold cross-validation of `baseline`
and `fast`, each with its own recipe, exactly as `fashion-cnn cv --data DIR --model NAME` runs it.

Reported: import wall and CPU seconds; per model the mean and spread of the fold accuracies and macro-F1,
training wall and CPU seconds (this process, all threads), with the share of the CPUs other processes
used meanwhile. Saves digits_cv.json in --out.

    .venv/bin/python benchmarks/digits_cv.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from common import (
    HERE,
    cpu_snapshot,
    measured,
    other_cpu_share,
    others_busy_now,
    own_cpu_seconds,
    save_result,
    write_digits_folder,
)

from fashion_cnn.config import CVConfig
from fashion_cnn.data.folders import load_dataset
from fashion_cnn.jobs.crossval import cross_validate

MODELS = ("baseline", "fast")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, default=5, help="(default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's, one per core)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where the JSON goes")
    args = parser.parse_args()

    started, busy_before = time.strftime("%Y-%m-%d %H:%M:%S"), others_busy_now()
    since, cpu0 = cpu_snapshot(), own_cpu_seconds()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["XDG_CACHE_HOME"] = str(Path(tmp, "cache"))  # a cold import: no cache of an earlier run
        folder = Path(tmp, "digits")
        write_digits_folder(folder)
        data, cold = measured(lambda: load_dataset(folder))
        _, warm = measured(lambda: load_dataset(folder))
        print(f"import of {len(data.train_images) + len(data.test_images)} PNG files: cold {cold['wall_s']:.2f}s "
              f"({cold['cpu_s']:.2f} CPU seconds), from the cache {warm['wall_s']:.3f}s ({warm['cpu_s']:.3f})")
        for model in MODELS:
            cfg = CVConfig(model=model, folds=args.folds, data=str(folder), threads=args.threads,
                           out=str(Path(tmp, "runs")))
            result, cost = measured(lambda: cross_validate(cfg, data=data))
            rows[model] = {"epochs": cfg.epochs, **result.summary, "job": cost,
                           "train_wall_s": sum(r["seconds"] for h in result.histories.values() for r in h),
                           "train_cpu_s": sum(r["cpu_seconds"] for h in result.histories.values() for r in h)}
            print(f"{model}: accuracy {100 * result.mean:.2f}% +- {100 * result.std:.2f}, macro-F1 "
                  f"{result.summary['macro_f1_mean']:.4f}; training {rows[model]['train_wall_s']:.0f}s wall, "
                  f"{rows[model]['train_cpu_s']:.0f}s CPU")
    busy = other_cpu_share(since)
    print(f"{own_cpu_seconds() - cpu0:.0f} CPU seconds in all; other processes used {100 * busy:.0f}% of the CPUs "
          f"({100 * busy_before:.0f}% just before)")
    save_result(args.out / "digits_cv.json", {
        "started": started, "cpus": os.cpu_count(), "threads": args.threads or torch.get_num_threads(),
        "train_images": len(data.train_images), "test_images": len(data.test_images),
        "import": {"cold": cold, "warm": warm}, "models": rows, "cpu_seconds": own_cpu_seconds() - cpu0,
        "other_cpu_share": busy, "other_cpu_share_before": busy_before})


if __name__ == "__main__":
    main()
