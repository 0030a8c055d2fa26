"""The models' results table (docs/benchmarks/models.md), from real runs, and the shipped default model.

    python benchmarks/model_results.py --train fast strong --ship strong   # train, tabulate, ship
    python benchmarks/model_results.py runs/2026...-train ...              # tabulate finished runs

`--train` trains each model twice with its recipe: once with 5,000 training images held out, whose
accuracy is the validation score recipes are chosen by, and once on all 60,000, whose test accuracy
is the one reported and whose weights `--ship` copies into the package as the default model.
Writes benchmarks/results/model_results.json and .md (the markdown table for docs/benchmarks/models.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

from common import save_result

from fashion_cnn.config import TrainConfig
from fashion_cnn.io import write_atomic
from fashion_cnn.jobs.final import train_final
from fashion_cnn.models import locate
from fashion_cnn.models.registry import count_parameters, create_model

RESULTS = Path(__file__).parent / "results"
SHIPPED = Path(locate.__file__).parent / locate.DEFAULT_MODEL  # the package's own path for it: one source
VAL_SIZE = 5_000  # the split the fast recipe was chosen on
NOT_RECIPE = {"model", "out", "data_dir", "job", "folds", "split_seed"}  # where, not how, a run trains


def command(config: dict) -> str:
    """The `fashion-cnn train` command line that repeats a run: the flags its config sets beyond the recipe."""
    recipe = dataclasses.asdict(TrainConfig(model=config["model"]))
    flags = []
    for key, value in config.items():
        if key in NOT_RECIPE or value == recipe.get(key):
            continue
        flag = "--" + key.replace("_", "-")
        flags.append(flag if value is True else "--no-" + flag[2:] if value is False else f"{flag} {value}")
    return " ".join(["fashion-cnn train --model", config["model"], *flags])


def result(run_dir: Path) -> dict:
    config = json.loads((run_dir / "config.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    cpu_seconds = metrics.get("train_cpu_seconds")  # summed over threads; older runs lack it
    return {"model": config["model"], "parameters": count_parameters(create_model(config["model"])),
            "epochs": config["epochs"], "train_images": 60_000 - config.get("val_size", 0),
            "train_minutes": metrics["train_seconds"] / 60,
            "train_cpu_minutes": None if cpu_seconds is None else cpu_seconds / 60, "machine": metrics["machine"],
            "val_accuracy": metrics.get("val_accuracy"), "test_accuracy": metrics["test_accuracy"],
            "command": command(config), "run_dir": str(run_dir)}


def markdown(results: list[dict]) -> str:
    def pct(x):
        return "–" if x is None else f"{100 * x:.2f}%"

    def minutes(r):
        cpu = "" if r["train_cpu_minutes"] is None else f" ({r['train_cpu_minutes']:.1f} min CPU)"
        return f"{r['train_minutes']:.1f} min{cpu}"

    lines = ["| model | parameters | epochs | trained on | training time, machine | validation | test | command |",
             "|---|---:|---:|---:|---|---:|---:|---|"]
    lines += [f"| {r['model']} | {r['parameters']:,} | {r['epochs']} | {r['train_images']:,} | "
              f"{minutes(r)}, {r['machine']} | {pct(r['val_accuracy'])} | "
              f"{pct(r['test_accuracy'])} | `{r['command']}` |" for r in results]
    return "\n".join(lines) + "\n"


def train_both(model: str, out: str, overrides: dict) -> list[Path]:
    """The validation run (5,000 images held out), then the final run on all the training images."""
    return [train_final(TrainConfig(model=model, val_size=val_size, out=out, **overrides)).run_dir
            for val_size in (VAL_SIZE, 0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="*", type=Path, help="finished `fashion-cnn train` runs to tabulate")
    parser.add_argument("--train", nargs="+", default=[], metavar="MODEL", help="train these models first")
    parser.add_argument("--ship", metavar="MODEL", help="copy this model's final run into the package")
    parser.add_argument("--epochs", type=int, help="override the recipes' epochs")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="runs/models")
    args = parser.parse_args()

    overrides = {"device": args.device} | ({"epochs": args.epochs} if args.epochs else {})
    run_dirs = list(args.run_dirs)
    for model in args.train:
        run_dirs += train_both(model, args.out, overrides)
    results = [result(d) for d in run_dirs]
    save_result(RESULTS / "model_results.json", {"models": results})
    write_atomic(RESULTS / "model_results.md", markdown(results).encode())
    print(markdown(results))
    if args.ship:
        final = next(r for r in reversed(results) if r["model"] == args.ship and r["val_accuracy"] is None)
        SHIPPED.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(final["run_dir"]) / "model.safetensors", SHIPPED)
        print(f"shipped {final['run_dir']}/model.safetensors as {SHIPPED}")


if __name__ == "__main__":
    main()
