"""Stratified folds on Fashion-MNIST: does `fashion-cnn cv` give the same accuracy with scikit-learn's
StratifiedKFold as with the tutorial's shuffled KFold (which cv uses where the classes are balanced)?

For each split seed, the same cross-validation of the baseline (same model seeds, same recipe) runs twice,
with each splitter put in the place of `crossval.kfold_splits`. The
difference between the two is compared with the spread across split seeds (the noise of choosing a split).
Saves stratified_folds.json in --out.

    .venv/bin/python benchmarks/stratified_folds.py --limit 12000 --epochs 3 --seeds 3 --threads 1
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from pathlib import Path

import numpy as np
from common import HERE, cpu_snapshot, other_cpu_share, others_busy_now, own_cpu_seconds, save_result

from fashion_cnn.config import CVConfig
from fashion_cnn.data.fmnist import load_fashion_mnist
from fashion_cnn.jobs import crossval
from fashion_cnn.jobs.crossval import cross_validate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=12000, help="training images (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=3, help="(default: %(default)s)")
    parser.add_argument("--folds", type=int, default=5, help="(default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=3, help="split seeds 1..N (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where the JSON goes")
    args = parser.parse_args()

    data = load_fashion_mnist(download=False)
    busy_before, since, cpu0 = others_busy_now(), cpu_snapshot(), own_cpu_seconds()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    as_is = crossval.kfold_splits
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(1, args.seeds + 1):
            row = {"split_seed": seed}
            for name, stratify in (("kfold", False), ("stratified", True)):
                crossval.kfold_splits = functools.partial(as_is, stratify=stratify)
                cfg = CVConfig(limit=args.limit, epochs=args.epochs, folds=args.folds, split_seed=seed, out=tmp,
                               device="cpu", threads=args.threads)
                result = cross_validate(cfg, data=data)
                row[name] = {"mean": result.mean, "std": result.std, "folds": result.fold_accuracies}
            crossval.kfold_splits = as_is
            row["difference"] = row["stratified"]["mean"] - row["kfold"]["mean"]
            rows.append(row)
            print(f"split seed {seed}: KFold {100 * row['kfold']['mean']:.2f}%, StratifiedKFold "
                  f"{100 * row['stratified']['mean']:.2f}%, difference {100 * row['difference']:+.2f} points")
    means = {name: [r[name]["mean"] for r in rows] for name in ("kfold", "stratified")}
    differences = [r["difference"] for r in rows]
    summary = {"kfold_mean": float(np.mean(means["kfold"])), "stratified_mean": float(np.mean(means["stratified"])),
               "mean_difference": float(np.mean(differences)),
               "seed_spread_kfold": float(np.std(means["kfold"])),
               "seed_spread_stratified": float(np.std(means["stratified"]))}
    print(f"over {args.seeds} split seeds: KFold {100 * summary['kfold_mean']:.2f}% (spread across seeds "
          f"{100 * summary['seed_spread_kfold']:.2f}), StratifiedKFold {100 * summary['stratified_mean']:.2f}% "
          f"(spread {100 * summary['seed_spread_stratified']:.2f}); mean difference "
          f"{100 * summary['mean_difference']:+.2f} points")
    busy = other_cpu_share(since)
    print(f"CPU seconds {own_cpu_seconds() - cpu0:.0f}; other processes used {100 * busy:.0f}% of the CPUs")
    save_result(args.out / "stratified_folds.json", {
        "started": started, "config": vars(args) | {"out": str(args.out)}, "rows": rows, "summary": summary,
        "cpu_seconds": own_cpu_seconds() - cpu0, "other_cpu_share": busy, "other_cpu_share_before": busy_before})


if __name__ == "__main__":
    main()
