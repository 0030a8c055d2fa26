"""The options of the jobs that have some beyond TrainConfig's and CVConfig's (`config`): lr-find's config,
and tune's default search space and settings. Like `config`, this module loads no torch, so the command
line builds these jobs' --help without loading the jobs themselves (`lrfind`, `tune`)."""

from __future__ import annotations

from dataclasses import dataclass

from fashion_cnn.config import POSITIVE, TrainConfig, check, opt

# --- lr-find ------------------------------------------------------------------------------------------------

LR_FIND_RULE = "one tenth of the learning rate at the smoothed loss's minimum"  # lrfind.suggest's


@dataclass
class LRFindConfig(TrainConfig):
    """A range test's options: the recipe's (TrainConfig), the learning-rate range and the steps."""

    start_lr: float = opt(1e-6, "the learning rate of the first step", POSITIVE)
    end_lr: float = opt(10.0, "the learning rate of the last step (the test usually stops before it)", POSITIVE)
    steps: int = opt(200, "training steps, each multiplying the learning rate by the same factor",
                     check("at least 10", lambda v: v >= 10))

    def validate(self) -> None:
        super().validate()
        if not self.start_lr < self.end_lr:
            raise ValueError(f"--start-lr ({self.start_lr:g}) must be below --end-lr ({self.end_lr:g})")


# the options that act in a range test: the recipe's training step, the data, where it runs and writes
LR_FIND_OPTIONS = ("model", "batch_size", "optimizer", "momentum", "nesterov", "weight_decay", "label_smoothing",
                   "crop", "flip", "erase", "amp", "seed", "device", "threads", "limit", "data", "classes",
                   "test_fraction", "data_dir", "out", "start_lr", "end_lr", "steps")

# --- tune ---------------------------------------------------------------------------------------------------

# the search space unless --space or a job option says otherwise; epochs: half the model's recipe to all of it
DEFAULT_SPACE = {"lr": "0.001:0.3:log", "weight_decay": "1e-06:0.01:log", "batch_size": "32,64,128,256",
                 "epochs": None, "crop": "0:4", "erase": "0:0.5", "flip": "true,false", "label_smoothing": "0:0.2"}
DEFAULT_TRIALS = 20
DEFAULT_STUDY = "fashion-cnn"


def space_help() -> str:
    """The default space for --help."""
    return " ".join(f"{k}={v or 'HALF:ALL'}" for k, v in DEFAULT_SPACE.items()) + (
        " (epochs: half the model's recipe to all of it)")
