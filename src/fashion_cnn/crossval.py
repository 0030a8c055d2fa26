"""K-fold cross-validation: a fresh model per fold, validated on the held-out fold after every epoch."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import KFold

from .data import FashionMNIST, load_fashion_mnist
from .report import write_report
from .runs import csv_bytes, load_tensors, write_atomic, write_json
from .train import (TrainConfig, fit, limited, load_checkpoint, make_ema, make_model, make_optimizer, opt,
                    save_checkpoint, start_run)

log = logging.getLogger("fashion_cnn")


@dataclass
class CVConfig(TrainConfig):
    folds: int = opt(5, "number of folds (the tutorial's 5)")
    split_seed: int = opt(1, "shuffle seed of the split (the tutorial's KFold random_state=1)")


def kfold_splits(n: int, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train indices, validation indices) per fold, as scikit-learn's shuffled KFold gives them."""
    if not 2 <= folds <= n:
        raise ValueError(f"--folds must be between 2 and the number of images ({n}), got {folds}")
    return list(KFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros((n, 1))))


def summarize(fold_accuracies: list[float]) -> dict:
    acc = np.array(fold_accuracies)
    return {"fold_accuracies": fold_accuracies, "mean": float(acc.mean()), "std": float(acc.std())}


def cross_validate(cfg: CVConfig, resume: str | Path | None = None,
                   data: FashionMNIST | None = None) -> tuple[Path, dict]:
    """Run (or resume) k-fold cross-validation; returns the run directory and the summary."""
    from .plots import plot_learning_curves

    run_dir, cfg = start_run(cfg, "cv", resume)
    data = data or load_fashion_mnist(cfg.data_dir)
    images, labels = limited(data.train_images, data.train_labels, cfg.limit)
    log.info(f"run directory: {run_dir}\ndata: {data.source} ({len(images)} training images, "
             f"{cfg.folds} folds, model {cfg.model})")

    ckpt = run_dir / "checkpoint.safetensors"
    histories: dict[str, list[dict]] = {}
    if resume and ckpt.exists():
        histories = load_tensors(ckpt)[1]["progress"]["histories"]
        log.info(f"resuming: {sum(len(h) for h in histories.values())} epochs already done")

    started = time.perf_counter()
    accuracies = []
    for fold, (train_idx, val_idx) in enumerate(kfold_splits(len(images), cfg.folds, cfg.split_seed)):
        history = histories.get(str(fold), [])
        if len(history) < cfg.epochs:
            model = make_model(cfg, fold)
            optimizer = make_optimizer(model, cfg)
            ema = make_ema(model, cfg)
            if history:
                load_checkpoint(ckpt, model, optimizer, ema)
            train_idx, val_idx = torch.from_numpy(train_idx), torch.from_numpy(val_idx)

            def on_epoch(hist, fold=fold, model=model, optimizer=optimizer, ema=ema):
                histories[str(fold)] = hist
                save_checkpoint(ckpt, model, optimizer, {"job": "cv", "histories": histories}, ema)
                write_atomic(run_dir / "metrics.csv",
                             csv_bytes([{"fold": k, **row} for k, h in histories.items() for row in h]))

            history = fit(model, optimizer, cfg, (images[train_idx], labels[train_idx]),
                          (images[val_idx], labels[val_idx]), history, keys=(fold,),
                          desc=f"fold {fold + 1}/{cfg.folds} ", on_epoch=on_epoch, ema=ema)
        accuracies.append(history[-1]["val_accuracy"])
        log.info(f"fold {fold + 1}/{cfg.folds}: accuracy {100 * accuracies[-1]:.3f}%")

    summary = summarize(accuracies) | {"seconds_this_session": time.perf_counter() - started}
    write_json(run_dir / "cv_results.json", summary)
    plot_learning_curves(histories, run_dir / "learning_curves.png")
    log.info(f"accuracy: mean {100 * summary['mean']:.3f}% std {100 * summary['std']:.3f}% "
             f"(n={cfg.folds}); curves in {run_dir / 'learning_curves.png'}")
    log.info(f"report: {write_report(run_dir, data)}")
    return run_dir, summary
