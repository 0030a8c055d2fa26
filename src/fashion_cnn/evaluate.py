"""Metrics on held-out data: loss, accuracy, confusion matrix, per-class precision/recall/F1."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from .data import CLASS_NAMES
from .inference import predict_logits
from .runs import write_atomic, write_json

log = logging.getLogger("fashion_cnn")


def loss_and_accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      batch_size: int = 1000) -> tuple[float, float]:
    logits = predict_logits(model, images, batch_size)
    labels = labels.cpu()
    return F.cross_entropy(logits, labels).item(), (logits.argmax(1) == labels).float().mean().item()


def evaluate_model(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                   batch_size: int = 1000) -> dict:
    """Accuracy, loss, confusion matrix and per-class scores, as plain JSON-able values."""
    logits = predict_logits(model, images, batch_size)
    labels = labels.cpu()
    pred = logits.argmax(1).numpy()
    truth = labels.numpy()
    classes = list(range(len(CLASS_NAMES)))
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, pred, labels=classes, zero_division=0)
    return {
        "accuracy": float((pred == truth).mean()),
        "loss": F.cross_entropy(logits, labels).item(),
        "confusion_matrix": confusion_matrix(truth, pred, labels=classes).tolist(),
        "per_class": [
            {"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(CLASS_NAMES, precision, recall, f1, support)
        ],
    }


def format_per_class(report: dict) -> str:
    lines = [f"{'class':<12} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}"]
    for row in report["per_class"]:
        lines.append(f"{row['class']:<12} {row['precision']:>9.4f} {row['recall']:>7.4f} "
                     f"{row['f1']:>7.4f} {row['support']:>8d}")
    f1 = np.mean([row["f1"] for row in report["per_class"]])
    lines.append(f"{'accuracy':<12} {report['accuracy']:>9.4f}   macro F1 {f1:.4f}")
    return "\n".join(lines)


def write_reports(report: dict, out_dir: Path) -> None:
    """Print the per-class table; save it, the full report and a confusion-matrix plot in out_dir."""
    from .plots import plot_confusion_matrix

    table = format_per_class(report)
    log.info(table)
    write_atomic(out_dir / "per_class.txt", (table + "\n").encode())
    write_json(out_dir / "test_report.json", report)
    plot_confusion_matrix(report["confusion_matrix"], out_dir / "confusion_matrix.png")
