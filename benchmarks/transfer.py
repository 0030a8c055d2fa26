"""Transfer learning onto new classes: fine-tuning a trained model vs training from scratch, at 10, 20,
50 and 200 images per class, the mean and standard deviation over seeds 1-3.

Two folders of classes the model being fine-tuned never saw:
- held-out Fashion-MNIST classes: a `fast` model is trained with its recipe on 5 classes (T-shirt/top,
  Trouser, Pullover, Dress, Coat; all 30,000 of their training images), then fine-tuned onto the other 5
  (Sandal, Shirt, Sneaker, Bag, Ankle boot): their training images are the folder's training part, 400
  test images of each its test part;
- scikit-learn's digits, written as PNG files (tests/sample_images.py) and imported as `fashion-cnn
  train --data DIR` imports them (its own 80/20 split: about 36 test images a class, so 100 training
  images a class at most there; 10, 20 and 50 here), fine-tuned from the same 5-class model.

Each seed draws its own k training images per class. Three methods: fine-tuning (--init, the transfer
recipe's defaults: config.TRANSFER_WARMUP and TRANSFER_BACKBONE_LR) and training from scratch both train
the `fast` architecture with its recipe at --batch-size 32, for enough epochs that small data gets STEPS
steps at least; and what a user gets from `fashion-cnn train --data DIR` with no options (the tutorial's
baseline and recipe, from scratch), the comparison the issue made. Before that, the transfer recipe's
settings are compared on VALIDATION images (held-out Fashion-MNIST classes, 20 per class, other training
images than any subset draws; never the test part). Reported per run: test accuracy, training CPU
seconds. Saves transfer.json in --out.

    .venv/bin/python benchmarks/transfer.py --threads 2
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from common import HERE, measured, own_cpu_seconds, save_result, write_digits_folder

from fashion_cnn.config import TRANSFER_BACKBONE_LR, TRANSFER_WARMUP, TrainConfig
from fashion_cnn.data.fmnist import Dataset, load_fashion_mnist
from fashion_cnn.data.folders import load_dataset
from fashion_cnn.jobs.final import train_final
from fashion_cnn.models.files import save_model

BASE_CLASSES, NEW_CLASSES = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
BASE_PER_CLASS = 6000  # all of a base class's training images: a model trained as a user trains one
POOL_PER_CLASS, VAL_PER_CLASS, TEST_PER_CLASS = 1000, 100, 400  # held-out classes: training items 0..999
# are the subsets' pool, the next 100 the validation images; test items the test part
SIZES = {"held-out Fashion-MNIST classes": (10, 20, 50, 200), "scikit-learn digits": (10, 20, 50)}  # digits:
# 100 a class would fit its split (about 3 CPU minutes more), not yet measured
SEEDS = (1, 2, 3)
STEPS = 120  # training steps at least, however small the data
CANDIDATES = {  # the transfer recipe's settings compared on validation images
    "all layers alike (--head-warmup 0 --backbone-lr 1)": dict(head_warmup=0.0, backbone_lr=1.0),
    "backbone at 0.1 x lr (--head-warmup 0 --backbone-lr 0.1)": dict(head_warmup=0.0, backbone_lr=0.1),
    "head alone for 0.2 of the epochs (--head-warmup 0.2 --backbone-lr 1)": dict(head_warmup=0.2, backbone_lr=1.0),
    "both (--head-warmup 0.2 --backbone-lr 0.1)": dict(head_warmup=0.2, backbone_lr=0.1),
}


def classes_of(data: Dataset, classes: tuple[int, ...], train_items: slice, test_items: slice) -> Dataset:
    """Fashion-MNIST restricted to some classes (relabelled 0..), each class's training images
    `train_items` of its own and test images `test_items`."""
    def pick(labels: torch.Tensor, items: slice) -> torch.Tensor:
        return torch.cat([torch.nonzero(labels == c).flatten()[items] for c in classes]).sort().values

    train, test = pick(data.train_labels, train_items), pick(data.test_labels, test_items)
    relabel = torch.full((10,), -1, dtype=torch.long)
    relabel[list(classes)] = torch.arange(len(classes))
    return replace(data, train_images=data.train_images[train], train_labels=relabel[data.train_labels[train]],
                   test_images=data.test_images[test], test_labels=relabel[data.test_labels[test]],
                   class_names=[data.class_names[c] for c in classes], source=f"{data.source}, classes {classes}")


def draw(data: Dataset, k: int, seed: int) -> Dataset:
    """The data with k training images per class, drawn by seed."""
    rng = np.random.default_rng(seed)
    keep = np.sort(np.concatenate([rng.choice(np.flatnonzero(data.train_labels.numpy() == c), k, replace=False)
                                   for c in range(len(data.class_names))]))
    return replace(data, train_images=data.train_images[keep], train_labels=data.train_labels[keep],
                   train_files=None)


def epochs_for(n: int, batch_size: int = 32) -> int:
    """The recipe's epochs, or more, so that n images give STEPS steps at least."""
    return max(TrainConfig(model="fast").epochs, math.ceil(STEPS / math.ceil(n / batch_size)))


def fast_recipe(data: Dataset, seed: int, threads: int, **options) -> TrainConfig:
    """The `fast` architecture with its recipe at batch 32, for STEPS steps at least."""
    return TrainConfig(model="fast", batch_size=32, epochs=epochs_for(len(data.train_labels)), seed=seed,
                       device="cpu", threads=threads, **options)


def default_job(data: Dataset, seed: int, threads: int) -> TrainConfig:
    """What `fashion-cnn train --data DIR --seed SEED` trains: every other option its default, whatever the
    data's size (`data` is taken for the methods' one signature, and unused)."""
    return TrainConfig(seed=seed, device="cpu", threads=threads)


def run(data: Dataset, cfg: TrainConfig, val: Dataset | None = None) -> dict:
    """Train one model on data (less nothing: `val`, when given, is scored instead of the test part)."""
    if val is not None:
        data = replace(data, test_images=val.test_images, test_labels=val.test_labels)
    result = train_final(cfg, data=data, out=None, verbose=0)
    return {"accuracy": result.test["accuracy"], "epochs": cfg.epochs,
            "train_cpu_s": sum(r["cpu_seconds"] for r in result.history)}


def mean_std(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: one per core)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where the JSON goes")
    args = parser.parse_args()
    cpu0 = own_cpu_seconds()
    fashion = load_fashion_mnist(download=False)
    with tempfile.TemporaryDirectory() as tmp:
        base_data = classes_of(fashion, BASE_CLASSES, slice(0, BASE_PER_CLASS), slice(0, TEST_PER_CLASS))
        base_cfg = TrainConfig(model="fast", threads=args.threads, device="cpu")
        base, cost = measured(lambda: train_final(base_cfg, data=base_data, out=None, verbose=0))
        init = Path(tmp, "base.safetensors")
        save_model(init, base.model, {"architecture": "fast", "class_names": base_data.class_names})
        print(f"the 5-class model: {100 * base.test_accuracy:.2f}% on its classes' test images "
              f"({cost['cpu_s']:.0f} CPU seconds)", flush=True)

        held_out = classes_of(fashion, NEW_CLASSES, slice(0, POOL_PER_CLASS), slice(0, TEST_PER_CLASS))
        val = classes_of(fashion, NEW_CLASSES, slice(POOL_PER_CLASS, POOL_PER_CLASS + VAL_PER_CLASS), slice(0, 0))
        val = replace(val, test_images=val.train_images, test_labels=val.train_labels)
        choice = []
        for name, options in CANDIDATES.items():
            subset = draw(held_out, 20, 1)
            row = {"recipe": name, "options": options,
                   **run(subset, fast_recipe(subset, 1, args.threads, init=str(init), **options), val=val)}
            choice.append(row)
            print(f"validation, 20 per class: {name}: {100 * row['accuracy']:.2f}%", flush=True)

        write_digits_folder(Path(tmp, "digits"))
        folders = {"held-out Fashion-MNIST classes": held_out, "scikit-learn digits": load_dataset(Path(tmp, "digits"))}
        methods = {"fine-tuned (transfer recipe's defaults)": partial(fast_recipe, init=str(init)),
                   "from scratch": fast_recipe,
                   "from scratch, `train --data DIR` as it is": default_job}
        rows = []
        for folder, data in folders.items():
            for k in SIZES[folder]:
                for method, config in methods.items():
                    subsets = [draw(data, k, seed) for seed in SEEDS]
                    runs = [run(subset, config(subset, seed, args.threads)) for subset, seed in zip(subsets, SEEDS)]
                    row = {"folder": folder, "per_class": k, "method": method, "runs": runs,
                           "test_images": len(data.test_labels), "epochs": runs[0]["epochs"],
                           "accuracy": mean_std([r["accuracy"] for r in runs]),
                           "train_cpu_s": mean_std([r["train_cpu_s"] for r in runs])}
                    rows.append(row)
                    print(f"{folder}, {k} per class, {method}: {100 * row['accuracy']['mean']:.1f} ± "
                          f"{100 * row['accuracy']['std']:.1f}% ({row['train_cpu_s']['mean']:.0f} CPU s a run)",
                          flush=True)
    save_result(args.out / "transfer.json", {
        "threads": torch.get_num_threads(), "seeds": list(SEEDS), "min_steps": STEPS,
        "defaults": {"head_warmup": TRANSFER_WARMUP, "backbone_lr": TRANSFER_BACKBONE_LR},
        "base_model": {"classes": base_data.class_names, "per_class": BASE_PER_CLASS, "epochs": base_cfg.epochs,
                       "test_accuracy": base.test_accuracy, "cost": cost},
        "validation_choice": choice, "rows": rows, "cpu_seconds": own_cpu_seconds() - cpu0})


if __name__ == "__main__":
    main()
