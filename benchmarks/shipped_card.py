"""Give the shipped model file its known limits (card.py's "limits") without touching its weights.

    python benchmarks/shipped_card.py            # after benchmarks/model_results.py --ship

`fashion-cnn train` writes a model card into every model file, its limits "not measured"; the shipped
model's were measured (photos rendered from Fashion-MNIST items, images of no class it knows). This puts
them in its card, rewrites the file with the very same tensors (checked bit for bit), and writes the
card and the figures it repeats from the metadata (test accuracy, macro-F1 and their intervals, image
counts) to benchmarks/results/shipped_card.json. The test set is not read again.
"""

from __future__ import annotations

import torch
from common import save_result
from model_results import RESULTS, SHIPPED

from fashion_cnn.io import load_tensors, save_tensors
from fashion_cnn.models.card import model_card
from fashion_cnn.models.files import load_model

# Measured on photos rendered from held-out training items (docs/benchmarks/photos.md,
# benchmarks/results/predict_clutter.json, upright_turn.json) and on images of no class it knows
# (docs/benchmarks/unknown.md).
LIMITS = ("Made for one garment, shoe or bag per image, roughly centred, on a plain background, in the ten "
          "Fashion-MNIST classes. On 300x400 photos rendered from held-out training items, agreement with the "
          "class of the original falls from 97.2% (plain) to 91.8% with clutter, texture, shadow, uneven light and "
          "turns together; photos of several objects, of people wearing the clothes, or of other things (hats, "
          "jewellery, furniture) are outside what it knows: about 1% of its own kind of images are called "
          "unknown, and things of no class may still get a confident wrong class.")


def main() -> None:
    tensors, meta = load_tensors(SHIPPED)
    load_model(SHIPPED)  # a model file this package reads, before anything is written
    figures = {key: meta[key] for key in ("test_accuracy", "test_macro_f1", "test_interval", "training_images",
                                          "test_images")}
    meta["model_card"] = model_card(meta, LIMITS)
    save_tensors(SHIPPED, tensors, meta)
    again, _ = load_tensors(SHIPPED)
    assert again.keys() == tensors.keys() and all(torch.equal(again[k], tensors[k]) for k in tensors)
    save_result(RESULTS / "shipped_card.json", {**figures, "model_card": meta["model_card"]})
    print(f"{SHIPPED}: known limits added to its model card, weights bit-identical; accuracy "
          f"{meta['test_accuracy']:.4f}, 95% CI {meta['test_interval']['accuracy']}")


if __name__ == "__main__":
    main()
