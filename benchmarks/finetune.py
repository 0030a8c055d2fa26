"""Fine-tuning the packaged model vs training from scratch, on 20, 50 and 200 photos per class.

The photos are Fashion-MNIST TEST items (which the packaged model never saw) rendered as 300x400 JPEG
photos (tests/sample_images.py): per class, the first 200 test items are the training photos (the first
20 and 50 of them the smaller sets), the next --eval-per-class items, other garments, the photos every
run is tested on. All runs read the same imported folder, DIR/train/<class>/ and DIR/test/<class>/, whose
class folders are named after Fashion-MNIST's classes ("T-shirt-top"), so fine-tuning keeps the packaged
model's head, its rows in the folder's (alphabetical) order.

Each variant is `train_final` with a TrainConfig, as `fashion-cnn train --data DIR ...` runs it; the
variants and their options are in VARIANTS below. Reported per run: accuracy and macro-F1 on the test
photos, training wall and CPU seconds (this process, all threads), with the share of the CPUs other
processes used meanwhile. Saves finetune.json in --out.

    .venv/bin/python benchmarks/finetune.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from common import (
    HERE,
    cpu_snapshot,
    folder_name,
    measured,
    other_cpu_share,
    others_busy_now,
    own_cpu_seconds,
    save_result,
    write_photo_folder,
)

from fashion_cnn.config import TrainConfig
from fashion_cnn.data.fmnist import Dataset, load_fashion_mnist
from fashion_cnn.data.folders import class_mapping, load_dataset
from fashion_cnn.evaluation.metrics import evaluate_model
from fashion_cnn.jobs.final import train_final
from fashion_cnn.models.files import load_model
from fashion_cnn.models.locate import packaged_model

SIZES = (20, 50, 200)  # training photos per class
# name -> options of `fashion-cnn train` (as TrainConfig fields); epochs fewer than the recipes' where said
VARIANTS = {
    "fine-tune, strong's recipe (lr 0.1, batch 128), 10 epochs": dict(init="packaged", epochs=10),
    "fine-tune, lr 0.001, batch 32, 10 epochs": dict(init="packaged", epochs=10, lr=0.001, batch_size=32),
    "fine-tune the head only (--freeze-backbone), strong's recipe, 10 epochs":
        dict(init="packaged", freeze_backbone=True, epochs=10),
    "from scratch: strong, its recipe, 30 epochs": dict(model="strong", epochs=30),
    "from scratch: fast, its recipe (18 epochs)": dict(model="fast"),
}


def render_pool(root: Path, eval_per_class: int) -> None:
    """root/train/<class>/ (the first 200 test items of each class) and root/test/<class>/ (the next ones)."""
    data = load_fashion_mnist(download=False)
    labels = data.test_labels.numpy()
    folders = [folder_name(c) for c in data.class_names]
    first = {c: np.flatnonzero(labels == c) for c in range(len(folders))}
    train_items = np.sort(np.concatenate([items[:max(SIZES)] for items in first.values()]))
    test_items = np.sort(np.concatenate([items[max(SIZES):max(SIZES) + eval_per_class] for items in first.values()]))
    images = data.test_images.numpy()
    write_photo_folder(root / "train", images, labels, folders, train_items, seed=0)
    write_photo_folder(root / "test", images, labels, folders, test_items, seed=1)


def first_per_class(data: Dataset, k: int) -> Dataset:
    """The data with only the k lowest-numbered training photos of each class (files are named by item)."""
    item = torch.tensor([int(Path(f).stem) for f in data.train_files])
    keep = torch.zeros(len(item), dtype=torch.bool)
    for c in range(len(data.class_names)):
        mine = torch.nonzero(data.train_labels == c).flatten()
        keep[mine[item[mine].argsort()[:k]]] = True
    return replace(data, train_images=data.train_images[keep], train_labels=data.train_labels[keep],
                   train_files=[f for f, kept in zip(data.train_files, keep) if kept])


def scores(model: torch.nn.Module, data: Dataset, model_classes: list[str]) -> dict:
    """Accuracy and macro-F1 of a Fashion-MNIST model on the photos: its classes in the folder's order."""
    rows = class_mapping(data.class_names, model_classes)
    report = evaluate_model(model, data.test_images, torch.tensor(rows)[data.test_labels], model_classes)
    return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval-per-class", type=int, default=100, help="test photos per class (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's, one per core)")
    parser.add_argument("--pool", type=Path, help="render the photos here and keep them (default: a temporary "
                        "folder); an existing pool is reused")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where the JSON goes")
    args = parser.parse_args()

    started, busy_before = time.strftime("%Y-%m-%d %H:%M:%S"), others_busy_now()
    since, cpu0 = cpu_snapshot(), own_cpu_seconds()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        pool = args.pool or Path(tmp, "photos")
        if not pool.exists():
            _, rendering = measured(lambda: render_pool(pool, args.eval_per_class))
            print(f"rendered the photos: {rendering['cpu_s']:.0f} CPU seconds")
        data, importing = measured(lambda: load_dataset(pool))
        print(f"imported {len(data.train_images)} training and {len(data.test_images)} test photos: "
              f"{importing['wall_s']:.1f}s ({importing['cpu_s']:.1f} CPU seconds)")
        packaged, meta = load_model(packaged_model())
        rows = [{"variant": "the packaged model as it is (no training)", "photos_per_class": 0,
                 **scores(packaged, data, meta["class_names"])}]
        print(f"{rows[0]['variant']}: {100 * rows[0]['accuracy']:.2f}%")
        for k in SIZES:
            subset = first_per_class(data, k)
            for name, options in VARIANTS.items():
                cfg = TrainConfig(data=str(pool), out=str(Path(tmp, "runs")), threads=args.threads, **options)
                result, cost = measured(lambda: train_final(cfg, data=subset))
                history = result.history
                row = {"variant": name, "photos_per_class": k, "accuracy": result.test["accuracy"],
                       "macro_f1": result.test["macro_f1"], "epochs": len(history),
                       "train_wall_s": sum(r["seconds"] for r in history),
                       "train_cpu_s": sum(r["cpu_seconds"] for r in history), "job": cost,
                       "options": options}
                rows.append(row)
                print(f"{k} per class, {name}: {100 * row['accuracy']:.2f}% (macro-F1 {row['macro_f1']:.4f}); "
                      f"training {row['train_wall_s']:.0f}s wall, {row['train_cpu_s']:.0f}s CPU")
    busy = other_cpu_share(since)
    print(f"{own_cpu_seconds() - cpu0:.0f} CPU seconds in all; other processes used {100 * busy:.0f}% of the CPUs "
          f"({100 * busy_before:.0f}% just before); load average {os.getloadavg()[0]:.1f}")
    save_result(args.out / "finetune.json", {
        "started": started, "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
        "eval_photos": len(data.test_images), "import": importing, "rows": rows,
        "cpu_seconds": own_cpu_seconds() - cpu0, "other_cpu_share": busy, "other_cpu_share_before": busy_before,
        "load_average_after": os.getloadavg()})


if __name__ == "__main__":
    main()
