"""The training loop, and the job that trains the final model and evaluates it once on the test set.

Data stays one uint8 tensor on the device; a batch is a slice of a per-epoch permutation, scaled to
[0, 1] as it is used. The baseline on CPU trains through its hand-derived step (fastpath.py).
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .version import __version__
from .augment import make_augment
from .data import CLASS_NAMES, FashionMNIST, load_fashion_mnist, to_float
from . import machine
from .models import count_parameters, create_model, get_spec, spec_of
from .runs import (csv_bytes, load_tensors, new_run_dir, optimizer_tensors, read_config, restore_optimizer,
                   save_model, save_tensors, start_log, write_atomic, write_json)

log = logging.getLogger("fashion_cnn")


def opt(default, help: str):
    """A config field whose help text is shown by --help: the why beside every default."""
    return field(default=default, metadata={"help": help})


def recipe(default, help: str):
    """A training-recipe field: left unset, it takes the model's recipe (models.py), else `default`."""
    return field(default=None, metadata={"help": f"{help}; unset: the model's recipe, else {default}",
                                         "fallback": default})


# Learning-rate multiplier after the warm-up, as a function of the fraction t of it done
SCHEDULES: dict[str, Callable[[float], float]] = {
    "constant": lambda t: 1.0,
    "cosine": lambda t: 0.5 * (1 + math.cos(math.pi * t)),
    "onecycle": lambda t: 1.0 - t,  # linear to zero (airbench's triangle, with the warm-up)
}


@dataclass
class TrainConfig:
    model: str = opt("baseline", "architecture from the registry (`fashion-cnn models` lists them)")
    epochs: int | None = recipe(10, "passes over the training data (the tutorial's 10)")
    batch_size: int | None = recipe(32, "images per step (the tutorial's 32)")
    lr: float | None = recipe(0.01, "peak learning rate (the tutorial's 0.01)")
    momentum: float | None = recipe(0.9, "SGD momentum, AdamW's beta1 (the tutorial's 0.9)")
    optimizer: str | None = recipe("sgd", "sgd or adamw")
    nesterov: bool | None = recipe(False, "Nesterov momentum (sgd)")
    weight_decay: float | None = recipe(0.0, "weight decay of conv and linear weights (decoupled for adamw)")
    schedule: str | None = recipe("constant", "learning rate after the warm-up: " + ", ".join(SCHEDULES))
    warmup: float | None = recipe(0.0, "fraction of the steps that ramp the learning rate up from 0")
    label_smoothing: float | None = recipe(0.0, "weight of the uniform distribution mixed into the targets")
    crop: int | None = recipe(0, "random crops after padding by this many pixels (0: off)")
    flip: bool | None = recipe(False, "random horizontal flips")
    erase: float | None = recipe(0.0, "probability of random erasing, per image")
    ema: float | None = recipe(0.0, "decay of a moving average of the weights, which is what gets evaluated "
                                    "and saved (0: off)")
    tta: bool | None = recipe(False, "evaluate on each image and its mirror image, averaging the logits")
    amp: bool | None = recipe(False, "bfloat16 autocast in training (mixed precision; AMX on recent Xeons)")
    seed: int = opt(1, "same seed, same numbers on the same machine")
    device: str = opt("auto", "auto, cpu or cuda; auto takes cuda when there is one")
    threads: int = opt(0, "CPU threads; 0: one per core, and for the baseline's CPU step one per core that other "
                          "processes leave free, re-chosen as the load changes (its results do not depend on it)")
    limit: int | None = opt(None, "use only the first N training images: quick looks and tests")
    data_dir: str | None = opt(None, "Fashion-MNIST directory; default: $FASHION_CNN_DATA, "
                                     "/usr/share/datasets/fashion-mnist, the cache, else download")
    out: str = opt("runs", "each run writes into a new directory under this one")
    eval_batch_size: int = opt(1000, "evaluation needs no gradients, so large batches are cheap")
    val_size: int = opt(0, "`train` only: hold out this many training images (stratified) to validate on "
                           "after every epoch, for choosing recipes without the test set")

    def __post_init__(self) -> None:
        """Fill the unset recipe fields, so a config is complete (and saved complete) once built."""
        model_recipe = get_spec(self.model).recipe
        for f in fields(self):
            if "fallback" in f.metadata and getattr(self, f.name) is None:
                setattr(self, f.name, model_recipe.get(f.name, f.metadata["fallback"]))
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"--optimizer must be sgd or adamw, got {self.optimizer!r}")
        if self.threads < 0:
            raise ValueError(f"--threads must be 0 (torch's default) or more, got {self.threads}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")

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
    return create_model(cfg.model, tta=cfg.tta).to(resolve_device(cfg.device))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD or AdamW. Weight decay applies to conv and linear weights: decaying biases and batch-norm
    scales only shrinks what batch norm then scales back up. Without decay, one plain group: the
    baseline's fast path (fastpath.supports) takes exactly that."""
    params = list(model.parameters())
    groups = [{"params": params, "weight_decay": 0.0}]
    if cfg.weight_decay:
        groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.weight_decay},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def learning_rate(cfg: TrainConfig, progress: float) -> float:
    """The learning rate `progress` (0 to 1) of the way through training: linear warm-up, then the schedule."""
    if progress < cfg.warmup:
        return cfg.lr * progress / cfg.warmup
    return cfg.lr * SCHEDULES[cfg.schedule]((progress - cfg.warmup) / (1 - cfg.warmup))


class EMA:
    """An exponential moving average of a model's weights and batch-norm statistics.

    Averaging the last ~1/(1 - decay) steps' weights is a free ensemble that smooths away the noise of
    the final SGD steps; the average is what gets evaluated and saved.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).requires_grad_(False)
        self.decay = decay
        # state_dict() tensors share storage with the modules, so updating them updates the models
        pairs = list(zip(self.model.state_dict().values(), model.state_dict().values()))
        self.floats = [[a for a, b in pairs if b.is_floating_point()], [b for a, b in pairs if b.is_floating_point()]]
        self.counters = [(a, b) for a, b in pairs if not b.is_floating_point()]

    @torch.no_grad()
    def update(self, step: int) -> None:
        # a short memory early on, so the average soon forgets the random initialisation
        decay = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.floats[0], self.floats[1], 1 - decay)
        for a, b in self.counters:
            a.copy_(b)


def make_ema(model: torch.nn.Module, cfg: TrainConfig) -> EMA | None:
    return EMA(model, cfg.ema) if cfg.ema else None


def make_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, label_smoothing: float = 0.0,
              amp: bool = False) -> Callable:
    """(float images, labels) -> (summed loss, correct count), after one optimizer step."""
    device = next(model.parameters()).device
    spec = spec_of(model)
    if spec.fast_step is not None and (fast := spec.fast_step(model, optimizer, label_smoothing, amp)):
        return fast

    def step(x, y):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x).float()
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach() * len(y), (logits.argmax(1) == y).sum()
    return step


def train_epoch(step: Callable, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                generator: torch.Generator, desc: str, augment: Callable | None = None) -> tuple[float, float]:
    """One pass over shuffled (and augmented) data; returns the running mean loss and accuracy, as Keras
    reports them."""
    n = len(images)
    order = torch.randperm(n, generator=generator).to(images.device)
    images, labels = images[order], labels[order]  # one gather per epoch; batches are then slices
    total_loss = torch.zeros((), device=images.device)
    total_correct = torch.zeros((), dtype=torch.long, device=images.device)
    with tqdm(total=n, desc=desc, unit="img", leave=False, disable=None, mininterval=0.5) as bar:
        for start in range(0, n, batch_size):
            x = to_float(images[start:start + batch_size])
            if augment is not None:
                x = augment(x, generator)
            loss, correct = step(x, labels[start:start + batch_size])
            total_loss += loss
            total_correct += correct
            bar.update(len(x))
    return total_loss.item() / n, total_correct.item() / n


def fit(model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig,
        train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor] | None = None,
        history: list[dict] | None = None, keys: tuple[int, ...] = (), desc: str = "",
        on_epoch: Callable[[list[dict]], None] | None = None, ema: EMA | None = None) -> list[dict]:
    """Train from epoch len(history) to cfg.epochs; call on_epoch(history) after each (checkpoints).

    The learning rate is a function of the step number and the augmentation is seeded per epoch, so
    resuming after epoch k (with the optimizer and EMA state of the checkpoint) repeats the same run.
    """
    from .evaluate import loss_and_accuracy

    history = list(history or [])
    device = next(model.parameters()).device
    images, labels = (t.to(device) for t in train)
    train_step = make_step(model, optimizer, cfg.label_smoothing, cfg.amp)
    augment = make_augment(cfg.crop, cfg.flip, cfg.erase)
    steps_per_epoch = math.ceil(len(images) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    epochs = tqdm(range(len(history), cfg.epochs), desc=f"{desc}epochs", unit="epoch", leave=False,
                  disable=None, initial=len(history), total=cfg.epochs)
    with epochs, logging_redirect_tqdm(loggers=[log]):  # epoch lines print above the bars
        for epoch in epochs:
            model.train()
            counter = itertools.count(epoch * steps_per_epoch)

            def step(x, y):
                i = next(counter)
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(cfg, i / total_steps)
                out = train_step(x, y)
                if ema is not None:
                    ema.update(i)
                return out

            generator = torch.Generator().manual_seed(derived_seed(cfg.seed, *keys, epoch))
            t0, cpu0 = time.perf_counter(), time.process_time()
            loss, acc = train_epoch(step, images, labels, cfg.batch_size, generator,
                                    f"{desc}epoch {epoch + 1}/{cfg.epochs}", augment)
            # CPU seconds (all threads) beside wall seconds: on a shared machine the wall clock measures the load
            row = {"epoch": epoch + 1, "loss": loss, "accuracy": acc, "seconds": time.perf_counter() - t0,
                   "cpu_seconds": time.process_time() - cpu0}
            if val is not None:
                row["val_loss"], row["val_accuracy"] = loss_and_accuracy(
                    ema.model if ema else model, *val, cfg.eval_batch_size)
            history.append(row)
            log.info(f"{desc}epoch {epoch + 1}/{cfg.epochs}: " + ", ".join(
                f"{k} {v:.4f}" for k, v in row.items() if k not in ("epoch", "seconds", "cpu_seconds"))
                + f" ({row['seconds']:.1f}s)")
            if on_epoch is not None:
                on_epoch(history)
    return history


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    progress: dict, ema: EMA | None = None) -> None:
    """Model, optimizer, EMA and progress in one file, replaced atomically: a kill loses one epoch at most."""
    opt_tensors, opt_meta = optimizer_tensors(optimizer)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()} | opt_tensors
    if ema is not None:
        tensors |= {f"ema.{k}": v for k, v in ema.model.state_dict().items()}
    save_tensors(path, tensors, {"progress": progress, "optimizer": opt_meta})


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    ema: EMA | None = None) -> dict:
    tensors, meta = load_tensors(path)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if ema is not None:
        ema.model.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    restore_optimizer(optimizer, tensors, meta["optimizer"])
    return meta["progress"]


def model_metadata(model: torch.nn.Module, cfg: TrainConfig, data: FashionMNIST, **results) -> dict:
    return {
        "architecture": cfg.model,
        "parameters": count_parameters(model),
        "class_names": list(CLASS_NAMES),
        "input": {"shape": [1, 28, 28], "scale": "pixel / 255", "background": "dark",
                  "layout": "light object on black, centred, 28x28 grayscale"},
        "config": asdict(cfg),
        "tta": cfg.tta,  # load_model sets it on the model, so every user of the file evaluates alike
        "data": {"source": data.source, "sha256": data.checksums},
        **results,
    }


def limited(images: torch.Tensor, labels: torch.Tensor, limit: int | None):
    return (images, labels) if limit is None else (images[:limit], labels[:limit])


def holdout_split(images: torch.Tensor, labels: torch.Tensor, size: int):
    """(train, validation): a fixed stratified split, the same for every seed and recipe compared on it."""
    from sklearn.model_selection import train_test_split

    train_idx, val_idx = train_test_split(np.arange(len(labels)), test_size=size, stratify=labels.numpy(),
                                          random_state=0)
    train_idx, val_idx = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    return (images[train_idx], labels[train_idx]), (images[val_idx], labels[val_idx])


def machine_name(device: torch.device) -> str:
    """What trained the model, for reports: the GPU, else the CPU model and the threads torch used."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    job = machine.job_threads()
    return f"{machine.cpu_model()}, {job.describe() if job else f'{torch.get_num_threads()} threads'}"


def start_run(cfg: TrainConfig, job: str, resume: str | Path | None) -> tuple[Path, TrainConfig]:
    """A new run directory with the config and a log, or the interrupted run's, with its saved config;
    sets the process's CPU threads from it."""
    run_dir = Path(resume) if resume else new_run_dir(cfg.out, job)
    start_log(run_dir)
    if resume:
        cfg = type(cfg).from_dict(read_config(run_dir))
    else:
        write_json(run_dir / "config.json", {"job": job, **asdict(cfg)})
    machine.start_job_threads(cfg.threads)
    return run_dir, cfg


def train_final(cfg: TrainConfig, resume: str | Path | None = None,
                data: FashionMNIST | None = None) -> Path:
    """Train on the whole training set, evaluate once on the test set, save the model; returns the run dir."""
    from .evaluate import evaluate_model, write_reports
    from .plots import plot_learning_curves

    run_dir, cfg = start_run(cfg, "train", resume)
    data = data or load_fashion_mnist(cfg.data_dir)
    train, val = limited(data.train_images, data.train_labels, cfg.limit), None
    if cfg.val_size:
        train, val = holdout_split(*train, cfg.val_size)
    log.info(f"run directory: {run_dir}\ndata: {data.source} ({len(train[0])} training images"
             + (f", {len(val[0])} held out for validation)" if val else ")"))

    model = make_model(cfg, 0)
    optimizer = make_optimizer(model, cfg)
    ema = make_ema(model, cfg)
    ckpt = run_dir / "checkpoint.safetensors"
    history = load_checkpoint(ckpt, model, optimizer, ema)["history"] if resume and ckpt.exists() else []
    if history:
        log.info(f"resuming after epoch {len(history)}")

    def on_epoch(hist):
        save_checkpoint(ckpt, model, optimizer, {"job": "train", "history": hist}, ema)
        write_atomic(run_dir / "metrics.csv", csv_bytes(hist))

    started = time.perf_counter()
    history = fit(model, optimizer, cfg, train, val, history=history, keys=(0,), on_epoch=on_epoch, ema=ema)
    plot_learning_curves({"final": history}, run_dir / "learning_curves.png")
    final = ema.model if ema else model
    report = evaluate_model(final, data.test_images, data.test_labels, cfg.eval_batch_size)
    write_reports(report, run_dir)
    log.info(f"test accuracy: {report['accuracy']:.4f} (training took {time.perf_counter() - started:.0f}s)")
    results = {"test_accuracy": report["accuracy"], "val_accuracy": history[-1].get("val_accuracy"),
               "train_seconds": sum(row["seconds"] for row in history),
               "train_cpu_seconds": sum(row["cpu_seconds"] for row in history),
               "machine": machine_name(next(final.parameters()).device)}
    save_model(run_dir / "model.safetensors", final.cpu(), model_metadata(final, cfg, data, **results,
                                                                         history=history))
    write_json(run_dir / "metrics.json", {**results, "history": history, "version": __version__})
    log.info(f"model saved to {run_dir / 'model.safetensors'}")
    return run_dir

