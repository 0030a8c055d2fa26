"""The evaluate job: score a model file on a data set's test images and write its reports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fashion_cnn.data.fmnist import Dataset
from fashion_cnn.data.folders import load_model_data
from fashion_cnn.evaluation.inference import predict_logits
from fashion_cnn.evaluation.metrics import format_confusion_matrix, format_per_class, score
from fashion_cnn.io import check_output_file, write_atomic, write_json
from fashion_cnn.models.files import load_model
from fashion_cnn.reporting.plots import confusion_matrix_figure, save_figure
from fashion_cnn.reporting.report import PREDICTIONS, REPORT, write_report

TABLES = ("per_class.txt", "test_report.json", "confusion_matrix.png")  # what write_reports writes, in order


def write_reports(report: dict, out_dir: Path) -> list[Path]:
    """Save the per-class table, the full report and a confusion-matrix plot in out_dir; returns their paths."""

    paths = [out_dir / name for name in TABLES]
    write_atomic(paths[0], (format_per_class(report) + "\n\n" + format_confusion_matrix(report) + "\n").encode())
    write_json(paths[1], report)
    save_figure(confusion_matrix_figure(report["confusion_matrix"], [row["class"] for row in report["per_class"]]),
                paths[2])
    return paths


@dataclass
class Evaluation:
    """What `evaluate` found: the report, and the files it wrote."""

    model_path: Path
    meta: dict
    report: dict
    written: list[Path]  # the tables and the confusion matrix
    html: Path | None  # the HTML report


def check_outputs(out: str | Path, model_path: str | Path, force: bool = False) -> Path:
    """Refuse, before any work, an `evaluate --out` folder whose files cannot be written, or that holds
    files of an earlier evaluation (or run) which only force replaces; never the model evaluated
    (runs.check_output_file on each file evaluate_file writes there)."""

    for name in (*TABLES, REPORT, PREDICTIONS):
        check_output_file(Path(out) / name, force, inputs=(model_path,))
    return Path(out)


def evaluate_file(model_path: Path, data: Dataset | None = None, out: Path | None = None,
                  force: bool = False) -> Evaluation:
    """The `evaluate` job: score a model file on data's test set (default: the data set the model was
    trained on, where it is a known one: datasets.load_model_data); with `out`, write the tables, the
    confusion matrix and the HTML report there (files already there are replaced only with force)."""

    if out is not None:
        check_outputs(out, model_path, force)
    model, meta = load_model(model_path)
    if data is None:
        data = load_model_data(meta, model_path)
    if meta["class_names"] != list(data.class_names):
        raise ValueError(f"{model_path} predicts other classes ({', '.join(meta['class_names'])}) than "
                         f"{data.source} has ({', '.join(data.class_names)})")
    logits = predict_logits(model, data.test_images, desc="evaluating")
    report = score(logits, data.test_labels, meta["class_names"], data.test_parts)
    if out is None:
        return Evaluation(model_path, meta, report, [], None)
    written = write_reports(report, out)
    return Evaluation(model_path, meta, report, written, write_report(out, data, model_path, logits=logits))
