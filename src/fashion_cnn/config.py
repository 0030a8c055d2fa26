"""The option schema: every job's settings as a dataclass, each field with its default, its check and why;
the command line is generated from them. No I/O here, and no torch: every --help is built from this module."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field, fields
from typing import Any, Callable

from fashion_cnn import machine, tensorboard_log
from fashion_cnn.io import (
    RUNS_ROOT,
)
from fashion_cnn.models.locate import init_architecture
from fashion_cnn.models.specs import get_spec

log = logging.getLogger("fashion_cnn")


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
    """A training-recipe field: left unset, it takes the model's recipe (models/specs.py), else `default`."""
    return field(default=None, metadata={"help": help, "fallback": default, "valid": valid, "choices": choices})


# Learning-rate multiplier after the warm-up, as a function of the fraction t of it done
SCHEDULES: dict[str, Callable[[float], float]] = {
    "constant": lambda t: 1.0,
    "cosine": lambda t: 0.5 * (1 + math.cos(math.pi * t)),
    "onecycle": lambda t: 1.0 - t,  # linear to zero (airbench's triangle, with the warm-up)
}
DEVICES = ("auto", "cpu", "cuda")
# Fine-tuning onto classes the --init model does not know (a new head): chosen on validation data,
# benchmarks/transfer.py (docs/benchmarks/own-data.md)
TRANSFER_WARMUP = 0.2
TRANSFER_BACKBONE_LR = 0.1
CLASS_WEIGHTS = ("none", "auto")
TOP_K = 3  # classes listed per image unless asked otherwise (predict, explain, the web API)


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
    amp: bool | None = recipe(False, "bfloat16 autocast in training (mixed precision); a recipe's amp is on only "
                                     "where bfloat16 is native, a GPU or a CPU with AMX: elsewhere it is slower "
                                     "than float32")
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
    head_warmup: float | None = opt(None, "with --init: the fraction of the epochs that train the classifier head "
                                          "alone (the rest frozen, batch norm as --init has it) before all layers "
                                          f"train; default: {TRANSFER_WARMUP:g} when the data has classes --init does "
                                          "not know (a new head, whose random start would otherwise pull apart the "
                                          "features the model learnt), else 0", FRACTION)
    backbone_lr: float | None = opt(None, "with --init: the learning rate of all layers but the classifier head, "
                                          f"as a fraction of --lr; default: {TRANSFER_BACKBONE_LR:g} when the data has "
                                          "classes --init does not know (the new head learns at the full rate, the "
                                          "learnt features change gently), else 1",
                                    check("in (0, 1]", lambda v: 0 < v <= 1))
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
        if self.amp and "amp" in unset and not machine.bf16_native(self.device):
            self.amp = False  # a recipe's bfloat16 is for speed: where the CPU emulates it, float32 is faster
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
        if self.early_stopping and not self.validates():
            raise ValueError("--early-stopping watches the validation loss: give --val-size too")
        if self.tensorboard and not tensorboard_log.available():
            raise ValueError(tensorboard_log.MISSING)
        if self.freeze_backbone and not self.init:
            raise ValueError("--freeze-backbone trains the head of an --init model: give --init too")
        for flag, value in (("--head-warmup", self.head_warmup), ("--backbone-lr", self.backbone_lr)):
            if value is not None and not self.init:
                raise ValueError(f"{flag} is for fine-tuning an --init model: give --init too")
        if self.freeze_backbone and (self.head_warmup or self.backbone_lr is not None):
            raise ValueError("--freeze-backbone trains the head alone throughout: leave out --head-warmup and "
                             "--backbone-lr, which are for training all layers")
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
FLOAT_LIMIT = 3.4028234663852886e38  # float32's largest finite value, numpy.finfo(numpy.float32).max
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


SPLIT_SEED = 1


@dataclass
class CVConfig(TrainConfig):
    """A `cv` run's options: TrainConfig's, the folds, and the split's seed."""

    folds: int = opt(5, "number of folds (the tutorial's 5); 1 validates once on a --val-size holdout",
                     {"rule": "at least 1", "test": lambda v: v >= 1})
    split_seed: int = opt(SPLIT_SEED, "shuffle seed of the k folds (the tutorial's KFold random_state=1); "
                                      "the --folds 1 holdout is fixed, the one `train --val-size` draws",
                          AT_LEAST_0)

    def validates(self) -> bool:
        return True  # on the held-out fold

    def validate(self) -> None:
        super().validate()
        if (self.folds == 1) != bool(self.val_size):
            raise ValueError("--val-size makes one validation split, so it goes with --folds 1 (and --folds 1 "
                             "needs --val-size); k-fold cross-validation validates on each fold in turn")
        if self.folds == 1 and self.split_seed != SPLIT_SEED:
            raise ValueError("--split-seed shuffles the k folds; the --folds 1 holdout is fixed (the split "
                             "`train --val-size` draws, so that runs compared on it agree)")


def fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
