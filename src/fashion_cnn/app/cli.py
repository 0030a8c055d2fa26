"""Command line: parses arguments and calls the Python API; no logic of its own.

Each command imports its own stack inside its function, so that `--help` and every other command start
without it (torch, scikit-learn, matplotlib): the reason for every import inside a function here. The
parser is built from the modules imported at the top alone, which load none of these (a test keeps it so).

Job options are generated from the config dataclasses, so --help shows each default and its reason,
and an option given on the command line is told apart from a default (what --resume and --config need).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import signal
import sys
import tomllib
import types
import typing
from pathlib import Path
from typing import Iterator

from fashion_cnn import machine
from fashion_cnn.config import TOP_K, CVConfig, TrainConfig
from fashion_cnn.io import ModelFileError, check_output_dir, check_output_file, parse_json
from fashion_cnn.jobs.options import (
    DEFAULT_STUDY,
    DEFAULT_TRIALS,
    LR_FIND_OPTIONS,
    LR_FIND_RULE,
    LRFindConfig,
    space_help,
)
from fashion_cnn.models.locate import MODEL_RULE, resolve_model_path
from fashion_cnn.models.specs import SPECS, list_models
from fashion_cnn.text import printable
from fashion_cnn.version import __version__

MAX_CONFIG_BYTES = 1_000_000  # a config file is a few hundred bytes; anything near this is not one


def parser_for(*args, **kwargs) -> argparse.ArgumentParser:
    """argparse without abbreviations: `--epoch 2` is an error, not `--epochs 2`."""
    return argparse.ArgumentParser(*args, allow_abbrev=False, **kwargs)


def option_help(field: dataclasses.Field) -> str:
    """The field's reason, its default (a model's recipe where it has one), and its valid range."""
    meta = field.metadata
    text = meta.get("help", "")
    if "fallback" in meta:
        per_model = {name: spec.recipe.get(field.name, meta["fallback"]) for name, spec in SPECS.items()}
        if len(set(map(repr, per_model.values()))) == 1:
            text += f" (default: {meta['fallback']})"
        else:
            text += " (default: the model's recipe: " + ", ".join(f"{k} {v}" for k, v in per_model.items()) + ")"
    elif field.default is not None:  # an unset option's meaning is in its help text
        text += f" (default: {field.default})"
    if meta.get("valid"):
        text += f"; {meta['valid']['rule']}"
    return text.replace("%", "%%")


class SeveralBools(argparse.Action):
    """A flag of a sweep: --flip (true), --no-flip (false), or --flip true false (both)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string.startswith("--no-") and values:
            parser.error(f"{option_string} takes no values")
        setattr(namespace, self.dest, [False] if option_string.startswith("--no-") else values or [True])


def true_or_false(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"true or false, not {text!r}")
    return text.lower() == "true"


# The --help groups of the job options; a recipe field (one a model's recipe may set) is in "model and recipe"
DATA_GROUP = "data"
RECIPE_GROUP = "model and recipe"
VALIDATION_GROUP = "validation"
RUN_GROUP = "run and output"
RESOURCES_GROUP = "resources"
OPTION_GROUPS = {
    DATA_GROUP: ("data", "classes", "test_fraction", "data_dir", "add_to", "framed", "limit"),
    RECIPE_GROUP: ("model", "init", "freeze_backbone", "head_warmup", "backbone_lr", "class_weights", "start_lr", "end_lr", "steps"),
    VALIDATION_GROUP: ("folds", "split_seed", "val_size", "early_stopping"),
    RUN_GROUP: ("out", "seed", "tensorboard", "config", "resume"),
    RESOURCES_GROUP: ("budget", "device", "threads", "eval_batch_size"),
}


def group_of(field: dataclasses.Field) -> str:
    """The --help group of a config field (OPTION_GROUPS)."""
    if "fallback" in field.metadata:
        return RECIPE_GROUP
    return next(group for group, names in OPTION_GROUPS.items() if field.name in names)


def option_group(parser: argparse.ArgumentParser, title: str):
    """The parser's argument group of this title, made on first use (so groups appear in the order used)."""
    for group in parser._action_groups:  # argparse keeps them here and has no lookup of its own
        if group.title == title:
            return group
    return parser.add_argument_group(title)


def add_config_options(parser: argparse.ArgumentParser, config_cls: type, only: tuple[str, ...] = (),
                       several: bool = False) -> None:
    """One option per config field (or the fields named in `only`), in its --help group; unset options stay
    out of the parsed namespace, so the job can tell what was given. several: each option takes one or more
    values (a list), for a sweep."""
    hints = typing.get_type_hints(config_cls)
    fields = [f for f in dataclasses.fields(config_cls) if not only or f.name in only]
    for title in OPTION_GROUPS:  # the group headings in a fixed order, whatever the fields' order
        if any(group_of(f) == title for f in fields):
            option_group(parser, title)
    for f in fields:
        group = option_group(parser, group_of(f))
        kind = hints[f.name]
        if isinstance(kind, types.UnionType):  # "int | None": the non-None member parses the value
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        flag = "--" + f.name.replace("_", "-")
        choices = list_models() if f.name == "model" else f.metadata.get("choices")
        if kind is bool and several:
            group.add_argument(flag, "--no-" + flag[2:], dest=f.name, nargs="*", type=true_or_false,
                               action=SeveralBools, default=argparse.SUPPRESS, metavar="true|false",
                               help=option_help(f))
        elif kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=option_help(f))
        else:
            group.add_argument(flag, type=kind, default=argparse.SUPPRESS, choices=choices,
                               nargs="+" if several else None, metavar=None if choices else f.name.upper(),
                               help=option_help(f))


def read_config_file(path: str) -> dict:
    """--config: options from a TOML file, or a run's config.json."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    raw = file.read_bytes()[:MAX_CONFIG_BYTES + 1]
    if len(raw) > MAX_CONFIG_BYTES:
        raise ValueError(f"--config {path}: over {MAX_CONFIG_BYTES:,} bytes, not a config file")
    kind = "JSON" if file.suffix == ".json" else "TOML"
    try:
        text = raw.decode()
        values = parse_json(text) if kind == "JSON" else tomllib.loads(text)
    except RecursionError:  # tomllib's parser recurses once per level of nesting
        raise ValueError(f"--config {path}: not valid TOML (nested too deeply)") from None
    except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise ValueError(f"--config {path}: not valid {kind} ({e})") from None
    if not isinstance(values, dict):
        raise ValueError(f"--config {path}: not a table of options (a JSON object, name: value)")
    return values


def given_options(config_cls: type, args: argparse.Namespace) -> tuple[dict, dict]:
    """(--config's values, the options given on the command line) for a config class's fields."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    given = {name: getattr(args, name) for name in names if hasattr(args, name)}
    return read_config_file(args.config) if args.config else {}, given


def job_config_from_args(config_cls: type, args: argparse.Namespace):
    """The config the options ask for: --config's values, then the options given on the command line.
    With --resume, they are laid over the run's saved config, so only real changes show as differences."""
    from fashion_cnn.training.runs import read_config

    values, given = given_options(config_cls, args)
    if args.resume is not None:
        if not values and not given:
            return None  # the saved config as it is
        values = {**read_config(args.resume), **values}
    return config_cls.from_dict({**values, **given}, f"--config {args.config}" if args.config else None)


def add_job_options(parser: argparse.ArgumentParser, config_cls: type, several: bool = False,
                    resume_help: str = "continue an interrupted run in RUN_DIR with its saved options (only "
                                       "--epochs may grow, with a constant learning rate)") -> None:
    add_config_options(parser, config_cls, several=several)
    run = option_group(parser, RUN_GROUP)
    run.add_argument("--config", metavar="FILE", help="take options from a TOML file or a run's config.json; "
                     "options given here override it")
    run.add_argument("--resume", metavar="RUN_DIR", help=resume_help)


DATA_OPTIONS = ("data", "classes", "test_fraction", "data_dir", "add_to", "framed")


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """The data options of the jobs, for the commands that only read data."""
    add_config_options(parser, TrainConfig, only=DATA_OPTIONS)
    parser.set_defaults(**{name: TrainConfig.__dataclass_fields__[name].default for name in DATA_OPTIONS})


def load_job_data(args: argparse.Namespace):
    from fashion_cnn.jobs.common import load_data

    return load_data(**{name: getattr(args, name) for name in DATA_OPTIONS})


def data_given(args: argparse.Namespace) -> bool:
    """Whether the data options name a data set (else a command that reads a model takes the model's own)."""
    return any(getattr(args, name) is not None for name in ("data", "classes", "data_dir", "add_to"))


def cmd_data(args: argparse.Namespace) -> None:
    from fashion_cnn.data.folders import describe

    if args.samples:
        check_output_file(args.samples, args.force)
    data = load_job_data(args)
    print("\n".join(describe(data)))
    if args.samples:
        from fashion_cnn.reporting.plots import samples_figure, save_figure

        save_figure(samples_figure(data.train_images, data.train_labels, data.class_names), args.samples)
        print(f"sample grid saved to {args.samples}")


def job_from_args(config_cls: type, args: argparse.Namespace) -> tuple[object, dict]:
    """The config a `train` or `cv` command runs with, and what else its job takes: with --budget (unless
    resuming, which keeps the saved choice), the recipe and epochs budget.plan_job chose, the data it
    loaded, and the time it leaves for training."""
    from fashion_cnn.jobs.budget import plan_job
    from fashion_cnn.training import distributed

    with distributed.agreed():  # under torchrun, a bad option stops every process and is reported once
        cfg = job_config_from_args(config_cls, args)
    if cfg is None or cfg.budget is None or args.resume is not None:
        return cfg, {}
    values, given = given_options(config_cls, args)
    plan = plan_job(config_cls, {**values, **given})
    return plan.config, {"data": plan.data, "time_limit": plan.time_limit}


def cmd_cv(args: argparse.Namespace) -> None:
    from fashion_cnn.jobs.crossval import cross_validate

    cfg, job = job_from_args(CVConfig, args)
    cross_validate(cfg, resume=args.resume, verbose=2, **job)


def cmd_train(args: argparse.Namespace) -> None:
    from fashion_cnn.jobs.final import train_final

    cfg, job = job_from_args(TrainConfig, args)
    train_final(cfg, resume=args.resume, verbose=2, **job)


def cmd_sweep(args: argparse.Namespace) -> None:
    from fashion_cnn.jobs.sweep import sweep

    values, given = given_options(CVConfig, args)
    sweep({**values, **given}, resume=args.resume)


def cmd_tune(args: argparse.Namespace) -> None:
    from fashion_cnn.jobs.tune import tune

    values, given = given_options(CVConfig, args)
    settings = {k: getattr(args, k) for k in ("trials", "timeout", "storage", "study") if hasattr(args, k)}
    if hasattr(args, "space"):
        pairs = [item.partition("=") for item in args.space]
        bad = [name for name, eq, _ in pairs if not eq]
        if bad:
            raise ValueError(f"--space {bad[0]}: write NAME=RANGE, e.g. lr=0.001:0.1:log")
        settings["space"] = {**values.get("space", {}), **{name: text for name, _, text in pairs}}
    tune({**values, **given, **settings}, resume=args.resume)


def cmd_lr_find(args: argparse.Namespace) -> None:
    from fashion_cnn.jobs.lrfind import lr_find

    lr_find(LRFindConfig.from_dict(given_options(LRFindConfig, args)[1], None))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from fashion_cnn.evaluation.metrics import format_confusion_matrix, format_per_class, format_scores
    from fashion_cnn.jobs.evaluate import check_outputs, evaluate_file

    path = resolve_model_path(args.model)
    print(f"model: {path}", flush=True)  # before the data is read and the model run: they take a while
    out = check_outputs(args.out, path, args.force) if args.out else None
    with machine.threads_for_job(args.threads):
        result = evaluate_file(path, load_job_data(args) if data_given(args) else None, out, args.force)
    print(format_per_class(result.report) + "\n\n" + format_confusion_matrix(result.report))
    print(f"test accuracy: {format_scores(result.report)}")
    if result.html:
        print("written: " + ", ".join(map(str, result.written)) + f"\nreport: {result.html}")


def cmd_predict(args: argparse.Namespace) -> int:
    from fashion_cnn.evaluation.predict import Predictor, as_json, format_line, save_preprocessed, write_csv

    if args.save_preprocessed:
        check_output_dir(args.save_preprocessed)
    predictor = Predictor(args.model, min_confidence=args.min_confidence)
    predictions = predictor.predict(args.images, top_k=args.top_k,
                                    invert=False if args.no_invert else None, crop=not args.no_crop,
                                    framed=args.framed,
                                    errors="report")  # one line per bad file, and the others still predicted
    # saved before anything is printed: a refused file is then the command's only output
    saved = save_preprocessed(predictions, args.save_preprocessed, args.force) if args.save_preprocessed else None
    print(predictor.describe(), file=sys.stdout if args.format == "text" else sys.stderr)
    if args.format == "json":
        print(json.dumps(as_json(predictions, predictor), indent=2, allow_nan=False))
    elif args.format == "csv":
        write_csv(predictions, predictor.class_names, sys.stdout)
    for p in predictions:
        if p.error:
            print_error(p)
        elif args.format == "text":
            print(format_line(p))
    if saved is not None:
        print(f"{len(saved)} preprocessed images saved to {args.save_preprocessed}", file=sys.stderr)
    return 1 if any(p.error for p in predictions) else 0


def print_error(p) -> None:
    """An input that could not be used, as `predict` and `explain` report it: one line on stderr (control
    characters in a file's name escaped, so a name cannot forge another line)."""
    print(printable(f"fashion-cnn: error: {p.source}: {p.error}"), file=sys.stderr)


def cmd_explain(args: argparse.Namespace) -> int:

    import numpy as np

    from fashion_cnn.evaluation.explain import explain_files
    from fashion_cnn.evaluation.predict import as_json, format_line

    predictor, predictions, heats, paths = explain_files(
        args.images, args.model, args.out, args.force, args.top_k,
        invert=False if args.no_invert else None, crop=not args.no_crop, framed=args.framed)
    print(predictor.describe(), file=sys.stderr if args.json else sys.stdout)
    if args.json:
        document = as_json(predictions, predictor)
        for record, heat, path in zip(document["predictions"], heats, paths):
            record["explanation"] = None if path is None else str(path)
            record["heatmap"] = None if heat is None else np.round(heat, 3).tolist()
        print(json.dumps(document, indent=2))
    for p, path in zip(predictions, paths):
        if p.error:
            print_error(p)
        elif not args.json:
            print(f"{format_line(p)}  -> {path}")
    return 1 if any(p.error for p in predictions) else 0


def cmd_report(args: argparse.Namespace) -> None:
    from fashion_cnn.reporting.report import write_comparison, write_report

    if len(args.runs) == 1:
        print(f"report: {write_report(args.runs[0], out=args.out, data_dir=args.data_dir, force=args.force)}")
    elif args.data_dir:
        raise ValueError("--data-dir is for the report of one run; a comparison reads only the runs' files")
    else:
        print(f"report: {write_comparison(args.runs, out=args.out, force=args.force)}")


def cmd_serve(args: argparse.Namespace) -> None:
    from fashion_cnn.app.serve import run

    run(args.model, host=args.host, port=args.port, min_confidence=args.min_confidence,
        allowed_hosts=args.allowed_hosts)


def cmd_calibrate(args: argparse.Namespace) -> None:
    from fashion_cnn.evaluation.calibration import summary
    from fashion_cnn.jobs.calibrate import calibrate_file

    path = resolve_model_path(args.model)
    print(f"model: {path}")
    data = load_job_data(args) if args.data or args.data_dir or args.classes else None  # else see calibrate_file
    print(summary(calibrate_file(path, args.out, data, args.force, args.fit_on_test_images)))
    print(f"saved {args.out} (the weights of {path}, with this calibration in its metadata)")


def cmd_export(args: argparse.Namespace) -> None:
    from fashion_cnn.app.export import export_onnx

    path = resolve_model_path(args.model)
    print(f"model: {path}", flush=True)
    report = export_onnx(path, args.out, force=args.force)
    print(f"saved {report['out']}: input images (N, 28, 28) float32 in [0, 1], "
          "output probabilities (N, classes)")
    print(f"checked with onnxruntime on {report['check_images']}: same classes as PyTorch, "
          f"largest probability difference {report['max_abs_diff']:.1e} (tolerance {report['tolerance']:g})")


def cmd_models(args: argparse.Namespace) -> None:
    from fashion_cnn.jobs.budget import frontier_lines, load_frontier
    from fashion_cnn.models.registry import count_parameters, create_model

    for spec in SPECS.values():
        print(f"{spec.name:<10} {count_parameters(create_model(spec.name)):>10,} parameters  "
              f"{spec.description}")
        if spec.recipe:  # as a job here would run it: a recipe's bfloat16 only where it is native
            cfg = TrainConfig(model=spec.name)
            print(f"{'':<10} recipe: " + ", ".join(f"{k}={getattr(cfg, k)}" for k in spec.recipe)
                  + (" (bfloat16 is not native on this machine: float32)" if spec.recipe.get("amp") and not cfg.amp
                     else ""))
    print("\n" + "\n".join(frontier_lines(load_frontier())))


def add_model_option(parser: argparse.ArgumentParser) -> None:
    """--model, as locate.resolve_model_path reads it."""
    parser.add_argument("--model", metavar="PATH|RUN_DIR|latest", help=MODEL_RULE)


def add_image_options(parser: argparse.ArgumentParser) -> None:
    """How images become model inputs, and how many classes to show, as predict and explain take them."""
    parser.add_argument("--top-k", type=int, default=TOP_K,
                        help="how many classes to list per image (default: %(default)s)")
    parser.add_argument("--no-invert", action="store_true",
                        help="never invert (default: invert when the border is light, as in photos)")
    parser.add_argument("--no-crop", action="store_true",
                        help="keep the whole picture instead of cropping to the object")
    parser.add_argument("--framed", action="store_true",
                        help="take each picture as framed like Fashion-MNIST (the object filling it): only inverted "
                             "and resized, as `--framed` imported a model's training images")


def add_min_confidence_option(parser: argparse.ArgumentParser) -> None:
    """--min-confidence, as Predictor and the web API take it."""
    parser.add_argument("--min-confidence", type=float, metavar="P",
                        help="answer `unknown` when the calibrated top probability is below P, instead of the "
                             "model file's own rule (0: never unknown; default: the model's rule, if any)")


JOBS = ("cv", "train", "sweep", "tune", "lr-find")  # commands of options only: a short usage line

# Each command's --help ends with these: what a user types first, then a variation
EXAMPLES = {
    "data": ["fashion-cnn data", "fashion-cnn data --data ~/photos --samples samples.png"],
    "cv": ["fashion-cnn cv                                   # the tutorial: 5 folds of the baseline",
           "fashion-cnn cv --limit 6000 --epochs 3           # a quick look",
           "fashion-cnn cv --folds 1 --val-size 10000 --model fast"],
    "train": ["fashion-cnn train                                # the final model, tested once",
              "fashion-cnn train --model strong --val-size 5000",
              "fashion-cnn train --config runs/<tune>/best_config.toml"],
    "sweep": ["fashion-cnn sweep --lr 0.001 0.01 0.1 --epochs 5",
              "fashion-cnn sweep --batch-size 32 128 --flip true false   # a grid of 4 points",
              "fashion-cnn report runs/<sweep>                  # its points compared"],
    "tune": ["fashion-cnn tune --model fast --trials 30",
             "fashion-cnn tune --space lr=0.001:0.3:log epochs=5 --folds 1 --val-size 10000"],
    "lr-find": ["fashion-cnn lr-find", "fashion-cnn lr-find --model fast --steps 300"],
    "evaluate": ["fashion-cnn evaluate --model runs/<run>", "fashion-cnn evaluate --model latest --out eval/"],
    "predict": ["fashion-cnn predict shirt.jpg", "fashion-cnn predict photos/ --model runs/<run> --csv > out.csv"],
    "explain": ["fashion-cnn explain shirt.jpg                     # explanations/1-shirt.png"],
    "report": ["fashion-cnn report runs/<run>                    # runs/<run>/report.html",
               "fashion-cnn report runs/<a> runs/<b>             # runs/<timestamp>-compare.html"],
    "serve": ["fashion-cnn serve                                # http://127.0.0.1:8000/",
              "fashion-cnn serve --model runs/<run> --host 0.0.0.0 --port 8080"],
    "calibrate": ["fashion-cnn calibrate calibrated.safetensors --model runs/<run>"],
    "export": ["fashion-cnn export model.onnx --model runs/<run>"],
    "models": ["fashion-cnn models"],
}


def examples(command: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES[command])


class HelpFormatter(argparse.HelpFormatter):
    """Descriptions wrapped to the terminal, as argparse does; the examples at the end as written, one a line
    (argparse's RawDescriptionHelpFormatter would leave the descriptions unwrapped too)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def build_parser() -> argparse.ArgumentParser:
    parser = parser_for(prog="fashion-cnn",
                        description="Train, evaluate and use CNN image classifiers on Fashion-MNIST.")
    parser.add_argument("--version", action="version", version=f"fashion-cnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, func) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, allow_abbrev=False, epilog=examples(name),
                           formatter_class=HelpFormatter,
                           usage="%(prog)s [OPTION ...]" if name in JOBS else None)
        p.set_defaults(func=func)
        return p

    p = command("data", "show where the data came from, its class counts and import findings", cmd_data)
    add_data_options(p)
    p.add_argument("--samples", metavar="PNG", help="also save a grid of sample images per class")
    p.add_argument("--force", action="store_true", help="replace an existing --samples file")

    add_job_options(command("cv", "k-fold cross-validation with learning curves", cmd_cv), CVConfig)
    add_job_options(command("train", "train the final model on all training images, test it once, save it",
                            cmd_train), TrainConfig)

    add_job_options(command("sweep", "one cross-validation per point of a grid of options (e.g. --lr 0.001 "
                            "0.01 0.1; several options make their grid), compared in a table and plots",
                            cmd_sweep), CVConfig, several=True,
                    resume_help="continue an interrupted sweep in RUN_DIR: finished points are kept, the "
                                "interrupted one resumes")

    p = command("tune", "search a model's recipe with Optuna (TPE, median pruning), scored by cross-validation "
                "on the training data only; one worker of a study that any number of workers can join", cmd_tune)
    add_job_options(p, CVConfig, resume_help="continue an interrupted worker in RUN_DIR: the study keeps its "
                    "trials, and the worker's interrupted trial resumes; a --storage URL with a password is "
                    "given again (the run keeps it without)")
    search = p.add_argument_group("search")
    search.add_argument("--space", nargs="+", metavar="NAME=RANGE", default=argparse.SUPPRESS,
                   help="change the search space: NAME=LOW:HIGH (whole numbers for whole-number options), "
                        "NAME=LOW:HIGH:log, NAME=A,B,C (choices) or NAME=VALUE (fixed). Default: "
                        f"{space_help()}; a job option given (e.g. --epochs 10) is fixed instead")
    search.add_argument("--trials", type=int, default=argparse.SUPPRESS,
                   help=f"stop when the study has this many trials, all workers together (default: {DEFAULT_TRIALS})")
    search.add_argument("--timeout", type=float, default=argparse.SUPPRESS, metavar="SECONDS",
                   help="this worker starts no new trial after this many seconds (default: no limit)")
    search.add_argument("--storage", metavar="URL", default=argparse.SUPPRESS,
                   help="the Optuna storage that holds the study, e.g. postgresql://user:password@host/db "
                        "(default: study.db, SQLite, in the run directory)")
    search.add_argument("--study", metavar="NAME", default=argparse.SUPPRESS,
                   help=f"the study's name in the storage; workers with the same storage and name share it "
                        f"(default: {DEFAULT_STUDY})")

    p = command("lr-find", "learning-rate range test: a short run with an exponentially growing learning rate, "
                f"a plot of the loss against it, and a suggested --lr ({LR_FIND_RULE})", cmd_lr_find)
    add_config_options(p, LRFindConfig, only=LR_FIND_OPTIONS)
    p.set_defaults(config=None)

    p = command("evaluate", "score a saved model on the test images: per-class table, confusion matrix",
                cmd_evaluate)
    add_model_option(p)
    add_data_options(p)
    p.epilog = ("Without data options, the data set the model was trained on, where it is a known one; a model "
                "trained on a folder is scored with --data DIR.")
    p.add_argument("--threads", type=thread_count, default=0, metavar="N",
                   help="CPU threads (default: 0, one per core)")
    p.add_argument("--out", help="also write the report, per-class table and confusion matrix here")
    p.add_argument("--force", action="store_true",
                   help="replace the files of an earlier evaluation in --out (never the model)")

    p = command("predict", "predict the class of image files (PNG, JPEG, WebP, BMP, GIF, TIFF)", cmd_predict)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of them")
    add_model_option(p)
    add_image_options(p)
    output = p.add_mutually_exclusive_group()
    output.add_argument("--json", dest="format", action="store_const", const="json", default="text",
                        help="one JSON document on stdout")
    output.add_argument("--csv", dest="format", action="store_const", const="csv", help="CSV on stdout")
    p.add_argument("--save-preprocessed", metavar="DIR",
                   help="also save the 28x28 images the model saw here (where the object was turned upright, "
                        "also <name>-other-view.png: the view the answer did not come from)")
    p.add_argument("--force", action="store_true",
                   help="replace files already in --save-preprocessed (never an input image)")
    add_min_confidence_option(p)

    p = command("explain", "heat maps of where in each image the model found its evidence", cmd_explain)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of them")
    add_model_option(p)
    add_image_options(p)
    p.add_argument("--out", default="explanations",
                   help="folder for one PNG per image, <index>-<name>.png (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="replace files already in --out (never an input)")
    p.add_argument("--json", action="store_true",
                   help="one JSON document on stdout: predictions, picture paths and 28x28 heat maps")

    p = command("report", "an HTML report of a run (of a sweep or a tune: its points compared); of several runs, "
                "one comparing them", cmd_report)
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (of cv, train, sweep, tune or evaluate "
                   "--out)")
    p.add_argument("--out", help="the HTML file to write (default: RUN/report.html; for several runs "
                   "<timestamp>-compare.html in the folder that holds them)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing file at --out (never a file of the runs)")
    add_config_options(p, TrainConfig, only=("data_dir",))
    p.set_defaults(data_dir=None)

    p = command("serve", "web demo and JSON API (page at /, API docs at /docs)", cmd_serve)
    add_model_option(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 serves the network (default: %(default)s)")
    p.add_argument("--port", type=port_number, default=8000, help="TCP port to listen on (default: %(default)s)")
    p.add_argument("--allowed-host", dest="allowed_hosts", action="append", default=[], metavar="NAME",
                   help="also answer requests addressed to NAME (repeatable; '*': any name). By default only "
                        "IP addresses, localhost and --host are: a web page could otherwise make a name of its "
                        "own point here and read the answers (DNS rebinding)")
    add_min_confidence_option(p)

    p = command("calibrate", "fit a model's temperature and its threshold for `unknown` on held-out images, "
                             "into a new model file", cmd_calibrate)
    p.description = ("Fits on the first half of the model's validation split (train --val-size), measures on "
                     "the second half, and writes OUT: the same weights, with the result in its metadata. A "
                     "model trained on every training image is refused unless --fit-on-test-images is given.")
    p.add_argument("out", metavar="OUT", help="the new model file")
    p.add_argument("--fit-on-test-images", action="store_true",
                   help="fit on test images 1-5,000 instead (recorded in the file's fitted_on; reports then "
                        "measure calibration on the other test images only): for a model trained without "
                        "--val-size, where retraining is not an option")
    p.add_argument("--force", action="store_true", help="replace an existing file at OUT (never the input model)")
    add_model_option(p)
    add_data_options(p)

    p = command("export", "write a model as ONNX, checked against PyTorch with onnxruntime", cmd_export)
    p.add_argument("out", metavar="OUT", help="the ONNX file to write, e.g. model.onnx")
    p.add_argument("--force", action="store_true", help="replace an existing file at OUT")
    add_model_option(p)

    command("models", "list the registered models, their recipes, and the frontier of accuracy against "
                      "training time that `--budget` chooses from", cmd_models)
    return parser


def thread_count(text: str) -> int:
    """--threads: a whole number, 0 or more."""
    count = int(text)
    if count < 0:
        raise argparse.ArgumentTypeError(f"{count}: threads must be 0 (one per core) or more")
    return count


def port_number(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (1-65535)")
    return port


@contextlib.contextmanager
def quiet_unless_main() -> Iterator[None]:
    """Nothing on stdout or stderr unless rank 0 (or the only process): under torchrun, argument errors and
    --help once, not once a process."""
    if machine.env_rank() == 0:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def main(argv: list[str] | None = None) -> int:
    with quiet_unless_main():
        args = build_parser().parse_args(argv)  # --help and usage errors end here, before torch is imported
    if args.command in ("cv", "train"):
        machine.prepare_openmp()  # before torch is imported

    from fashion_cnn.data.fmnist import DataError
    from fashion_cnn.training import distributed

    finished = False
    try:
        status = args.func(args)
        sys.stdout.flush()  # here, not at exit, so that a reader gone away is seen below
        finished = True
    except BrokenPipeError:
        # The reader stopped early (`| head`): end quietly, as Unix tools do, with the status a shell shows
        # for a tool killed by SIGPIPE; stdout goes to /dev/null so Python's final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except distributed.Quiet:  # rank 0 reports it
        return 1
    except (DataError, ModelFileError, OSError, ValueError) as e:
        print(printable(f"fashion-cnn: error: {distributed.rank_prefix()}{e}"), file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        run_dir = getattr(e, "run_dir", None)
        if machine.env_rank() == 0:  # torchrun passes Ctrl-C on to every process: rank 0 says it once
            print("fashion-cnn: interrupted" + (f"; `fashion-cnn {args.command} --resume {run_dir}` continues "
                                               "from the last finished epoch" if run_dir else ""), file=sys.stderr)
        return 130
    finally:
        distributed.teardown(finished)
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
