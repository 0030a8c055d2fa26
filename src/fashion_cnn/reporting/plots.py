"""Figures: learning curves, fold accuracies, confusion matrix, sample images per class.

Each function returns a matplotlib Figure built with the object API: no pyplot, no global backend, so
importing this module changes nothing in the caller's matplotlib (`plt.show()` keeps working). Show a
figure in a notebook, or save it with `save_figure` or `fig.savefig`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fashion_cnn.io import write_atomic
from fashion_cnn.text import plain

TRAIN, VALIDATION = "tab:blue", "tab:orange"


def save_figure(fig: Figure, path: str | Path) -> None:
    """The figure as a PNG file, written atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    write_atomic(path, buf.getvalue())


def learning_curves(histories: dict[str, Sequence[dict]] | Sequence[dict],
                    best_epochs: dict[str, int | None] | None = None) -> Figure:
    """Loss and accuracy per epoch, training solid and validation dashed.

    histories: one run's rows (as `fit` returns them), or several runs by name (the folds of a cv run),
    each in its own colour with a legend. best_epochs: name -> the epoch early stopping kept, marked.
    """
    if not isinstance(histories, dict):
        histories = {"": histories}
    several = len(histories) > 1
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for ax, metric, title in zip(axes, ("loss", "accuracy"), ("Cross-entropy loss", "Classification accuracy")):
        for k, (name, history) in enumerate(histories.items()):
            epochs = [row["epoch"] for row in history]
            colours = (f"C{k % 10}",) * 2 if several else (TRAIN, VALIDATION)
            prefix = f"{plain(name)} " if several else ""
            ax.plot(epochs, [row[metric] for row in history], color=colours[0], marker="o", markersize=3,
                    label=f"{prefix}train")
            if history and f"val_{metric}" in history[0]:
                ax.plot(epochs, [row[f"val_{metric}"] for row in history], color=colours[1], marker="o",
                        markersize=3, linestyle="--", label=f"{prefix}validation")
                best = (best_epochs or {}).get(name)
                if best:
                    ax.plot([best], [history[best - 1][f"val_{metric}"]], marker="*", markersize=12,
                            color=colours[1], linestyle="none", label=f"{prefix}best epoch {best}")
        ax.set(title=title + (f" ({len(histories)} folds)" if several else ""), xlabel="epoch", ylabel=metric)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7 if several else 9, ncol=2 if several else 1)
    return fig


def fold_boxplot(fold_accuracies: Sequence[float]) -> Figure:
    """The tutorial's summary of a cross-validation: a box plot of the fold accuracies (in %), each fold
    a dot, the mean a line."""
    acc = 100 * np.asarray(fold_accuracies)
    fig = Figure(figsize=(4, 4.5))
    ax = fig.subplots()
    ax.boxplot(acc, widths=0.5)
    ax.plot(np.ones(len(acc)), acc, "o", color=TRAIN, alpha=0.7)
    ax.axhline(acc.mean(), color=VALIDATION, linestyle="--", label=f"mean {acc.mean():.2f}%")
    ax.set(title=f"Accuracy over {len(acc)} folds", ylabel="validation accuracy (%)", xticks=[])
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    return fig


def confusion_matrix_figure(matrix: Sequence[Sequence[int]], class_names: Sequence[str]) -> Figure:
    """Counts per (true class, predicted class), rows true, with the overall accuracy in the title."""
    m = np.asarray(matrix)
    class_names = [plain(name) for name in class_names]
    fig = Figure(figsize=(7.5, 6.5))
    ax = fig.subplots()
    im = ax.imshow(m, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set(xticks=range(len(class_names)), yticks=range(len(class_names)),
           xticklabels=class_names, yticklabels=class_names, xlabel="predicted", ylabel="true",
           title=f"Confusion matrix (accuracy {np.trace(m) / max(m.sum(), 1):.4f})")
    for label in ax.get_xticklabels():
        label.set(rotation=45, ha="right")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if m[i, j] > m.max() / 2 else "black")
    return fig


def samples_figure(images: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str],
                   per_class: int = 8) -> Figure:
    """A grid with one row per class and its first `per_class` images."""
    fig = Figure(figsize=(per_class * 0.9, len(class_names)))
    axes = fig.subplots(len(class_names), per_class, squeeze=False)
    for c, row in enumerate(axes):
        idx = torch.nonzero(labels == c).flatten()[:per_class]
        for j, ax in enumerate(row):
            ax.axis("off")
            if j < len(idx):
                ax.imshow(images[idx[j]].numpy(), cmap="gray", vmin=0, vmax=255)
        row[0].text(-4, 14, plain(class_names[c]), ha="right", va="center", fontsize=9)
    return fig
