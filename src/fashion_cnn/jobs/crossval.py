"""K-fold cross-validation: a fresh model per fold, validated on the held-out fold after every epoch.

Each fold has its own checkpoint, so a resumed run skips finished folds and continues the others from
their last finished epoch. Under torchrun the folds are spread over the processes (fold k on rank
(k - 1) % N), each trained whole as one process trains it, and rank 0 gathers the results.
"""

from __future__ import annotations

import logging
import shlex
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from fashion_cnn import tensorboard_log
from fashion_cnn.config import CVConfig, TrainConfig, duration_seconds
from fashion_cnn.data.fmnist import Dataset, class_counts
from fashion_cnn.evaluation.metrics import evaluate_model
from fashion_cnn.io import csv_bytes, write_atomic, write_json
from fashion_cnn.jobs.common import (
    Out,
    job_config,
    job_data,
    log_class_counts,
    machine_name,
    start_job,
    training_images,
)
from fashion_cnn.reporting.plots import fold_boxplot, learning_curves, save_figure
from fashion_cnn.reporting.report import write_report
from fashion_cnn.training import distributed
from fashion_cnn.training.loop import History, TrainState, fit, holdout_split, limited, resolve_device
from fashion_cnn.training.runs import PROGRESS_LINE, check_verbose

log = logging.getLogger("fashion_cnn")


def balanced(labels: np.ndarray) -> bool:
    """Whether every class present has as many images as any other (all of Fashion-MNIST: 6,000 each)."""
    counts = np.bincount(labels)
    return counts[counts > 0].min() == counts.max()


def kfold_splits(labels: torch.Tensor | np.ndarray, folds: int, seed: int, stratify: bool | None = None
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train indices, validation indices) per fold, shuffled with seed. Stratified, so that each fold
    holds each class's share of the images and a small class is validated in every fold (scikit-learn's
    StratifiedKFold), unless the classes are balanced: there every class's expected share of a fold is
    already equal, and the folds are the tutorial's KFold(folds, shuffle=True, random_state=seed), so
    Fashion-MNIST's numbers are those of the tutorial's split. `stratify` overrides that choice."""
    # scikit-learn costs a second of start-up: here, not at import, it is spent by cv alone (train --budget
    # imports this module too)
    from sklearn.model_selection import KFold, StratifiedKFold

    labels = np.asarray(labels)
    if not 2 <= folds <= len(labels):
        raise ValueError(f"--folds must be between 2 and the number of images ({len(labels)}), got {folds}")
    if not (stratify if stratify is not None else not balanced(labels)):
        return list(KFold(n_splits=folds, shuffle=True, random_state=seed).split(labels))
    with warnings.catch_warnings():  # a class with fewer images than folds: cross_validate logs it
        warnings.simplefilter("ignore", UserWarning)
        return list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(labels, labels))


def cv_splits(cfg: CVConfig, labels: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train indices, validation indices) per fold of the (limited) training labels: k folds, or the
    --val-size holdout with folds=1. ValueError where the options do not fit the data."""
    if cfg.folds == 1:
        (train_idx, _), (val_idx, _) = holdout_split(torch.arange(len(labels)), labels, cfg.val_size)
        return [(train_idx.numpy(), val_idx.numpy())]
    return kfold_splits(labels, cfg.folds, cfg.split_seed)


def summarize(fold_accuracies: list[float]) -> dict:
    """The fold accuracies with their mean and (population) standard deviation, as the tutorial reports them."""
    acc = np.array(fold_accuracies)
    return {"fold_accuracies": fold_accuracies, "mean": float(acc.mean()), "std": float(acc.std())}


@dataclass
class CVResult:
    """What `cross_validate` measured: per-fold histories and accuracies, their mean and spread."""

    run_dir: Path | None  # None for a job run with out=None, which kept nothing on disk
    histories: dict[int, History]  # fold number (from 1) -> one row per epoch
    summary: dict  # fold_accuracies, mean, std, best_epochs, train_seconds, ... (cv_results.json)

    @property
    def fold_accuracies(self) -> list[float]:
        return self.summary["fold_accuracies"]

    @property
    def mean(self) -> float:
        return self.summary["mean"]

    @property
    def std(self) -> float:
        return self.summary["std"]


def cross_validate(cfg: CVConfig | None = None, resume: str | Path | None = None, data: Dataset | None = None,
                   on_epoch: Iterable[Callable[[dict[int, History]], None]] = (), *, out: Out = ...,
                   verbose: int = 1, time_limit: float | None = None) -> CVResult:
    """Run (or resume) k-fold cross-validation, or one validation split with folds=1 and val_size; under
    torchrun, the folds spread over the processes, with the numbers one process gives (same --threads).

    on_epoch: called after every epoch with the histories of the folds so far (fold number -> rows), the
    ones finished before a resume included: the seam for reporting progress, e.g. to a pruner.
    out: the folder the run directory goes in (default: cfg.out, ./runs); None keeps nothing on disk (no
    run directory, checkpoints or report: the histories and scores are in the result only, and an
    interrupted job cannot be resumed).
    verbose: what the terminal shows: 0 nothing, 1 progress bars and a line per epoch and per fold, 2 the
    whole log (the CLI's); a run directory's log.txt holds the whole log either way.
    time_limit: the seconds training may take, divided equally over the folds (fit); by default all of
    --budget (budget.py, which also chooses the recipe, passes what the budget leaves for training).
    """

    check_verbose(verbose)
    with distributed.agreed():  # under torchrun every process checks its options and data before any work
        cfg = job_config(CVConfig, cfg, resume, out)
        data = data or job_data(cfg)
        distributed.check_folds(cfg.folds)
        images, labels = limited(data.train_images, data.train_labels, cfg.limit)
        splits = cv_splits(cfg, labels)
    distributed.check_same_config(asdict(cfg))
    distributed.check_same_data(data)
    world = distributed.world()
    with start_job(cfg, "cv", resume, keep=out is not None, verbose=verbose) as run:
        run_dir = run.dir if run else None
        log.info((f"run directory: {run_dir}\n" if run_dir else "") + f"data: {data.source} ({len(images)} "
                 "training images, "
                 + (f"{cfg.folds} {'' if balanced(labels.numpy()) else 'stratified '}folds" if cfg.folds > 1
                    else f"{cfg.val_size} held out")
                 + f", model {cfg.model})")
        log_class_counts(labels, data.class_names, cfg)
        few = [name for name, n in zip(data.class_names, class_counts(labels, len(data.class_names))) if n < cfg.folds]
        if few and cfg.folds > 1:
            log.info(f"fewer images than folds in class {', '.join(few)}: some folds validate none of them")
        limit = duration_seconds(cfg.budget) if time_limit is None else time_limit
        histories: dict[int, History] = {}
        states: dict[int, TrainState] = {}
        macro_f1: dict[int, float] = {}

        def write_metrics(row: dict) -> None:
            rows = [{"fold": k, **r} for k, h in histories.items() for r in h]
            write_atomic(run_dir / "metrics.csv", csv_bytes(rows))

        def report(row: dict) -> None:
            for callback in on_epoch:
                callback(histories)

        def fold_line(fold: int, accuracy: float, macro_f1: float, best_epoch: int | None) -> str:
            return (f"fold {fold}/{len(splits)}: accuracy {100 * accuracy:.3f}%, macro-F1 {macro_f1:.4f}"
                    + (f" (best epoch {best_epoch})" if best_epoch else ""))

        for fold, (train_idx, val_idx) in enumerate(splits, start=1):
            if (fold - 1) % world.size != world.rank:
                continue  # another process's fold
            train_idx, val_idx = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
            ckpt = run_dir / f"checkpoint-fold{fold}.safetensors" if run_dir else None
            state = states[fold] = TrainState.create(cfg, data.class_names, fold - 1, checkpoint=ckpt)
            histories[fold] = state.history  # fit appends to it: metrics.csv shows the epochs so far
            if not state.done(cfg):
                tensorboard = run_dir / "tensorboard" / f"fold{fold}" if run_dir else None  # none without a run
                with tensorboard_log.epoch_log(cfg.tensorboard, tensorboard) as tb:
                    fit(state, cfg, (images[train_idx], labels[train_idx]), (images[val_idx], labels[val_idx]),
                        keys=(fold - 1,), checkpoint=ckpt,
                        on_epoch=[*([write_metrics] if world.is_main and run_dir else []), report, *tb],
                        desc=f"fold {fold}/{len(splits)} ", verbose=verbose,
                        time_limit=None if limit is None else limit / len(splits))
            # macro-F1 weighs every class alike, where accuracy favours the large ones: one more pass
            macro_f1[fold] = evaluate_model(state.final, images[val_idx], labels[val_idx], data.class_names,
                                            cfg.eval_batch_size, desc="evaluating" if verbose else None,
                                            interval=False)["macro_f1"]
            log.info(fold_line(fold, state.result["val_accuracy"], macro_f1[fold], state.best_epoch),
                     extra=PROGRESS_LINE)

        folds = distributed.gather_dict({k: {"history": s.history, "best_epoch": s.best_epoch, "macro_f1": macro_f1[k],
                                             "accuracy": s.result["val_accuracy"]} for k, s in states.items()})
        for k, r in folds.items():
            if k not in states:
                log.info(f"{fold_line(k, r['accuracy'], r['macro_f1'], r['best_epoch'])} (rank {(k - 1) % world.size})",
                         extra=PROGRESS_LINE)
        histories = {k: History(r["history"]) for k, r in folds.items()}
        summary = summarize([r["accuracy"] for r in folds.values()])
        summary |= {"fold_macro_f1": [r["macro_f1"] for r in folds.values()],
                    "macro_f1_mean": float(np.mean([r["macro_f1"] for r in folds.values()])),
                    "best_epochs": [r["best_epoch"] for r in folds.values()],
                    "machine": machine_name(resolve_device(cfg.device)),  # for reports, as train records it
                    # every epoch's, before a resume too (the checkpoints keep them), as train's metrics.json
                    "train_seconds": sum(row["seconds"] for h in histories.values() for row in h),
                    "train_cpu_seconds": sum(row["cpu_seconds"] for h in histories.values() for row in h)}
        result = CVResult(run_dir, histories, summary)
        scores = (f"accuracy: mean {100 * summary['mean']:.3f}% std {100 * summary['std']:.3f}% (n={len(splits)}), "
                  f"macro-F1 mean {summary['macro_f1_mean']:.4f}")
        if run_dir is None:
            log.info(scores)
            return result
        if not world.is_main:
            return result  # rank 0 writes the files
        write_metrics({})  # every fold's epochs, the other processes' too
        write_json(run_dir / "cv_results.json", summary)
        curves = learning_curves({f"fold {k}": h for k, h in histories.items()},
                                 best_epochs={f"fold {k}": r["best_epoch"] for k, r in folds.items()})
        save_figure(curves, run_dir / "learning_curves.png")
        save_figure(fold_boxplot(summary["fold_accuracies"]), run_dir / "fold_accuracies.png")
        log.info(f"{scores}"
                 + (f"; the {cfg.budget} budget was divided over the {len(splits)} folds" if cfg.budget else "")
                 + "\n"
                 f"results: {run_dir / 'cv_results.json'}, {run_dir / 'metrics.csv'}\n"
                 f"curves: {run_dir / 'learning_curves.png'}, {run_dir / 'fold_accuracies.png'}\n"
                 f"report: {write_report(run_dir, data)}\n"
                 f"next: {train_command(cfg)}  (the final model on {training_images(cfg.limit)})")
    return result


def train_command(cfg: CVConfig) -> str:
    """The `fashion-cnn train` command with this run's recipe: the options that differ from the defaults
    (a model's recipe counts as its defaults), less those that only mean something in cross-validation, and
    --budget, whose choice (--model, --epochs) it spells out instead."""
    defaults = asdict(TrainConfig(model=cfg.model))
    words = ["fashion-cnn", "train"] + (["--model", cfg.model] if cfg.model != "baseline" else [])
    for name, value in asdict(cfg).items():
        if name in defaults and value != defaults[name] and name not in ("val_size", "early_stopping", "budget"):
            flag = "--" + name.replace("_", "-")
            words += [flag] if value is True else [f"--no-{flag[2:]}"] if value is False else [flag, str(value)]
    return shlex.join(words)
