"""Do fashion-cnn and Keras compute the same thing? Both trained from the same initial weights through the same batches.

Keras draws the baseline's initial weights; fashion-cnn's baseline starts from a copy of them (Keras's layouts
transposed to torch's; Flatten already uses Keras's height-width-channel order). Both then train on the same
48,000 images in the same per-epoch orders (drawn here from --seed) with SGD 0.01 / momentum 0.9 at batch 32,
validating on the same 12,000 after every epoch. Float rounding differs (oneDNN vs fashion-cnn's kernels) and
training amplifies it, so the two drift apart slowly, but a difference in the mathematics would show at once.
Prints both learning curves side by side; saves same_steps_as_keras.json in --out.

    make bench-same-steps            # 10 epochs, seed 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import HERE, run_keras, save_result, tutorial_fold1

from fashion_cnn.config import TrainConfig
from fashion_cnn.data.fmnist import find_data_dir, load_fashion_mnist
from fashion_cnn.data.images import to_float
from fashion_cnn.evaluation.inference import loss_and_accuracy
from fashion_cnn.models.registry import create_model
from fashion_cnn.training.loop import make_optimizer, make_step


def baseline_from_keras(weights: np.lib.npyio.NpzFile) -> torch.nn.Module:
    """fashion-cnn's baseline holding Keras's weights (conv HWIO -> OIHW, dense (in, out) -> (out, in))."""
    model = create_model("baseline")
    w = [torch.from_numpy(weights[f"arr_{i}"]) for i in range(6)]
    with torch.no_grad():
        for layer, kernel, bias in ((model.conv, w[0].permute(3, 2, 0, 1), w[1]),
                                    (model.fc1, w[2].T, w[3]), (model.fc2, w[4].T, w[5])):
            layer.weight.copy_(kernel)
            layer.bias.copy_(bias)
    return model


def train_in_order(model: torch.nn.Module, train: tuple, val: tuple, orders: np.ndarray,
                   batch_size: int) -> list[dict]:
    """Per epoch: mean training loss and validation loss and accuracy, training in the given orders."""
    step = make_step(model, make_optimizer(model, TrainConfig()))
    history = []
    for order in orders:
        images, labels = (t[torch.from_numpy(order)] for t in train)
        total = sum(step(to_float(images[i:i + batch_size]), labels[i:i + batch_size])[0].item()
                    for i in range(0, len(images), batch_size))
        val_loss, val_accuracy = loss_and_accuracy(model, *val)
        history.append({"loss": total / len(images), "val_loss": val_loss, "val_accuracy": val_accuracy})
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1, help="Keras's initial weights and the batch orders")
    parser.add_argument("--keras-python", type=Path, default=HERE.parent / ".venv-keras/bin/python")
    parser.add_argument("--data-dir", type=Path, help="Fashion-MNIST directory (default: fashion-cnn's search)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()

    data_dir = find_data_dir(args.data_dir)
    data = load_fashion_mnist(data_dir)
    train_idx, val_idx = tutorial_fold1(len(data.train_images))
    rng = np.random.default_rng(args.seed)
    orders = np.stack([rng.permutation(len(train_idx)) for _ in range(args.epochs)])
    with tempfile.TemporaryDirectory() as tmp:
        split, order_file, init = Path(tmp) / "split.npz", Path(tmp) / "orders.npy", Path(tmp) / "init.npz"
        np.savez(split, train_idx=train_idx, val_idx=val_idx)
        np.save(order_file, orders)
        print(f"Keras: {args.epochs} epochs in the given orders...", file=sys.stderr)
        keras = run_keras(args.keras_python, data_dir, split, args.epochs, args.batch_size, None, args.seed,
                          ("--orders", str(order_file), "--save-init", str(init)))["history"]
        model = baseline_from_keras(np.load(init))
    print("fashion-cnn: the same steps...", file=sys.stderr)
    t_idx, v_idx = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    ours = train_in_order(model, (data.train_images[t_idx], data.train_labels[t_idx]),
                          (data.train_images[v_idx], data.train_labels[v_idx]), orders, args.batch_size)

    lines = ["epoch | train loss: Keras, fashion-cnn | val loss: Keras, fashion-cnn | val accuracy %: Keras, "
             "fashion-cnn, difference"]
    for e, (k, o) in enumerate(zip(keras, ours), 1):
        lines.append(f"{e:5d} | {k['loss']:.4f}  {o['loss']:.4f} | {k['val_loss']:.4f}  {o['val_loss']:.4f} | "
                     f"{100 * k['val_accuracy']:.2f}  {100 * o['val_accuracy']:.2f}  "
                     f"{100 * (o['val_accuracy'] - k['val_accuracy']):+.2f}")
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "same_steps_as_keras.json"
    config = {"epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed,
              "split": "fold 1 of KFold(5, shuffle=True, random_state=1)"}
    save_result(path, {"config": config, "keras": keras, "fashion_cnn": ours, "table": lines})


if __name__ == "__main__":
    main()
