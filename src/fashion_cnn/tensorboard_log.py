"""TensorBoard event files (--tensorboard): one writer per training run (a `train` run, each fold of a
`cv` run, so every sweep point and tune trial too), fed by fit's per-epoch callback.

`tensorboard --logdir runs/` then shows every job under runs/, each fold as a run of its own.
"""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path
from typing import Callable, Iterator

# the epoch row's columns (train.fit) -> TensorBoard tags: train and validation side by side per metric
TAGS = {"loss": "loss/train", "val_loss": "loss/validation", "accuracy": "accuracy/train",
        "val_accuracy": "accuracy/validation", "seconds": "time/seconds", "cpu_seconds": "time/cpu_seconds"}
MISSING = "--tensorboard needs the tensorboard package: pip install 'fashion-cnn[tensorboard]'"


def available() -> bool:
    """Whether torch.utils.tensorboard can write (it needs the tensorboard package)."""
    return importlib.util.find_spec("tensorboard") is not None


@contextlib.contextmanager
def epoch_log(enabled: bool, log_dir: Path) -> Iterator[list[Callable[[dict], None]]]:
    """fit's on_epoch callbacks that write each epoch's row to log_dir: none when not enabled."""
    if not enabled:
        yield []
        return
    from torch.utils.tensorboard import SummaryWriter  # tensorboard's extra, only with --tensorboard

    writer = SummaryWriter(str(log_dir))

    def write(row: dict) -> None:
        for key, value in row.items():
            if key in TAGS:
                writer.add_scalar(TAGS[key], value, row["epoch"])
        writer.flush()  # a killed run keeps what it logged

    try:
        yield [write]
    finally:
        writer.close()
