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
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
from pathlib import Path

from common import measured, others_busy_now, save_result
from matplotlib.figure import Figure

from fashion_cnn.config import TrainConfig
from fashion_cnn.jobs import budget
from fashion_cnn.jobs.common import job_data
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


def train_point(model: str, epochs: int, seeds: int, common: dict, data, runs: Path) -> dict:
    """One candidate trained with seeds 1..seeds: per-seed numbers and their spread."""
    per_seed = []
    for seed in range(1, seeds + 1):
        cfg = TrainConfig(model=model, epochs=epochs, seed=seed, out=str(runs), **common)
        result, usage = measured(lambda: train_final(cfg, data=data))
        per_seed.append({"seed": seed, "wall_minutes": sum(r["seconds"] for r in result.history) / 60,
                         "cpu_minutes": sum(r["cpu_seconds"] for r in result.history) / 60,
                         "val_accuracy": result.history[-1]["val_accuracy"], "test_accuracy": result.test_accuracy,
                         "other_cpu_share": usage["other_cpu_share"],
                         "machine": json.loads((result.run_dir / "metrics.json").read_text())["machine"]})
        print(f"{model} {epochs} epochs, seed {seed}: validation {100 * per_seed[-1]['val_accuracy']:.2f}%, "
              f"test {100 * result.test_accuracy:.2f}%, {per_seed[-1]['wall_minutes']:.2f} min", flush=True)
    return {"recipe": model, "epochs": epochs, "seeds": seeds,
            **{key: spread([r[key] for r in per_seed])
               for key in ("wall_minutes", "cpu_minutes", "val_accuracy", "test_accuracy")},
            "runs": per_seed}


def frontier_figure(points: list[dict], seeds: int) -> Figure:
    """Test accuracy against wall and CPU minutes (log), a line per recipe, error bars over the seeds, the
    epochs beside each point (and its seeds where fewer than the others'), the published ResNets as lines."""
    fig = Figure(figsize=(12, 4.5))
    for ax, key, label in zip(fig.subplots(1, 2, sharey=True), ("wall_minutes", "cpu_minutes"),
                              ("training wall minutes", "training CPU minutes (all threads)")):
        for k, recipe in enumerate(dict.fromkeys(p["recipe"] for p in points)):
            mine = sorted((p for p in points if p["recipe"] == recipe), key=lambda p: p["epochs"])
            ax.errorbar([p[key]["mean"] for p in mine], [100 * p["test_accuracy"]["mean"] for p in mine],
                        xerr=[p[key]["std"] or 0 for p in mine],
                        yerr=[100 * (p["test_accuracy"]["std"] or 0) for p in mine], color=f"C{k}", marker="o",
                        capsize=3, label=recipe)
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
    fig.suptitle(f"Accuracy against training time (mean ± std over up to {seeds} seeds)")
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", nargs="+", default=CANDIDATES, metavar="MODEL:EPOCHS,...",
                        help=f"recipes and epoch counts (default: {' '.join(CANDIDATES)})")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per candidate up to 15 minutes (default: 3)")
    parser.add_argument("--max-minutes", type=float, default=LONG_MINUTES,
                        help="skip candidates expected to take longer (default: %(default)s)")
    parser.add_argument("--val-size", type=int, default=5000, help="the validation split (default: %(default)s)")
    parser.add_argument("--limit", type=int, help="train on the first N training images only (a quick check)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: one per core)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where frontier.json and .png go")
    parser.add_argument("--ship", action="store_true", help=f"also copy frontier.json to {budget.FRONTIER_FILE}")
    args = parser.parse_args()

    candidates = parse_candidates(args.candidates)
    common = {"val_size": args.val_size, "limit": args.limit, "threads": args.threads, "device": args.device}
    data = job_data(TrainConfig(**common))
    result = {"val_size": args.val_size, "limit": args.limit,
              "other_cpu_share_before": others_busy_now(), "points": [], "skipped": []}
    with tempfile.TemporaryDirectory() as runs:
        for model, epochs in candidates:
            minutes = expected_minutes(TrainConfig(model=model, epochs=epochs, **common), data)
            if minutes > args.max_minutes:
                print(f"skipped {model} at {epochs} epochs: expected ~{minutes:.0f} min, over --max-minutes")
                result["skipped"].append({"recipe": model, "epochs": epochs, "expected_minutes": minutes})
                continue
            seeds = args.seeds if minutes <= LONG_MINUTES else 1
            result["points"].append({**train_point(model, epochs, seeds, common, data, Path(runs)),
                                     "expected_minutes": minutes})
            # the CPU and the threads the runs used, of how many
            result["machine"] = f"{result['points'][-1]['runs'][-1]['machine']} (of {os.cpu_count()} CPUs)"
            save_result(args.out / "frontier.json", result)  # after every point: a long run keeps its progress
    if not result["points"]:
        raise SystemExit(f"every candidate is expected to take over --max-minutes {args.max_minutes:g}")
    save_figure(frontier_figure(result["points"], args.seeds), args.out / "frontier.png")
    print(f"saved {args.out / 'frontier.png'}\n" + "\n".join(budget.frontier_lines(
        budget.load_frontier(args.out / "frontier.json"))))
    if args.ship:
        shutil.copyfile(args.out / "frontier.json", budget.FRONTIER_FILE)
        print(f"shipped {args.out / 'frontier.json'} as {budget.FRONTIER_FILE}")


if __name__ == "__main__":
    main()
