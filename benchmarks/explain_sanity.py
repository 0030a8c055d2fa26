"""Are `fashion-cnn explain`'s heat maps about the model, or only about the image?

For each model, on N test images (a seeded sample) and the class the model predicts for each, with HiResCAM
(what `explain` shows) and Grad-CAM (for comparison), three measures, for the trained model and for the same
architecture randomly initialised (the model-randomisation check of Adebayo et al., 2018):
- mass on the garment: the share of the heat map's mass on pixels brighter than predict.FOREGROUND, beside
  the share of the image those pixels cover (what a map that ignored the image would score);
- pointing: how often the map's peak lies on the garment;
- rank correlation (Spearman) between the trained model's map and the random model's map of the same image:
  a map that stays the same when the weights are destroyed explains the image, not the model.
Prints a table and saves explain_sanity.json in --out.

    .venv/bin/python benchmarks/explain_sanity.py                                # the packaged model
    .venv/bin/python benchmarks/explain_sanity.py runs/<baseline-run> runs/<fast-run> --n 200
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from common import HERE
from fashion_cnn.data import load_fashion_mnist, to_float
from fashion_cnn.explain import evidence_on_object, heatmaps
from fashion_cnn.inference import predict_logits
from fashion_cnn.models import create_model
from fashion_cnn.predict import FOREGROUND, resolve_model_path
from fashion_cnn.runs import load_model, write_json

METHODS = ("HiResCAM", "Grad-CAM")


def measure(model: torch.nn.Module, images: np.ndarray, method: str) -> tuple[np.ndarray, dict]:
    """The maps of the model's predicted classes and their scores."""
    predicted = predict_logits(model, torch.from_numpy(images)[:, None]).argmax(1).numpy()
    heats = heatmaps(model, images, predicted, method=method)
    share, covered = evidence_on_object(heats, images)
    empty = np.isnan(share)
    peaks = heats.reshape(len(heats), -1).argmax(1)
    on_object = images.reshape(len(images), -1)[np.arange(len(images)), peaks] > FOREGROUND
    return heats, {"mass_on_garment": float(np.nanmean(share)), "garment_area": float(covered.mean()),
                   "pointing": float(on_object[~empty].mean()), "empty_maps": int(empty.sum())}


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Spearman correlation over images whose two maps both vary (a constant map has no ranks)."""
    rhos = [spearmanr(x.ravel(), y.ravel())[0] for x, y in zip(a, b) if x.std() > 0 and y.std() > 0]
    return float(np.mean(rhos))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", help="model files or run directories (default: the packaged model)")
    parser.add_argument("--n", type=int, default=200, help="test images (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="of the sample and the random weights")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where explain_sanity.json goes")
    args = parser.parse_args()

    data = load_fashion_mnist()
    picked = np.random.default_rng(args.seed).choice(len(data.test_images), args.n, replace=False)
    images = to_float(data.test_images[picked])[:, 0].numpy()
    labels = data.test_labels[picked]
    rows = []
    for name in args.models or [None]:
        path = resolve_model_path(name)
        trained, meta = load_model(path)
        torch.manual_seed(args.seed)
        randomised = create_model(meta["architecture"], trained.num_classes, trained.tta).eval()
        accuracy = float((predict_logits(trained, torch.from_numpy(images)[:, None]).argmax(1) == labels)
                         .float().mean())
        for method in METHODS:
            trained_maps, trained_scores = measure(trained, images, method)
            random_maps, random_scores = measure(randomised, images, method)
            rows.append({"model": str(path), "architecture": meta["architecture"], "accuracy": accuracy,
                         "method": method, "trained": trained_scores, "random": random_scores,
                         "rank_correlation_trained_random": rank_correlation(trained_maps, random_maps)})
            r = rows[-1]
            print(f"{r['architecture']:<9} {method:<9} garment area {trained_scores['garment_area']:.3f} | "
                  f"mass on garment: trained {trained_scores['mass_on_garment']:.3f}, random "
                  f"{random_scores['mass_on_garment']:.3f} | pointing: trained {trained_scores['pointing']:.3f}, "
                  f"random {random_scores['pointing']:.3f} | rank correlation trained-random "
                  f"{r['rank_correlation_trained_random']:.3f} | empty maps {trained_scores['empty_maps']}/"
                  f"{random_scores['empty_maps']}", flush=True)
    write_json(args.out / "explain_sanity.json", {"n": args.n, "seed": args.seed, "results": rows})
    print(f"saved {args.out / 'explain_sanity.json'}")


if __name__ == "__main__":
    main()
