"""The frontier: test accuracy against training time, for each candidate recipe at several epoch counts.

    python benchmarks/frontier.py                              # every candidate expected to take <= 15 min
    python benchmarks/frontier.py --max-minutes 60 --ship      # the longer ones too; ship the result
    python benchmarks/frontier.py --limit 3000 --val-size 500 --candidates baseline:1,2 --seeds 2 --out /tmp/f

A candidate is a registered model's recipe at some number of epochs (its schedule scaled to them, as
`--budget` scales it). Each trains with seeds 1..--seeds on the training set less a fixed stratified
validation split (`fashion-cnn train --val-size`): recipes are chosen by its accuracy, never the test
set's, which scores each finished run once. A run expected (from budget.py's few seconds of timing) to
take over 15 minutes trains with one seed, said beside its point; over --max-minutes, not at all.

Writes frontier.json into --out (default benchmarks/results) after every point: command, commit, machine,
load and date; per point the recipe, epochs, seeds, training wall and CPU minutes, validation and test
accuracy, each as mean and std over the seeds. And frontier.png: test accuracy against wall and CPU
minutes, log time axis, with the published ResNet results as reference lines. --ship copies frontier.json
into the package, where `--budget` and `fashion-cnn models` read it.

Points accumulate over machines: each names the CPU it was measured on (its runs, their threads), and the points already
in --out's frontier.json that this run does not measure again on this machine are kept (with the same
--val-size and --limit; otherwise the file starts afresh), so the table grows a column per CPU:
frontier.md, wall minutes per CPU beside the accuracies. --runs adds finished `fashion-cnn train` runs
(trained with the same --val-size, e.g. a long one that ships) as points of their own, without training.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path

from common import VAL_SIZE, measured, others_busy_now, save_result
from matplotlib.figure import Figure

from fashion_cnn.config import TrainConfig
from fashion_cnn.jobs import budget
from fashion_cnn.jobs.common import job_data
from fashion_cnn.io import write_atomic
from fashion_cnn.jobs.final import train_final
from fashion_cnn.models.specs import get_spec
from fashion_cnn.reporting.plots import save_figure

HERE = Path(__file__).resolve().parent
CANDIDATES = ["baseline:2,5,10", "fast:6,12,18", "strong:10,25,50"]
LONG_MINUTES = 15  # runs expected to take longer train with one seed
REFERENCES = {"ResNet-32 + random erasing": 0.9620, "ResNet-20 + random erasing": 0.9598}  # Zhong et al. 2017


def parse_candidates(texts: list[str]) -> list[tuple[str, int]]:
    """MODEL:E1,E2,... -> [(model, epochs), ...], each model registered and each count at least 1."""
    candidates = []
    for text in texts:
        model, _, counts = text.partition(":")
        try:
            get_spec(model)
            epochs = [int(c) for c in counts.split(",")]
        except ValueError as e:  # an unknown model (its message names the known ones), or no whole numbers
            raise SystemExit(f"--candidates {text}: write MODEL:EPOCHS,EPOCHS,..., e.g. fast:6,12,18 ({e})") from None
        if min(epochs) < 1:
            raise SystemExit(f"--candidates {text}: epochs must be at least 1")
        candidates += [(model, e) for e in epochs]
    return candidates


def spread(values: list[float]) -> dict:
    """Mean and sample standard deviation (None for one value)."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None}


def expected_minutes(cfg: TrainConfig, data) -> float:
    """cfg's run on data, from a few seconds' timing of its steps here (budget.py's estimate)."""
    with budget.torch_threads(cfg.threads):
        speed = budget.measure_speed(cfg, len(data.class_names))
    cost = budget.recipe_cost(cfg, speed, budget.job_sizes(cfg, data), reports=0.0)
    return (cost.once + cfg.epochs * cost.epoch) / 60


def run_record(run_dir: Path, seed: int, other_cpu_share: float | None) -> dict:
    """A finished train run's figures, from the files it wrote."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"seed": seed, "wall_minutes": metrics["train_seconds"] / 60,
            "cpu_minutes": metrics["train_cpu_seconds"] / 60, "val_accuracy": metrics["val_accuracy"],
            "test_accuracy": metrics["test_accuracy"], "test_interval": metrics["test_interval"]["accuracy"],
            "other_cpu_share": other_cpu_share, "machine": metrics["machine"]}


def cpu_of(machine: str) -> str:
    """The CPU of a run's machine ("AMD EPYC, 2 threads" -> "AMD EPYC"): what a point is keyed by; the
    threads a run used (the baseline's follow the load) stay in its own record."""
    return machine.split(",")[0]


def point(model: str, epochs: int, runs: list[dict]) -> dict:
    """A frontier point from the runs of one recipe at one epoch count on one CPU."""
    return {"recipe": model, "epochs": epochs, "seeds": len(runs), "machine": cpu_of(runs[0]["machine"]),
            **{key: spread([r[key] for r in runs])
               for key in ("wall_minutes", "cpu_minutes", "val_accuracy", "test_accuracy")},
            "runs": runs}


def train_point(model: str, epochs: int, seeds: int, common: dict, data, runs: Path) -> dict:
    """One candidate trained with seeds 1..seeds: per-seed numbers and their spread."""
    per_seed = []
    for seed in range(1, seeds + 1):
        cfg = TrainConfig(model=model, epochs=epochs, seed=seed, out=str(runs), **common)
        result, usage = measured(lambda: train_final(cfg, data=data))
        per_seed.append(run_record(result.run_dir, seed, usage["other_cpu_share"]))
        print(f"{model} {epochs} epochs, seed {seed}: validation {100 * per_seed[-1]['val_accuracy']:.2f}%, "
              f"test {100 * result.test_accuracy:.2f}%, {per_seed[-1]['wall_minutes']:.2f} min", flush=True)
    return point(model, epochs, per_seed)


def points_of_runs(run_dirs: list[Path], val_size: int, limit: int | None) -> list[dict]:
    """Finished `fashion-cnn train` runs as points (one per recipe, epochs and machine), each checked to
    have held out the same validation split and trained on the same images as the frontier's runs."""
    groups: dict[tuple, list[dict]] = {}
    for run_dir in run_dirs:
        config = json.loads((run_dir / "config.json").read_text())
        data = config.get("data") or config.get("data_dir")
        if config.get("val_size") != val_size or config.get("limit") != limit or data:
            raise SystemExit(f"{run_dir}: trained with --val-size {config.get('val_size')} and --limit "
                             f"{config.get('limit')} on {data or 'Fashion-MNIST'}; the "
                             f"frontier's runs hold out {val_size} of Fashion-MNIST with --limit {limit}")
        record = run_record(run_dir, config["seed"], None)
        groups.setdefault((config["model"], config["epochs"], cpu_of(record["machine"])), []).append(record)
    return [point(model, epochs, runs) for (model, epochs, _), runs in groups.items()]


def kept_points(path: Path, val_size: int, limit: int | None) -> list[dict]:
    """The points of an earlier frontier.json measured with the same split and images, each with its
    machine (the first files named it once, for every point)."""
    if not path.exists():
        return []
    old = json.loads(path.read_text())
    if old.get("val_size") != val_size or old.get("limit") != limit:
        print(f"{path}: measured with --val-size {old.get('val_size')} --limit {old.get('limit')}; starting afresh")
        return []
    return [{**p, "machine": cpu_of(p.get("machine") or p["runs"][-1]["machine"]),
             "measured": p.get("measured") or {k: old["run"][k] for k in ("commit", "finished")}}
            for p in old["points"]]


def merged(kept: list[dict], new: list[dict]) -> list[dict]:
    """kept less the points new measures again (same recipe, epochs and machine), then new."""
    again = {(p["recipe"], p["epochs"], p["machine"]) for p in new}
    return [p for p in kept if (p["recipe"], p["epochs"], p["machine"]) not in again] + new


def markdown(points: list[dict]) -> str:
    """The frontier table: a row per recipe and epochs, its accuracies pooled over the runs of every CPU
    that measured it (seeds 1..n on each), a column of wall minutes (mean ± std) per CPU."""
    machines = list(dict.fromkeys(p["machine"] for p in points))
    rows = {}
    for p in sorted(points, key=lambda p: (p["recipe"], p["epochs"])):
        rows.setdefault((p["recipe"], p["epochs"]), []).append(p)

    def pct(runs: list[dict], key: str) -> str:
        """mean ± std over the seeds; one seed's test accuracy with its 95% bootstrap interval"""
        values = [100 * r[key] for r in runs]
        if len(values) > 1:
            return f"{statistics.fmean(values):.2f}% ± {statistics.stdev(values):.2f}"
        interval = runs[0].get("test_interval") if key == "test_accuracy" else None
        return f"{values[0]:.2f}%" + (f" ({100 * interval[0]:.2f}-{100 * interval[1]:.2f})" if interval else "")

    lines = ["| recipe | epochs | runs | validation | test | " + " | ".join(f"wall minutes, {m}" for m in machines)
             + " |", "| --- | ---: | ---: | ---: | ---: |" + " ---: |" * len(machines)]
    for (recipe, epochs), same in rows.items():
        runs = [r for p in same for r in p["runs"]]
        wall = {p["machine"]: p["wall_minutes"] for p in same}
        lines.append(f"| {recipe} | {epochs} | {len(runs)} | {pct(runs, 'val_accuracy')} | {pct(runs, 'test_accuracy')}"
                     " | " + " | ".join("–" if m not in wall else f"{wall[m]['mean']:.2f}"
                                        + (f" ± {wall[m]['std']:.2f}" if wall[m]["std"] else "") for m in machines)
                     + " |")
    return "\n".join(lines) + "\n"


def frontier_figure(points: list[dict], seeds: int) -> Figure:
    """Test accuracy against wall and CPU minutes (log), a line per recipe, error bars over the seeds, the
    epochs beside each point (and its seeds where fewer than the others'), the published ResNets as lines."""
    fig = Figure(figsize=(12, 4.5))
    for ax, key, label in zip(fig.subplots(1, 2, sharey=True), ("wall_minutes", "cpu_minutes"),
                              ("training wall minutes", "training CPU minutes (all threads)")):
        machines = list(dict.fromkeys(p["machine"] for p in points))
        lines = dict.fromkeys((p["recipe"], p["machine"]) for p in points)
        recipes = list(dict.fromkeys(p["recipe"] for p in points))
        for recipe, machine in lines:
            mine = sorted((p for p in points if (p["recipe"], p["machine"]) == (recipe, machine)),
                          key=lambda p: p["epochs"])
            ax.errorbar([p[key]["mean"] for p in mine], [100 * p["test_accuracy"]["mean"] for p in mine],
                        xerr=[p[key]["std"] or 0 for p in mine],
                        yerr=[100 * (p["test_accuracy"]["std"] or 0) for p in mine],
                        color=f"C{recipes.index(recipe)}", marker="os^D"[machines.index(machine) % 4],
                        linestyle=("-", "--", ":", "-.")[machines.index(machine) % 4], capsize=3,
                        label=recipe + (f", {machine}" if len(machines) > 1 else ""))
            for p in mine:
                fewer = f", {p['seeds']} seed{'s' * (p['seeds'] > 1)}" if p["seeds"] < seeds else ""
                note = f"{p['epochs']} ep{fewer}"
                ax.annotate(note, (p[key]["mean"], 100 * p["test_accuracy"]["mean"]), textcoords="offset points",
                            xytext=(5, -10), fontsize=8)
        for (name, accuracy), style in zip(REFERENCES.items(), ("--", ":")):
            ax.axhline(100 * accuracy, color="grey", linestyle=style, label=f"{name}: {100 * accuracy:.2f}%")
        ax.set(xscale="log", xlabel=label, ylabel="test accuracy (%)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Accuracy against training time (mean ± std over up to {seeds} seeds; "
                 f"{' and '.join(dict.fromkeys(p['machine'] for p in points))})")
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", nargs="*", default=CANDIDATES, metavar="MODEL:EPOCHS,...",
                        help=f"recipes and epoch counts to train (default: {' '.join(CANDIDATES)}; none: "
                             "--candidates alone, to add --runs only)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per candidate up to 15 minutes (default: 3)")
    parser.add_argument("--max-minutes", type=float, default=LONG_MINUTES,
                        help="skip candidates expected to take longer (default: %(default)s)")
    parser.add_argument("--val-size", type=int, default=VAL_SIZE, help="the validation split (default: %(default)s)")
    parser.add_argument("--limit", type=int, help="train on the first N training images only (a quick check)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: one per core)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where frontier.json and .png go")
    parser.add_argument("--runs", nargs="+", type=Path, default=[], metavar="RUN_DIR",
                        help="finished `fashion-cnn train` runs (same --val-size) to add as points, untrained here")
    parser.add_argument("--ship", action="store_true", help=f"also copy frontier.json to {budget.FRONTIER_FILE}")
    args = parser.parse_args()

    candidates = parse_candidates(args.candidates)
    common = {"val_size": args.val_size, "limit": args.limit, "threads": args.threads, "device": args.device}
    data = job_data(TrainConfig(**common))
    kept = kept_points(args.out / "frontier.json", args.val_size, args.limit)
    new = points_of_runs(args.runs, args.val_size, args.limit)
    result = {"val_size": args.val_size, "limit": args.limit,
              "other_cpu_share_before": others_busy_now(), "points": merged(kept, new), "skipped": []}
    with tempfile.TemporaryDirectory() as runs:
        for model, epochs in candidates:
            minutes = expected_minutes(TrainConfig(model=model, epochs=epochs, **common), data)
            if minutes > args.max_minutes:
                print(f"skipped {model} at {epochs} epochs: expected ~{minutes:.0f} min, over --max-minutes")
                result["skipped"].append({"recipe": model, "epochs": epochs, "expected_minutes": minutes})
                continue
            seeds = args.seeds if minutes <= LONG_MINUTES else 1
            new.append({**train_point(model, epochs, seeds, common, data, Path(runs)), "expected_minutes": minutes})
            result["points"] = merged(kept, new)
            save_result(args.out / "frontier.json", result)  # after every point: a long run keeps its progress
    if not new:
        raise SystemExit("nothing measured: every candidate is expected to take over --max-minutes "
                         f"{args.max_minutes:g}, and no --runs were given")
    result["machines"] = sorted({p["machine"] for p in result["points"]})  # the CPUs
    save_result(args.out / "frontier.json", result)
    write_atomic(args.out / "frontier.md", markdown(result["points"]).encode())
    save_figure(frontier_figure(result["points"], args.seeds), args.out / "frontier.png")
    print(f"saved {args.out / 'frontier.png'}\n" + "\n".join(budget.frontier_lines(
        budget.load_frontier(args.out / "frontier.json"))))
    if args.ship:
        shutil.copyfile(args.out / "frontier.json", budget.FRONTIER_FILE)
        print(f"shipped {args.out / 'frontier.json'} as {budget.FRONTIER_FILE}")


if __name__ == "__main__":
    main()
