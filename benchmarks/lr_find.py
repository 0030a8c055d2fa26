"""The learning-rate range test of docs/benchmarks/experiments.md: `fashion-cnn lr-find` for the baseline on
its first 10,000 training images (seed 1), its suggestion and where the curve stopped.

    python benchmarks/lr_find.py            # writes benchmarks/results/lr_find.json (a few CPU seconds)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import HERE, save_result

from fashion_cnn.jobs.lrfind import LRFindConfig, lr_find


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=10_000, help="the first N training images")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as runs:
        found = lr_find(LRFindConfig(limit=args.limit, seed=args.seed, out=runs))
    save_result(args.out / "lr_find.json", {
        "config": {"model": "baseline", "limit": args.limit, "seed": args.seed},
        "suggestion": found.suggestion, "minimum_lr": found.minimum, "steepest_lr": found.steepest,
        "steps": len(found.rows), "stopped": found.stopped})


if __name__ == "__main__":
    main()
