"""Command line: parses arguments and calls the Python API; no logic of its own.

Job options are generated from the config dataclasses, so --help shows each default and its reason,
and an option given on the command line is told apart from a default (what --resume and --config need).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tomllib
import types
import typing
from pathlib import Path

from .version import __version__

MAX_CONFIG_BYTES = 1_000_000  # a config file is a few hundred bytes; anything near this is not one


def parser_for(*args, **kwargs) -> argparse.ArgumentParser:
    """argparse without abbreviations: `--epoch 2` is an error, not `--epochs 2`."""
    return argparse.ArgumentParser(*args, allow_abbrev=False, **kwargs)


def option_help(field: dataclasses.Field) -> str:
    """The field's reason, its default (a model's recipe where it has one), and its valid range."""
    from .models import REGISTRY

    meta = field.metadata
    text = meta.get("help", "")
    if "fallback" in meta:
        per_model = {name: spec.recipe.get(field.name, meta["fallback"]) for name, spec in REGISTRY.items()}
        if len(set(map(repr, per_model.values()))) == 1:
            text += f" (default: {meta['fallback']})"
        else:
            text += " (default: the model's recipe: " + ", ".join(f"{k} {v}" for k, v in per_model.items()) + ")"
    elif field.default is not None:  # an unset option's meaning is in its help text
        text += f" (default: {field.default})"
    if meta.get("valid"):
        text += f"; {meta['valid']['rule']}"
    return text.replace("%", "%%")


def add_config_options(parser: argparse.ArgumentParser, config_cls: type, only: tuple[str, ...] = ()) -> None:
    """One option per config field (or the fields named in `only`); unset options stay out of the
    parsed namespace, so the job can tell what was given."""
    from .models import list_models

    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        if only and f.name not in only:
            continue
        kind = hints[f.name]
        if isinstance(kind, types.UnionType):  # "int | None": the non-None member parses the value
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        flag = "--" + f.name.replace("_", "-")
        choices = list_models() if f.name == "model" else f.metadata.get("choices")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=option_help(f))
        else:
            parser.add_argument(flag, type=kind, default=argparse.SUPPRESS, choices=choices,
                                metavar=None if choices else f.name.upper(), help=option_help(f))


def read_config_file(path: str) -> dict:
    """--config: options from a TOML file, or a run's config.json."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    raw = file.read_bytes()[:MAX_CONFIG_BYTES + 1]
    if len(raw) > MAX_CONFIG_BYTES:
        raise ValueError(f"--config {path}: over {MAX_CONFIG_BYTES:,} bytes, not a config file")
    try:
        text = raw.decode()
        return json.loads(text) if file.suffix == ".json" else tomllib.loads(text)
    except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise ValueError(f"--config {path}: not valid {'JSON' if file.suffix == '.json' else 'TOML'} ({e})") from None


def job_config_from_args(config_cls: type, args: argparse.Namespace):
    """The config the options ask for: --config's values, then the options given on the command line.
    With --resume, they are laid over the run's saved config, so only real changes show as differences."""
    from .runs import read_config

    names = {f.name for f in dataclasses.fields(config_cls)}
    given = {name: getattr(args, name) for name in names if hasattr(args, name)}
    values = read_config_file(args.config) if args.config else {}
    if args.resume is not None:
        if not values and not given:
            return None  # the saved config as it is
        values = {**read_config(args.resume), **values}
    return config_cls.from_dict({**values, **given}, f"--config {args.config}" if args.config else None)


def add_job_options(parser: argparse.ArgumentParser, config_cls: type) -> None:
    add_config_options(parser, config_cls)
    parser.add_argument("--config", metavar="FILE", help="take options from a TOML file or a run's config.json; "
                        "options given here override it")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run in RUN_DIR with its "
                        "saved options (only --epochs may grow, with a constant learning rate)")


DATA_OPTIONS = ("data", "classes", "test_fraction", "data_dir", "add_to")


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """The data options of the jobs, for the commands that only read data."""
    from .train import TrainConfig

    add_config_options(parser, TrainConfig, only=DATA_OPTIONS)
    parser.set_defaults(**{name: TrainConfig.__dataclass_fields__[name].default for name in DATA_OPTIONS})


def load_job_data(args: argparse.Namespace):
    from .train import load_data

    return load_data(**{name: getattr(args, name) for name in DATA_OPTIONS})


def cmd_data(args: argparse.Namespace) -> None:
    from .datasets import describe

    data = load_job_data(args)
    print("\n".join(describe(data)))
    if args.samples:
        from .plots import samples_figure, save_figure

        save_figure(samples_figure(data.train_images, data.train_labels, data.class_names), args.samples)
        print(f"sample grid saved to {args.samples}")


def cmd_cv(args: argparse.Namespace) -> None:
    from .crossval import CVConfig, cross_validate

    cross_validate(job_config_from_args(CVConfig, args), resume=args.resume)


def cmd_train(args: argparse.Namespace) -> None:
    from .train import TrainConfig, train_final

    train_final(job_config_from_args(TrainConfig, args), resume=args.resume)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .evaluate import evaluate_model, format_confusion_matrix, format_per_class, format_scores, write_reports
    from .predict import resolve_model_path
    from .runs import load_model

    path = resolve_model_path(args.model)
    model, meta = load_model(path)
    data = load_job_data(args)
    if meta["class_names"] != list(data.class_names):
        raise ValueError(f"{path} predicts other classes ({', '.join(meta['class_names'])}) than "
                         f"{data.source} has ({', '.join(data.class_names)})")
    print(f"model: {path} ({meta['architecture']})")
    report = evaluate_model(model, data.test_images, data.test_labels, meta["class_names"], parts=data.test_parts)
    print(format_per_class(report) + "\n\n" + format_confusion_matrix(report))
    print(f"test accuracy: {format_scores(report)}")
    if args.out:
        paths = write_reports(report, Path(args.out))
        print("written: " + ", ".join(map(str, paths)))


def cmd_predict(args: argparse.Namespace) -> int:
    from .predict import Predictor, as_json, format_line, save_preprocessed, write_csv

    predictor = Predictor(args.model)
    predictions = predictor.predict(args.images, top_k=args.top_k,
                                    invert=False if args.no_invert else None, crop=not args.no_crop)
    print(predictor.describe(), file=sys.stdout if args.format == "text" else sys.stderr)
    if args.format == "json":
        print(json.dumps(as_json(predictions, predictor), indent=2))
    elif args.format == "csv":
        write_csv(predictions, predictor.class_names, sys.stdout)
    for p in predictions:
        if p.error:
            print(f"fashion-cnn: error: {p.source}: {p.error}", file=sys.stderr)
        elif args.format == "text":
            print(format_line(p))
    if args.save_preprocessed:
        saved = save_preprocessed(predictions, args.save_preprocessed)
        print(f"{len(saved)} preprocessed images saved to {args.save_preprocessed}", file=sys.stderr)
    return 1 if any(p.error for p in predictions) else 0


def cmd_serve(args: argparse.Namespace) -> None:
    from .serve import run

    run(args.model, host=args.host, port=args.port)


def cmd_export(args: argparse.Namespace) -> None:
    from .export import export_onnx
    from .predict import resolve_model_path

    report = export_onnx(resolve_model_path(args.model), args.out)
    print(f"saved {report['out']}: input images (N, 28, 28) float32 in [0, 1], "
          "output probabilities (N, classes)")
    print(f"checked with onnxruntime on {report['check_images']}: same classes as PyTorch, "
          f"largest probability difference {report['max_abs_diff']:.1e} (tolerance {report['tolerance']:g})")


def cmd_models(args: argparse.Namespace) -> None:
    from .models import REGISTRY, count_parameters, create_model

    for spec in REGISTRY.values():
        print(f"{spec.name:<10} {count_parameters(create_model(spec.name)):>10,} parameters  "
              f"{spec.description}")
        if spec.recipe:
            print(f"{'':<10} recipe: " + ", ".join(f"{k}={v}" for k, v in spec.recipe.items()))


def add_model_option(parser: argparse.ArgumentParser) -> None:
    """--model, as predict.resolve_model_path reads it."""
    parser.add_argument("--model", help="model file or run directory (default: newest under runs/, "
                        "else the packaged model)")


def build_parser() -> argparse.ArgumentParser:
    from .crossval import CVConfig
    from .train import TrainConfig

    parser = parser_for(prog="fashion-cnn",
                        description="Train, evaluate and use CNN image classifiers on Fashion-MNIST.")
    parser.add_argument("--version", action="version", version=f"fashion-cnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, func) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, allow_abbrev=False)
        p.set_defaults(func=func)
        return p

    p = command("data", "show where the data came from, its class counts and import findings", cmd_data)
    add_data_options(p)
    p.add_argument("--samples", metavar="PNG", help="also save a grid of sample images per class")

    add_job_options(command("cv", "k-fold cross-validation with learning curves", cmd_cv), CVConfig)
    add_job_options(command("train", "train the final model on all training images, test it once, save it",
                            cmd_train), TrainConfig)

    p = command("evaluate", "score a saved model on the test images: per-class table, confusion matrix",
                cmd_evaluate)
    add_model_option(p)
    add_data_options(p)
    p.add_argument("--out", help="also write the report, per-class table and confusion matrix here")

    p = command("predict", "predict the class of image files (PNG, JPEG, WebP, BMP, GIF, TIFF)", cmd_predict)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of them")
    add_model_option(p)
    p.add_argument("--top-k", type=int, default=3,
                   help="how many classes to list per image (default: %(default)s)")
    output = p.add_mutually_exclusive_group()
    output.add_argument("--json", dest="format", action="store_const", const="json", default="text",
                        help="one JSON document on stdout")
    output.add_argument("--csv", dest="format", action="store_const", const="csv", help="CSV on stdout")
    p.add_argument("--no-invert", action="store_true",
                   help="never invert (default: invert when the border is light, as in photos)")
    p.add_argument("--no-crop", action="store_true",
                   help="keep the whole picture instead of cropping to the object")
    p.add_argument("--save-preprocessed", metavar="DIR", help="also save the 28x28 images the model saw here")

    p = command("serve", "web demo and JSON API (page at /, API docs at /docs)", cmd_serve)
    add_model_option(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 serves the network (default: %(default)s)")
    p.add_argument("--port", type=port_number, default=8000, help="(default: %(default)s)")

    p = command("export", "write a model as ONNX, checked against PyTorch with onnxruntime", cmd_export)
    p.add_argument("out", metavar="OUT", help="the ONNX file to write, e.g. model.onnx")
    add_model_option(p)

    command("models", "list the registered models and their recipes", cmd_models)
    return parser


def port_number(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (1-65535)")
    return port


def main(argv: list[str] | None = None) -> int:
    from .data import DataError
    from .runs import ModelFileError

    args = build_parser().parse_args(argv)
    try:
        status = args.func(args)
    except (DataError, ModelFileError, OSError, ValueError) as e:
        print(f"fashion-cnn: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        run_dir = getattr(e, "run_dir", None)
        print("fashion-cnn: interrupted" + (f"; `fashion-cnn {args.command} --resume {run_dir}` continues "
                                           "from the last finished epoch" if run_dir else ""), file=sys.stderr)
        return 130
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
