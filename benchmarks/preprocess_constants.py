"""The figures behind predict's object constants, measured on Fashion-MNIST *training* items (never test items).

    python benchmarks/preprocess_constants.py            # all 60,000 training items, about a minute

Each item (scaled to [0, 1], its background already 0) goes through `images.main_object` and
`images.upright_angle` as a photo's cropped object would:
- MERGE: the share of items whose main object is the whole garment (every pixel brighter than FOREGROUND),
  at the shipped MERGE and at smaller and larger values: parts of one garment (a sandal's straps, a coat's
  halves) must merge, while an unrelated coin or tag should stay apart (benchmarks/predict_clutter.py);
- upright: the share of items (all upright, as Fashion-MNIST centres them) whose bounding box is smallest
  within 2 degrees of upright, and within 0 degrees: the turn `predict` makes rests on this.
Saves preprocess_constants.json in --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from common import HERE, save_result

from fashion_cnn.data import images
from fashion_cnn.data.fmnist import load_fashion_mnist

MERGES = (0.0, 0.02, 0.04, 0.08, 0.12)  # the shipped value and either side of it


def whole_garment_share(items: np.ndarray, merge: float) -> float:
    """The share of items whose main object, with images.MERGE set to merge, holds every foreground pixel."""
    shipped, images.MERGE = images.MERGE, merge
    try:
        return float(np.mean([(images.main_object(x) == (x > images.FOREGROUND)).all() for x in items]))
    finally:
        images.MERGE = shipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=60_000, help="training items, a seeded sample (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where preprocess_constants.json goes")
    args = parser.parse_args()

    train = load_fashion_mnist().train_images.numpy()
    picked = np.sort(np.random.default_rng(args.seed).choice(len(train), min(args.n, len(train)), replace=False))
    items = train[picked].astype(np.float32) / 255
    merge = {f"{m:g}": whole_garment_share(items, m) for m in MERGES}
    angles = np.array([abs(images.upright_angle(images.main_object(x))) for x in items if x.max() > images.FOREGROUND])
    upright = {"within_0_degrees": float(np.mean(angles == 0)), "within_2_degrees": float(np.mean(angles <= 2)),
               "items": len(angles)}
    result = {"items": "Fashion-MNIST training items", "n": len(items), "seed": args.seed,
              "shipped_merge": images.MERGE, "whole_garment_share_by_merge": merge, "upright": upright}
    save_result(args.out / "preprocess_constants.json", result)
    print(f"{len(items):,} training items: main object = whole garment at MERGE "
          + ", ".join(f"{m}: {100 * s:.2f}%" for m, s in merge.items())
          + f"; box smallest within 2 degrees of upright for {100 * upright['within_2_degrees']:.1f}%"
          f" (at 0 degrees: {100 * upright['within_0_degrees']:.1f}%)")


if __name__ == "__main__":
    main()
