"""K-fold cross-validation: a fresh model per fold, validated on the held-out fold after every epoch.

Each fold has its own checkpoint, so a resumed run skips finished folds and continues the others from
their last finished epoch.
"""

from __future__ import annotations

import logging
import shlex
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold

from .data import Dataset, class_counts
from .runs import csv_bytes, write_atomic, write_json
from .train import (AT_LEAST_0, History, TrainConfig, TrainState, fit, holdout_split, job_config, job_data, limited,
                    log_class_counts, opt, start_job)

log = logging.getLogger("fashion_cnn")


@dataclass
class CVConfig(TrainConfig):
    """A `cv` run's options: TrainConfig's, the folds, and the split's seed."""

    folds: int = opt(5, "number of folds (the tutorial's 5); 1 validates once on a --val-size holdout",
                     {"rule": "at least 1", "test": lambda v: v >= 1})
    split_seed: int = opt(1, "shuffle seed of the split (the tutorial's KFold random_state=1)", AT_LEAST_0)

    def validates(self) -> bool:
        return True  # on the held-out fold

    def validate(self) -> None:
        super().validate()
        if (self.folds == 1) != bool(self.val_size):
            raise ValueError("--val-size makes one validation split, so it goes with --folds 1 (and --folds 1 "
                             "needs --val-size); k-fold cross-validation validates on each fold in turn")


def kfold_splits(labels: torch.Tensor | np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train indices, validation indices) per fold, stratified: each fold holds each class's share of
    the images (scikit-learn's shuffled StratifiedKFold), so a small class is validated in every fold."""
    labels = np.asarray(labels)
    if not 2 <= folds <= len(labels):
        raise ValueError(f"--folds must be between 2 and the number of images ({len(labels)}), got {folds}")
    with warnings.catch_warnings():  # a class with fewer images than folds: cross_validate logs it
        warnings.simplefilter("ignore", UserWarning)
        return list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(labels, labels))


def summarize(fold_accuracies: list[float]) -> dict:
    acc = np.array(fold_accuracies)
    return {"fold_accuracies": fold_accuracies, "mean": float(acc.mean()), "std": float(acc.std())}


@dataclass
class CVResult:
    """What `cross_validate` measured: per-fold histories and accuracies, their mean and spread."""

    run_dir: Path
    histories: dict[int, History]  # fold number (from 1) -> one row per epoch
    summary: dict  # fold_accuracies, mean, std, best_epochs, seconds_this_session (cv_results.json)

    @property
    def fold_accuracies(self) -> list[float]:
        return self.summary["fold_accuracies"]

    @property
    def mean(self) -> float:
        return self.summary["mean"]

    @property
    def std(self) -> float:
        return self.summary["std"]


def cross_validate(cfg: CVConfig | None = None, resume: str | Path | None = None,
                   data: Dataset | None = None) -> CVResult:
    """Run (or resume) k-fold cross-validation, or one validation split with folds=1 and val_size."""
    from .evaluate import evaluate_model
    from .plots import fold_boxplot, learning_curves, save_figure

    cfg = job_config(CVConfig, cfg, resume)
    data = data or job_data(cfg)
    images, labels = limited(data.train_images, data.train_labels, cfg.limit)
    if cfg.folds == 1:
        (train_idx, _), (val_idx, _) = holdout_split(torch.arange(len(labels)), labels, cfg.val_size)
        splits = [(train_idx.numpy(), val_idx.numpy())]
    else:
        splits = kfold_splits(labels, cfg.folds, cfg.split_seed)
    with start_job(cfg, "cv", resume) as run:
        log.info(f"run directory: {run.dir}\ndata: {data.source} ({len(images)} training images, "
                 + (f"{cfg.folds} stratified folds" if cfg.folds > 1 else f"{cfg.val_size} held out")
                 + f", model {cfg.model})")
        log_class_counts(labels, data.class_names, cfg)
        few = [name for name, n in zip(data.class_names, class_counts(labels, len(data.class_names))) if n < cfg.folds]
        if few and cfg.folds > 1:
            log.info(f"fewer images than folds in class {', '.join(few)}: some folds validate none of them")
        started = time.perf_counter()
        histories: dict[int, History] = {}
        states: dict[int, TrainState] = {}
        macro_f1: dict[int, float] = {}

        def write_metrics(row: dict) -> None:
            rows = [{"fold": k, **r} for k, h in histories.items() for r in h]
            write_atomic(run.dir / "metrics.csv", csv_bytes(rows))

        for fold, (train_idx, val_idx) in enumerate(splits, start=1):
            ckpt = run.dir / f"checkpoint-fold{fold}.safetensors"
            state = states[fold] = TrainState.create(cfg, data.class_names, fold - 1, checkpoint=ckpt)
            histories[fold] = state.history  # fit appends to it: metrics.csv shows the epochs so far
            train_idx, val_idx = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
            if not state.done(cfg):
                fit(state, cfg, (images[train_idx], labels[train_idx]), (images[val_idx], labels[val_idx]),
                    keys=(fold - 1,), checkpoint=ckpt, on_epoch=[write_metrics],
                    desc=f"fold {fold}/{len(splits)} ")
            # macro-F1 weighs every class alike, where accuracy favours the large ones: one more pass
            macro_f1[fold] = evaluate_model(state.final, images[val_idx], labels[val_idx], data.class_names,
                                            cfg.eval_batch_size)["macro_f1"]
            log.info(f"fold {fold}/{len(splits)}: accuracy {100 * state.result['val_accuracy']:.3f}%, macro-F1 "
                     f"{macro_f1[fold]:.4f}" + (f" (best epoch {state.best_epoch})" if state.best_epoch else ""))

        summary = summarize([s.result["val_accuracy"] for s in states.values()])
        summary |= {"fold_macro_f1": list(macro_f1.values()),
                    "macro_f1_mean": float(np.mean(list(macro_f1.values()))),
                    "best_epochs": [s.best_epoch for s in states.values()],
                    "seconds_this_session": time.perf_counter() - started}
        write_json(run.dir / "cv_results.json", summary)
        curves = learning_curves({f"fold {k}": h for k, h in histories.items()},
                                 best_epochs={f"fold {k}": s.best_epoch for k, s in states.items()})
        save_figure(curves, run.dir / "learning_curves.png")
        save_figure(fold_boxplot(summary["fold_accuracies"]), run.dir / "fold_accuracies.png")
        log.info(f"accuracy: mean {100 * summary['mean']:.3f}% std {100 * summary['std']:.3f}% (n={len(splits)}), "
                 f"macro-F1 mean {summary['macro_f1_mean']:.4f}\n"
                 f"results: {run.dir / 'cv_results.json'}, {run.dir / 'metrics.csv'}\n"
                 f"curves: {run.dir / 'learning_curves.png'}, {run.dir / 'fold_accuracies.png'}\n"
                 f"next: {train_command(cfg)}  (the final model on all training images)")
    return CVResult(run.dir, histories, summary)


def train_command(cfg: CVConfig) -> str:
    """The `fashion-cnn train` command with this run's recipe: the options that differ from the defaults
    (a model's recipe counts as its defaults), less those that only mean something in cross-validation."""
    defaults = asdict(TrainConfig(model=cfg.model))
    words = ["fashion-cnn", "train"] + (["--model", cfg.model] if cfg.model != "baseline" else [])
    for name, value in asdict(cfg).items():
        if name in defaults and value != defaults[name] and name not in ("val_size", "early_stopping"):
            flag = "--" + name.replace("_", "-")
            words += [flag] if value is True else [f"--no-{flag[2:]}"] if value is False else [flag, str(value)]
    return shlex.join(words)
