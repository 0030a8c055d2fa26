"""The models' results table (docs/benchmarks/models.md), from real runs, and the shipped default model.

    python benchmarks/model_results.py --train strong --ship strong        # train, tabulate, ship
    python benchmarks/model_results.py runs/2026...-train ... [--ship strong]  # tabulate finished runs

`--train` trains each model once with its recipe and 5,000 training images held out (stratified): their
accuracy is the validation score recipes are chosen by, they fit the model's temperature and its threshold
for unknown, and the test set scores the finished model once. `--ship` copies such a run's weights into
the package as the default model, so the shipped model was calibrated on training images, never on test
images. Rows already in model_results.json stay, each with the machine and run it came from, unless a run
given now is of the same model on as many images.
Writes benchmarks/results/model_results.json and .md (the markdown table for docs/benchmarks/models.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from common import VAL_SIZE, save_result

from fashion_cnn.config import TrainConfig
from fashion_cnn.io import load_tensors, write_atomic
from fashion_cnn.jobs.final import train_final
from fashion_cnn.models import locate
from fashion_cnn.models.registry import count_parameters, create_model

RESULTS = Path(__file__).parent / "results"
SHIPPED = Path(locate.__file__).parent / locate.DEFAULT_MODEL  # the package's own path for it: one source
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


def kept_rows(new: list[dict]) -> list[dict]:
    """The rows of the existing result file that no new row replaces (same model, as many training images)."""
    path = RESULTS / "model_results.json"
    if not path.exists():
        return []
    old = json.loads(path.read_text())
    old = old["models"] if isinstance(old, dict) else old  # the first files were a bare list of rows
    replaced = {(r["model"], r["train_images"]) for r in new}
    return [r for r in old if (r["model"], r["train_images"]) not in replaced]


def ship(row: dict) -> None:
    """Copy a validation-split run's model into the package; one calibrated on test images is refused."""
    fitted_on = load_tensors(Path(row["run_dir"]) / "model.safetensors")[1].get("calibration", {}).get("fitted_on")
    if row["val_accuracy"] is None or not fitted_on or "test images" in fitted_on:
        raise SystemExit(f"{row['run_dir']}: not shipped, its calibration was fitted on {fitted_on!r}; "
                         "ship a run trained with --val-size")
    write_atomic(SHIPPED, (Path(row["run_dir"]) / "model.safetensors").read_bytes())  # never half a model
    print(f"shipped {row['run_dir']}/model.safetensors as {SHIPPED} (calibrated on {fitted_on})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="*", type=Path, help="finished `fashion-cnn train` runs to tabulate")
    parser.add_argument("--train", nargs="+", default=[], metavar="MODEL", help="train these models first")
    parser.add_argument("--ship", metavar="MODEL", help="copy this model's run, given or trained now, into the package")
    parser.add_argument("--epochs", type=int, help="override the recipes' epochs")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="runs/models")
    args = parser.parse_args()

    overrides = {"device": args.device} | ({"epochs": args.epochs} if args.epochs else {})
    run_dirs = list(args.run_dirs)
    for model in args.train:
        run_dirs.append(train_final(TrainConfig(model=model, val_size=VAL_SIZE, out=args.out, **overrides)).run_dir)
    new = [result(d) for d in run_dirs]
    results = kept_rows(new) + new
    save_result(RESULTS / "model_results.json", {"models": results})
    write_atomic(RESULTS / "model_results.md", markdown(results).encode())
    print(markdown(results))
    if args.ship:
        runs = [r for r in new if r["model"] == args.ship]
        if not runs:
            raise SystemExit(f"--ship {args.ship}: no run of that model was given or trained now")
        ship(runs[-1])


if __name__ == "__main__":
    main()
