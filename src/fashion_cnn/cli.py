"""Command line: parses arguments and calls the Python API; no logic of its own.

Job options are generated from the config dataclasses, so --help shows each default and its reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from pathlib import Path

from .version import __version__


def add_config_options(parser: argparse.ArgumentParser, config_cls: type) -> None:
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        kind = hints[f.name]
        if isinstance(kind, types.UnionType):  # "int | None": the non-None member parses the value
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        flag = "--" + f.name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                                help=f.metadata.get("help", "") + " (default: %(default)s)")
        else:
            parser.add_argument(flag, type=kind, default=f.default, metavar=f.name.upper(),
                                help=f.metadata.get("help", "") + " (default: %(default)s)")


def config_from_args(config_cls: type, args: argparse.Namespace):
    return config_cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)})


def cmd_data(args: argparse.Namespace) -> None:
    from .data import CLASS_NAMES, class_counts, load_fashion_mnist

    data = load_fashion_mnist(args.data_dir)
    print(f"source: {data.source}")
    print(f"train: {len(data.train_images)} images, test: {len(data.test_images)} images, 28x28 uint8")
    print(f"{'class':<12} {'train':>6} {'test':>6}")
    for name, n_train, n_test in zip(CLASS_NAMES, class_counts(data.train_labels),
                                     class_counts(data.test_labels)):
        print(f"{name:<12} {n_train:>6} {n_test:>6}")
    if args.samples:
        from .plots import plot_samples

        plot_samples(data.train_images, data.train_labels, Path(args.samples))
        print(f"sample grid saved to {args.samples}")


def cmd_cv(args: argparse.Namespace) -> None:
    from .crossval import CVConfig, cross_validate

    cross_validate(config_from_args(CVConfig, args), resume=args.resume)


def cmd_train(args: argparse.Namespace) -> None:
    from .train import TrainConfig, train_final

    train_final(config_from_args(TrainConfig, args), resume=args.resume)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .data import load_fashion_mnist
    from .evaluate import evaluate_model, write_reports
    from .predict import describe_model, resolve_model_path
    from .runs import load_model

    path = resolve_model_path(args.model)
    model, meta = load_model(path)
    print(describe_model(path, meta), flush=True)
    data = load_fashion_mnist(args.data_dir)
    report = evaluate_model(model, data.test_images, data.test_labels)
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
        write_reports(report, out)
    else:
        from .evaluate import format_per_class

        print(format_per_class(report))
    print(f"test accuracy: {100 * report['accuracy']:.2f}% on {len(data.test_images)} images")


def cmd_predict(args: argparse.Namespace) -> int:
    import json

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

    path = resolve_model_path(args.model)
    print(f"model: {path}", flush=True)
    report = export_onnx(path, args.out)
    print(f"saved {report['out']}: input images (N, 28, 28) float32 in [0, 1], "
          "output probabilities (N, 10)")
    print(f"checked with onnxruntime on {report['check_images']}: same classes as PyTorch, "
          f"largest probability difference {report['max_abs_diff']:.1e} (tolerance {report['tolerance']:g})")


def cmd_models(args: argparse.Namespace) -> None:
    from .models import REGISTRY, count_parameters, create_model

    for spec in REGISTRY.values():
        print(f"{spec.name:<10} {count_parameters(create_model(spec.name)):>10,} parameters  "
              f"{spec.description}")
        if spec.recipe:
            print(f"{'':<10} recipe: " + ", ".join(f"{k}={v}" for k, v in spec.recipe.items()))


def add_resume_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run in RUN_DIR "
                        "(its saved config is used; other options are ignored)")


def add_model_option(parser: argparse.ArgumentParser) -> None:
    """--model, as predict.resolve_model_path reads it."""
    from .predict import MODEL_RULE

    parser.add_argument("--model", metavar="PATH|RUN_DIR|latest", help=MODEL_RULE)


def build_parser() -> argparse.ArgumentParser:
    from .crossval import CVConfig
    from .train import TrainConfig

    parser = argparse.ArgumentParser(
        prog="fashion-cnn", description="Train, evaluate and use CNN image classifiers on Fashion-MNIST.")
    parser.add_argument("--version", action="version", version=f"fashion-cnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("data", help="show where the data came from and its class counts")
    p.add_argument("--data-dir", help="Fashion-MNIST directory (default: search, then download)")
    p.add_argument("--samples", metavar="PNG", help="also save a grid of sample images per class")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("cv", help="k-fold cross-validation with learning curves")
    add_config_options(p, CVConfig)
    add_resume_option(p)
    p.set_defaults(func=cmd_cv)

    p = sub.add_parser("train", help="train the final model on all training images, test it once, save it")
    add_config_options(p, TrainConfig)
    add_resume_option(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="score a saved model on the 10,000 test images")
    add_model_option(p)
    p.add_argument("--data-dir", help="Fashion-MNIST directory (default: search, then download)")
    p.add_argument("--out", help="also write the report, per-class table and confusion matrix here")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="predict the class of image files (PNG, JPEG, WebP, BMP, GIF, TIFF)")
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
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("serve", help="web demo and JSON API (page at /, API docs at /docs)")
    add_model_option(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 serves the network (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("export", help="write a model as ONNX, checked against PyTorch with onnxruntime")
    p.add_argument("out", metavar="OUT", help="the file to write, e.g. model.onnx")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="(default: %(default)s)")
    add_model_option(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("models", help="list the registered models")
    p.set_defaults(func=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .data import DataError
    from .runs import ModelFileError

    args = build_parser().parse_args(argv)
    try:
        status = args.func(args)
    except (DataError, ModelFileError, FileNotFoundError, ValueError) as e:
        print(f"fashion-cnn: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fashion-cnn: interrupted; `--resume RUN_DIR` continues from the last finished epoch",
              file=sys.stderr)
        return 130
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
