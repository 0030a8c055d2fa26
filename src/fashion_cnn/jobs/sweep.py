"""Sweeps: one cross-validation per point of a grid of job options (`fashion-cnn sweep --lr 0.001 0.01 0.1`).

A sweep's run directory holds its config.json (the options, a list for each swept one, so it is itself a
`--config` for another sweep), one ordinary cv run directory per point under points/, and the comparison:
sweep_results.csv/.json (per point the mean and spread of the folds' validation accuracy and loss, the
best epoch of the mean curve, the training time), sweep_curves.png and sweep_metric.png. The results file
is rewritten after every point, so a killed sweep resumes (`--resume`) after its last finished point and
continues the interrupted one through cv's own resume.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import numpy as np

from fashion_cnn.config import CVConfig, fmt
from fashion_cnn.data.fmnist import Dataset
from fashion_cnn.io import check_output_dir, csv_bytes, write_atomic, write_json
from fashion_cnn.jobs.common import job_data, training_images
from fashion_cnn.jobs.crossval import CVResult, cross_validate, cv_splits, train_command
from fashion_cnn.reporting.plots import save_figure
from fashion_cnn.reporting.report import best_point
from fashion_cnn.text import plain
from fashion_cnn.training.loop import History, limited, resolve_device
from fashion_cnn.training.runs import open_run, read_config, start_log

if TYPE_CHECKING:
    from matplotlib.figure import Figure  # imported where a figure is drawn: the CLI starts without it

log = logging.getLogger("fashion_cnn")
LOG_SCALE = ("lr", "weight_decay")  # options whose values are compared by ratios: a log axis
DATA_OPTIONS = ("data", "classes", "test_fraction", "data_dir")


# --- the grid ----------------------------------------------------------------------------------------------

@dataclass
class Point:
    """One point of the grid: the swept options' values, and the full cv config they make."""

    index: int  # from 1, in grid order
    values: dict
    cfg: CVConfig

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={fmt(v)}" for k, v in self.values.items())

    @property
    def folder(self) -> str:
        """points/<folder>/ holds the point's cv run: its number and values, safe as a file name."""
        return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", f"{self.index:02d}-{self.label.replace(', ', ',')}")[:120]


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def split_grid(values: dict) -> tuple[dict, dict]:
    """(single options, swept options) of option values where a list of several values means a sweep;
    the swept ones in the order of `fashion-cnn cv --help`."""
    order = [f.name for f in fields(CVConfig)]
    single, grid = {}, {}
    for name, value in sorted(values.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)):
        if not isinstance(value, list):
            single[name] = value
        elif len(value) == 1:
            single[name] = value[0]
        elif len(set(map(repr, value))) < len(value):
            raise ValueError(f"--{name.replace('_', '-')}: a value is repeated in {value}")
        else:
            grid[name] = value
    return single, grid


def grid_points(values: dict) -> list[Point]:
    """Every point of the grid, each config checked before any work (a bad value names its option); the
    last swept option varies fastest."""
    single, grid = split_grid(values)
    if not grid:
        raise ValueError("a sweep needs at least one option with several values, e.g. --lr 0.001 0.01 0.1")
    unknown = sorted(set(grid) - {f.name for f in fields(CVConfig)})
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: not options of cv")
    if "out" in grid:
        raise ValueError("--out takes one folder: the sweep's run directory is made there")
    points = []
    for index, combination in enumerate(itertools.product(*grid.values()), start=1):
        point = dict(zip(grid, combination))
        cfg = CVConfig.from_dict({**single, **point}, source=", ".join(f"{k}={fmt(v)}" for k, v in point.items()))
        points.append(Point(index, point, cfg))
    return points


# --- running cv jobs inside another job's directory (sweep points, tune trials) ----------------------------

class DataCache:
    """Each data set the configs name, loaded once (a sweep may sweep --data)."""

    def __init__(self) -> None:
        self.loaded: dict[tuple, Dataset] = {}

    def __call__(self, cfg: CVConfig) -> Dataset:
        key = tuple(getattr(cfg, name) for name in DATA_OPTIONS)
        if key not in self.loaded:
            self.loaded[key] = job_data(cfg)
        return self.loaded[key]


def check_fits_data(cfg: CVConfig, data: Dataset) -> None:
    """--folds / --val-size against the data, before the enclosing job makes its directory."""
    cv_splits(cfg, limited(data.train_images, data.train_labels, cfg.limit)[1])


def job_values(job: str, values: dict | None, resume: str | Path | None) -> dict:
    """The options a sweep or tune runs with: those given, or the saved ones of the interrupted run
    `resume`, which keeps them (less the "job" key)."""
    if resume is not None:
        if values:
            raise ValueError(f"a resumed {job} keeps its saved options: give --resume alone")
        values = read_config(resume)
        if values.get("job") != job:
            raise ValueError(f"{resume}: a {values.get('job')!r} run, not a {job} run")
    if (values or {}).get("budget") is not None:  # it would only cut each run short, with the recipe unchosen
        raise ValueError(f"--budget is for train and cv, which choose the recipe that fits it; a {job} runs the "
                         "options it is given: set --epochs instead")
    return {k: v for k, v in (values or {}).items() if k != "job"}


def cv_in_folder(folder: Path, cfg: CVConfig, data: Dataset,
                 on_epoch: Iterable[Callable[[dict[int, History]], None]] = ()) -> CVResult:
    """cfg's cross-validation in a folder of its own: started there, or resumed where a kill left it."""
    started = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")] if folder.is_dir() else []
    if started:
        return cross_validate(resume=started[0], data=data, on_epoch=on_epoch, verbose=2)
    return cross_validate(replace(cfg, out=str(folder)), data=data, on_epoch=on_epoch, verbose=2)


def mean_curves(histories: dict[int, Sequence[dict]]) -> dict[str, list]:
    """Per epoch, mean and standard deviation over the folds that reached it (early stopping ends
    folds at different epochs) of the validation loss and accuracy."""
    longest = max(len(h) for h in histories.values())
    curve: dict[str, list] = {"epoch": list(range(1, longest + 1))}
    for metric in ("val_accuracy", "val_loss"):
        per_epoch = [[h[e][metric] for h in histories.values() if len(h) > e] for e in range(longest)]
        curve[metric] = [float(np.mean(v)) for v in per_epoch]
        curve[metric + "_std"] = [float(np.std(v)) for v in per_epoch]
    return curve


def cv_record(result: CVResult) -> dict:
    """What a sweep or a tune keeps of a cv run: the folds' final (or early-stopping best) validation
    accuracy and loss, their mean and spread, the mean curve and its best epoch, the training time."""
    finals = [h[(best or len(h)) - 1] for h, best in zip(result.histories.values(), result.summary["best_epochs"])]
    rows = [row for h in result.histories.values() for row in h]
    curve = mean_curves(result.histories)
    best = int(np.argmax(curve["val_accuracy"]))
    losses = [row["val_loss"] for row in finals]
    return {"run_dir": str(result.run_dir), "folds": len(finals),
            "val_accuracy": result.mean, "val_accuracy_std": result.std,
            "val_loss": float(np.mean(losses)), "val_loss_std": float(np.std(losses)),
            "best_epoch": best + 1, "best_epoch_val_accuracy": curve["val_accuracy"][best],
            "train_seconds": sum(row["seconds"] for row in rows),
            "train_cpu_seconds": sum(row["cpu_seconds"] for row in rows), "curve": curve}


# --- the sweep ---------------------------------------------------------------------------------------------

@dataclass
class SweepResult:
    """What `sweep` measured: one record per point (cv_record plus its values), and the best point."""

    run_dir: Path
    points: list[dict]

    @property
    def best(self) -> dict:
        return best_point(self.points)


def sweep(values: dict | None = None, resume: str | Path | None = None) -> SweepResult:
    """Run (or resume) one cross-validation per point of the grid that `values` (option name -> value, a
    list for several) spans; resume: an interrupted sweep's directory, continued with its saved options."""
    single, grid = split_grid(job_values("sweep", values, resume))
    values = {**single, **grid}
    points = grid_points(values)
    root = check_output_dir(points[0].cfg.out)
    load = DataCache()
    for point in points:
        resolve_device(point.cfg.device)  # --device cuda on a machine without a GPU fails here
        check_fits_data(point.cfg, load(point.cfg))
    with open_run(values, "sweep", root, resume) as run:
        results_path = run.dir / "sweep_results.json"
        done = {p["name"]: p for p in read_results(results_path)}
        log.info(f"sweep: {run.dir}, {len(points)} points of " + " x ".join(
            f"{k} ({len(v)})" for k, v in grid.items()) + (f", {len(done)} done before" if done else ""))
        records = []
        for point in points:
            if point.folder not in done:
                log.info(f"point {point.index}/{len(points)}: {point.label}")
                result = cv_in_folder(run.dir / "points" / point.folder, point.cfg, load(point.cfg))
                start_log(run.dir)  # the point's job logged to its own directory
                done[point.folder] = {"name": point.folder, "point": point.index, "values": point.values,
                                      **cv_record(result)}
                done[point.folder]["run_dir"] = str(result.run_dir.relative_to(run.dir))
            records.append(done[point.folder])
            write_json(results_path, {"grid": grid, "points": records})
        result = SweepResult(run.dir, records)
        best_cfg = next(p.cfg for p in points if p.folder == result.best["name"])
        write_outputs(result, grid)
        log.info(f"next: {train_command(best_cfg)}  (the best point's final model on "
                 f"{training_images(best_cfg.limit)})")
    return result


def read_results(path: Path) -> list[dict]:
    return json.loads(path.read_text())["points"] if path.is_file() else []


def table_rows(points: list[dict], grid: dict) -> list[dict]:
    """sweep_results.csv: one row per point."""
    keys = ("val_accuracy", "val_accuracy_std", "val_loss", "val_loss_std", "best_epoch", "train_seconds",
            "train_cpu_seconds", "run_dir")
    return [{**{k: p["values"][k] for k in grid}, **{k: p[k] for k in keys}} for p in points]


def format_table(points: list[dict], grid: dict) -> str:
    """The printed table: per point, validation accuracy and loss as mean ± std over the folds; the best
    point starred."""
    best = best_point(points)
    head = [*grid, "val accuracy (%)", "val loss", "best epoch", "train time (s)"]
    body = [[*(fmt(p["values"][k]) for k in grid),
             f"{100 * p['val_accuracy']:.2f} ± {100 * p['val_accuracy_std']:.2f}" + (" *" if p is best else ""),
             f"{p['val_loss']:.4f} ± {p['val_loss_std']:.4f}", str(p["best_epoch"]), f"{p['train_seconds']:.0f}"]
            for p in points]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [head, *body])


def write_outputs(result: SweepResult, grid: dict) -> None:

    out = result.run_dir
    write_atomic(out / "sweep_results.csv", csv_bytes(table_rows(result.points, grid)))
    save_figure(sweep_curves(result.points), out / "sweep_curves.png")
    save_figure(metric_against_value(result.points, grid), out / "sweep_metric.png")
    best = result.best
    spread = f"mean ± std over {best['folds']} folds" if best["folds"] > 1 else "one validation split"
    log.info(format_table(result.points, grid) + f"\n({spread}; * best validation accuracy)\n"
             f"best: {'; '.join(f'{k}={fmt(v)}' for k, v in best['values'].items())} "
             f"({out / best['run_dir']})\n"
             f"results: {out / 'sweep_results.csv'}\nplots: {out / 'sweep_curves.png'}, {out / 'sweep_metric.png'}")


# --- plots -------------------------------------------------------------------------------------------------

def sweep_curves(points: list[dict]) -> Figure:
    """The mean validation curve of every point (loss and accuracy per epoch), each with a band of
    ± one standard deviation over its folds."""
    from matplotlib.figure import Figure  # where a figure is drawn: the CLI starts without matplotlib
    from matplotlib.ticker import MaxNLocator  # likewise


    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for ax, metric, title in zip(axes, ("val_loss", "val_accuracy"), ("Validation loss", "Validation accuracy")):
        for k, p in enumerate(points):
            curve, colour = p["curve"], f"C{k % 10}"
            scale = 100 if metric == "val_accuracy" else 1
            mean, std = scale * np.array(curve[metric]), scale * np.array(curve[metric + "_std"])
            label = plain(", ".join(f"{n}={fmt(v)}" for n, v in p["values"].items()))
            ax.plot(curve["epoch"], mean, color=colour, marker="o", markersize=3, label=label)
            if p["folds"] > 1:
                ax.fill_between(curve["epoch"], mean - std, mean + std, color=colour, alpha=0.15, linewidth=0)
        spread = f"mean ± std over {points[0]['folds']} folds" if points[0]["folds"] > 1 else "one validation split"
        ax.set(title=f"{title} ({spread})", xlabel="epoch",
               ylabel="accuracy (%)" if metric == "val_accuracy" else "cross-entropy loss")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def x_option(grid: dict) -> str:
    """The swept option on the x axis: a learning rate or weight decay, else the first numeric one, else
    the first."""
    numeric = [name for name, values in grid.items() if all(map(is_number, values))]
    return ([n for n in numeric if n in LOG_SCALE] + numeric + list(grid))[0]


def metric_against_value(points: list[dict], grid: dict) -> Figure:
    """Final validation accuracy and loss (mean, with ± std bars over the folds) against the swept value,
    on a log axis for learning rates and weight decay; one line per value of the other swept options;
    the best point starred."""
    from matplotlib.figure import Figure  # where a figure is drawn: the CLI starts without matplotlib


    x_name = x_option(grid)
    numeric = all(map(is_number, grid[x_name]))
    position = {fmt(v): (v if numeric else i) for i, v in enumerate(grid[x_name])}
    others = [n for n in grid if n != x_name]
    series: dict[str, list[dict]] = {}
    for p in points:
        series.setdefault(plain(", ".join(f"{n}={fmt(p['values'][n])}" for n in others)), []).append(p)
    best = best_point(points)
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for ax, metric, label in zip(axes, ("val_accuracy", "val_loss"), ("validation accuracy (%)", "validation loss")):
        scale = 100 if metric == "val_accuracy" else 1
        for k, (name, group) in enumerate(series.items()):
            xs = [position[fmt(p["values"][x_name])] for p in group]
            ax.errorbar(xs, [scale * p[metric] for p in group], yerr=[scale * p[metric + "_std"] for p in group],
                        color=f"C{k % 10}", marker="o", capsize=3, label=name or None)
        ax.plot([position[fmt(best["values"][x_name])]], [scale * best[metric]], marker="*", markersize=16,
                color="gold", markeredgecolor="black", linestyle="none",
                label=plain("best: " + ", ".join(f"{n}={fmt(v)}" for n, v in best["values"].items())))
        if numeric and x_name in LOG_SCALE and min(grid[x_name]) > 0:
            ax.set_xscale("log")
            ax.minorticks_off()
        ax.set_xticks(list(position.values()), [plain(text) for text in position])  # the swept values themselves
        ax.set(xlabel=x_name, ylabel=label, title=f"Final {label} against {x_name}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig
