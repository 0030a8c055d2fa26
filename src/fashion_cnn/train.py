"""Training: the job config, the loop (`fit`), and the job that trains the final model and tests it once.

Data stays one uint8 tensor on the device; a batch is a slice of a per-epoch permutation, scaled to
[0, 1] as it is used. Each model's spec may name a faster training step (the baseline's, on CPU).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import re
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from types import EllipsisType
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from . import distributed, tensorboard_log
from .augment import make_augment
from .data import DataError, Dataset, class_counts, to_float
from .datasets import fingerprint, load_dataset, test_set_problem
from .inference import loss_and_accuracy
from . import calibration
from .card import model_card
from . import machine
from .finetune import check_init, init_architecture, start_from_init
from .models import count_parameters, create_model, get_spec, spec_of
from .runs import (PROGRESS_LINE, RUNS_ROOT, ModelFileError, Run, check_output_dir, check_verbose, csv_bytes,
                   load_checkpoint, load_meta, no_run, open_run, read_config, save_checkpoint, save_model, write_atomic,
                   write_json)
from .version import __version__

log = logging.getLogger("fashion_cnn")
Split = tuple[torch.Tensor, torch.Tensor]  # uint8 images (N, 28, 28), int64 labels (N,)


# --- the config: every option with its default, the reason for it, and its valid range -----------------

def check(rule: str, test: Callable[[Any], bool]) -> dict:
    """A valid range for opt/recipe: `test` accepts a value, `rule` says which in error messages."""
    return {"rule": rule, "test": test}


AT_LEAST_0 = check("0 or more", lambda v: v >= 0)
AT_LEAST_1 = check("at least 1", lambda v: v >= 1)
POSITIVE = check("a positive number", lambda v: v > 0)  # (NaN and infinity fail validate's number check)
FRACTION = check("in [0, 1)", lambda v: 0 <= v < 1)
PROBABILITY = check("in [0, 1]", lambda v: 0 <= v <= 1)
DURATION_PATTERN = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def duration_seconds(text: object) -> float | None:
    """The seconds in a duration such as "90s", "5m", "1h" or "1h30m" (hours, minutes, seconds, in that
    order, each optional); None for anything else, zero included. A bare number is refused: seconds or
    minutes, a reader could not tell."""
    match = DURATION_PATTERN.fullmatch(text.strip().lower()) if isinstance(text, str) else None
    if not match or not any(match.groups()):
        return None
    seconds = sum(float(value) * unit for value, unit in zip(match.groups(), (3600, 60, 1)) if value)
    return seconds if math.isfinite(seconds) and seconds > 0 else None


DURATION = check("a duration such as 90s, 5m, 1h or 1h30m", lambda v: duration_seconds(v) is not None)


def opt(default, help: str, valid: dict | None = None, choices: tuple | None = None):
    """A config field whose help text is shown by --help: the why beside every default."""
    return field(default=default, metadata={"help": help, "valid": valid, "choices": choices})


def recipe(default, help: str, valid: dict | None = None, choices: tuple | None = None):
    """A training-recipe field: left unset, it takes the model's recipe (models.py), else `default`."""
    return field(default=None, metadata={"help": help, "fallback": default, "valid": valid, "choices": choices})


# Learning-rate multiplier after the warm-up, as a function of the fraction t of it done
SCHEDULES: dict[str, Callable[[float], float]] = {
    "constant": lambda t: 1.0,
    "cosine": lambda t: 0.5 * (1 + math.cos(math.pi * t)),
    "onecycle": lambda t: 1.0 - t,  # linear to zero (airbench's triangle, with the warm-up)
}
DEVICES = ("auto", "cpu", "cuda")
CLASS_WEIGHTS = ("none", "auto")


@dataclass
class TrainConfig:
    """Everything a `train` run depends on; saved as the run's config.json. Unset recipe fields take the
    model's recipe (`fashion-cnn models`)."""

    model: str | None = opt(None, "architecture from the registry (`fashion-cnn models` lists them); default: "
                                  "baseline, or that of the --init model (train, cv)")
    epochs: int | None = recipe(10, "passes over the training data (the tutorial's 10)", AT_LEAST_1)
    batch_size: int | None = recipe(32, "images per step (the tutorial's 32)", AT_LEAST_1)
    lr: float | None = recipe(0.01, "peak learning rate (the tutorial's 0.01)", POSITIVE)
    momentum: float | None = recipe(0.9, "SGD momentum, AdamW's beta1 (the tutorial's 0.9)", FRACTION)
    optimizer: str | None = recipe("sgd", "the tutorial's SGD, or AdamW", choices=("sgd", "adamw"))
    nesterov: bool | None = recipe(False, "Nesterov momentum (sgd)")
    weight_decay: float | None = recipe(0.0, "weight decay of conv and linear weights (decoupled for adamw)",
                                        AT_LEAST_0)
    schedule: str | None = recipe("constant", "learning rate after the warm-up", choices=tuple(SCHEDULES))
    warmup: float | None = recipe(0.0, "fraction of the steps that ramp the learning rate up from 0", FRACTION)
    label_smoothing: float | None = recipe(0.0, "weight of the uniform distribution mixed into the targets",
                                           FRACTION)
    crop: int | None = recipe(0, "random crops after padding by this many pixels (0: off)",
                              check("from 0 to 14", lambda v: 0 <= v <= 14))
    flip: bool | None = recipe(False, "random horizontal flips")
    erase: float | None = recipe(0.0, "probability of random erasing, per image", PROBABILITY)
    ema: float | None = recipe(0.0, "decay of a moving average of the weights, which is what gets evaluated "
                                    "and saved (0: off)", FRACTION)
    tta: bool | None = recipe(False, "evaluate on each image and its mirror image, averaging the logits (a "
                                     "recipe's tta goes with its flips: off with --no-flip unless given)")
    amp: bool | None = recipe(False, "bfloat16 autocast in training (mixed precision; AMX on recent Xeons)")
    seed: int = opt(1, "same seed, same numbers on the same machine", AT_LEAST_0)
    device: str = opt("auto", "auto takes cuda when there is one", choices=DEVICES)
    threads: int = opt(0, "CPU threads; 0: one per core, and for the baseline's CPU step one per core that other "
                          "processes leave free, re-chosen as the load changes (its results do not depend on it)",
                       check(f"from 0 to {machine.MAX_THREADS}", lambda v: 0 <= v <= machine.MAX_THREADS))
    limit: int | None = opt(None, "use only the first N training images, for quick looks and tests "
                                        "(default: all)", AT_LEAST_1)
    data: str | None = opt(None, "fashion-mnist (the default), a folder of IDX files (MNIST, KMNIST, EMNIST "
                                 "style), or a folder of images DIR/<class>/<image> or "
                                 "DIR/train|test/<class>/<image>")
    classes: str | None = opt(None, "comma-separated class names: an IDX folder's labels 0, 1, ... (default: its "
                                    "classes.txt, else the numbers), or the class folders to use, in order "
                                    "(default: all, sorted)")
    test_fraction: float = opt(0.2, "an image folder without train/ and test/: the share of each class held out "
                                    "as the test set (drawn from the files' contents, so every job sees the "
                                    "same split)", check("between 0 and 1", lambda v: 0 < v < 1))
    data_dir: str | None = opt(None, "Fashion-MNIST directory; default: $FASHION_CNN_DATA, "
                                     "/usr/share/datasets/fashion-mnist, the cache, else download")
    add_to: str | None = opt(None, "train on this data set plus --data's images, whose class folders are named "
                                   "after its classes (T-shirt-top, Trouser, ...); its test set and theirs "
                                   "are reported apart", choices=("fashion-mnist",))
    framed: bool = opt(False, "an image folder: take each picture as framed like Fashion-MNIST (the object filling "
                              "it, as bare scanned digits): only inverted if its border is light, and resized, "
                              "instead of finding the object, removing the background and cropping to it as "
                              "predict does (predict --framed then takes pictures alike)")
    class_weights: str = opt("none", "auto weights the training loss by inverse class frequency (n / (classes x "
                                     "count)), so each class counts alike however many images it has",
                             choices=CLASS_WEIGHTS)
    init: str | None = opt(None, "fine-tune: start from this trained model (a model file, a run directory, or "
                                 "'packaged', the model shipped with fashion-cnn), of its architecture; its "
                                 "classifier head keeps the classes it knows by name, and is replaced when the "
                                 "data has others")
    freeze_backbone: bool = opt(False, "with --init: train only the classifier head; the rest, batch-norm "
                                       "statistics included, stays as --init has it")
    out: str = opt(RUNS_ROOT, "each run writes into a new directory under this one")
    eval_batch_size: int = opt(1000, "evaluation needs no gradients, so large batches are cheap", AT_LEAST_1)
    val_size: int = opt(0, "hold out this many training images (stratified) to validate on after every "
                           "epoch, for choosing recipes without the test set", AT_LEAST_0)
    early_stopping: int = opt(0, "stop when the validation loss has not improved for this many epochs, and "
                                 "keep the best epoch's weights (0: off)", AT_LEAST_0)
    tensorboard: bool = opt(False, "also write TensorBoard event files into the run directory (needs "
                                   "fashion-cnn[tensorboard]); view with `tensorboard --logdir runs`")
    budget: str | None = opt(None, "the wall-clock time the job may take, e.g. 90s, 5m or 1h30m: train and cv "
                                   "choose the recipe and --epochs that fit it on this machine (measured in a few "
                                   "seconds; `fashion-cnn models` shows the recipes' accuracy against time), and "
                                   "training stops after the epoch that uses it up (default: no limit, the "
                                   "recipe's epochs)", DURATION)

    def __post_init__(self) -> None:
        """Fill the unset recipe fields, so a config is complete (and saved complete) once built; then
        check every value, before any work starts."""
        if self.model is None:  # the architecture of the model fine-tuned, else the tutorial's
            self.model = init_architecture(self.init) if isinstance(self.init, str) else "baseline"
        spec = get_spec(self.model)
        unset = {f.name: f.metadata["fallback"] for f in fields(self)
                 if "fallback" in f.metadata and getattr(self, f.name) is None}
        for name, fallback in unset.items():
            setattr(self, name, spec.recipe.get(name, fallback))
        if self.optimizer == "adamw" and "nesterov" in unset:
            self.nesterov = False  # a recipe's Nesterov momentum is SGD's: it has no meaning for AdamW
        if not self.flip and "tta" in unset:
            self.tta = False  # a recipe's mirror averaging is for a model trained on mirror images (tune
            # trials of the fast model with flips off kept it, and scored 81-82% instead of 89%)
        self.validate()

    def validate(self) -> None:
        """ValueError naming the option for any value out of its range, or options that contradict."""
        for f in fields(self):
            value, meta = getattr(self, f.name), f.metadata
            flag = "--" + f.name.replace("_", "-")
            if not fits_type(value, f.type):
                raise ValueError(f"{flag} must be {type_words(f.type)}, got {value!r}")
            if (limit := number_limit(value, f.type)) is not None:
                raise ValueError(f"{flag} must be {limit}, got {value!r}")
            if meta.get("choices") and value is not None and value not in meta["choices"]:
                raise ValueError(f"{flag} must be one of {', '.join(meta['choices'])}, got {value!r}")
            if meta.get("valid") and value is not None and not meta["valid"]["test"](value):
                raise ValueError(f"{flag} must be {meta['valid']['rule']}, got {value!r}")
        if self.optimizer == "adamw" and max(self.lr / (1 - self.momentum), self.lr * self.weight_decay) > FLOAT_LIMIT:
            raise ValueError(f"--lr {self.lr:g} is too large for adamw: its first step (lr / (1 - momentum)) or "
                             f"its weight decay (lr x weight decay) would be over {FLOAT_LIMIT:.3g}, float32's largest")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ValueError("--nesterov needs --optimizer sgd with --momentum above 0")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available")
        if self.early_stopping and not self.validates():
            raise ValueError("--early-stopping watches the validation loss: give --val-size too")
        if self.tensorboard and not tensorboard_log.available():
            raise ValueError(tensorboard_log.MISSING)
        if self.freeze_backbone and not self.init:
            raise ValueError("--freeze-backbone trains the head of an --init model: give --init too")
        if self.add_to and (self.data is None or self.data.lower() == self.add_to):
            raise ValueError(f"--add-to {self.add_to} adds images of your own to it: give them with --data DIR")

    def validates(self) -> bool:
        """Whether the job scores held-out data after every epoch."""
        return self.val_size > 0

    @classmethod
    def from_dict(cls, d: dict, source: str | None = "config") -> "TrainConfig":
        """A config from JSON or TOML values (a run's config.json, --config): every key must be an option
        of this job, with a value of the option's type."""
        prefix = f"{source}: " if source else ""
        if not isinstance(d, dict):
            raise ValueError(f"{prefix}options must be a table of names and values")
        unknown = sorted(set(d) - {f.name for f in fields(cls)} - {"job"})
        if unknown:
            raise ValueError(f"{prefix}{', '.join(map(str, unknown))}: not options of this job")
        try:
            return cls(**{k: v for k, v in d.items() if k != "job"})
        except ValueError as e:
            raise ValueError(f"{prefix}{e}") from None


TYPE_WORDS = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "text",
              "None": "unset"}


def fits_type(value, annotation: str) -> bool:
    """Whether a value (from the command line, JSON or TOML) fits a field annotated as e.g. "int | None";
    True and False are not numbers here."""
    kinds = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "None": (type(None),)}
    return any(isinstance(value, kinds[a]) and (a == "bool" or not isinstance(value, bool))
               for a in map(str.strip, annotation.split("|")))


# Float options end up in float32 tensors (the learning rate in the optimizer's, ...): a larger value
# overflows there, deep in training, after the run directory is made. No whole-number option means
# anything near 2**31 either, and torch takes whole numbers as 64-bit integers at most.
FLOAT_LIMIT = float(np.finfo(np.float32).max)
INT_LIMIT = 2**31 - 1


def number_limit(value, annotation: str) -> str | None:
    """For a number that a field annotated as e.g. "float | None" cannot take (NaN, infinite, or past
    FLOAT_LIMIT or INT_LIMIT in size), the range it must be in, for an error message; else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if "float" in annotation:  # NaN compares False: it is out of range too
        return None if abs(value) <= FLOAT_LIMIT else f"a finite number of at most {FLOAT_LIMIT:.3g} in size"
    return None if abs(value) <= INT_LIMIT else f"a whole number of at most {INT_LIMIT:,} in size"


def type_words(annotation: str) -> str:
    """"int | None" as "a whole number or unset", for error messages."""
    return " or ".join(TYPE_WORDS[a.strip()] for a in annotation.split("|"))


def resolve_device(name: str) -> torch.device:
    """--device as a torch device: auto takes CUDA where there is a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def derived_seed(seed: int, *keys: int) -> int:
    """A seed for one fold or epoch that does not depend on what ran before: resume is exact."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


# --- the pieces a run trains: model, optimizer, EMA, best weights ------------------------------------------

def make_model(cfg: TrainConfig, num_classes: int, *keys: int) -> torch.nn.Module:
    """cfg.model with fresh weights seeded by (cfg.seed, *keys), on cfg.device."""
    torch.manual_seed(derived_seed(cfg.seed, *keys))
    return create_model(cfg.model, num_classes=num_classes, tta=cfg.tta).to(resolve_device(cfg.device))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD or AdamW over the parameters that train (a frozen backbone's do not). Weight decay applies to
    conv and linear weights: decaying biases and batch-norm scales only shrinks what batch norm then
    scales back up. Without decay, one plain group: the baseline's fast path (fastpath.supports) takes
    exactly that."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": params, "weight_decay": 0.0}]
    if cfg.weight_decay:
        groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.weight_decay},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
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
        init = start_from_init(model, cfg, names, load=not resuming) if cfg.init else None
        ema = EMA(model, cfg.ema) if cfg.ema else None
        best = copy.deepcopy(model).requires_grad_(False) if cfg.early_stopping else None
        state = cls(model, make_optimizer(model, cfg), ema, best, init=init)
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
    spec's fast step where it applies, else autograd. class_weights: the loss is their weighted mean."""
    spec = spec_of(model)
    if spec.fast_step is not None and (fast := spec.fast_step(model, optimizer, label_smoothing, amp,
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
    step = (distributed.data_parallel_step if parallel else make_step)(model, optimizer, cfg.label_smoothing,
                                                                       cfg.amp, weights)
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


# --- jobs: setup shared by `train` and `cv` -------------------------------------------------------------------

def load_data(data: str | None = None, classes: str | None = None, test_fraction: float = 0.2,
              data_dir: str | None = None, add_to: str | None = None, framed: bool = False) -> Dataset:
    """The data set the data options name (datasets.load_dataset), for every job alike."""
    return load_dataset(data, classes=classes, test_fraction=test_fraction, data_dir=data_dir, add_to=add_to,
                        framed=framed)


def job_data(cfg: TrainConfig) -> Dataset:
    """The data set a job's config names, refused (DataError) before any work where a model trained on it
    could not be tested."""
    return testable(load_data(cfg.data, cfg.classes, cfg.test_fraction, cfg.data_dir, cfg.add_to, cfg.framed))


def testable(data: Dataset) -> Dataset:
    """`data`, or DataError where its split left no test image (datasets.test_set_problem)."""
    if problem := test_set_problem(data):
        raise DataError(f"{data.source}: {problem}")
    return data


def limited(images: torch.Tensor, labels: torch.Tensor, limit: int | None) -> Split:
    """The first `limit` images and labels (all of them for None)."""
    return (images, labels) if limit is None else (images[:limit], labels[:limit])


def training_images(limit: int | None) -> str:
    """The training images a job with this --limit trains on, in words: for the messages that name the
    final model's (`next: fashion-cnn train ...`)."""
    return "all training images" if limit is None else f"the first {limit:,} training images"


def holdout_split(images: torch.Tensor, labels: torch.Tensor, size: int) -> tuple[Split, Split]:
    """(train, validation): a fixed stratified split, the same for every seed and recipe compared on it."""
    from sklearn.model_selection import train_test_split

    classes = len(labels.unique())
    if not classes <= size <= len(labels) - classes:
        raise ValueError(f"--val-size must be between {classes} (one image per class) and "
                         f"{len(labels) - classes} for {len(labels)} training images, got {size}")
    train_idx, val_idx = train_test_split(np.arange(len(labels)), test_size=size, stratify=labels.numpy(),
                                          random_state=0)
    train_idx, val_idx = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    return (images[train_idx], labels[train_idx]), (images[val_idx], labels[val_idx])


def changed_options(saved: dict, wanted: dict) -> list[str]:
    """The options of a run's config (as a dict) that `wanted` changes and a resumed run cannot take:
    all that differ, unless the one change is --epochs raised under a constant learning rate."""
    differ = [k for k in wanted if k in saved and saved[k] != wanted[k]]
    if differ == ["epochs"] and wanted["epochs"] > saved["epochs"] and saved.get("schedule") == "constant" \
            and not saved.get("warmup"):
        return []
    return differ


def changes(saved: dict, wanted: dict, names: list[str]) -> str:
    """'--lr 0.01 -> 0.5, --seed 1 -> 2', for error messages."""
    return ", ".join(f"--{k.replace('_', '-')} {saved[k]!r} -> {wanted[k]!r}" for k in names)


def resumed_config(saved: TrainConfig, wanted: TrainConfig | None) -> TrainConfig:
    """The config a resumed run continues with: the saved one. `wanted` (the options given with
    --resume) may only raise --epochs, and only where the learning rate does not depend on it."""
    if wanted is None:
        return saved
    if differ := changed_options(asdict(saved), asdict(wanted)):
        raise ValueError(f"a resumed run keeps its saved options; these differ: "
                         f"{changes(asdict(saved), asdict(wanted), differ)}. Only --epochs may grow, and only "
                         "with a constant learning rate (it shapes the schedule otherwise)")
    saved.epochs = wanted.epochs
    return saved


def check_checkpoints(run_dir: Path, cfg: TrainConfig) -> None:
    """Refuse to resume a run whose config.json (read as cfg) is not the config its checkpoints were
    trained with, as a hand edit would make it: the run would go on as a mix of two."""
    for path in sorted(run_dir.glob("checkpoint*.safetensors")):
        trained = load_meta(path).get("config")
        if not isinstance(trained, dict):
            raise ModelFileError(f"{path}: corrupt metadata (no config)")
        if differ := changed_options(trained, asdict(cfg)):
            raise ValueError(f"{run_dir / 'config.json'}: not the options {path.name} was trained with ("
                             f"{changes(trained, asdict(cfg), differ)}); a resumed run goes on with those: put "
                             "them back, or start a new run")


Out = str | Path | None | EllipsisType  # a job's `out`: ... (not given) is its config's


def job_config(cls: type, cfg: TrainConfig | None, resume: str | Path | None, out: Out = ...) -> TrainConfig:
    """The config a job runs with (resume's saved one, or cfg, or the defaults; `out`, where given, as its
    out), checked to the output folder before any data is read. out=None: the job keeps nothing on
    disk, which neither resuming nor TensorBoard's event files go with."""
    if out is None and resume is not None:
        raise ValueError("resume continues a run directory: it cannot go with out=None, which writes none")
    if resume is not None:
        saved = cls.from_dict(read_config(resume), f"{Path(resume) / 'config.json'}")
        check_checkpoints(Path(resume), saved)
        cfg = resumed_config(saved, cfg)
    cfg = cfg if cfg is not None else cls()
    if out not in (None, ...):
        cfg = replace(cfg, out=str(out))
    if out is None and cfg.tensorboard:
        raise ValueError("tensorboard writes event files into the run directory: it cannot go with out=None")
    if out is not None:
        check_output_dir(cfg.out)
    if cfg.init and resume is None:
        check_init(cfg)
    return cfg


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


@contextlib.contextmanager
def start_job(cfg: TrainConfig, job: str, resume: str | Path | None, keep: bool = True,
              verbose: int = 2) -> Iterator[Run | None]:
    """Open the run directory (new, or `resume`'s; none, and None for it, unless `keep`), with the
    config's CPU threads, denormals flushed on every thread (machine.flush_denormals), deterministic cuDNN
    on a GPU, and a log (on the terminal as `verbose` says, runs.VERBOSE). Under torchrun, rank 0 opens it
    and the others share it (distributed.shared_run), each process with its share of the node's cores
    unless --threads says."""
    opened = (distributed.shared_run(lambda: open_run(asdict(cfg), job, cfg.out, resume, verbose)) if keep
              else no_run(verbose))
    with (opened as run,
          machine.threads_for_job(cfg.threads or distributed.default_threads()),
          deterministic_cudnn(resolve_device(cfg.device).type == "cuda")):
        if resume and cfg.epochs != run.config["epochs"] and distributed.is_main():
            write_json(run.dir / "config.json", {"job": job, **asdict(cfg)})
            log.info(f"continuing to {cfg.epochs} epochs (the run was set to {run.config['epochs']})")
        yield run


def machine_name(device: torch.device) -> str:
    """What trained the model, for reports: the GPU, else the CPU model and the threads torch used."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    job = machine.job_threads()
    return f"{machine.cpu_model()}, {job.describe() if job else f'{torch.get_num_threads()} threads'}"


def model_metadata(model: torch.nn.Module, cfg: TrainConfig, data: Dataset, **results) -> dict:
    """What a model file says about itself: architecture, classes, input format, config, data, results."""
    return {
        "architecture": cfg.model,
        "parameters": count_parameters(model),
        "class_names": list(data.class_names),
        "input": {"shape": [1, 28, 28], "scale": "pixel / 255", "background": "dark",
                  "layout": "light object on black, centred, 28x28 grayscale"},
        "config": asdict(cfg),
        "tta": cfg.tta,  # load_model sets it on the model, so every user of the file evaluates alike
        "data": {"source": data.source, "sha256": data.checksums},
        **results,
    }


def log_class_counts(labels: torch.Tensor, class_names: Sequence[str], cfg: TrainConfig) -> None:
    """The training images per class, before training starts: an imbalance shows up front."""
    counts = class_counts(labels, len(class_names))
    line = "training images per class: " + ", ".join(f"{name} {n}" for name, n in zip(class_names, counts))
    if 0 in counts:
        line += "; none at all of " + ", ".join(name for name, n in zip(class_names, counts) if not n)
    elif max(counts) >= 2 * min(counts) and cfg.class_weights == "none":
        line += (f"; the largest class has {max(counts) / min(counts):.1f}x the images of the smallest: "
                 "--class-weights auto weighs every class alike")
    log.info(line)


@dataclass
class TrainResult:
    """What `train_final` made: the model (in eval mode), its per-epoch history, the test report and files."""

    run_dir: Path | None  # None for a job run with out=None, which kept nothing on disk
    model: torch.nn.Module
    history: History
    test: dict  # evaluate.evaluate_model's report: accuracy, loss, confusion matrix, per-class scores
    best_epoch: int | None = None  # under early stopping, the epoch whose weights were kept

    @property
    def model_path(self) -> Path | None:
        return self.run_dir and self.run_dir / "model.safetensors"

    @property
    def test_accuracy(self) -> float:
        return self.test["accuracy"]


def train_final(cfg: TrainConfig | None = None, resume: str | Path | None = None,
                data: Dataset | None = None, *, out: Out = ..., verbose: int = 1,
                time_limit: float | None = None) -> TrainResult:
    """Train on the whole training set (less --val-size), evaluate once on the test set, save the model.

    resume: an interrupted train run's directory, continued with its saved config (`cfg`, if given, may
    only raise the epochs; see resumed_config). Under torchrun, the processes train the model together,
    --batch-size being the global batch (distributed.py).
    out: the folder the run directory goes in (default: cfg.out, ./runs); None keeps nothing on disk (no
    run directory, model file, checkpoint or report: the model, history and test report are in the
    result only, and an interrupted job cannot be resumed).
    verbose: what the terminal shows: 0 nothing, 1 progress bars and a line per epoch, 2 the whole log
    (the CLI's); a run directory's log.txt holds the whole log either way.
    time_limit: the seconds training may take (fit), by default all of --budget (budget.py, which also
    chooses the recipe, passes what the budget leaves once the job has started and testing is allowed for).
    """
    from .evaluate import format_scores, score, write_reports
    from .inference import predict_logits
    from .plots import learning_curves, save_figure
    from .report import write_report

    check_verbose(verbose)
    with distributed.agreed():  # under torchrun every process checks its options and data before any work
        cfg = job_config(TrainConfig, cfg, resume, out)
        data = testable(data) if data else job_data(cfg)
        distributed.check_global_batch(cfg.batch_size)
        train, val = limited(data.train_images, data.train_labels, cfg.limit), None
        if cfg.val_size:
            train, val = holdout_split(*train, cfg.val_size)
    distributed.check_same_config(asdict(cfg))
    distributed.check_same_data(data)
    with start_job(cfg, "train", resume, keep=out is not None, verbose=verbose) as run:
        run_dir = run.dir if run else None
        log.info((f"run directory: {run_dir}\n" if run_dir else "") + f"data: {data.source} ({len(train[0])} "
                 "training images" + (f", {len(val[0])} held out for validation)" if val else ")")
                 + f", model {cfg.model}")
        log_class_counts(train[1], data.class_names, cfg)
        ckpt = run_dir / "checkpoint.safetensors" if run_dir else None
        state = TrainState.create(cfg, data.class_names, 0, checkpoint=ckpt if run and run.resumed else None)
        if state.history:
            log.info(f"resuming after epoch {len(state.history)}")

        def write_metrics(row: dict) -> None:
            write_atomic(run_dir / "metrics.csv", csv_bytes(state.history))

        # rank 0 alone writes files, and calls fit's on_epoch
        tensorboard = run_dir / "tensorboard" if run_dir else None  # job_config refuses it without a run
        with tensorboard_log.epoch_log(cfg.tensorboard and distributed.is_main(), tensorboard) as tb:
            fit(state, cfg, train, val, keys=(0,), checkpoint=ckpt, on_epoch=[write_metrics, *tb] if run_dir else [],
                data_parallel=True, verbose=verbose,
                time_limit=duration_seconds(cfg.budget) if time_limit is None else time_limit)
        final = state.final.eval()
        logits = predict_logits(final, data.test_images, cfg.eval_batch_size,
                                desc="testing" if distributed.is_main() and verbose else None)
        report = score(logits, data.test_labels, data.class_names, data.test_parts)
        result = TrainResult(run_dir, final, state.history, report, state.best_epoch)
        seconds = sum(row["seconds"] for row in state.history)
        tested = f"test accuracy: {format_scores(report)} (training took {seconds:.0f}s)"
        if run_dir is None:
            log.info(tested)
            return result
        if not distributed.is_main():
            return result  # rank 0 writes the files
        save_figure(learning_curves({"train": state.history}, best_epochs={"train": state.best_epoch}),
                    run_dir / "learning_curves.png")
        written = write_reports(report, run_dir)
        results = {"test_accuracy": report["accuracy"], "test_macro_f1": report["macro_f1"],
                   "test_interval": report["interval"],
                   **({"test_parts": report["parts"]} if "parts" in report else {}),
                   "training_images": len(train[1]), "test_images": len(data.test_labels),
                   "val_accuracy": state.result.get("val_accuracy"), "best_epoch": state.best_epoch, "init": state.init,
                   "train_seconds": seconds,
                   "train_cpu_seconds": sum(row["cpu_seconds"] for row in state.history),
                   "machine": machine_name(next(final.parameters()).device)}
        results.update(calibration.for_validation(final, val))  # temperature and unknown threshold, in the model file
        meta = model_metadata(final, cfg, data, **results, history=state.history)
        save_model(result.model_path, final.cpu(), {**meta, "model_card": model_card({**meta, "version": __version__})})
        write_json(run_dir / "metrics.json", {**results, "history": state.history, "version": __version__})
        written.append(write_report(run_dir, data, logits=logits))
        log.info(f"{tested}\nmodel: {result.model_path}\nreports: {', '.join(str(p) for p in written)}\n"
                 f"next: fashion-cnn predict IMAGE --model {run_dir}")
    return result
