"""The learning-rate range test (`fashion-cnn lr-find`; L. N. Smith, "Cyclical Learning Rates for Training
Neural Networks", 2017): a short run of the recipe whose learning rate grows by the same factor every step,
from --start-lr to --end-lr, stopping once the loss explodes. Plotted against the learning rate (log
axis), the smoothed loss falls, flattens and shoots up; the suggested learning rate is one tenth of the
one at the smoothed loss's minimum (where training is still fast, safely below where it breaks down).
The steepest descent of the smoothed loss is reported beside it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from fashion_cnn.data.fmnist import Dataset
from fashion_cnn.data.images import to_float
from fashion_cnn.io import csv_bytes, write_atomic, write_json
from fashion_cnn.jobs.common import job_config, job_data, start_job
from fashion_cnn.jobs.options import LR_FIND_RULE, LRFindConfig
from fashion_cnn.reporting.plots import save_figure
from fashion_cnn.training.augment import make_augment
from fashion_cnn.training.loop import derived_seed, limited, make_model, make_optimizer, make_step

if TYPE_CHECKING:
    from matplotlib.figure import Figure  # imported where a figure is drawn: the CLI starts without it

log = logging.getLogger("fashion_cnn")
SMOOTHING = 0.98  # the loss's exponential moving average over about the last 50 steps (bias-corrected)
EXPLODED = 4.0  # stop once the smoothed loss is this many times its minimum so far


@dataclass
class LRFindResult:
    """The range test's curve (one row per step: lr, loss, smoothed_loss), the suggestion and where it is."""

    run_dir: Path
    rows: list[dict]
    suggestion: float
    minimum: float  # the learning rate at the smoothed loss's minimum
    steepest: float  # the learning rate where the smoothed loss falls fastest (per log learning rate)
    stopped: str  # why the test ended


def suggest(rows: list[dict]) -> tuple[float, float, float]:
    """(suggestion, learning rate at the smoothed minimum, learning rate of the steepest descent before it;
    the first tenth of the steps left out of the latter, as the average of a few losses is still noise)."""
    lrs = np.array([r["lr"] for r in rows])
    smoothed = np.array([r["smoothed_loss"] for r in rows])
    lowest = int(np.argmin(smoothed))
    first = min(len(rows) // 10, lowest)
    if lowest - first < 2:
        steepest = lowest
    else:
        steepest = first + int(np.argmin(np.gradient(smoothed[first:lowest + 1], np.log(lrs[first:lowest + 1]))))
    return float(lrs[lowest] / 10), float(lrs[lowest]), float(lrs[steepest])


def lr_find(cfg: LRFindConfig | None = None, data: Dataset | None = None) -> LRFindResult:
    """Run the range test with cfg's recipe on the (limited) training images; writes its own run directory:
    lr_find.csv, lr_find.json and lr_find.png."""
    cfg = job_config(LRFindConfig, cfg, None)
    data = data or job_data(cfg)
    images, labels = limited(data.train_images, data.train_labels, cfg.limit)
    if len(images) < cfg.batch_size:
        raise ValueError(f"--batch-size {cfg.batch_size} is more than the {len(images)} training images")
    with start_job(cfg, "lr-find", None) as run:
        model = make_model(cfg, len(data.class_names), 0).train()
        optimizer = make_optimizer(model, cfg)
        step = make_step(model, optimizer, cfg.label_smoothing, cfg.amp)
        augment = make_augment(cfg.crop, cfg.flip, cfg.erase)
        device = next(model.parameters()).device
        images, labels = images.to(device), labels.to(device)
        factor = (cfg.end_lr / cfg.start_lr) ** (1 / (cfg.steps - 1))
        log.info(f"run directory: {run.dir}\nlearning rate {cfg.start_lr:g} to {cfg.end_lr:g} over {cfg.steps} "
                 f"steps of {cfg.batch_size} images, model {cfg.model}")
        rows, average, stopped = [], 0.0, f"reached --end-lr {cfg.end_lr:g}"
        order, position = torch.empty(0, dtype=torch.long), len(images)
        for i in range(cfg.steps):
            if position + cfg.batch_size > len(images):  # a new pass: a fresh shuffle, seeded by its number
                generator = torch.Generator().manual_seed(derived_seed(cfg.seed, 0, i))
                order, position = torch.randperm(len(images), generator=generator).to(device), 0
            batch = order[position:position + cfg.batch_size]
            position += cfg.batch_size
            lr = cfg.start_lr * factor ** i
            for group in optimizer.param_groups:
                group["lr"] = lr
            x = to_float(images[batch])
            if augment is not None:
                x = augment(x, generator)
            loss = step(x, labels[batch])[0].item() / len(batch)
            if not math.isfinite(loss):
                stopped = f"the loss became {loss} at learning rate {lr:.3g}"
                break
            average = SMOOTHING * average + (1 - SMOOTHING) * loss
            rows.append({"step": i + 1, "lr": lr, "loss": loss, "smoothed_loss": average / (1 - SMOOTHING ** (i + 1))})
            if rows[-1]["smoothed_loss"] > EXPLODED * min(r["smoothed_loss"] for r in rows):
                stopped = f"the smoothed loss exploded (over {EXPLODED:g}x its minimum) at learning rate {lr:.3g}"
                break
        if len(rows) < 2:
            raise ValueError(f"the range test stopped after {len(rows)} step ({stopped}): try a lower --start-lr")
        suggestion, minimum, steepest = suggest(rows)
        write_atomic(run.dir / "lr_find.csv", csv_bytes(rows))

        save_figure(lr_find_figure(rows, suggestion, minimum, steepest, cfg.lr), run.dir / "lr_find.png")
        write_json(run.dir / "lr_find.json", {"suggestion": suggestion, "rule": LR_FIND_RULE, "minimum_lr": minimum,
                                              "steepest_lr": steepest, "recipe_lr": cfg.lr, "steps": len(rows),
                                              "stopped": stopped})
        log.info(f"stopped after {len(rows)} steps: {stopped}\n"
                 f"suggested --lr {suggestion:.3g} ({LR_FIND_RULE}, {minimum:.3g}); the steepest descent is at "
                 f"{steepest:.3g}; the {cfg.model} recipe's --lr is {cfg.lr:g}\n"
                 f"plot: {run.dir / 'lr_find.png'}, curve: {run.dir / 'lr_find.csv'}")
    return LRFindResult(run.dir, rows, suggestion, minimum, steepest, stopped)


def centred_mean(values: np.ndarray, half: int) -> np.ndarray:
    """Each value's mean with up to `half` neighbours either side (fewer at the ends): a smoothing that,
    unlike the running average the test stops on, does not lag behind the curve."""
    kernel = np.ones(2 * half + 1)
    return np.convolve(values, kernel, "same") / np.convolve(np.ones(len(values)), kernel, "same")


def lr_find_figure(rows: list[dict], suggestion: float, minimum: float, steepest: float, recipe: float) -> Figure:
    """Loss (raw, faint; smoothed without lag, solid) against the learning rate on a log axis, with the
    minimum, the steepest descent, the suggestion and the recipe's learning rate marked."""
    from matplotlib.figure import Figure  # where a figure is drawn: the CLI starts without matplotlib

    lrs = [r["lr"] for r in rows]
    raw = np.array([r["loss"] for r in rows])
    smoothed = centred_mean(raw, min(max(1, len(raw) // 16), (len(raw) - 1) // 2))
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    ax.plot(lrs, raw, color="tab:blue", alpha=0.3, label="loss per step")
    ax.plot(lrs, smoothed, color="tab:blue", label="smoothed loss")
    for x, colour, style, label in ((minimum, "tab:gray", ":", f"minimum {minimum:.3g}"),
                                    (steepest, "tab:green", "-.", f"steepest descent {steepest:.3g}"),
                                    (suggestion, "tab:red", "--", f"suggested {suggestion:.3g} (minimum / 10)"),
                                    (recipe, "black", (0, (1, 3)), f"the recipe's {recipe:g}")):
        ax.axvline(x, color=colour, linestyle=style, label=label)
    # every raw loss up to the smoothed minimum shows, and the rise after it up to twice the starting loss:
    # the explosion goes off the top, the noise of the useful part does not
    lowest = int(np.argmin(smoothed))
    top = max(raw[:lowest + 1].max(), min(raw.max(), 2 * smoothed[0]))
    bottom = raw.min()
    margin = 0.05 * (top - bottom)
    ax.set_ylim(bottom - margin, top + margin)
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss",
           title=f"Learning-rate range test ({len(rows)} steps)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig
