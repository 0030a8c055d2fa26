"""Metrics on held-out data: loss, accuracy, confusion matrix, per-class precision/recall/F1.

Counted with numpy from one confusion matrix (np.bincount), the bootstrap's resamples too, where
scikit-learn's metrics and scipy.stats would add 0.7 CPU seconds to the start of every job that trains.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fashion_cnn.evaluation.inference import predict_logits

log = logging.getLogger("fashion_cnn")
LEVEL = 0.95  # the intervals' confidence level
RESAMPLES = 1000  # bootstrap resamples: the interval's ends move by about 0.05 points between seeds
SEED = 0  # the bootstrap's: the same images and answers give the same interval every time
CHUNK = 100  # resamples drawn at once (100 x 10,000 test images: 8 MB of indices)


def evaluate_model(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                   class_names: Sequence[str], batch_size: int = 1000,
                   parts: Sequence[tuple[str, int]] = (), desc: str | None = "evaluating",
                   interval: bool = True) -> dict:
    """Accuracy, loss, macro-F1, confusion matrix and per-class scores, as plain JSON-able values.

    parts: (name, count) of consecutive blocks of the test set (Dataset.test_parts) to score apart too,
    under "parts"; a part's macro-F1 averages the classes it holds.
    desc: the progress bar's label (predict_logits); None for none.
    interval: with the bootstrap interval (a third of a CPU second on 10,000 images); off where the
    caller keeps none of it, as cross-validation's per-fold macro-F1.
    """
    return score(predict_logits(model, images, batch_size, desc=desc), labels, class_names, parts, interval)


def score(logits: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str],
          parts: Sequence[tuple[str, int]] = (), interval: bool = True) -> dict:
    """evaluate_model's report from logits already computed."""
    labels = labels.cpu()
    pred = logits.argmax(1).numpy()
    truth = labels.numpy()
    classes = len(class_names)
    matrix = confusion_matrix(truth, pred, classes)
    tp, support, predicted = np.diag(matrix), matrix.sum(1), matrix.sum(0)
    f1 = f1_scores(tp, support, predicted)
    report = {
        "accuracy": float((pred == truth).mean()),
        "macro_f1": float(np.mean(f1)),
        "images": len(truth),
        **({"interval": bootstrap_interval(truth, pred, classes)} if interval else {}),
        "loss": F.cross_entropy(logits, labels).item(),
        "confusion_matrix": matrix.tolist(),
        "per_class": [
            {"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(class_names, ratio(tp, predicted), ratio(tp, support), f1, support)
        ],
    }
    if parts:
        bounds = np.cumsum([0, *(n for _, n in parts)])
        report["parts"] = {name: part_scores(truth[a:b], pred[a:b], classes)
                           for (name, _), a, b in zip(parts, bounds, bounds[1:])}
    return report


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, classes: int) -> np.ndarray:
    """matrix[t, p]: how many images of class t were predicted p."""
    return np.bincount(truth * classes + pred, minlength=classes * classes).reshape(classes, classes)


def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b, and 0 where b is 0 (a class never predicted has precision 0, as scikit-learn's zero_division=0)."""
    return np.divide(a, b, out=np.zeros(np.shape(a)), where=b > 0)


def f1_scores(tp: np.ndarray, true: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Each class's F1 from its counts: 2 TP / (images of it + predictions of it), 0 for a class with neither."""
    return ratio(2 * tp, true + predicted)


def bootstrap_interval(truth: np.ndarray, pred: np.ndarray, classes: int, resamples: int = RESAMPLES,
                       seed: int = SEED, level: float = LEVEL) -> dict:
    """A percentile bootstrap interval for accuracy and macro-F1 over these images: `resamples` draws of as
    many images with replacement, seeded. Macro-F1 as score() computes it: the mean over all `classes` of
    2 TP / (true + predicted), 0 for a class with neither.

    {"level", "resamples", "seed", "accuracy": [low, high], "macro_f1": [low, high]} (fractions).
    """
    n = len(truth)
    rng = np.random.default_rng(seed)
    accuracy, macro_f1 = np.empty(resamples), np.empty(resamples)
    for start in range(0, resamples, CHUNK):
        rows = min(CHUNK, resamples - start)
        drawn = rng.integers(0, n, (rows, n))
        right = (pred == truth)[drawn]
        offset = (np.arange(rows) * classes)[:, None]  # one bincount counts every (resample, class) pair
        true_at, pred_at = (offset + truth[drawn]).ravel(), (offset + pred[drawn]).ravel()
        tp, true, predicted = (np.bincount(at, weights, rows * classes).reshape(rows, classes)
                               for at, weights in ((true_at, right.ravel()), (true_at, None), (pred_at, None)))
        accuracy[start:start + rows] = right.mean(1)
        macro_f1[start:start + rows] = f1_scores(tp, true, predicted).mean(1)
    tails = 100 * np.array([(1 - level) / 2, (1 + level) / 2])
    return {"level": level, "resamples": resamples, "seed": seed,
            "accuracy": np.percentile(accuracy, tails).tolist(), "macro_f1": np.percentile(macro_f1, tails).tolist()}


def format_interval(report: dict, key: str, scale: float, digits: int) -> str:
    """` (95% CI 95.2-96.0)` for a score of a report with an interval; "" for one without (older files)."""
    try:
        interval = report["interval"]
        low, high = (scale * float(x) for x in interval[key])
        return f" ({100 * float(interval['level']):.0f}% CI {low:.{digits}f}-{high:.{digits}f})"
    except (KeyError, TypeError, ValueError):  # none (a report from before intervals), or edited by hand
        return ""


def mcnemar(right_a: np.ndarray, right_b: np.ndarray, alpha: float = 1 - LEVEL) -> dict:
    """McNemar's test of two models on the same test images, from whether each got each image right: of the
    images exactly one got right, a binomial(half) split is what no difference would give. The mid-p value
    (Fagerland et al. (2013), "The McNemar test for binary matched-pairs data": exact, and less
    conservative than the exact test) says whether the accuracies differ by more than the noise.

    {"difference" (accuracy of a - b, a fraction), "only_a", "only_b" (images only a or b got right),
    "p", "noise" (p >= alpha: within the noise)}.
    """
    right_a, right_b = np.asarray(right_a, bool), np.asarray(right_b, bool)
    if right_a.shape != right_b.shape:
        raise ValueError(f"a paired test needs the same test images: {len(right_a)} and {len(right_b)} answers")
    only_a, only_b = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
    fewer, pairs = min(only_a, only_b), only_a + only_b
    p = min(1.0, mid_p(fewer, pairs))
    return {"difference": (only_a - only_b) / max(len(right_a), 1), "only_a": only_a, "only_b": only_b,
            "p": float(p), "noise": bool(p >= alpha)}


def format_mcnemar(test: dict, a: str = "the first", b: str = "the second") -> str:
    """`difference +0.30 points (41 images only A got right, 11 only B), McNemar p = 0.21: within the noise`."""
    verdict = "within the noise" if test["noise"] else "larger than the noise"
    return (f"difference {100 * test['difference']:+.2f} points ({test['only_a']:,} images only {a} got right, "
            f"{test['only_b']:,} only {b}), McNemar p = {test['p']:.2g}: {verdict}")


def mid_p(fewer: int, pairs: int) -> float:
    """McNemar's two-sided mid-p value: 2 P(X < fewer) + P(X = fewer) for X ~ binomial(pairs, 1/2), in
    exact integers (a float's binomial terms underflow from about 1,075 pairs on)."""
    term, below = 1, 0  # C(pairs, i), and the sum of the terms before it
    for i in range(fewer):
        below += term
        term = term * (pairs - i) // (i + 1)
    return (2 * below + term) / 2 ** pairs


def part_scores(truth: np.ndarray, pred: np.ndarray, classes: int) -> dict:
    """Accuracy, and macro-F1 over the classes present in `truth` (of `classes` in all)."""
    matrix = confusion_matrix(truth, pred, classes)
    present = np.unique(truth)
    f1 = f1_scores(np.diag(matrix), matrix.sum(1), matrix.sum(0))[present].mean() if len(truth) else 0.0
    return {"accuracy": float((pred == truth).mean()) if len(truth) else 0.0, "macro_f1": float(f1),
            "images": len(truth)}


def format_scores(report: dict) -> str:
    """`91.09% (95% CI 90.5-91.6), macro-F1 0.9105 (95% CI 0.905-0.916), on 10,000 images`, then the same
    for each part of the test set (without intervals)."""
    def line(r: dict) -> str:
        return (f"{100 * r['accuracy']:.2f}%{format_interval(r, 'accuracy', 100, 1)}, macro-F1 "
                f"{r['macro_f1']:.4f}{format_interval(r, 'macro_f1', 1, 3)}, on {r['images']:,} images")
    return line(report) + "".join(f"; {name}: {line(r)}" for name, r in report.get("parts", {}).items())


def format_per_class(report: dict) -> str:
    """The per-class precision, recall, F1 and support as a text table, with accuracy and macro-F1."""
    width = max(12, *(len(row["class"]) for row in report["per_class"]))
    lines = [f"{'class':<{width}} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}"]
    for row in report["per_class"]:
        lines.append(f"{row['class']:<{width}} {row['precision']:>9.4f} {row['recall']:>7.4f} "
                     f"{row['f1']:>7.4f} {row['support']:>8d}")
    lines.append(f"{'accuracy':<{width}} {report['accuracy']:>9.4f}   macro F1 {report['macro_f1']:.4f}")
    return "\n".join(lines)


def format_confusion_matrix(report: dict) -> str:
    """The confusion matrix as text: rows are the true classes, columns the predicted ones (numbered)."""
    names = [row["class"] for row in report["per_class"]]
    matrix = report["confusion_matrix"]
    width = max(5, len(str(max(max(r) for r in matrix))) + 1)
    label = max(12, *(len(n) for n in names)) + 4
    lines = ["confusion matrix (rows: true class, columns: predicted class)",
             " " * label + "".join(f"{j:>{width}}" for j in range(len(names)))]
    for i, (name, row) in enumerate(zip(names, matrix)):
        lines.append(f"{i:>2}  {name:<{label - 4}}" + "".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)
