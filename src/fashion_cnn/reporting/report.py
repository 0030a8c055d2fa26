"""HTML reports: `write_report(run_dir)` for one run (cv, train or `evaluate --out`; of a sweep or a tune,
its points compared), `write_comparison(runs)` for several side by side.

A report is one self-contained file: every picture is a data: URL, the styles and the gallery's script are
inline, so it opens from disk, offline, with no server. It shows what ran, the learning curves, the per-fold
table (cv), the test results, a confusion matrix whose cells open the gallery of their test images, the
most-confused pairs, the highest-loss examples with heat maps (explain.py), and calibration.

Per-example results come from `predictions.safetensors` in the run directory: the model's logits on the
test set, computed once (with `inference.predict_logits`, as evaluation does) and reused while the model
file is unchanged, so a later `fashion-cnn report` does not run the model again.

Every value enters the HTML through `markup`, which escapes it unless it is markup already: a run's files
may have been edited by hand, and a report opened in a browser must not run what they hold.
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
import re
import shlex
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fashion_cnn.config import CVConfig, TrainConfig, fmt
from fashion_cnn.data.fmnist import CLASS_NAMES, DataError, Dataset
from fashion_cnn.data.folders import load_dataset, preprocessing_counts
from fashion_cnn.data.images import data_url, png_bytes, to_float
from fashion_cnn.evaluation import calibration
from fashion_cnn.evaluation.calibration import ECE_BINS
from fashion_cnn.evaluation.explain import METHOD, heatmaps, overlay_png
from fashion_cnn.evaluation.inference import predict_logits
from fashion_cnn.evaluation.metrics import format_interval, format_mcnemar, mcnemar
from fashion_cnn.io import (
    ModelFileError,
    check_output_file,
    file_sha256,
    load_tensors,
    save_tensors,
    write_atomic,
)
from fashion_cnn.models.files import load_model
from fashion_cnn.models.registry import count_parameters, create_model
from fashion_cnn.models.specs import list_models
from fashion_cnn.reporting.plots import fold_boxplot, learning_curves
from fashion_cnn.text import plain
from fashion_cnn.training.runs import read_config
from fashion_cnn.version import __version__

REPORT = "report.html"
PREDICTIONS = "predictions.safetensors"
HIGHEST_LOSSES = 24
CONFUSED_PAIRS = 10
SCALE = 3  # gallery thumbnails: 28x28 shown as 84x84
WORST = 12  # imported images shown of those that preprocessing left with the fewest object pixels
SPRITE_COLUMNS = 100
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)")


# --- what a run directory holds ------------------------------------------------------------------

@dataclass
class Run:
    path: Path
    job: str  # cv, train or evaluate
    config: dict  # config.json; {} for the output of `evaluate --out`
    history: list[dict]  # metrics.csv, one row per epoch (and fold)
    cv: dict | None  # cv_results.json
    metrics: dict | None  # metrics.json
    test: dict | None  # test_report.json

    @property
    def name(self) -> str:
        return self.path.name


def read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def number(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_history(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: number(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def load_run(path: str | Path) -> Run:
    """A run directory's files; one without config.json (cv, train) or test_report.json (evaluate) is refused."""
    path = Path(path)
    test = read_json(path / "test_report.json") if path.is_dir() else None
    if (path / "config.json").is_file():
        config = read_config(path)
    elif test is not None:
        config = {"job": "evaluate"}
    else:
        raise FileNotFoundError(f"{path}: not a run directory (no config.json or test_report.json)")
    return Run(path, config.get("job", "train"), config, read_history(path / "metrics.csv"),
               read_json(path / "cv_results.json"), read_json(path / "metrics.json"), test)


def report_path(out: str | Path | None, default: Path, runs: list[Run], force: bool,
                model: str | Path | None = None) -> Path:
    """Where a report goes, refused before any work as runs.check_output_file refuses: `out`, an existing
    file there only with force; or the default, a report's own earlier file, which is replaced. Never a
    link, FIFO or folder, nor a file of the runs (their report aside) or the model given."""
    inputs = tuple(p for run in runs for p in run.path.iterdir() if p.name != REPORT) + ((model,) if model else ())
    return check_output_file(out or default, force or not out, inputs)


def folds(history: list[dict]) -> list[list[dict]]:
    """The per-epoch rows of each fold, in fold order (a train run is one fold)."""
    by_fold: dict = {}
    for row in history:
        by_fold.setdefault(row.get("fold", 0), []).append(row)
    return [by_fold[k] for k in sorted(by_fold)]


# --- per-example results -------------------------------------------------------------------------

@dataclass
class Evaluation:
    """The model's answers on every test image, with the images themselves."""

    probabilities: np.ndarray  # float (N, classes)
    data: Dataset  # its test set is what the probabilities are of
    class_names: list[str]
    meta: dict  # the model file's metadata
    model_path: Path | None
    model: torch.nn.Module | None  # None when the model file is gone: no heat maps then

    @property
    def labels(self) -> np.ndarray:
        return self.data.test_labels.numpy()

    @property
    def images(self) -> np.ndarray:
        return self.data.test_images.numpy()

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(1)

    @property
    def losses(self) -> np.ndarray:
        """Cross-entropy of each example's true class."""
        true = self.probabilities[np.arange(len(self.labels)), self.labels]
        return -np.log(np.maximum(true, np.finfo(np.float32).tiny))


def run_data(config: dict, data_dir: str | None = None) -> Dataset:
    """The data a run was made on, from its config's data options (data_dir, given, overrides them);
    never downloaded."""

    if data_dir:
        return load_dataset(None, data_dir=data_dir, download=False)
    return load_dataset(config.get("data"), classes=config.get("classes"), data_dir=config.get("data_dir"),
                        test_fraction=config.get("test_fraction", 0.2), framed=config.get("framed", False),
                        download=False)


def model_of(run: Run, model: str | Path | None, cached_meta: dict | None) -> Path | None:
    """The model file a run's per-example results come from: given, the run's own, or the one recorded."""
    for candidate in (model, run.path / "model.safetensors", (cached_meta or {}).get("model")):
        if isinstance(candidate, (str, Path)) and Path(candidate).is_file():
            return Path(candidate)
    return None


def read_kept(path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """The kept per-example results and what made them; ({}, None) where there are none, or none usable
    (a damaged file is made again, or left out of the report where the model is gone too)."""
    try:
        tensors, meta = load_tensors(path)
    except ModelFileError:
        return {}, None
    logits, labels = tensors.get("logits"), tensors.get("labels")
    usable = (logits is not None and labels is not None and logits.ndim == 2 and labels.ndim == 1
              and len(logits) == len(labels) and logits.is_floating_point() and not labels.is_floating_point()
              and isinstance(meta.get("model_sha256"), str) and isinstance(meta.get("model_meta"), dict))
    return (tensors, meta) if usable else ({}, None)


def evaluation_of(run: Run, data: Dataset | None = None, model: str | Path | None = None,
                  data_dir: str | None = None, logits: torch.Tensor | None = None) -> Evaluation | None:
    """The run's per-example test results: `logits` where the caller has just computed them, else those
    kept in predictions.safetensors while the model file is the same, else computed; kept for the next
    report. None for a run without a model or kept results (cv)."""
    cache = run.path / PREDICTIONS
    tensors, cached = read_kept(cache)
    path = model_of(run, model, cached)
    if path is None and cached is None:
        return None
    loaded, meta = load_model(path) if path else (None, cached["model_meta"])
    digest = file_sha256(path) if path else cached["model_sha256"]
    data = data or run_data(run.config if run.job != "evaluate" else meta.get("config", {}), data_dir)
    labels = data.test_labels.numpy()
    fresh = (cached is not None and cached["model_sha256"] == digest
             and np.array_equal(tensors["labels"].numpy(), labels))
    if fresh and logits is None:
        logits = tensors["logits"]
    elif logits is not None or loaded is not None:
        if logits is None:
            logits = predict_logits(loaded, data.test_images, run.config.get("eval_batch_size", 1000))
        save_tensors(cache, {"logits": logits, "labels": data.test_labels},
                     {"model": str(path), "model_sha256": digest, "model_meta": meta, "data": data.source})
    else:
        raise DataError(f"{cache}: made on other test data than {data.source}, and its model is gone")
    return Evaluation(calibrated(logits, meta, path or cache), data, list(meta.get("class_names") or CLASS_NAMES),
                      meta, path, loaded)


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width confidence bin ((k/bins, (k+1)/bins]): count, mean confidence, accuracy."""
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == labels
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    seen = np.maximum(counts, 1)
    return (counts, np.bincount(which, confidence, bins) / seen,
            np.bincount(which, correct.astype(float), bins) / seen)


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """calibration.expected_calibration_error (the one definition) on numpy arrays."""
    return calibration.expected_calibration_error(torch.from_numpy(probabilities), torch.from_numpy(labels))


def calibrated(logits: torch.Tensor, meta: dict, source: str | Path) -> np.ndarray:
    """The probabilities `predict` gives: softmax at the model file's temperature (1 if uncalibrated)."""
    return calibration.probabilities(logits, calibration.from_metadata(meta, source)[0]).numpy()


# --- figures -------------------------------------------------------------------------------------

def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_url(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return data_url(buffer.getvalue())


def curve_panels(fig: Figure) -> list:
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.set(xlabel="epoch", ylabel=metric, title="Cross-entropy loss" if metric == "loss" else "Accuracy")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    return axes


def mean_curve(rows_per_fold: list[list[dict]], key: str) -> tuple[list[int], list[float]]:
    """Epochs and the mean over folds of one metric (folds run the same epochs)."""
    epochs = [row["epoch"] for row in rows_per_fold[0]]
    return epochs, [float(np.mean([rows[i][key] for rows in rows_per_fold if i < len(rows)]))
                    for i in range(len(epochs))]


def comparison_figure(runs: list[Run], labels: list[str]) -> Figure:
    """Training loss and validation accuracy (training accuracy where a run validated on nothing), one
    colour per run, named by its label; cross-validation runs as their mean over folds."""
    fig = new_figure(10, 3.8)
    loss_ax, acc_ax = curve_panels(fig)
    acc_ax.set_title("Validation accuracy (dashed: training)")
    for k, (run, label) in enumerate((r, name) for r, name in zip(runs, labels) if r.history):
        color = f"C{k % 10}"
        per_fold = folds(run.history)
        loss_ax.plot(*mean_curve(per_fold, "loss"), ".-", color=color, label=plain(label))
        validated = "val_accuracy" in per_fold[0][0]
        acc_ax.plot(*mean_curve(per_fold, "val_accuracy" if validated else "accuracy"), ".-" if validated else ".--",
                    color=color, label=plain(label))
    loss_ax.legend(fontsize=7)
    return fig


def reliability_diagram(probabilities: np.ndarray, labels: np.ndarray) -> str:
    counts, confidence, accuracy = reliability(probabilities, labels)
    edges = np.linspace(0, 1, ECE_BINS + 1)
    fig = new_figure(7.5, 3.6)
    diagram, histogram = fig.subplots(1, 2)
    used = counts > 0
    diagram.bar(edges[:-1][used], accuracy[used], width=1 / ECE_BINS, align="edge", color="tab:blue",
                edgecolor="white", label="accuracy")
    diagram.plot([0, 1], [0, 1], color="gray", linestyle="--", label="perfect calibration")
    diagram.plot(confidence[used], accuracy[used], "o", color="tab:orange", markersize=3,
                 label="mean confidence in the bin")
    diagram.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top probability)", ylabel="accuracy",
                title="Reliability diagram")
    diagram.legend(fontsize=7, loc="upper left")
    histogram.bar(edges[:-1], counts, width=1 / ECE_BINS, align="edge", color="tab:gray", edgecolor="white")
    histogram.set(xlim=(0, 1), yscale="log", xlabel="confidence", ylabel="test images",
                  title="Confidence histogram")
    return figure_url(fig)


def sprite_url(images: np.ndarray) -> str:
    """All images in one PNG, SPRITE_COLUMNS a row: one picture that every thumbnail is a window on."""
    columns = min(SPRITE_COLUMNS, max(len(images), 1))
    rows = -(-len(images) // columns)
    sheet = np.zeros((rows * 28, columns * 28), np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        sheet[r * 28:(r + 1) * 28, c * 28:(c + 1) * 28] = image
    return data_url(png_bytes(sheet))


# --- HTML pieces ---------------------------------------------------------------------------------

class Html(str):
    """Text that is HTML already, made by `markup`: inserted as it is, where any other value is escaped."""


def markup(template: str, *values: object) -> Html:
    """The one way values enter a page: the HTML template (ours) with its {} fields filled by the values in
    turn, each escaped unless it is Html already, whatever its source: a run's files can be edited by hand."""
    return Html(template.format(*(v if isinstance(v, Html) else html.escape(str(v)) for v in values)))


def join(pieces: Iterable[object]) -> Html:
    """Pieces of a page one after another, each escaped unless it is Html already."""
    return Html("".join(markup("{}", piece) for piece in pieces))


def percent(x: float) -> str:
    return f"{100 * x:.2f}%"


def value(x: float, text: str, name: str | None = None) -> Html:
    """A number as shown, with the exact value it shows in data-value (for readers and tests)."""
    named = markup(' data-name="{}"', name) if name else ""
    return markup('<span class="value" data-value="{}"{}>{}</span>', repr(x), named, text)


def table(head: list[object] | None, rows: list[list[object]], cls: str = "") -> Html:
    """Cells are text (escaped) or Html."""
    head_html = markup("<thead><tr>{}</tr></thead>", join(markup("<th>{}</th>", h) for h in head)) if head else ""
    body = join(markup("<tr>{}</tr>", join(markup("<td>{}</td>", c) for c in row)) for row in rows)
    return markup('<table class="{}">{}<tbody>{}</tbody></table>', cls, head_html, body)


Section = tuple[str, str, Html]  # id, title, body


def image(url: str, alt: str, cls: str = "figure") -> Html:
    return markup('<img class="{}" src="{}" alt="{}">', cls, url, alt)


def thumb(index: int) -> Html:
    """A window on the sprite showing test image `index` (the gallery's script draws the same)."""
    r, c = divmod(index, SPRITE_COLUMNS)
    size = 28 * SCALE
    return markup('<div class="thumb" role="img" aria-label="test image {}" '
                  'style="background-position:-{}px -{}px"></div>', index, c * size, r * size)


# --- sections ------------------------------------------------------------------------------------

def command_line(run: Run, evaluation: Evaluation | None) -> str:
    """The command that made the run: its options that differ from the defaults of its model."""
    if run.job == "evaluate":
        model = evaluation.model_path if evaluation else "MODEL"
        return f"fashion-cnn evaluate --model {shlex.quote(str(model))} --out {shlex.quote(str(run.path))}"

    kind = TrainConfig if run.job == "train" else CVConfig  # a sweep's or a tune's points are cv runs
    try:
        defaults = asdict(kind.from_dict({"model": run.config.get("model", "baseline")}))
    except ValueError:  # a model no longer registered: every option is shown
        defaults = {}
    words = ["fashion-cnn", run.job]
    for key, setting in run.config.items():
        if key == "job" or setting is None or setting in ({}, []) or defaults.get(key, object()) == setting:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(setting, bool):
            words.append(flag if setting else "--no-" + flag[2:])
        elif isinstance(setting, list):  # a sweep's values
            words += [flag, *(shlex.quote(fmt(v)) for v in setting)]
        elif isinstance(setting, dict):  # a tune's --space
            words += [flag, *(shlex.quote(f"{name}={v}") for name, v in setting.items())]
        else:
            words += [flag, shlex.quote(str(setting))]
    return " ".join(words)


def machine_of(run: Run, meta: dict | None = None) -> str | None:
    """What the run computed on, as its job recorded it (a model file's metadata where the run kept none)."""
    return (run.metrics or {}).get("machine") or (run.cv or {}).get("machine") or (meta or {}).get("machine")


def log_times(run: Run) -> tuple[str, str] | None:
    path = run.path / "log.txt"
    stamps = [m.group(1) for line in (path.read_text().splitlines() if path.is_file() else [])
              if (m := LOG_TIME.match(line))]
    return (stamps[0], stamps[-1]) if stamps else None


def class_counts(labels: np.ndarray, class_names: list[str]) -> list[int]:
    return np.bincount(labels, minlength=len(class_names)).tolist()


def what_ran(run: Run, evaluation: Evaluation | None, data: Dataset | None) -> Section:
    meta = evaluation.meta if evaluation else {}
    config = run.config if run.job != "evaluate" else meta.get("config", {})
    arch = meta.get("architecture") or config.get("model", "?")
    parameters = meta.get("parameters") or registered_size(arch)
    machine = machine_of(run, meta) or "not recorded"
    rows = [("command", markup("<code>{}</code>", command_line(run, evaluation))),
            ("model", (f"{arch}, {parameters:,} parameters" if parameters else str(arch))
             + (" (evaluated with test-time augmentation: each image and its mirror image)"
                if meta.get("tta") else "")),
            ("machine", machine)]
    if evaluation and evaluation.model_path:
        rows.append(("model file", markup("<code>{}</code>", evaluation.model_path)))
    source = data.source if data else (meta.get("data") or {}).get("source", config.get("data_dir"))
    rows.append(("data", source or "not recorded"))
    if (times := log_times(run)):
        rows.append(("started, last logged", f"{times[0]}, {times[1]}"))
    seconds = sum(row.get("seconds", 0) for row in run.history)
    cpu = sum(row.get("cpu_seconds", 0) for row in run.history)
    if seconds:
        rows.append(("training time", f"{seconds:.1f} s ({cpu:.1f} s of CPU time, all threads)"))
    if (version := (run.metrics or {}).get("version") or meta.get("version")):
        rows.append(("fashion-cnn version", version))
    settings = [[k, markup("<code>{}</code>", json.dumps(v))] for k, v in config.items()]
    return "run", "What ran", join([
        table(None, [[k, v] for k, v in rows], "facts"),
        join([data_counts(run, config, data, evaluation), preprocessing_summary(data)]) if data is not None else "",
        markup("<details><summary>all {} settings</summary>{}</details>", len(settings),
               table(["setting", "value"], settings))])


def registered_size(arch: str) -> int | None:
    """The parameter count of a registered architecture (10 classes), for runs that kept no model."""

    return count_parameters(create_model(arch)) if arch in list_models() else None


def data_counts(run: Run, config: dict, data: Dataset, evaluation: Evaluation | None) -> Html:
    """Images per class: the training images the run used and the test set."""
    names = evaluation.class_names if evaluation else list(CLASS_NAMES)
    limit = config.get("limit")
    train = data.train_labels.numpy()[:limit]
    columns = [("training images" + (f" (first {limit})" if limit else "")
                + (f", {config['val_size']} of them held out for validation" if config.get("val_size") else ""),
                class_counts(train, names))]
    if run.job != "cv":
        columns.append(("test images", class_counts(data.test_labels.numpy(), names)))
    head = ["class"] + [title for title, _ in columns]
    rows = [[name] + [f"{counts[i]:,}" for _, counts in columns] for i, name in enumerate(names)]
    rows.append([markup("<strong>all</strong>")] + [markup("<strong>{}</strong>", f"{sum(counts):,}")
                                                    for _, counts in columns])
    return markup("<h3>Images per class</h3>{}", table(head, rows, "numbers"))


def preprocessing_summary(data: Dataset) -> Html:
    """What preprocessing did to an imported folder's images (datasets.preprocessing_counts), and the WORST
    results, those with the fewest object pixels: the ones to look at first."""
    if not data.findings:
        return Html("")
    rows = [[kind, f"{len(files):,}"] for kind, files in preprocessing_counts(data.findings).items()]
    images = {**dict(zip(data.train_files or [], data.train_images)),
              **dict(zip(data.test_files or [], data.test_images))}
    worst = [rel for rel in sorted(data.findings, key=lambda rel: (data.findings[rel].pixels, rel)) if rel in images]
    figures = join(markup('<figure class="example">{}<figcaption>{}<br>{} object pixels</figcaption></figure>',
                          image(data_url(png_bytes(images[rel].numpy())), rel, "thumb"), rel,
                          data.findings[rel].pixels)
                   for rel in worst[:WORST])
    return markup('<h3>Preprocessing of the {} imported images</h3>{}<h4>The {} with the fewest object pixels</h4>'
                  '<div class="examples compact">{}</div>', f"{len(data.findings):,}",
                  table(["images", "count"], rows, "numbers"), min(WORST, len(worst)), figures)


def curves_section(run: Run) -> Section | None:
    if not run.history:
        return None
    per_fold = folds(run.history)
    what = f"{len(per_fold)} folds, one colour each: " if len(per_fold) > 1 else ""
    return ("curves", "Learning curves", markup(
        "<p>{}training solid, validation dashed.</p>{}", what,
        image(figure_url(learning_curves({f"fold {k}": rows for k, rows in enumerate(per_fold, 1)}
                                         if len(per_fold) > 1 else per_fold[0])), "learning curves")))


def folds_section(run: Run) -> Section | None:
    if not run.cv:
        return None
    per_fold = folds(run.history)
    rows = []
    for k, accuracy in enumerate(run.cv["fold_accuracies"]):
        last = per_fold[k][-1] if k < len(per_fold) else {}
        rows.append([k + 1, value(accuracy, percent(accuracy), f"fold-{k + 1}"),
                     f"{last['val_loss']:.4f}" if "val_loss" in last else "–",
                     last.get("epoch", "–"), f"{sum(row.get('seconds', 0) for row in per_fold[k]):.1f}"
                     if k < len(per_fold) else "–"])
    mean, std = run.cv["mean"], run.cv["std"]
    body = markup('<p class="headline">accuracy {} ± {} (mean ± standard deviation over {} folds)</p>'
                  '<div class="side-by-side">{}{}</div><p class="note">Per-example galleries (confusion-matrix '
                  "cells, highest-loss examples, calibration) need a model and a test set: <code>fashion-cnn "
                  "train</code> makes both, and its run's report has them.</p>",
                  value(mean, percent(mean), "cv-mean"), value(std, percent(std), "cv-std"),
                  len(run.cv["fold_accuracies"]),
                  table(["fold", "validation accuracy", "validation loss", "epochs", "seconds"], rows, "numbers"),
                  image(figure_url(fold_boxplot(run.cv["fold_accuracies"])), "fold accuracies", "figure small"))
    return "folds", "Cross-validation", body


def results_section(test: dict) -> Section:
    per_class = test["per_class"]
    accuracy, loss = test["accuracy"], test["loss"]
    macro_f1 = float(np.mean([row["f1"] for row in per_class]))
    images = sum(row["support"] for row in per_class)
    headline = markup('<p class="headline">accuracy {}{} · macro-F1 {}{} · loss {} · {} test images</p>',
                      value(accuracy, percent(accuracy), "accuracy"), interval_value(test, "accuracy", 100, 1),
                      value(macro_f1, f"{macro_f1:.4f}", "macro-f1"), interval_value(test, "macro_f1", 1, 3),
                      value(loss, f"{loss:.4f}", "loss"), f"{images:,}")
    rows = [[row["class"]] + [value(row[key], f"{row[key]:.4f}", f"{key}-{i}")
                                   for key in ("precision", "recall", "f1")]
            + [value(row["support"], f"{row['support']:,}", f"support-{i}")]
            for i, row in enumerate(per_class)]
    return "results", "Test results", join([headline, table(["class", "precision", "recall", "F1", "support"], rows,
                                                             "numbers")])


def interval_value(test: dict, key: str, scale: float, digits: int) -> Html | str:
    """A score's bootstrap interval as evaluate.format_interval writes it, each end a value (data-name
    accuracy-low, ...); "" for a report without one (made before intervals, or edited)."""
    if not format_interval(test, key, scale, digits):  # "" unless the interval is two numbers and a level
        return ""
    name, interval = key.replace("_", "-"), test["interval"]
    low, high = (float(x) for x in interval[key])
    return markup(" ({}% CI {}-{})", f"{100 * float(interval['level']):.0f}",
                  value(low, f"{scale * low:.{digits}f}", f"{name}-low"),
                  value(high, f"{scale * high:.{digits}f}", f"{name}-high"))


def cell_style(count: int, row_total: int, diagonal: bool) -> str:
    """Blue by the share of its true class on the diagonal, red for confusions (a quarter of a class: full red)."""
    share = count / max(row_total, 1)
    alpha = share if diagonal else min(1.0, 4 * share)
    color = (47, 111, 219) if diagonal else (219, 68, 55)
    text = "#fff" if alpha > 0.55 else "#222"
    return f"background:rgba({color[0]},{color[1]},{color[2]},{alpha:.3f});color:{text}"


def confusion_section(test: dict, evaluation: Evaluation | None, class_names: list[str]) -> Section:
    matrix = np.asarray(test["confusion_matrix"])
    names = class_names
    head = [markup('<th class="corner">true \\ predicted</th>')] + [
        markup('<th class="predicted"><span>{}</span></th>', n) for n in names]
    rows = []
    for t, row in enumerate(matrix):
        cells = []
        for p, count in enumerate(row):
            title = f"true {class_names[t]}, predicted {class_names[p]}: {count}"
            style = cell_style(count, row.sum(), t == p)
            cells.append(markup('<td class="cell">{}</td>', opener(t, p, count, style, title, evaluation is not None)))
        rows.append(markup("<tr><th>{}</th>{}</tr>", names[t], join(cells)))
    grid = markup('<table class="confusion"><thead><tr>{}</tr></thead><tbody>{}</tbody></table>', join(head),
                  join(rows))
    intro = markup("<p>Rows are the true classes, columns the predicted ones. Click a cell to see its test images."
                   "</p>" if evaluation else
                   "<p>The model file is gone and no per-example results were kept: no galleries.</p>")
    if evaluation is not None:
        recount = np.zeros_like(matrix)
        np.add.at(recount, (evaluation.labels, evaluation.predicted), 1)
        if not np.array_equal(recount, matrix):
            differ = int(np.abs(recount - matrix).sum() // 2)
            intro = markup('{}<p class="note">The galleries come from predictions made again for this report; '
                           'about {} test images got another class than in the evaluation.</p>', intro, differ)
    pairs = sorted(((matrix[t, p], t, p) for t in range(len(matrix)) for p in range(len(matrix)) if t != p),
                   reverse=True)[:CONFUSED_PAIRS]
    items = join(
        markup("<li>{}</li>", opener(t, p, f"{names[t]} predicted as {names[p]}: {count} "
                                           f"({percent(count / max(matrix[t].sum(), 1))} of {names[t]})", "", "",
                                     evaluation is not None))
        for count, t, p in pairs if count > 0)
    gallery = markup('<div id="gallery" hidden><div class="gallery-head"><h3 id="gallery-title"></h3>'
                     '<button type="button" id="gallery-close">close</button></div>'
                     '<div id="gallery-items" class="examples compact"></div></div>')
    body = markup('{}<div class="side-by-side">{}<div><h3>Most confused pairs</h3><ol class="pairs">{}</ol></div>'
                  '</div>{}', intro, grid, items or markup("<li>none</li>"), gallery)
    return "confusion", "Confusion matrix", body


def opener(t: int, p: int, label: object, style: str, title: str, active: bool) -> Html:
    """A button that opens the gallery of true class t predicted as p; plain text where there is none."""
    attributes = join([markup(' style="{}"', style) if style else "", markup(' title="{}"', title) if title else ""])
    if not active:
        return markup("<span{}>{}</span>", attributes, label)
    return markup('<button type="button" data-true="{}" data-pred="{}"{}>{}</button>', t, p, attributes, label)


def example_caption(evaluation: Evaluation, i: int) -> Html:
    names = evaluation.class_names
    probs = evaluation.probabilities[i]
    top = np.argsort(-probs, kind="stable")[:3]
    ranked = ", ".join(f"{names[c]} {probs[c]:.2f}" for c in top)
    return markup("<figcaption><b>#{}</b> true {}<br>predicted {}<br><small>{}</small></figcaption>", i,
                  names[evaluation.labels[i]], names[evaluation.predicted[i]], ranked)


def losses_section(evaluation: Evaluation) -> Section:
    losses = evaluation.losses
    worst = np.argsort(-losses, kind="stable")[:HIGHEST_LOSSES]
    heats = None
    if evaluation.model is not None and len(worst):

        images = to_float(torch.from_numpy(evaluation.images[worst]))[:, 0].numpy()
        maps = heatmaps(evaluation.model, images, evaluation.predicted[worst])
        heats = [data_url(overlay_png(x, heat, SCALE)) for x, heat in zip(images, maps)]
    figures = []
    for k, i in enumerate(worst):
        heat = (image(heats[k], f"heat map of test image {i} for its predicted class", "heat")
                if heats else "")
        figures.append(markup('<figure class="example">{}{}{}<small>loss {}</small></figure>', thumb(int(i)), heat,
                              example_caption(evaluation, int(i)), f"{losses[i]:.2f}"))

    note = (markup("<p>The test images the model got most wrong (cross-entropy of the true class), each with "
                   "the {} heat map of where the model found its evidence for the class it predicted. "
                   "Some are mislabelled: Fashion-MNIST has known label noise.</p>", METHOD) if heats else
            markup("<p>The test images the model got most wrong (cross-entropy of the true class).</p>"))
    return "losses", "Highest-loss examples", markup('{}<div class="examples">{}</div>', note, join(figures))


def calibration_section(evaluation: Evaluation) -> Section:
    """ECE, mean confidence, accuracy and the reliability diagram on the test images the model's calibration
    did not see (calibration.unseen_test_images); none where those cannot be told."""
    unseen, which = calibration.unseen_test_images(evaluation.meta, len(evaluation.labels))
    if unseen is None:
        return "calibration", "Calibration", markup('<p class="note">No calibration error: {}.</p>', which)
    probabilities, labels = evaluation.probabilities[unseen], evaluation.labels[unseen]
    ece = expected_calibration_error(probabilities, labels)
    confidence = float(probabilities.max(1).mean())
    accuracy = float((probabilities.argmax(1) == labels).mean())
    headline = markup('<p class="headline">expected calibration error {} ({} equal-width bins) · mean confidence '
                      '{} · accuracy {}</p><p class="note">On {}.</p>', value(ece, f"{ece:.4f}", "ece"), ECE_BINS,
                      value(confidence, percent(confidence), "confidence"),
                      value(accuracy, percent(accuracy), "prediction-accuracy"), which)
    diagram = image(reliability_diagram(probabilities, labels), "reliability diagram")
    return "calibration", "Calibration", join([headline, diagram])


def card_section(meta: dict) -> Section | None:
    """The model file's model card (card.py), as it stores it; None for a file without one."""
    card = meta.get("model_card")
    if not isinstance(card, dict):
        return None
    rows = [[key.replace("_", " "), text if isinstance(text, str) else markup("<code>{}</code>", json.dumps(text))]
            for key, text in card.items()]
    return "card", "Model card", table(None, rows, "facts")


def gallery_data(evaluation: Evaluation) -> str:
    """What the gallery's script needs, as JSON safe inside a script element."""
    probs = evaluation.probabilities
    top = np.argsort(-probs, axis=1, kind="stable")[:, :3]
    document = {"classes": evaluation.class_names, "labels": evaluation.labels.tolist(),
                "predicted": evaluation.predicted.tolist(), "columns": SPRITE_COLUMNS, "scale": SCALE,
                "top": [[int(c) for c in row] for row in top],
                "topProbabilities": np.round(np.take_along_axis(probs, top, 1), 3).tolist()}
    return json.dumps(document, separators=(",", ":")).replace("<", "\\u003c")


# --- the page ------------------------------------------------------------------------------------

STYLE = """
:root { --accent: #2f6fdb; --muted: #667; --line: #dde; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 72rem; padding: 1rem 1.5rem 3rem; font: 15px/1.45 system-ui, sans-serif;
       color: #222; background: #f6f7f9; }
h1 { margin-bottom: .2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid var(--line); }
nav a { margin-right: 1rem; color: var(--accent); }
.sub, .note, small { color: var(--muted); }
table { border-collapse: collapse; background: #fff; margin: .5rem 0; }
th, td { padding: .25rem .6rem; border: 1px solid var(--line); text-align: left; vertical-align: top; }
table.numbers td:not(:first-child) { text-align: right; font-variant-numeric: tabular-nums; }
table.facts td:first-child { color: var(--muted); white-space: nowrap; }
code { font-size: .9em; word-break: break-word; }
.headline { font-size: 1.1rem; }
.figure { max-width: 100%; background: #fff; border: 1px solid var(--line); }
.figure.small { max-width: 18rem; }
.side-by-side { display: flex; flex-wrap: wrap; gap: 1.5rem; align-items: flex-start; }
.side-by-side > div { flex: 1 1 16rem; }
table.confusion td.cell { padding: 0; }
table.confusion td.cell > * { display: block; width: 3.4rem; padding: .35rem 0; text-align: center; border: 0;
                              font: inherit; font-variant-numeric: tabular-nums; }
table.confusion button { cursor: pointer; }
table.confusion button:hover, table.confusion button:focus { outline: 2px solid var(--accent); }
th.predicted { height: 7rem; vertical-align: bottom; padding: .2rem; }
th.predicted span { writing-mode: vertical-rl; transform: rotate(180deg); white-space: nowrap; }
.pairs button { border: 0; background: none; color: var(--accent); cursor: pointer; font: inherit; padding: 0;
                text-align: left; vertical-align: top; }
.examples { display: flex; flex-wrap: wrap; gap: .6rem; }
.example { margin: 0; padding: .4rem; background: #fff; border: 1px solid var(--line); width: 12rem;
           display: flex; flex-wrap: wrap; gap: .3rem; }
.example figcaption { font-size: .8rem; width: 100%; }
.compact .example { width: 8.6rem; }
.thumb { width: THUMBpx; height: THUMBpx; image-rendering: pixelated; background-repeat: no-repeat;
         background-color: #000; }
.heat { width: THUMBpx; height: THUMBpx; }
#gallery { margin-top: 1rem; padding: .8rem; background: #eef3fd; border: 1px solid var(--line); }
.gallery-head { display: flex; justify-content: space-between; align-items: center; }
"""

SCRIPT = """
"use strict";
// The confusion matrix's cells and the list of pairs open the gallery of their test images.
const data = JSON.parse(document.getElementById("examples").textContent);
const size = 28 * data.scale;

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function example(i) {
  const figure = element("figure", "example");
  const picture = element("div", "thumb");
  picture.setAttribute("role", "img");
  picture.setAttribute("aria-label", `test image ${i}`);
  picture.style.backgroundPosition =
    `-${(i % data.columns) * size}px -${Math.floor(i / data.columns) * size}px`;
  const caption = element("figcaption");
  const ranked = data.top[i].map((c, k) => `${data.classes[c]} ${data.topProbabilities[i][k].toFixed(2)}`);
  caption.append(element("b", "", `#${i}`), ` true ${data.classes[data.labels[i]]}`, element("br"),
                 `predicted ${data.classes[data.predicted[i]]}`, element("br"),
                 element("small", "", ranked.join(", ")));
  figure.append(picture, caption);
  return figure;
}

function show(truth, predicted) {
  const chosen = [];
  data.labels.forEach((label, i) => {
    if (label === truth && data.predicted[i] === predicted) chosen.push(i);
  });
  chosen.sort((a, b) => data.topProbabilities[b][0] - data.topProbabilities[a][0]);  // most confident first
  const count = chosen.length;
  document.getElementById("gallery-title").textContent =
    `${count} test image${count === 1 ? "" : "s"} of ${data.classes[truth]} predicted as ` +
    `${data.classes[predicted]}` + (count > 1 ? ", most confident first" : "");
  document.getElementById("gallery-items").replaceChildren(...chosen.map(example));
  const gallery = document.getElementById("gallery");
  gallery.hidden = false;
  gallery.scrollIntoView({ block: "nearest" });
}

document.querySelectorAll("button[data-true]").forEach((button) => button.addEventListener(
  "click", () => show(Number(button.dataset.true), Number(button.dataset.pred))));
document.getElementById("gallery-close").addEventListener("click", () => {
  document.getElementById("gallery").hidden = true;
});
"""


def page(title: str, subtitle: str, sections: list[Section | None], evaluation: Evaluation | None = None) -> str:
    """The whole HTML document: styles inline; the sprite and the gallery's script where there are examples."""
    sections = [s for s in sections if s]
    style = STYLE.replace("THUMB", str(28 * SCALE))
    script = ""
    if evaluation is not None:
        size = 28 * SCALE
        columns = min(SPRITE_COLUMNS, len(evaluation.images))
        style += (f".thumb {{ background-size: {columns * size}px {-(-len(evaluation.images) // columns) * size}px;"
                  f" background-image: url({sprite_url(evaluation.images)}); }}")
        script = Html(f'<script type="application/json" id="examples">{gallery_data(evaluation)}</script>'
                      f"<script>{SCRIPT}</script>")
    links = join(markup('<a href="#{}">{}</a>', ident, name) for ident, name, _ in sections)
    body = join(markup('<section id="{}"><h2>{}</h2>{}</section>', ident, name, content)
                for ident, name, content in sections)
    # the styles and scripts are ours (the sprite a data: URL, the examples' JSON made safe by gallery_data): the
    # only pieces of a page not escaped
    return markup('<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
                  '<meta name="viewport" content="width=device-width, initial-scale=1">'
                  '<title>{}</title><link rel="icon" href="data:,"><style>{}</style></head><body>'
                  '<header><h1>{}</h1><p class="sub">{}</p><nav>{}</nav></header>'
                  "<main>{}</main>{}</body></html>\n", title, Html(style), title, subtitle, links, body, script)


def written_by() -> str:
    return f"written {time.strftime('%Y-%m-%d %H:%M:%S')} by fashion-cnn {__version__}"


def write_report(run_dir: str | Path, data: Dataset | None = None, model: str | Path | None = None,
                 out: str | Path | None = None, data_dir: str | None = None,
                 logits: torch.Tensor | None = None, force: bool = False) -> Path:
    """Write the run's report (default RUN/report.html) and return its path.

    data: the dataset, where the caller has it loaded (else the run's, found again); model: the model file
    that `evaluate --out` scored (a train run's is its own); logits: the model's on the test set, where the
    caller has just computed them (the report then runs no model); force: replace an existing file at out.
    A sweep's or a tune's report compares its points (write_points_report).
    """
    run = load_run(run_dir)
    if run.job in ("sweep", "tune"):
        return write_points_report(run, out, force)
    path = report_path(out, run.path / REPORT, [run], force, model)
    evaluation = evaluation_of(run, data, model, data_dir, logits)
    if evaluation is not None:
        data = evaluation.data
    elif data is None:  # only for the class counts: a report without them is still one
        try:
            data = run_data(run.config, data_dir)
        except (DataError, ValueError):
            data = None
    class_names = evaluation.class_names if evaluation else list(CLASS_NAMES)
    sections = [what_ran(run, evaluation, data), curves_section(run), folds_section(run)]
    if run.test:
        sections += [results_section(run.test), confusion_section(run.test, evaluation, class_names)]
    if evaluation is not None:
        sections += [losses_section(evaluation), calibration_section(evaluation), card_section(evaluation.meta)]
    arch = (evaluation.meta.get("architecture") if evaluation else None) or run.config.get("model", "")
    html_text = page(f"fashion-cnn {run.job}: {run.name}", f"{arch} · {written_by()}", sections, evaluation)
    write_atomic(path, html_text.encode())
    return path


# --- several runs --------------------------------------------------------------------------------

def cached_calibration(run: Run) -> float | None:
    """ECE from the run's kept per-example results, without the model or the data, on the test images its
    calibration did not see (None where there are no results, or no such images are known)."""
    tensors, kept = read_kept(run.path / PREDICTIONS)
    if kept is None:
        return None
    labels = tensors["labels"].numpy()
    unseen, _ = calibration.unseen_test_images(kept["model_meta"], len(labels))
    if unseen is None:
        return None
    return expected_calibration_error(calibrated(tensors["logits"], kept["model_meta"], run.path / PREDICTIONS)[unseen],
                                      labels[unseen])


def summary_row(k: int, run: Run, label: Html) -> list[object]:
    test, cv = run.test or {}, run.cv or {}
    last = run.history[-1] if run.history else {}
    seconds = sum(row.get("seconds", 0) for row in run.history)
    f1 = float(np.mean([row["f1"] for row in test["per_class"]])) if test else None
    ece = cached_calibration(run)
    shown = [
        label, run.job, run.config.get("model", "–"),
        run.config.get("epochs", "–"), run.config.get("limit") or "all",
        (value(cv["mean"], f"{percent(cv['mean'])} ± {percent(cv['std'])}", f"cv-mean-{k}") if cv else "–"),
        (value(last["val_accuracy"], percent(last["val_accuracy"])) if run.job == "train" and "val_accuracy" in last
         else "–"),
        value(test["accuracy"], percent(test["accuracy"]), f"accuracy-{k}") if test else "–",
        value(f1, f"{f1:.4f}", f"macro-f1-{k}") if f1 is not None else "–",
        value(test["loss"], f"{test['loss']:.4f}") if test else "–",
        value(ece, f"{ece:.4f}", f"ece-{k}") if ece is not None else "–",
        f"{seconds:.0f} s" if seconds else "–", machine_of(run) or "–",
    ]
    return shown


def right_answers(tensors: dict[str, torch.Tensor]) -> np.ndarray:
    """Whether kept per-example results got each test image right."""
    return (tensors["logits"].argmax(1) == tensors["labels"]).numpy()


def paired_section(runs: list[Run], labels: list[str]) -> Section | None:
    """Each run against the first on the same test images (from their kept per-example results): McNemar's
    test says whether their accuracies differ by more than the noise. None where fewer than two runs kept
    results. labels: the runs' names in the comparison (run_labels)."""
    kept = [(label, read_kept(run.path / PREDICTIONS)[0]) for run, label in zip(runs, labels)]
    kept = [(label, tensors) for label, tensors in kept if tensors]
    if len(kept) < 2:
        return None
    (first, reference), rows = kept[0], []
    for k, (label, tensors) in enumerate(kept[1:], 1):
        if torch.equal(tensors["labels"], reference["labels"]):
            test = mcnemar(right_answers(tensors), right_answers(reference))
            verdict = value(test["p"], format_mcnemar(test, label, first), f"mcnemar-p-{k}")
        else:
            verdict = "not the same test images: no paired test"
        rows.append([markup("<b>{}</b>", label), verdict])
    note = markup("<p>Each run against <b>{}</b> on the same test images: McNemar's test (mid-p) on the images "
                  "exactly one of the two got right; below p = 0.05 the difference is larger than the noise.</p>",
                  first)
    return "paired", "Paired comparison", join([note, table(["run", f"against {first}"], rows)])


def run_labels(runs: list[Run]) -> list[str]:
    """Each run named by the options in which the runs differ (`lr=0.01`), its folder's name where they
    differ in none (or two runs would share a name)."""
    configs = [r.config for r in runs]
    keys = [k for k in dict.fromkeys(k for c in configs for k in c)
            if k != "out" and len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]
    labels = [", ".join(f"{k}={fmt(r.config[k])}" for k in keys if k in r.config) or r.name for r in runs]
    if len(set(labels)) < len(labels):
        labels = [r.name if label == r.name else f"{label} ({r.name})" for label, r in zip(labels, runs)]
    return labels


def best_run(runs: list[Run]) -> int | None:
    """The run with the highest cross-validation accuracy; where none cross-validated, the highest test
    accuracy; None where no run has either."""
    for score in (lambda r: r.cv and r.cv["mean"], lambda r: r.test and r.test["accuracy"]):
        scored = [(score(r), k) for k, r in enumerate(runs) if score(r) is not None]
        if scored:
            return max(scored, key=lambda sk: (sk[0], -sk[1]))[1]
    return None


def comparison_path(runs: list[Run]) -> Path:
    """Where a comparison goes unless --out says: <timestamp>-compare.html in the folder that holds the runs
    (runs/ for runs/a runs/b; the nearest folder they share), beside the first where they share only the root."""
    parents = [r.path.resolve().parent for r in runs]
    shared = Path(os.path.commonpath(parents))
    folder = parents[0] if shared == Path(shared.anchor) else shared
    return folder / f"{time.strftime('%Y%m%d-%H%M%S')}-compare.html"


def comparison_sections(runs: list[Run], best: int | None) -> list[Section | None]:
    """The runs' metrics in one table (the best starred), their learning curves overlaid, their per-class F1
    and their commands; each run named by what differs between them."""
    labels = run_labels(runs)
    shown = [markup("<b>{}</b>{}", label, markup(' <span class="best" title="best">★</span>') if k == best else "")
             for k, label in enumerate(labels)]
    head = ["run", "job", "model", "epochs", "training images", "cv accuracy (mean ± std)",
            "validation accuracy", "test accuracy", "macro-F1", "test loss", "ECE", "training time", "machine"]
    rows = [summary_row(k, run, shown[k]) for k, run in enumerate(runs)]
    used = [i for i in range(len(head)) if any(row[i] != "–" for row in rows)]  # no column of dashes only
    body = table([head[i] for i in used], [[row[i] for i in used] for row in rows], "numbers")
    if best is not None:
        body = join([body, markup('<p class="note">★ the best: highest {} accuracy.</p>',
                                  "cross-validation" if runs[best].cv else "test")])
    sections: list[Section | None] = [("runs", "Runs", body)]
    if any(r.history for r in runs):
        sections.append(("curves", "Learning curves",
                         image(figure_url(comparison_figure(runs, labels)), "learning curves")))
    tested = [k for k, r in enumerate(runs) if r.test]
    if tested:
        names = [row["class"] for row in runs[tested[0]].test["per_class"]]
        rows = [[name] + [f"{runs[k].test['per_class'][i]['f1']:.4f}" if i < len(runs[k].test["per_class"])
                               else "–" for k in tested] for i, name in enumerate(names)]
        sections.append(("per-class", "Per-class F1 on the test set",
                         table(["class"] + [labels[k] for k in tested], rows, "numbers")))
    sections.append(paired_section(runs, labels))
    commands = [[markup("<b>{}</b><br><small>{}</small>", label, r.path),
                 markup("<code>{}</code>", command_line(r, None))] for label, r in zip(labels, runs)]
    sections.append(("commands", "Commands", table(None, commands, "facts")))
    return sections


def write_comparison(run_dirs: list[str | Path], out: str | Path | None = None, force: bool = False) -> Path:
    """One report comparing several runs (comparison_sections), written to `out` (default: comparison_path;
    an existing file at out is replaced only with force)."""
    runs = [load_run(d) for d in run_dirs]
    if len({r.path.resolve() for r in runs}) < len(runs):
        raise ValueError("the same run is named twice")
    path = report_path(out, comparison_path(runs), runs, force)
    write_atomic(path, page(f"fashion-cnn: {len(runs)} runs compared", written_by(),
                            comparison_sections(runs, best_run(runs))).encode())
    return path


# --- a sweep or a tune: its points compared ------------------------------------------------------

def points_of(run: Run) -> tuple[list[Run], int | None]:
    """A sweep's finished points (sweep_results.json), or a tune's complete trials that this worker's folder
    holds (tune_results.json), as cv runs; and which is the best, as the sweep or the study chose it."""
    if run.job == "sweep":
        points = (read_json(run.path / "sweep_results.json") or {}).get("points", [])
        runs = [load_run(run.path / p["run_dir"]) for p in points]
        best = points.index(best_point(points)) if points else None
    else:
        results = read_json(run.path / "tune_results.json") or {}
        trials = [t for t in results.get("history", []) if t.get("state") == "complete"
                  and Path(t.get("run_dir", "")).is_dir()]
        folders = [next((p for p in sorted(Path(t["run_dir"]).iterdir()) if (p / "cv_results.json").is_file()), None)
                   for t in trials]
        numbers = [t["number"] for t, folder in zip(trials, folders) if folder]
        runs = [load_run(folder) for folder in folders if folder]
        best_number = (results.get("best") or {}).get("number")
        best = numbers.index(best_number) if best_number in numbers else None
    if not runs:
        raise ValueError(f"{run.path}: no finished {'points' if run.job == 'sweep' else 'trials'} yet")
    return runs, best


def job_figures(run: Run) -> Html:
    """The plots the sweep or tune drew itself, embedded."""
    names = ("sweep_metric.png", "sweep_curves.png") if run.job == "sweep" else ("tune_history.png",
                                                                              "tune_importance.png")
    return join(image(data_url((run.path / name).read_bytes()), name) for name in names
                if (run.path / name).is_file())


def write_points_report(run: Run, out: str | Path | None = None, force: bool = False) -> Path:
    """The report of a sweep or a tune (default RUN/report.html): what ran, then its points compared."""
    path = report_path(out, run.path / REPORT, [run], force)
    runs, best = points_of(run)
    machines = sorted({m for r in runs if (m := machine_of(r))})
    facts = [("command", markup("<code>{}</code>", command_line(run, None))),
             ("machine", "; ".join(machines) or "not recorded"),
             ("points" if run.job == "sweep" else "complete trials here", str(len(runs)))]
    if best is not None:
        facts.append(("best", run_labels(runs)[best]))
    what = ("run", "What ran", join([table(None, [[k, v] for k, v in facts], "facts"), job_figures(run)]))
    write_atomic(path, page(f"fashion-cnn {run.job}: {run.name}", written_by(),
                            [what, *comparison_sections(runs, best)]).encode())
    return path


def best_point(points: list[dict]) -> dict:
    """The highest mean validation accuracy; of equals, the lowest validation loss."""
    return max(points, key=lambda p: (p["val_accuracy"], -p["val_loss"]))
