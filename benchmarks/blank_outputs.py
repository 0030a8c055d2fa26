"""How many pictures with content `predict.preprocess` blanks: scikit-learn's 1,797 handwritten digits as
their bare 8x8 pixels fill the frame, and scaled to 16, 48 and 96 pixels, with and without a 2-pixel
margin (per 8 pixels), light on dark and dark on light; and --items Fashion-MNIST *training* items framed
as people save them (tests/sample_images.py's `framings`: inverted, upscaled, padded, cropped tight).

Per kind: images, empty results (no pixel brighter than predict.FOREGROUND) and nearly empty ones (fewer
object pixels than datasets.NEARLY_EMPTY). Only `preprocess` is called, so the script measures any
version of the code alike (the one before the fallbacks included). Saves blank_outputs.json in --out.

    .venv/bin/python benchmarks/blank_outputs.py
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
from common import HERE, save_result
from sample_images import digits, framings, resized

from fashion_cnn.data.fmnist import load_fashion_mnist
from fashion_cnn.data.images import FOREGROUND, preprocess

NEARLY_EMPTY = 20  # as datasets.NEARLY_EMPTY, which the code before this measurement lacks
SIDES = (8, 16, 48, 96)


def counts(results: list[np.ndarray]) -> dict:
    pixels = np.array([(r > FOREGROUND).sum() for r in results])
    return {"images": len(results), "empty": int((pixels == 0).sum()),
            "nearly_empty": int(((pixels > 0) & (pixels < NEARLY_EMPTY)).sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--digits", type=int, default=1797, help="digits, evenly spaced (default: all %(default)s)")
    parser.add_argument("--items", type=int, default=1000, help="Fashion-MNIST training items (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where the JSON goes")
    args = parser.parse_args()

    images, _ = digits(margin=0)
    images = images[np.linspace(0, len(images) - 1, min(args.digits, len(images))).astype(int)]
    rows = {}
    for side in SIDES:
        for margin in (0, 2):
            framed = [resized(np.pad(image, margin), side + 2 * margin * side // 8) for image in images]
            for polarity, pictures in (("light on dark", framed), ("dark on light", [255 - p for p in framed])):
                name = f"digits {side}px, margin {margin}, {polarity}"
                rows[name] = counts([preprocess(p) for p in pictures])
                print(f"{name}: {rows[name]}", flush=True)
    if args.items:
        by_kind = defaultdict(list)
        for item in load_fashion_mnist(download=False).train_images[:args.items].numpy():
            for kind, picture in framings(item).items():
                by_kind[kind].append(preprocess(picture))
        for kind, results in by_kind.items():
            rows[f"Fashion-MNIST training items, {kind}"] = counts(results)
            print(f"Fashion-MNIST training items, {kind}: {rows[f'Fashion-MNIST training items, {kind}']}")
    save_result(args.out / "blank_outputs.json", {"nearly_empty_below": NEARLY_EMPTY, "digits": len(images),
                                                   "items": args.items, "kinds": rows})


if __name__ == "__main__":
    main()
