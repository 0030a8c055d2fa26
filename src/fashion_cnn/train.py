"""The training loop, and the job that trains the final model and evaluates it once on the test set.

Data stays one uint8 tensor on the device; a batch is a slice of a per-epoch permutation, scaled to
[0, 1] as it is used. The baseline on CPU trains through its hand-derived gradients (fastpath.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import __version__
from .data import CLASS_NAMES, FashionMNIST, load_fashion_mnist
from .fastpath import BaselineGrads
from .models import Baseline, count_parameters, create_model
from .runs import (load_tensors, new_run_dir, read_config, optimizer_tensors, restore_optimizer, save_model,
                   save_tensors, start_log, write_json)

log = logging.getLogger("fashion_cnn")


def opt(default, help: str):
    """A config field whose help text is shown by --help: the why beside every default."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    model: str = opt("baseline", "architecture from the registry (`fashion-cnn models` lists them)")
    epochs: int = opt(10, "passes over the training data (the tutorial's 10)")
    batch_size: int = opt(32, "images per SGD step (the tutorial's 32)")
    lr: float = opt(0.01, "SGD learning rate (the tutorial's 0.01)")
    momentum: float = opt(0.9, "SGD momentum (the tutorial's 0.9)")
    seed: int = opt(1, "same seed, same numbers on the same machine")
    device: str = opt("auto", "auto, cpu or cuda; auto takes cuda when there is one")
    limit: int | None = opt(None, "use only the first N training images: quick looks and tests")
    data_dir: str | None = opt(None, "Fashion-MNIST directory; default: $FASHION_CNN_DATA, "
                                     "/usr/share/datasets/fashion-mnist, the cache, else download")
    out: str = opt("runs", "each run writes into a new directory under this one")
    eval_batch_size: int = opt(1000, "evaluation needs no gradients, so large batches are cheap")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    return torch.device(name)


def derived_seed(seed: int, *keys: int) -> int:
    """A seed for one fold or epoch that does not depend on what ran before: resume is exact."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


def make_model(cfg: TrainConfig, *keys: int) -> torch.nn.Module:
    torch.manual_seed(derived_seed(cfg.seed, *keys))
    return create_model(cfg.model).to(resolve_device(cfg.device))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)


def make_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Callable:
    """(float images, labels) -> (summed loss, correct count), after one optimizer step."""
    if isinstance(model, Baseline) and next(model.parameters()).device.type == "cpu":
        grads = BaselineGrads(model)

        def fast_step(x, y):
            loss, correct = grads(x, y)
            optimizer.step()
            return loss, correct
        return fast_step

    def step(x, y):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach() * len(y), (logits.argmax(1) == y).sum()
    return step


def train_epoch(step: Callable, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                generator: torch.Generator, desc: str) -> tuple[float, float]:
    """One pass over shuffled data; returns the running mean loss and accuracy, as Keras reports them."""
    n = len(images)
    order = torch.randperm(n, generator=generator).to(images.device)
    total_loss = torch.zeros((), device=images.device)
    total_correct = torch.zeros((), dtype=torch.long, device=images.device)
    with tqdm(total=n, desc=desc, unit="img", leave=False, disable=None, mininterval=0.5) as bar:
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            x = images[idx].unsqueeze(1).float().div_(255.0)
            loss, correct = step(x, labels[idx])
            total_loss += loss
            total_correct += correct
            bar.update(len(idx))
    return total_loss.item() / n, total_correct.item() / n


def fit(model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig,
        train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor] | None = None,
        history: list[dict] | None = None, keys: tuple[int, ...] = (), desc: str = "",
        on_epoch: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """Train from epoch len(history) to cfg.epochs; call on_epoch(history) after each (checkpoints)."""
    from .evaluate import loss_and_accuracy

    history = list(history or [])
    device = next(model.parameters()).device
    images, labels = (t.to(device) for t in train)
    step = make_step(model, optimizer)
    for epoch in range(len(history), cfg.epochs):
        model.train()
        generator = torch.Generator().manual_seed(derived_seed(cfg.seed, *keys, epoch))
        t0 = time.perf_counter()
        loss, acc = train_epoch(step, images, labels, cfg.batch_size, generator,
                                f"{desc}epoch {epoch + 1}/{cfg.epochs}")
        row = {"epoch": epoch + 1, "loss": loss, "accuracy": acc, "seconds": time.perf_counter() - t0}
        if val is not None:
            row["val_loss"], row["val_accuracy"] = loss_and_accuracy(model, *val, cfg.eval_batch_size)
        history.append(row)
        log.info(f"{desc}epoch {epoch + 1}/{cfg.epochs}: " + ", ".join(
            f"{k} {v:.4f}" for k, v in row.items() if k not in ("epoch", "seconds"))
            + f" ({row['seconds']:.1f}s)")
        if on_epoch is not None:
            on_epoch(history)
    return history


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    progress: dict) -> None:
    """Model, optimizer and progress in one file, replaced atomically: a kill loses one epoch at most."""
    opt_tensors, opt_meta = optimizer_tensors(optimizer)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()} | opt_tensors
    save_tensors(path, tensors, {"progress": progress, "optimizer": opt_meta})


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    tensors, meta = load_tensors(path)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    restore_optimizer(optimizer, tensors, meta["optimizer"])
    return meta["progress"]


def setup_threads() -> None:
    # Denormal gradients late in training slow CPU arithmetic many times over; flushing them to
    # zero changes nothing measurable in the result.
    torch.set_flush_denormal(True)


def model_metadata(model: torch.nn.Module, cfg: TrainConfig, data: FashionMNIST, **results) -> dict:
    return {
        "architecture": cfg.model,
        "parameters": count_parameters(model),
        "class_names": list(CLASS_NAMES),
        "input": {"shape": [1, 28, 28], "scale": "pixel / 255", "background": "dark",
                  "layout": "light object on black, centred, 28x28 grayscale"},
        "config": asdict(cfg),
        "data": {"source": data.source, "sha256": data.checksums},
        **results,
    }


def limited(images: torch.Tensor, labels: torch.Tensor, limit: int | None):
    return (images, labels) if limit is None else (images[:limit], labels[:limit])


def train_final(cfg: TrainConfig, resume: str | Path | None = None,
                data: FashionMNIST | None = None) -> Path:
    """Train on the whole training set, evaluate once on the test set, save the model; returns the run dir."""
    from .evaluate import evaluate_model, write_reports
    from .plots import plot_learning_curves

    setup_threads()
    run_dir = Path(resume) if resume else new_run_dir(cfg.out, "train")
    start_log(run_dir)
    if resume:
        cfg = TrainConfig.from_dict(read_config(run_dir))
    else:
        write_json(run_dir / "config.json", {"job": "train", **asdict(cfg)})
    data = data or load_fashion_mnist(cfg.data_dir)
    train = limited(data.train_images, data.train_labels, cfg.limit)
    log.info(f"run directory: {run_dir}\ndata: {data.source} ({len(train[0])} training images)")

    model = make_model(cfg, 0)
    optimizer = make_optimizer(model, cfg)
    ckpt = run_dir / "checkpoint.safetensors"
    history = load_checkpoint(ckpt, model, optimizer)["history"] if resume and ckpt.exists() else []
    if history:
        log.info(f"resuming after epoch {len(history)}")

    def on_epoch(hist):
        save_checkpoint(ckpt, model, optimizer, {"job": "train", "history": hist})
        write_json(run_dir / "history.json", hist)

    started = time.perf_counter()
    history = fit(model, optimizer, cfg, train, history=history, keys=(0,), on_epoch=on_epoch)
    plot_learning_curves({"final": history}, run_dir / "learning_curves.png")
    report = evaluate_model(model, data.test_images, data.test_labels, cfg.eval_batch_size)
    write_reports(report, run_dir)
    log.info(f"test accuracy: {report['accuracy']:.4f} (training took {time.perf_counter() - started:.0f}s)")
    meta = model_metadata(model, cfg, data, test_accuracy=report["accuracy"], history=history)
    save_model(run_dir / "model.safetensors", model.cpu(), meta)
    write_json(run_dir / "metrics.json", {"test_accuracy": report["accuracy"], "history": history,
                                          "version": __version__})
    log.info(f"model saved to {run_dir / 'model.safetensors'}")
    return run_dir

