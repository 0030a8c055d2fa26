"""The training loop (`fit`) and its state: model, optimizer, EMA and early stopping, saved and restored
exactly by checkpoints.

Data stays one uint8 tensor on the device; a batch is a slice of a per-epoch permutation, scaled to
[0, 1] as it is used. Each model's spec may name a faster training step (the baseline's, on CPU).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from fashion_cnn.config import SCHEDULES, TrainConfig
from fashion_cnn.data.folders import fingerprint
from fashion_cnn.data.images import to_float
from fashion_cnn.evaluation.inference import loss_and_accuracy
from fashion_cnn.io import load_meta
from fashion_cnn.models.registry import builder_of, create_model, freeze_backbone, spec_of
from fashion_cnn.training import distributed
from fashion_cnn.training.augment import make_augment
from fashion_cnn.training.finetune import head_warmup_epochs, start_from_init
from fashion_cnn.training.runs import (
    PROGRESS_LINE,
    load_checkpoint,
    save_checkpoint,
)

log = logging.getLogger("fashion_cnn")
Split = tuple[torch.Tensor, torch.Tensor]  # uint8 images (N, 28, 28), int64 labels (N,)


def resolve_device(name: str) -> torch.device:
    """--device as a torch device: auto takes CUDA where there is a GPU; cuda where there is none is a
    ValueError (the jobs ask before any work: jobs.common.job_config)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    return torch.device(name)


def derived_seed(seed: int, *keys: int) -> int:
    """A seed for one fold or epoch that does not depend on what ran before: resume is exact."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


# --- the pieces a run trains: model, optimizer, EMA, best weights ------------------------------------------

def make_model(cfg: TrainConfig, num_classes: int, *keys: int) -> torch.nn.Module:
    """cfg.model with fresh weights seeded by (cfg.seed, *keys), on cfg.device."""
    torch.manual_seed(derived_seed(cfg.seed, *keys))
    return create_model(cfg.model, num_classes=num_classes, tta=cfg.tta).to(resolve_device(cfg.device))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, backbone_lr: float = 1.0) -> torch.optim.Optimizer:
    """SGD or AdamW over the parameters that train (a frozen backbone's do not). Weight decay applies to
    conv and linear weights: decaying biases and batch-norm scales only shrinks what batch norm then
    scales back up. backbone_lr: the learning rate of all but the head, as a fraction of cfg.lr
    (fine-tuning onto new classes). Without decay or a backbone rate, one plain group: the baseline's
    fast path (fastpath.supports) takes exactly that."""
    head = spec_of(model).head
    kinds: dict[tuple[bool, bool], list] = {}  # (decayed, a backbone parameter at its own rate) -> parameters
    for name, p in model.named_parameters():
        if p.requires_grad:
            kinds.setdefault((bool(cfg.weight_decay) and p.ndim > 1,
                              backbone_lr != 1 and name.split(".")[0] != head), []).append(p)
    groups = [{"params": params, "weight_decay": cfg.weight_decay if decayed else 0.0,
               "lr": cfg.lr * (backbone_lr if backbone else 1)} for (decayed, backbone), params in kinds.items()]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def lr_scale(cfg: TrainConfig, progress: float) -> float:
    """The learning rate's multiplier `progress` (0 to 1) of the way through training: linear warm-up,
    then the schedule."""
    if progress < cfg.warmup:
        return progress / cfg.warmup
    return SCHEDULES[cfg.schedule]((progress - cfg.warmup) / (1 - cfg.warmup))


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


NOT_METRICS = ("epoch", "seconds", "cpu_seconds")  # the columns of a history row that measure no model


class History(list):
    """One dict per epoch, as the loop appends them and metrics.csv holds them: epoch (from 1), loss,
    accuracy, val_loss, val_accuracy (when it validates), and the epoch's wall and CPU seconds.
    `.history` and `.epoch` are Keras's History's: the metrics as columns, and the epochs from 0."""

    @property
    def history(self) -> dict[str, list]:
        """Each metric's values, one per epoch (the timings stay in the rows)."""
        return {key: [row.get(key) for row in self] for key in (self[0] if self else {}) if key not in NOT_METRICS}

    @property
    def epoch(self) -> list[int]:
        """The epochs' numbers from 0, as Keras's History.epoch (the rows' `epoch` counts from 1)."""
        return list(range(len(self)))


@dataclass
class TrainState:
    """Everything training changes, which is what a checkpoint holds: resuming restores all of it."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    ema: EMA | None = None
    best: torch.nn.Module | None = None  # early stopping: the evaluated weights of the best epoch so far
    history: History = field(default_factory=History)
    best_epoch: int | None = None
    best_loss: float | None = None
    stopped: bool = False  # early stopping ended the run
    init: dict | None = None  # fine-tuning: the --init file the weights started from (path, sha256, ...)
    data: str | None = None  # SHA-256 of the images and labels it trains and validates on: resume checks it

    @classmethod
    def create(cls, cfg: TrainConfig, classes: int | Sequence[str], *keys: int,
               checkpoint: Path | None = None) -> "TrainState":
        """Model (seeded by cfg.seed and keys; from cfg.init's weights when fine-tuning), optimizer, EMA
        and early-stopping copy for cfg; or, when `checkpoint` exists, the state saved in it (and the
        --init file is not read again).

        classes: the class names (which fine-tuning matches against --init's), or just how many.
        """
        names = [str(k) for k in range(classes)] if isinstance(classes, int) else list(classes)
        model = make_model(cfg, len(names), *keys)
        resuming = checkpoint is not None and checkpoint.exists()
        init = None
        if cfg.init:
            saved = load_meta(checkpoint)["progress"].get("init") if resuming else None
            init = start_from_init(model, cfg, names, saved)
        ema = EMA(model, cfg.ema) if cfg.ema else None
        best = copy.deepcopy(model).requires_grad_(False) if cfg.early_stopping else None
        state = cls(model, make_optimizer(model, cfg, (init or {}).get("backbone_lr", 1.0)), ema, best, init=init)
        if resuming:
            state.load(checkpoint)
        return state

    @property
    def evaluated(self) -> torch.nn.Module:
        """What validation scores: the moving average where there is one."""
        return self.ema.model if self.ema else self.model

    @property
    def final(self) -> torch.nn.Module:
        """What the run ends with: the best epoch's weights under early stopping."""
        return self.best if self.best_epoch is not None else self.evaluated

    @property
    def result(self) -> dict:
        """The metrics of the epoch whose weights the run ends with."""
        return self.history[(self.best_epoch or len(self.history)) - 1]

    def done(self, cfg: TrainConfig) -> bool:
        return self.stopped or len(self.history) >= cfg.epochs

    def parts(self) -> dict:
        return {"model": self.model, "optimizer": self.optimizer, "ema": self.ema and self.ema.model,
                "best": self.best}

    def save(self, path: Path, cfg: TrainConfig) -> None:
        progress = {"history": self.history, "best_epoch": self.best_epoch, "best_loss": self.best_loss,
                    "stopped": self.stopped, "init": self.init, "data": self.data}
        save_checkpoint(path, self.parts(), progress, asdict(cfg))

    def load(self, path: Path) -> None:
        progress = load_checkpoint(path, self.parts())
        self.history = History(progress["history"])
        self.best_epoch, self.best_loss, self.stopped = (progress[k] for k in ("best_epoch", "best_loss", "stopped"))
        self.init = progress.get("init")
        self.data = progress.get("data")  # None in checkpoints written before it was recorded

    def track_best(self, val_loss: float, patience: int) -> None:
        """Early stopping: remember the best epoch's weights; stop after `patience` epochs without a better one."""
        epoch = len(self.history)
        if self.best_loss is None or val_loss < self.best_loss:
            self.best_loss, self.best_epoch = val_loss, epoch
            self.best.load_state_dict(self.evaluated.state_dict())
        elif epoch - self.best_epoch >= patience:
            self.stopped = True


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite: nothing from that epoch on is saved."""


def make_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, label_smoothing: float = 0.0,
              amp: bool = False, class_weights: torch.Tensor | None = None) -> Callable:
    """(float images, labels) -> (summed loss, correct count), after one optimizer step: the model
    builder's fast step where it applies, else autograd. class_weights: the loss is their weighted mean."""
    builder = builder_of(model)
    if builder.fast_step is not None and (fast := builder.fast_step(model, optimizer, label_smoothing, amp,
                                                                    class_weights)):
        return fast
    device = next(model.parameters()).device

    def step(x, y):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x).float()
        loss = F.cross_entropy(logits, y, weight=class_weights, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach() * len(y), (logits.argmax(1) == y).sum()
    return step


def balanced_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """--class-weights auto: n / (classes x count) per class (scikit-learn's "balanced"), so every class
    weighs alike in the loss; a class with no image here gets the weight of one (it never occurs)."""
    counts = torch.bincount(labels.cpu(), minlength=num_classes).clamp(min=1)
    return (len(labels) / (num_classes * counts)).float()


@contextlib.contextmanager
def console_logging() -> Iterator[None]:
    """Epoch lines on the terminal when nothing else logs them (fit called from Python, outside a job)."""
    if log.handlers:
        yield
        return
    handler = logging.StreamHandler()
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)


# --- the loop ----------------------------------------------------------------------------------------------

def fit(state: TrainState, cfg: TrainConfig, train: Split, val: Split | None = None, *, keys: tuple = (),
        checkpoint: Path | None = None, on_epoch: Iterable[Callable[[dict], None]] = (), desc: str = "",
        data_parallel: bool = False, verbose: int = 1, time_limit: float | None = None) -> History:
    """Train state.model from the epoch after state.history to cfg.epochs (or until early stopping, or
    the time limit); validate on `val` and save a checkpoint after every epoch; returns the history.

    time_limit: the seconds this model's training may take, a resumed run's earlier epochs included:
    after an epoch, training stops (as early stopping does, the model kept as it is) when another epoch
    as long as that one would end past it.

    verbose: 0 no progress bars, and called outside a job, no epoch lines on the terminal either; 1
    progress bars on a terminal, and the epoch lines (a job's log decides where they go).

    data_parallel: under torchrun, every process trains this one model on its share of each batch
    (distributed.data_parallel_step); the batches, augmentation and results are a single process's,
    and rank 0 alone logs, saves the checkpoint and calls `on_epoch`.

    The learning rate is a function of the step number, relative to each parameter group's initial
    learning rate (the optimizer's own, untouched unless a schedule or warm-up is set), and shuffling
    and augmentation are seeded per (seed, keys, epoch): resuming from a checkpoint repeats the same run.
    """
    data = fingerprint(*train, *(val or ()))
    if state.data not in (None, data):  # the data, --limit or the folds changed since the checkpoint
        raise ValueError(f"{checkpoint or 'the checkpoint'}: its epochs trained on other images than this run "
                         "gives it (the data or its split changed since); start a new run instead of resuming")
    state.data = data
    model, optimizer, ema, history = state.model, state.optimizer, state.ema, state.history
    device = next(model.parameters()).device
    images, labels = (t.to(device) for t in train)
    n, batch_size = len(images), cfg.batch_size
    parallel = data_parallel and distributed.world().size > 1
    weights = balanced_weights(labels, model.num_classes).to(device) if cfg.class_weights == "auto" else None
    def new_step() -> Callable:  # again when the head warm-up ends: the baseline's fast step trains all or nothing
        return (distributed.data_parallel_step if parallel else make_step)(model, optimizer, cfg.label_smoothing,
                                                                           cfg.amp, weights)
    step = new_step()
    head_warmup = head_warmup_epochs(cfg, state.init)
    evaluate = distributed.loss_and_accuracy if parallel else loss_and_accuracy
    bars = None if distributed.is_main() and verbose else True  # tqdm's disable: on a terminal, for rank 0 only
    writes = distributed.is_main() or not parallel
    augment = make_augment(cfg.crop, cfg.flip, cfg.erase)
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    scheduled = cfg.schedule != "constant" or cfg.warmup > 0
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    spent = sum(row["seconds"] for row in history)  # before a resume
    epochs = tqdm(desc=f"{desc}epochs", total=cfg.epochs, initial=len(history), unit="epoch", leave=False,
                  disable=bars)
    with console_logging() if verbose else contextlib.nullcontext(), epochs, \
            logging_redirect_tqdm(loggers=[log]):  # epoch lines print above the bars
        for epoch in range(len(history), cfg.epochs):
            if state.stopped:
                break
            if head_warmup and model.frozen_backbone != (epoch < head_warmup):
                freeze_backbone(model, epoch < head_warmup)  # the head alone first, then all layers
                step = new_step()
            model.train()
            generator = torch.Generator().manual_seed(derived_seed(cfg.seed, *keys, epoch))
            order = torch.randperm(n, generator=generator).to(device)
            epoch_images, epoch_labels = images[order], labels[order]  # one gather; batches are slices
            total_loss = torch.zeros((), device=device)
            total_correct = torch.zeros((), dtype=torch.long, device=device)
            t0, cpu0 = time.perf_counter(), time.process_time()
            with tqdm(total=n, desc=f"{desc}epoch {epoch + 1}/{cfg.epochs}", unit="img", leave=False,
                      disable=bars, mininterval=0.5) as bar:
                for start in range(0, n, batch_size):
                    i = epoch * steps_per_epoch + start // batch_size
                    if scheduled:
                        for group in optimizer.param_groups:
                            group["lr"] = group["initial_lr"] * lr_scale(cfg, i / total_steps)
                    x = to_float(epoch_images[start:start + batch_size])
                    if augment is not None:
                        x = augment(x, generator)
                    loss, correct = step(x, epoch_labels[start:start + batch_size])
                    if ema is not None:
                        ema.update(i)
                    total_loss += loss
                    total_correct += correct
                    bar.update(len(x))
            if parallel:
                distributed.all_reduce_sum(total_loss, total_correct)
            # running means over the epoch, as Keras reports them; CPU seconds (all threads) beside wall
            # seconds, since on a shared machine the wall clock measures the load
            row = {"epoch": epoch + 1, "loss": total_loss.item() / n, "accuracy": total_correct.item() / n,
                   "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - cpu0}
            if not math.isfinite(row["loss"]):
                raise TrainingDiverged(f"training diverged in epoch {epoch + 1} (loss {row['loss']}); nothing "
                                       f"from it was saved: try a lower --lr than {cfg.lr:g}")
            if val is not None:
                row["val_loss"], row["val_accuracy"] = evaluate(state.evaluated, *val, cfg.eval_batch_size)
            history.append(row)
            stopping = ""
            if cfg.early_stopping:
                state.track_best(row["val_loss"], cfg.early_stopping)
                stopping = f"; stopping: best epoch {state.best_epoch}" if state.stopped else ""
            took = time.perf_counter() - t0  # validation included
            spent += took
            over = time_limit is not None and not state.done(cfg) and spent + took > time_limit
            if time_limit is not None and parallel:  # rank 0's clock decides: the processes stop together
                over = distributed.broadcast_json(over)
            if over:
                state.stopped = True
                stopping = (f"; stopping: another epoch (~{took:.0f}s) would end past the time limit ({spent:.0f}s "
                            f"of {time_limit:.0f}s spent); the model is kept as it is after {len(history)} of "
                            f"{cfg.epochs} epochs")
            if writes:
                log.info(f"{desc}epoch {epoch + 1}/{cfg.epochs}: " + ", ".join(
                    f"{k} {v:.4f}" for k, v in row.items() if k not in NOT_METRICS)
                    + f" ({row['seconds']:.1f}s)" + stopping, extra=PROGRESS_LINE)
                if checkpoint is not None:
                    state.save(checkpoint, cfg)
                for callback in on_epoch:
                    callback(row)
            epochs.update()
    return history


def limited(images: torch.Tensor, labels: torch.Tensor, limit: int | None) -> Split:
    """The first `limit` images and labels (all of them for None)."""
    return (images, labels) if limit is None else (images[:limit], labels[:limit])


def holdout_split(images: torch.Tensor, labels: torch.Tensor, size: int) -> tuple[Split, Split]:
    """(train, validation): a fixed stratified split, the same for every seed and recipe compared on it."""
    from sklearn.model_selection import train_test_split  # scikit-learn costs a second of start-up

    classes = len(labels.unique())
    if not classes <= size <= len(labels) - classes:
        raise ValueError(f"--val-size must be between {classes} (one image per class) and "
                         f"{len(labels) - classes} for {len(labels)} training images, got {size}")
    train_idx, val_idx = train_test_split(np.arange(len(labels)), test_size=size, stratify=labels.numpy(),
                                          random_state=0)
    train_idx, val_idx = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    return (images[train_idx], labels[train_idx]), (images[val_idx], labels[val_idx])


@contextlib.contextmanager
def deterministic_cudnn(on: bool) -> Iterator[None]:
    """cuDNN limited to convolution algorithms that give the same bits every time, for the length of the
    block: its fastest may add partial sums with atomics in any order, so that a seeded run or a resumed
    one would not repeat the weights of another (seen on an H200 with the baseline). cuBLAS repeats its
    bits on one stream already."""
    before = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    if on:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before
