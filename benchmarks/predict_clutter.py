"""Does `predict` still find the garment when the photo shows more than the garment?

Held-out training items (common.held_out_training_items: preprocessing is chosen on these, never on test
items) are rendered as 300x400 JPEG photos (tests/sample_images.py's render_photo) of several kinds:
plain (as predict_robustness.py), with a small dark coin, button or tag elsewhere in the frame, on a
textured background, with a soft drop shadow, under strong uneven lighting, turned by up to 20 degrees,
and all of these at once. Each photo is classified twice in the same run: as `predict` does it (the main
object; where the crop turned it, from the view the model is surer of, upright or as it stood) and after
the earlier preprocessing (the box around everything brighter than the background, rebuilt here from
predict's lower-level steps). The agreement rate is the share of photos that get the class the model
gives the original 28x28 image. Prints a table per model; saves
predict_clutter.json in --out.

    .venv/bin/python benchmarks/predict_clutter.py                      # the shipped model
    .venv/bin/python benchmarks/predict_clutter.py --also runs/<run>    # and another model
    .venv/bin/python benchmarks/predict_clutter.py --n 20 --examples /tmp/clutter   # look at some
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
from common import CANVAS, HERE, Scene, held_out_training_items, render_photo, save_result

from fashion_cnn.data.images import (
    crop_box,
    has_light_background,
    load_image,
    pad_and_resize,
    preprocess_views,
    remove_background,
    to_grayscale,
)
from fashion_cnn.evaluation.predict import Predictor
from fashion_cnn.io import write_atomic

KINDS = {
    "plain": Scene(),
    "distractor": Scene(distractor=True),
    "texture": Scene(texture=True),
    "shadow": Scene(shadow=True),
    "lighting": Scene(lighting=True),
    "rotation": Scene(rotation=20),
    "all": Scene(distractor=True, texture=True, shadow=True, lighting=True, rotation=20),
}


def box_around_everything(photo: bytes) -> np.ndarray:
    """The preprocessing before the main-object crop: the box around every pixel brighter than
    FOREGROUND after background removal."""
    x = to_grayscale(load_image(photo))
    if has_light_background(x):
        x = 1 - x
    return pad_and_resize(crop_box(remove_background(x)[0]))


def preprocessed(photos: list[bytes], preprocess) -> tuple[list, float]:
    """What preprocess makes of each photo, and the preprocessing time per photo."""
    started = time.perf_counter()
    images = [preprocess(photo) for photo in photos]
    return images, (time.perf_counter() - started) / len(photos)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--also", action="append", default=[], metavar="MODEL",
                        help="another model file or run directory to score besides the shipped model")
    parser.add_argument("--n", type=int, default=500, help="held-out training items per kind (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where predict_clutter.json goes")
    parser.add_argument("--examples", type=Path, help="also save the first 8 photos of each kind (JPEG) here")
    args = parser.parse_args()

    predictors = [Predictor(), *(Predictor(model) for model in args.also)]
    items, _ = held_out_training_items(args.n, args.seed)
    direct = [p.predict_arrays(items).argmax(1) for p in predictors]
    result = {"n": args.n, "seed": args.seed, "canvas": CANVAS, "jpeg_quality": 85,
              "kinds": {name: dataclasses.asdict(scene) for name, scene in KINDS.items()},
              "models": [{"path": str(p.path), "architecture": p.meta["architecture"], "agreement": {}}
                         for p in predictors],
              "seconds_per_photo": {}}
    for k, (name, scene) in enumerate(KINDS.items()):
        kind_rng = np.random.default_rng([args.seed, k])
        photos = [render_photo(item, kind_rng, scene) for item in items]
        if args.examples:
            for i, photo in enumerate(photos[:8]):
                write_atomic(args.examples / f"{name}-{i}.jpg", photo)
        old, old_seconds = preprocessed(photos, box_around_everything)
        _, new_seconds = preprocessed(photos, preprocess_views)
        result["seconds_per_photo"][name] = {"old": old_seconds, "new": new_seconds}
        for predictor, reference, entry in zip(predictors, direct, result["models"]):
            classes = {"old": predictor.predict_arrays(np.stack(old)).argmax(1),
                       "new": np.array([p.probabilities for p in predictor.predict(photos)]).argmax(1)}
            entry["agreement"][name] = {version: float((c == reference).mean()) for version, c in classes.items()}
        print(f"{name}: done", flush=True)

    print(f"\n{args.n} held-out training items per kind, rendered as {CANVAS[0]}x{CANVAS[1]} JPEG photos "
          f"(seed {args.seed});"
          " agreement with the class of the original 28x28 image, old crop -> new crop")
    for entry in result["models"]:
        print(f"\n{entry['path']} ({entry['architecture']})")
        for name, agreement in entry["agreement"].items():
            print(f"  {name:<11} {100 * agreement['old']:5.1f}% -> {100 * agreement['new']:5.1f}%")
    print("\npreprocessing per photo (ms, this machine, not a speed benchmark): "
          + ", ".join(f"{name} {1000 * s['old']:.1f} -> {1000 * s['new']:.1f}"
                      for name, s in result["seconds_per_photo"].items()))
    save_result(args.out / "predict_clutter.json", result)


if __name__ == "__main__":
    main()
