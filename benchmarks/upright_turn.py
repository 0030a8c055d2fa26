"""What does `predict`'s upright turn cost upright photos, and what does it gain on turned ones?

Renders N held-out training items (common.held_out_training_items: the turn is chosen on these, never on
test items) as 300x400 JPEG photos (tests/sample_images.py's render_photo) of three
kinds: plain (upright), turned by up to 20 degrees, and every distortion at once. Each is classified as
`predict` does it (from the view the model is surer of, the object turned upright or as it stands, where
the crop turns it), by the mean of both views' logits, and from one view: `predict.preprocess`'s (turned
upright), and with `images.upright_angle` replaced by one that turns only when the turn makes the
object's bounding box smaller by at least a margin (--margins; 1 means never turn). For each variant and
kind: agreement with the class the model gives the original 28x28 item, accuracy, and the share the
model file's rule calls unknown. Saves upright_turn.json in --out.

    .venv/bin/python benchmarks/upright_turn.py --n 600
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from common import HERE, Scene, held_out_training_items, render_photo, save_result

from fashion_cnn.data import images
from fashion_cnn.evaluation import predict

KINDS = {"plain": Scene(), "turned": Scene(rotation=20),
         "all": Scene(distractor=True, texture=True, shadow=True, lighting=True, rotation=20)}


def upright_angle_with_margin(margin: float):
    """images.upright_angle, but 0 unless the turn shrinks the box's area by at least `margin`."""
    def upright_angle(obj: np.ndarray) -> float:
        degrees, area = images.turned_box_areas(obj)
        best = int(np.argmin(area))
        return float(degrees[best]) if area[best] <= (1 - margin) * area[0] else 0.0
    return upright_angle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=600, help="held-out training items per kind (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--margins", type=float, nargs="*", default=[0.02, 0.05, 1.0],
                        help="box-area margins to compare with the turn as it is (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where upright_turn.json goes")
    args = parser.parse_args()

    originals, labels = held_out_training_items(args.n, args.seed)
    predictor = predict.Predictor()
    reference = predictor.predict_arrays(originals).argmax(1)
    photos = {name: [render_photo(item, np.random.default_rng([args.seed, k, i]), scene)
                     for i, item in enumerate(originals)]
              for k, (name, scene) in enumerate(KINDS.items())}
    as_is = images.upright_angle
    variants = {"predict (surer view)": None, "mean of both views": None, "upright view": as_is,
                **{f"upright view, margin {m:g}": upright_angle_with_margin(m) for m in args.margins}}
    result = {"n": args.n, "seed": args.seed, "model": str(predictor.path), "variants": {}}
    for variant, angle in variants.items():
        images.upright_angle = angle or as_is
        row = {}
        for name, kind in photos.items():
            if variant == "predict (surer view)":
                got = predictor.predict(kind)
                classes = np.array([p.probabilities for p in got]).argmax(1)
                unknown = np.array([p.unknown for p in got])
            else:
                views = [images.preprocess_views(p) for p in kind]
                logits = predictor.logits(np.stack([v[0] for v in views]))
                if variant == "mean of both views":  # where there is one view, the mean is that view's
                    logits = (logits + predictor.logits(np.stack([v[-1] for v in views]))) / 2
                classes, unknown = logits.argmax(1).numpy(), predictor.unknown_rule.unknown(logits).numpy()
            row[name] = {"agreement": float((classes == reference).mean()),
                         "accuracy": float((classes == labels).mean()), "unknown": float(unknown.mean())}
        result["variants"][variant] = row
        print(f"{variant:<27} " + " | ".join(f"{name} agreement {100 * r['agreement']:.1f}%, accuracy "
                                               f"{100 * r['accuracy']:.1f}%, unknown {100 * r['unknown']:.1f}%"
                                               for name, r in row.items()), flush=True)
    images.upright_angle = as_is
    save_result(args.out / "upright_turn.json", result)
    print(f"saved {args.out / 'upright_turn.json'}")


if __name__ == "__main__":
    main()
