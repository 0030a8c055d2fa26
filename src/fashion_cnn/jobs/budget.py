"""The best model for your time: `--budget 5m` picks the recipe and epochs that fit on this machine.

Three pieces:

- the frontier: each recipe's accuracy at a few epoch counts, from `benchmarks/frontier.py` (mean over
  seeds, recipes chosen on a validation split, the test set scoring each finished run once), shipped as
  `frontier.json` beside this module; without one, each registered recipe's single published run;
- the machine's speed: a few training steps of each candidate, timed through the very step function
  `fit` uses (the baseline's C kernel included), on synthetic images of the real shape, with the job's
  threads, augmentation and moving average, plus one evaluation pass;
- the choice: of the recipes whose epochs, scaled down from the most the frontier measured (never below
  the fewest it measured: nothing is extrapolated), fit what the budget leaves, the one with the best
  expected accuracy. A schedule is a function of the fraction of training done, so fewer epochs keep
  its shape. The job then gets a time limit: training stops after the epoch that would leave the next
  one ending past it (train.fit), so a slower machine than measured costs epochs, not the budget.

Only the commands (`train`, `cv`, `models`) and benchmarks import this module.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from fashion_cnn import machine
from fashion_cnn.config import CVConfig, TrainConfig, duration_seconds
from fashion_cnn.data.fmnist import Dataset
from fashion_cnn.data.images import to_float
from fashion_cnn.evaluation.inference import loss_and_accuracy
from fashion_cnn.jobs.common import job_data
from fashion_cnn.jobs.crossval import cv_splits
from fashion_cnn.models.specs import SPECS
from fashion_cnn.reporting.plots import learning_curves
from fashion_cnn.text import printable
from fashion_cnn.training import distributed
from fashion_cnn.training.augment import make_augment
from fashion_cnn.training.loop import EMA, limited, make_model, make_optimizer, make_step, resolve_device
from fashion_cnn.training.runs import start_log, stop_log

log = logging.getLogger("fashion_cnn")

FRONTIER_FILE = Path(__file__).with_name("frontier.json")  # benchmarks/frontier.py --ship writes it
SLACK = 0.1  # a budgeted job may end this share of its budget late: training's time limit takes half of it
MEASURE_SECONDS = 0.5  # timed steps per recipe: a steady per-step time, and a few seconds for all recipes
EVAL_IMAGES = 128  # images of the timed evaluation pass
# A job's work besides training and evaluating, mostly figures (learning curves, confusion matrix, the
# report's), takes about this many times one learning-curves figure: 8-15 on 2 loaded cores
FIGURES = 12
# A recipe guessed (from the frontier's times) to need this many budgets for its shortest run is not timed:
# a GPU, or bfloat16 without AMX, can change the recipes' speed ratios by several times, not by this much
UNLIKELY = 10

# Without a measured frontier: each recipe's single published run (docs/benchmarks/models.md, one seed,
# all 60,000 training images, on 2 threads of an Intel Xeon), in the shape benchmarks/frontier.py writes.
PUBLISHED = {
    "machine": "Intel(R) Xeon(R) Processor, 2 threads",
    "points": [
        {"recipe": "baseline", "epochs": 10, "seeds": 1, "wall_minutes": {"mean": 29 / 60, "std": None},
         "test_accuracy": {"mean": 0.9075, "std": None}},
        {"recipe": "fast", "epochs": 18, "seeds": 1, "wall_minutes": {"mean": 4.12, "std": None},
         "cpu_minutes": {"mean": 8.21, "std": None}, "test_accuracy": {"mean": 0.9387, "std": None}},
        {"recipe": "strong", "epochs": 50, "seeds": 1, "wall_minutes": {"mean": 55.4, "std": None},
         "cpu_minutes": {"mean": 107.3, "std": None}, "test_accuracy": {"mean": 0.9561, "std": None}},
    ],
}
SINGLE_RUN = "the recipe's single measured run"


# --- durations, as --budget takes them and the log shows them -----------------------------------------------

def format_duration(seconds: float) -> str:
    """'45 s', '4.6 min' or '1.5 h': the unit a reader takes in at a glance."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# --- the frontier --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Frontier:
    """Measured (recipe, epochs) points: accuracy (mean, std over seeds) and time on the machine measured."""

    points: tuple[dict, ...]
    source: str  # where the points come from, in words
    measured: bool  # by benchmarks/frontier.py; else the published single runs

    def epochs(self, recipe: str) -> list[int]:
        """The epoch counts measured for a recipe, ascending (empty where it has none)."""
        return sorted({p["epochs"] for p in self.points if p["recipe"] == recipe})

    def epoch_minutes(self, recipe: str) -> float:
        """Wall minutes per epoch of the recipe's quickest measured run, on the machine measured."""
        fewest = min((p for p in self.points if p["recipe"] == recipe), key=lambda p: p["epochs"])
        return fewest["wall_minutes"]["mean"] / fewest["epochs"]

    def expected(self, recipe: str, epochs: int, key: str = "test_accuracy") -> float:
        """The mean accuracy (`key`) at `epochs`, interpolated linearly between the measured counts around it;
        a count measured on several machines takes the mean over all their seeds (accuracy does not
        depend on the machine; time does, and is measured here)."""
        mine = [p for p in self.points if p["recipe"] == recipe]
        known = [(e, sum(p[key]["mean"] * p["seeds"] for p in mine if p["epochs"] == e)
                  / sum(p["seeds"] for p in mine if p["epochs"] == e)) for e in self.epochs(recipe)]
        below = max((e, a) for e, a in known if e <= epochs)
        above = min(((e, a) for e, a in known if e >= epochs), default=below)
        if above[0] == below[0]:
            return below[1]
        return below[1] + (above[1] - below[1]) * (epochs - below[0]) / (above[0] - below[0])

    @property
    def score_key(self) -> str:
        """What the choice ranks by: validation accuracy where every point has it, never the test set's
        when it can be helped."""
        return "val_accuracy" if all(p.get("val_accuracy") for p in self.points) else "test_accuracy"


def check_frontier(doc: object, path: Path) -> tuple[dict, ...]:
    """The points of a frontier document, each with recipe, epochs, seeds, wall minutes and a test accuracy
    in [0, 1]; ValueError naming the file otherwise."""
    def valid(p) -> bool:
        acc = p.get("test_accuracy") if isinstance(p, dict) else None
        wall = p.get("wall_minutes") if isinstance(p, dict) else None
        return (isinstance(p.get("recipe"), str) and isinstance(p.get("epochs"), int) and p["epochs"] >= 1
                and isinstance(p.get("seeds"), int) and p["seeds"] >= 1 and isinstance(acc, dict)
                and isinstance(wall, dict)
                and isinstance(acc.get("mean"), (int, float)) and 0 <= acc["mean"] <= 1
                and isinstance(wall.get("mean"), (int, float)) and wall["mean"] > 0)
    points = doc.get("points") if isinstance(doc, dict) else None
    if not isinstance(points, list) or not points or not all(map(valid, points)):
        raise ValueError(f"{path}: not a frontier file (benchmarks/frontier.py writes them)")
    return tuple(points)


def load_frontier(path: Path | None = None) -> Frontier:
    """The frontier at `path` (default: the one shipped with the package), else (no file) the published
    single runs."""
    path = path or FRONTIER_FILE
    if not path.exists():
        return Frontier(tuple(PUBLISHED["points"]), f"no measured frontier yet (benchmarks/frontier.py --ship "
                        f"writes one); {SINGLE_RUN} of each, on {PUBLISHED['machine']}", measured=False)
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path}: not a frontier file ({e})") from None
    points = check_frontier(doc, path)
    machines = doc.get("machines") or [doc.get("machine")]  # the first files measured on one machine
    on = printable(" and ".join(map(str, machines if isinstance(machines, list) else [machines])))[:200]
    return Frontier(points, f"measured by benchmarks/frontier.py on {on}, "
                    f"{str((doc.get('run') or {}).get('finished', '?'))[:10]} ({path})", measured=True)


def frontier_lines(frontier: Frontier) -> list[str]:
    """`fashion-cnn models`'s table of the frontier: recipe, epochs, minutes, accuracy, seeds."""
    def spread(m: dict | None, scale: float, unit: str, digits: int) -> str:
        if not m or m.get("mean") is None:
            return "–"
        return f"{scale * m['mean']:.{digits}f}{unit}" + (f" ± {scale * m['std']:.{digits}f}" if m.get("std") else "")

    several = len({p.get("machine") for p in frontier.points}) > 1  # then each line names its machine
    lines = [f"frontier: {frontier.source}",
             f"{'recipe':<10} {'epochs':>6}  {'wall min':>12}  {'CPU min':>12}  {'test accuracy':>16}  seeds"
             + ("  machine" if several else "")]
    for p in sorted(frontier.points, key=lambda p: (p["recipe"], p["epochs"])):
        lines.append(f"{p['recipe']:<10} {p['epochs']:>6}  {spread(p.get('wall_minutes'), 1, '', 2):>12}  "
                     f"{spread(p.get('cpu_minutes'), 1, '', 2):>12}  {spread(p['test_accuracy'], 100, '%', 2):>16}  "
                     f"{p['seeds']:>5}" + (f"  {printable(str(p.get('machine')))[:60]}" if several else ""))
    return lines


# --- the machine's speed ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Speed:
    """A recipe on this machine: seconds per training step (its batch), and per image evaluated."""

    step: float
    eval_image: float


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's thread count as a job with --threads sets it (0: torch's default), for the block."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def measure_speed(cfg: TrainConfig, num_classes: int, slowest_step: float = math.inf) -> Speed:
    """Time a few of cfg's training steps (through make_step, as fit takes them, with the augmentation
    and moving average of its recipe) on random images, for MEASURE_SECONDS, and one evaluation pass;
    the timing stops early, and skips the evaluation, once a step is slower than `slowest_step` (the
    recipe cannot fit anyway)."""
    model = make_model(cfg, num_classes)
    optimizer = make_optimizer(model, cfg)
    device = next(model.parameters()).device
    weights = torch.ones(num_classes, device=device) if cfg.class_weights == "auto" else None
    step = make_step(model, optimizer, cfg.label_smoothing, cfg.amp, weights)
    ema = EMA(model, cfg.ema) if cfg.ema else None
    augment = make_augment(cfg.crop, cfg.flip, cfg.erase)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (max(cfg.batch_size, EVAL_IMAGES), 28, 28), dtype=torch.uint8,
                           generator=generator).to(device)
    labels = torch.randint(0, num_classes, (len(images),), generator=generator).to(device)

    def train_step(i: int) -> float:
        x = to_float(images[:cfg.batch_size])
        loss, _ = step(augment(x, generator) if augment else x, labels[:cfg.batch_size])
        if ema is not None:
            ema.update(i)
        return loss.item()  # waits for the device

    train_step(0)  # the first step allocates and picks kernels
    steps, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < MEASURE_SECONDS and elapsed <= slowest_step * max(steps, 1):
        train_step(steps + 1)
        steps += 1
    per_step = (time.perf_counter() - start) / steps
    if per_step > slowest_step:  # out of the running: a training step's time per image bounds evaluation's
        return Speed(per_step, per_step / cfg.batch_size)
    evaluated = ema.model if ema else model
    start = time.perf_counter()
    loss_and_accuracy(evaluated, images[:EVAL_IMAGES], labels[:EVAL_IMAGES], cfg.eval_batch_size)
    return Speed(per_step, (time.perf_counter() - start) / EVAL_IMAGES)


# --- the choice ---------------------------------------------------------------------------------------------

def figure_seconds() -> float:
    """Seconds to draw one learning-curves figure into a PNG here, the unit of a job's reports: the second
    drawing, as the first loads fonts once per process (and the job's figures find them loaded)."""
    rows = [{"epoch": e, "loss": 1 / e, "accuracy": 1 - 1 / e, "val_loss": 1 / e, "val_accuracy": 1 - 1 / e}
            for e in range(1, 11)]
    learning_curves({"train": rows}).savefig(io.BytesIO(), format="png")
    start = time.perf_counter()
    learning_curves({"train": rows}).savefig(io.BytesIO(), format="png")
    return time.perf_counter() - start


@dataclass(frozen=True)
class Cost:
    """What a recipe's job takes on this machine: seconds per epoch (every fold's training and validation),
    and seconds once (testing, or scoring each fold, and the figures and reports)."""

    epoch: float
    once: float


@dataclass(frozen=True)
class Choice:
    """A recipe at some epochs, with the accuracy the frontier expects of it and the seconds it needs."""

    recipe: str
    epochs: int
    expected: float  # test accuracy
    score: float  # what the choice ranked by (validation accuracy where the frontier has it)
    seconds: float  # training and the once-per-job work, on this machine


def choose(frontier: Frontier, costs: dict[str, Cost], seconds: float) -> Choice | None:
    """Of the recipes in `costs`, the one with the best expected accuracy (the quicker at a tie) at the
    most epochs that fit `seconds`, between the fewest and the most the frontier measured; None where
    none fits."""
    choices = []
    for recipe, cost in costs.items():
        measured = frontier.epochs(recipe)
        if not measured:
            continue
        epochs = min(measured[-1], math.floor((seconds - cost.once) / cost.epoch))
        if epochs >= measured[0]:
            score = frontier.expected(recipe, epochs, frontier.score_key)
            choices.append(Choice(recipe, epochs, frontier.expected(recipe, epochs), score,
                                  cost.once + epochs * cost.epoch))
    return max(choices, key=lambda c: (c.score, -c.seconds), default=None)


def quickest(frontier: Frontier, costs: dict[str, Cost]) -> tuple[str, int, float]:
    """(recipe, epochs, seconds) of the shortest run the frontier supports: what a budget must allow."""
    runs = [(r, frontier.epochs(r)[0], c.once + frontier.epochs(r)[0] * c.epoch) for r, c in costs.items()
            if frontier.epochs(r)]
    return min(runs, key=lambda run: run[2])


# --- a budgeted job ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sizes:
    """The images a job trains, validates and scores, per fold, and its folds (1 for train)."""

    train: int
    val: int
    once: int  # evaluated once per fold after training: the test set (train), the held-out fold (cv)
    folds: int


def job_sizes(cfg: TrainConfig, data: Dataset) -> Sizes:
    """The sizes of cfg's job on data (ValueError where its --folds or --val-size do not fit it)."""
    labels = limited(data.train_images, data.train_labels, cfg.limit)[1]
    if isinstance(cfg, CVConfig):
        splits = cv_splits(cfg, labels)
        train, val = len(splits[0][0]), len(splits[0][1])
        return Sizes(train, val, val, len(splits))
    return Sizes(len(labels) - cfg.val_size, cfg.val_size, len(data.test_labels) + cfg.val_size, 1)


def recipe_cost(cfg: TrainConfig, speed: Speed, sizes: Sizes, reports: float) -> Cost:
    """cfg's job on this machine, from its speed, its sizes, and the seconds its reports take."""
    steps = math.ceil(sizes.train / cfg.batch_size)
    return Cost(sizes.folds * (steps * speed.step + sizes.val * speed.eval_image),
                reports + sizes.folds * sizes.once * speed.eval_image)


def guess(frontier: Frontier, costs: dict[str, Cost], recipe: str) -> float:
    """A recipe's seconds per epoch here, before timing it: its frontier time, scaled as the quickest
    recipe timed here scales."""
    timed = min(costs, key=frontier.epoch_minutes)
    return frontier.epoch_minutes(recipe) * costs[timed].epoch / frontier.epoch_minutes(timed)


@dataclass(frozen=True)
class Plan:
    """What a --budget job runs: the config with the chosen recipe and epochs, its data (loaded to size
    the job), the seconds its training may take in all, and the one line that says so."""

    config: TrainConfig
    data: Dataset
    time_limit: float
    line: str


def measure_costs(frontier: Frontier, configs: dict[str, TrainConfig], sizes: Sizes, budget: float,
                  num_classes: int) -> dict[str, Cost]:
    """Each candidate's cost here (the quickest first, and none that is sure not to fit the budget), with
    the job's threads."""
    costs: dict[str, Cost] = {}
    with torch_threads(next(iter(configs.values())).threads):
        machine.flush_denormals()  # as the job will
        reports = FIGURES * figure_seconds()
        for recipe in sorted(configs, key=frontier.epoch_minutes):
            cfg, fewest = configs[recipe], frontier.epochs(recipe)[0]
            if costs and guess(frontier, costs, recipe) * fewest > UNLIKELY * budget:
                continue  # not worth the seconds its timing would take from the budget
            steps = fewest * sizes.folds * math.ceil(sizes.train / cfg.batch_size)
            speed = measure_speed(cfg, num_classes, slowest_step=budget / steps)
            costs[recipe] = recipe_cost(cfg, speed, sizes, reports)
    return costs


def plan_job(cls: type[TrainConfig], options: dict, frontier: Frontier | None = None) -> Plan:
    """The plan for the options of a `train` or `cv` command (cls: TrainConfig or CVConfig) that have a
    --budget: loads the data, times each candidate recipe here (the --model given, else every recipe of
    the frontier), chooses, and logs the choice. ValueError with one line, before any run directory,
    where the options ask for what a budget decides, or no recipe fits the budget."""
    started = time.perf_counter()
    base = cls.from_dict(options, None)
    resolve_device(base.device)  # --device cuda on a machine without a GPU fails here
    budget = duration_seconds(base.budget)
    if "epochs" in options:
        raise ValueError("--budget chooses the epochs: leave out --epochs (a --config file may set it too)")
    if distributed.world().size > 1:
        raise ValueError("--budget times this one process; under torchrun, give --epochs instead")
    frontier = frontier or load_frontier()
    fixed = "model" in options or "init" in options  # the architecture is given: only its epochs are chosen
    if fixed and not frontier.epochs(base.model):
        raise ValueError(f"--budget: the frontier has no points for model {base.model!r} ({frontier.source})")
    candidates = [base.model] if fixed else [r for r in dict.fromkeys(p["recipe"] for p in frontier.points)
                                             if r in SPECS]
    data = job_data(base)
    sizes = job_sizes(base, data)
    configs = {r: cls.from_dict({**options, "model": r}, None) for r in candidates}
    costs = measure_costs(frontier, configs, sizes, budget, len(data.class_names))
    spent = time.perf_counter() - started
    choice = choose(frontier, costs, budget - spent)
    if choice is None:
        recipe, epochs, seconds = quickest(frontier, costs)
        raise ValueError(f"--budget {base.budget} is too short for any recipe on this machine: the quickest, "
                         f"{recipe} at {epochs} epoch{'s' * (epochs > 1)}, needs about "
                         f"{format_duration(spent + seconds)} here")
    folds = sizes.folds
    other_data = base.limit is not None or (base.data or "fashion-mnist").lower() != "fashion-mnist"
    line = (f"budget {base.budget}{f' over {folds} folds' if folds > 1 else ''}: recipe {choice.recipe}, "
            f"{choice.epochs} epochs{' per fold' if folds > 1 else ''} (of {configs[choice.recipe].epochs}), "
            f"expected ~{100 * choice.expected:.1f}%" + ("" if frontier.measured else f" ({SINGLE_RUN})")
            + (" (on all of Fashion-MNIST's training images)" if other_data else "")
            + f" in ~{format_duration(spent + choice.seconds)} on this machine (measured "
            f"{costs[choice.recipe].epoch / folds:.1f} s/epoch)")
    start_log(None)  # the terminal: the run and its log.txt start once the choice is made
    log.info(line)
    stop_log()
    # training may take what is left after the once-per-job work, and half the slack: the job then ends
    # within the budget and SLACK, unless the machine slows down by more than the other half meanwhile
    time_limit = budget - spent - costs[choice.recipe].once + SLACK / 2 * budget
    cfg = cls.from_dict({**options, "model": choice.recipe, "epochs": choice.epochs}, None)
    return Plan(cfg, data, time_limit, line)
