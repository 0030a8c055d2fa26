"""The figures behind predict's object constants, measured on Fashion-MNIST *training* items (never test items).

    python benchmarks/preprocess_constants.py            # all 60,000 training items, 300 photos a kind

Each item (scaled to [0, 1], its background already 0) goes through `images.main_object` and
`images.upright_angle` as a photo's cropped object would:
- MERGE: the share of items whose main object is the whole garment (every pixel brighter than FOREGROUND),
  at the shipped MERGE and at smaller and larger values: parts of one garment (a sandal's straps, a coat's
  halves) must merge, while an unrelated coin or tag should stay apart (benchmarks/predict_clutter.py);
- upright: the share of items (all upright, as Fashion-MNIST centres them) whose bounding box is smallest
  within 2 degrees of upright, and within 0 degrees: the turn `predict` makes rests on this.
And on 300x400 JPEG photos rendered from --photos held-out training items (common.held_out_training_items:
never test items, never the shipped model's training images), plain, textured, unevenly lit and with every
distortion at once, beside bare-wall photos (unknown_rate.py's):
- OBJECT_CONTRAST: how many robust standard deviations of the border's noise the brightest pixel stands
  above it, after the background fit `remove_background` takes first: the garments' least, the walls' most;
- SHARPEN: the shipped model's agreement with its class of the original 28x28 item, photos through
  `predict` with the sharpening after the resize and without it.
Saves preprocess_constants.json in --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from common import HERE, Scene, held_out_training_items, render_photo, save_result
from PIL import ImageFilter
from unknown_rate import wall_photos

from fashion_cnn.data import images
from fashion_cnn.data.fmnist import load_fashion_mnist
from fashion_cnn.evaluation.predict import Predictor

MERGES = (0.0, 0.02, 0.04, 0.08, 0.12)  # the shipped value and either side of it
KINDS = {"plain": Scene(), "texture": Scene(texture=True), "lighting": Scene(lighting=True),
         "all": Scene(distractor=True, texture=True, shadow=True, lighting=True, rotation=20)}


def object_contrast(photo: bytes) -> float:
    """The brightest pixel's height above the border, in robust standard deviations of the border's noise,
    for the background fit remove_background tries first (images.without compares it with OBJECT_CONTRAST)."""
    x = images.to_grayscale(images.load_image(photo))
    if images.has_light_background(x):
        x = 1 - x
    _, y, middle, sd = images.background_fits(x)[0]
    return float((y.max() - middle) / sd)


def sharpening(photos: dict[str, list[bytes]], originals: np.ndarray) -> dict:
    """Agreement of `predict` on the photos with the model's class of each original, with SHARPEN and without."""
    predictor = Predictor()
    reference = predictor.predict_arrays(originals).argmax(1)
    shipped, result = images.SHARPEN, {}
    identity = ImageFilter.Kernel((3, 3), [0, 0, 0, 0, 1, 0, 0, 0, 0])
    for name, filt in (("sharpened", shipped), ("not sharpened", identity)):
        images.SHARPEN = filt
        try:
            result[name] = {kind: float(np.mean([p.class_index == r
                                                 for p, r in zip(predictor.predict(shots), reference)]))
                            for kind, shots in photos.items()}
        finally:
            images.SHARPEN = shipped
    return result


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
    parser.add_argument("--photos", type=int, default=300,
                        help="held-out training items rendered per kind (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where preprocess_constants.json goes")
    args = parser.parse_args()

    train = load_fashion_mnist().train_images.numpy()
    picked = np.sort(np.random.default_rng(args.seed).choice(len(train), min(args.n, len(train)), replace=False))
    items = train[picked].astype(np.float32) / 255
    merge = {f"{m:g}": whole_garment_share(items, m) for m in MERGES}
    angles = np.array([abs(images.upright_angle(images.main_object(x))) for x in items if x.max() > images.FOREGROUND])
    upright = {"within_0_degrees": float(np.mean(angles == 0)), "within_2_degrees": float(np.mean(angles <= 2)),
               "items": len(angles)}
    originals, _ = held_out_training_items(args.photos, args.seed)
    photos = {kind: [render_photo(item, np.random.default_rng([args.seed, k, i]), scene)
                     for i, item in enumerate(originals)] for k, (kind, scene) in enumerate(KINDS.items())}
    garments = {kind: min(map(object_contrast, shots)) for kind, shots in photos.items()}
    walls = max(map(object_contrast, wall_photos(np.random.default_rng(args.seed), args.photos, None)))
    result = {"items": "Fashion-MNIST training items", "n": len(items), "seed": args.seed,
              "shipped_merge": images.MERGE, "whole_garment_share_by_merge": merge, "upright": upright,
              "photos": args.photos, "object_contrast": {"shipped": images.OBJECT_CONTRAST,
                                                          "garments_least_by_kind": garments, "walls_most": walls},
              "sharpen_agreement": sharpening(photos, originals)}
    save_result(args.out / "preprocess_constants.json", result)
    print(f"{len(items):,} training items: main object = whole garment at MERGE "
          + ", ".join(f"{m}: {100 * s:.2f}%" for m, s in merge.items())
          + f"; box smallest within 2 degrees of upright for {100 * upright['within_2_degrees']:.1f}%"
          f" (at 0 degrees: {100 * upright['within_0_degrees']:.1f}%)")
    print(f"object contrast: garments' least {min(garments.values()):.1f} ({garments}), walls' most {walls:.1f}")
    print(f"agreement with sharpening / without: {result['sharpen_agreement']}")


if __name__ == "__main__":
    main()
