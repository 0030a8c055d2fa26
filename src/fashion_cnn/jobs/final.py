"""The final-model job: train on all training images, test once, save the model and its reports."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from fashion_cnn import tensorboard_log
from fashion_cnn.config import TrainConfig, duration_seconds
from fashion_cnn.data.fmnist import Dataset
from fashion_cnn.evaluation import calibration
from fashion_cnn.evaluation.inference import predict_logits
from fashion_cnn.evaluation.metrics import format_scores, score
from fashion_cnn.io import (
    csv_bytes,
    write_atomic,
    write_json,
)
from fashion_cnn.jobs.common import (
    Out,
    job_config,
    job_data,
    log_class_counts,
    machine_name,
    model_metadata,
    start_job,
    testable,
)
from fashion_cnn.jobs.evaluate import write_reports
from fashion_cnn.models.card import model_card
from fashion_cnn.models.files import save_model
from fashion_cnn.reporting.plots import learning_curves, save_figure
from fashion_cnn.reporting.report import write_report
from fashion_cnn.training import distributed
from fashion_cnn.training.loop import History, TrainState, fit, holdout_split, limited
from fashion_cnn.training.runs import (
    check_verbose,
)
from fashion_cnn.version import __version__

log = logging.getLogger("fashion_cnn")


@dataclass
class TrainResult:
    """What `train_final` made: the model (in eval mode), its per-epoch history, the test report and files."""

    run_dir: Path | None  # None for a job run with out=None, which kept nothing on disk
    model: torch.nn.Module
    history: History
    test: dict  # evaluate.evaluate_model's report: accuracy, loss, confusion matrix, per-class scores
    best_epoch: int | None = None  # under early stopping, the epoch whose weights were kept

    @property
    def model_path(self) -> Path | None:
        return self.run_dir and self.run_dir / "model.safetensors"

    @property
    def test_accuracy(self) -> float:
        return self.test["accuracy"]


def train_final(cfg: TrainConfig | None = None, resume: str | Path | None = None,
                data: Dataset | None = None, *, out: Out = ..., verbose: int = 1,
                time_limit: float | None = None) -> TrainResult:
    """Train on the whole training set (less --val-size), evaluate once on the test set, save the model.

    resume: an interrupted train run's directory, continued with its saved config (`cfg`, if given, may
    only raise the epochs; see resumed_config). Under torchrun, the processes train the model together,
    --batch-size being the global batch (distributed.py).
    out: the folder the run directory goes in (default: cfg.out, ./runs); None keeps nothing on disk (no
    run directory, model file, checkpoint or report: the model, history and test report are in the
    result only, and an interrupted job cannot be resumed).
    verbose: what the terminal shows: 0 nothing, 1 progress bars and a line per epoch, 2 the whole log
    (the CLI's); a run directory's log.txt holds the whole log either way.
    time_limit: the seconds training may take (fit), by default all of --budget (budget.py, which also
    chooses the recipe, passes what the budget leaves once the job has started and testing is allowed for).
    """

    check_verbose(verbose)
    with distributed.agreed():  # under torchrun every process checks its options and data before any work
        cfg = job_config(TrainConfig, cfg, resume, out)
        data = testable(data) if data else job_data(cfg)
        distributed.check_global_batch(cfg.batch_size)
        train, val = limited(data.train_images, data.train_labels, cfg.limit), None
        if cfg.val_size:
            train, val = holdout_split(*train, cfg.val_size)
    distributed.check_same_config(asdict(cfg))
    distributed.check_same_data(data)
    with start_job(cfg, "train", resume, keep=out is not None, verbose=verbose) as run:
        run_dir = run.dir if run else None
        log.info((f"run directory: {run_dir}\n" if run_dir else "") + f"data: {data.source} ({len(train[0])} "
                 "training images" + (f", {len(val[0])} held out for validation)" if val else ")")
                 + f", model {cfg.model}")
        log_class_counts(train[1], data.class_names, cfg)
        ckpt = run_dir / "checkpoint.safetensors" if run_dir else None
        state = TrainState.create(cfg, data.class_names, 0, checkpoint=ckpt if run and run.resumed else None)
        if state.history:
            log.info(f"resuming after epoch {len(state.history)}")

        def write_metrics(row: dict) -> None:
            write_atomic(run_dir / "metrics.csv", csv_bytes(state.history))

        # rank 0 alone writes files, and calls fit's on_epoch
        tensorboard = run_dir / "tensorboard" if run_dir else None  # job_config refuses it without a run
        with tensorboard_log.epoch_log(cfg.tensorboard and distributed.is_main(), tensorboard) as tb:
            fit(state, cfg, train, val, keys=(0,), checkpoint=ckpt, on_epoch=[write_metrics, *tb] if run_dir else [],
                data_parallel=True, verbose=verbose,
                time_limit=duration_seconds(cfg.budget) if time_limit is None else time_limit)
        final = state.final.eval()
        logits = predict_logits(final, data.test_images, cfg.eval_batch_size,
                                desc="testing" if distributed.is_main() and verbose else None)
        report = score(logits, data.test_labels, data.class_names, data.test_parts)
        result = TrainResult(run_dir, final, state.history, report, state.best_epoch)
        seconds = sum(row["seconds"] for row in state.history)
        tested = f"test accuracy: {format_scores(report)} (training took {seconds:.0f}s)"
        if run_dir is None:
            log.info(tested)
            return result
        if not distributed.is_main():
            return result  # rank 0 writes the files
        save_figure(learning_curves({"train": state.history}, best_epochs={"train": state.best_epoch}),
                    run_dir / "learning_curves.png")
        written = write_reports(report, run_dir)
        results = {"test_accuracy": report["accuracy"], "test_macro_f1": report["macro_f1"],
                   "test_interval": report["interval"],
                   **({"test_parts": report["parts"]} if "parts" in report else {}),
                   "training_images": len(train[1]), "test_images": len(data.test_labels),
                   "val_accuracy": state.result.get("val_accuracy"), "best_epoch": state.best_epoch, "init": state.init,
                   "train_seconds": seconds,
                   "train_cpu_seconds": sum(row["cpu_seconds"] for row in state.history),
                   "machine": machine_name(next(final.parameters()).device)}
        results.update(calibration.for_validation(final, val))  # temperature and unknown threshold, in the model file
        meta = model_metadata(final, cfg, data, **results, history=state.history)
        save_model(result.model_path, final.cpu(), {**meta, "model_card": model_card({**meta, "version": __version__})})
        write_json(run_dir / "metrics.json", {**results, "history": state.history, "version": __version__})
        written.append(write_report(run_dir, data, logits=logits))
        log.info(f"{tested}\nmodel: {result.model_path}\nreports: {', '.join(str(p) for p in written)}\n"
                 f"next: fashion-cnn predict IMAGE --model {run_dir}")
    return result
