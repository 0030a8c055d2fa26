"""Does `predict` give a photo of a test item the class the model gives the item itself?

Each of N test images is rendered as a phone-photo-like picture: a dark object on a light, tinted,
unevenly lit background, scaled up 5-10x and placed anywhere on a 300x400 RGB canvas, with sensor noise,
saved as JPEG quality 85. Both versions go through the model (the original directly, the photo through
the full `predict` path from JPEG bytes); the share of equal classes is the agreement rate.
Prints it and saves predict_robustness.json in --out.

    .venv/bin/python benchmarks/predict_robustness.py --model /tmp/predict-runs   # a full-data model
    .venv/bin/python benchmarks/predict_robustness.py --n 200 --examples /tmp/photos   # look at some
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from common import CANVAS, HERE, render_photo, save_result

from fashion_cnn.data.fmnist import load_fashion_mnist
from fashion_cnn.evaluation.predict import Predictor
from fashion_cnn.io import write_atomic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model file or run directory (default: as `fashion-cnn predict`)")
    parser.add_argument("--n", type=int, default=1000, help="test images to render (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where predict_robustness.json goes")
    parser.add_argument("--examples", help="also save the first 20 photos (JPEG) here")
    args = parser.parse_args()

    predictor = Predictor(args.model)
    print(predictor.describe())
    data = load_fashion_mnist()
    rng = np.random.default_rng(args.seed)
    picked = rng.choice(len(data.test_images), args.n, replace=False)
    items = data.test_images.numpy()[picked]
    labels = data.test_labels.numpy()[picked]
    photos = [render_photo(item, rng) for item in items]
    if args.examples:
        for i, photo in enumerate(photos[:20]):
            name = predictor.class_names[labels[i]].replace("/", "-")
            write_atomic(Path(args.examples) / f"{i:02d}-{name}.jpg", photo)

    direct = predictor.predict_arrays(items.astype(np.float32) / np.float32(255)).argmax(1)
    started = time.perf_counter()
    predictions = predictor.predict(photos)
    seconds = time.perf_counter() - started
    via_photo = np.array([p.class_index for p in predictions])
    result = {
        "model": str(predictor.path), "n": args.n, "seed": args.seed, "canvas": CANVAS, "jpeg_quality": 85,
        "agreement": float((via_photo == direct).mean()),
        "accuracy_direct": float((direct == labels).mean()),
        "accuracy_photo": float((via_photo == labels).mean()),
        "seconds_per_photo": seconds / args.n,
    }
    print(f"{args.n} test images rendered as {CANVAS[0]}x{CANVAS[1]} JPEG photos")
    print(f"agreement with the direct prediction: {100 * result['agreement']:.1f}%")
    print(f"accuracy: direct {100 * result['accuracy_direct']:.1f}%, "
          f"photo {100 * result['accuracy_photo']:.1f}%  ({1000 * seconds / args.n:.1f} ms per photo)")
    save_result(args.out / "predict_robustness.json", result)


if __name__ == "__main__":
    main()
