"""PNG figures: learning curves, confusion matrix, sample images per class."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .data import CLASS_NAMES  # noqa: E402
from .runs import write_atomic  # noqa: E402


def save_figure(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def plot_learning_curves(histories: dict[str, list[dict]], path: Path) -> None:
    """Loss and accuracy per epoch: train in blue, validation in orange, one line pair per fold."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for panel, (ax, metric, title) in enumerate(zip(axes, ("loss", "accuracy"),
                                                    ("Cross-entropy loss", "Classification accuracy"))):
        for k, history in enumerate(histories.values()):
            epochs = [row["epoch"] for row in history]
            ax.plot(epochs, [row[metric] for row in history], color="tab:blue", alpha=0.8,
                    label="train" if k == 0 else None)
            if history and f"val_{metric}" in history[0]:
                ax.plot(epochs, [row[f"val_{metric}"] for row in history], color="tab:orange",
                        alpha=0.8, label="validation" if k == 0 else None)
        ax.set(title=title + (f" ({len(histories)} folds)" if len(histories) > 1 else ""),
               xlabel="epoch", ylabel=metric)
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, path)


def plot_confusion_matrix(matrix: list[list[int]], path: Path) -> None:
    m = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    im = ax.imshow(m, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set(xticks=range(len(CLASS_NAMES)), yticks=range(len(CLASS_NAMES)),
           xticklabels=CLASS_NAMES, yticklabels=CLASS_NAMES, xlabel="predicted", ylabel="true",
           title=f"Confusion matrix (accuracy {np.trace(m) / max(m.sum(), 1):.4f})")
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if m[i, j] > m.max() / 2 else "black")
    save_figure(fig, path)


def plot_samples(images: torch.Tensor, labels: torch.Tensor, path: Path, per_class: int = 8,
                 class_names: Sequence[str] = CLASS_NAMES) -> None:
    """A grid with one row per class and its first `per_class` images."""
    fig, axes = plt.subplots(len(class_names), per_class, figsize=(per_class * 0.9, len(class_names)),
                             squeeze=False)
    for c, row in enumerate(axes):
        idx = torch.nonzero(labels == c).flatten()[:per_class]
        for j, ax in enumerate(row):
            ax.axis("off")
            if j < len(idx):
                ax.imshow(images[idx[j]].numpy(), cmap="gray", vmin=0, vmax=255)
        row[0].text(-4, 14, class_names[c], ha="right", va="center", fontsize=9, parse_math=False)
    save_figure(fig, path)
