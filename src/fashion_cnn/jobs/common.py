"""What every job does first: its data, its config (resumed or new), its run directory and metadata."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, replace
from pathlib import Path
from types import EllipsisType
from typing import Iterator, Sequence

import torch

from fashion_cnn import machine
from fashion_cnn.config import TrainConfig
from fashion_cnn.data.fmnist import DataError, Dataset, class_counts
from fashion_cnn.data.folders import load_dataset, test_set_problem
from fashion_cnn.io import (
    ModelFileError,
    check_output_dir,
    load_meta,
    write_json,
)
from fashion_cnn.models.registry import count_parameters
from fashion_cnn.training import distributed
from fashion_cnn.training.finetune import check_init
from fashion_cnn.training.loop import deterministic_cudnn, resolve_device
from fashion_cnn.training.runs import (
    Run,
    no_run,
    open_run,
    read_config,
)

log = logging.getLogger("fashion_cnn")


# --- jobs: setup shared by `train` and `cv` -------------------------------------------------------------------

def load_data(data: str | None = None, classes: str | None = None, test_fraction: float = 0.2,
              data_dir: str | None = None, add_to: str | None = None, framed: bool = False) -> Dataset:
    """The data set the data options name (datasets.load_dataset), for every job alike."""
    return load_dataset(data, classes=classes, test_fraction=test_fraction, data_dir=data_dir, add_to=add_to,
                        framed=framed)


def job_data(cfg: TrainConfig) -> Dataset:
    """The data set a job's config names, refused (DataError) before any work where a model trained on it
    could not be tested."""
    return testable(load_data(cfg.data, cfg.classes, cfg.test_fraction, cfg.data_dir, cfg.add_to, cfg.framed))


def testable(data: Dataset) -> Dataset:
    """`data`, or DataError where its split left no test image (datasets.test_set_problem)."""
    if problem := test_set_problem(data):
        raise DataError(f"{data.source}: {problem}")
    return data


def training_images(limit: int | None) -> str:
    """The training images a job with this --limit trains on, in words: for the messages that name the
    final model's (`next: fashion-cnn train ...`)."""
    return "all training images" if limit is None else f"the first {limit:,} training images"


def changed_options(saved: dict, wanted: dict) -> list[str]:
    """The options of a run's config (as a dict) that `wanted` changes and a resumed run cannot take:
    all that differ, unless the one change is --epochs raised under a constant learning rate."""
    differ = [k for k in wanted if k in saved and saved[k] != wanted[k]]
    if differ == ["epochs"] and wanted["epochs"] > saved["epochs"] and saved.get("schedule") == "constant" \
            and not saved.get("warmup"):
        return []
    return differ


def changes(saved: dict, wanted: dict, names: list[str]) -> str:
    """'--lr 0.01 -> 0.5, --seed 1 -> 2', for error messages."""
    return ", ".join(f"--{k.replace('_', '-')} {saved[k]!r} -> {wanted[k]!r}" for k in names)


def resumed_config(saved: TrainConfig, wanted: TrainConfig | None) -> TrainConfig:
    """The config a resumed run continues with: the saved one. `wanted` (the options given with
    --resume) may only raise --epochs, and only where the learning rate does not depend on it."""
    if wanted is None:
        return saved
    if differ := changed_options(asdict(saved), asdict(wanted)):
        raise ValueError(f"a resumed run keeps its saved options; these differ: "
                         f"{changes(asdict(saved), asdict(wanted), differ)}. Only --epochs may grow, and only "
                         "with a constant learning rate (it shapes the schedule otherwise)")
    saved.epochs = wanted.epochs
    return saved


def check_checkpoints(run_dir: Path, cfg: TrainConfig) -> None:
    """Refuse to resume a run whose config.json (read as cfg) is not the config its checkpoints were
    trained with, as a hand edit would make it: the run would go on as a mix of two."""
    for path in sorted(run_dir.glob("checkpoint*.safetensors")):
        trained = load_meta(path).get("config")
        if not isinstance(trained, dict):
            raise ModelFileError(f"{path}: corrupt metadata (no config)")
        if differ := changed_options(trained, asdict(cfg)):
            raise ValueError(f"{run_dir / 'config.json'}: not the options {path.name} was trained with ("
                             f"{changes(trained, asdict(cfg), differ)}); a resumed run goes on with those: put "
                             "them back, or start a new run")


Out = str | Path | None | EllipsisType  # a job's `out`: ... (not given) is its config's


def job_config(cls: type, cfg: TrainConfig | None, resume: str | Path | None, out: Out = ...) -> TrainConfig:
    """The config a job runs with (resume's saved one, or cfg, or the defaults; `out`, where given, as its
    out), checked to the output folder and the device before any data is read. out=None: the job keeps nothing on
    disk, which neither resuming nor TensorBoard's event files go with."""
    if out is None and resume is not None:
        raise ValueError("resume continues a run directory: it cannot go with out=None, which writes none")
    if resume is not None:
        saved = cls.from_dict(read_config(resume), f"{Path(resume) / 'config.json'}")
        check_checkpoints(Path(resume), saved)
        cfg = resumed_config(saved, cfg)
    cfg = cfg if cfg is not None else cls()
    if out not in (None, ...):
        cfg = replace(cfg, out=str(out))
    if out is None and cfg.tensorboard:
        raise ValueError("tensorboard writes event files into the run directory: it cannot go with out=None")
    resolve_device(cfg.device)  # --device cuda on a machine without a GPU fails here
    if out is not None:
        check_output_dir(cfg.out)
    if cfg.init and resume is None:
        check_init(cfg)
    return cfg


@contextlib.contextmanager
def start_job(cfg: TrainConfig, job: str, resume: str | Path | None, keep: bool = True,
              verbose: int = 2) -> Iterator[Run | None]:
    """Open the run directory (new, or `resume`'s; none, and None for it, unless `keep`), with the
    config's CPU threads, denormals flushed on every thread (machine.flush_denormals), deterministic cuDNN
    on a GPU, and a log (on the terminal as `verbose` says, runs.VERBOSE). Under torchrun, rank 0 opens it
    and the others share it (distributed.shared_run), each process with its share of the node's cores
    unless --threads says."""
    opened = (distributed.shared_run(lambda: open_run(asdict(cfg), job, cfg.out, resume, verbose)) if keep
              else no_run(verbose))
    with (opened as run,
          machine.threads_for_job(cfg.threads or distributed.default_threads()),
          deterministic_cudnn(resolve_device(cfg.device).type == "cuda")):
        if resume and cfg.epochs != run.config["epochs"] and distributed.is_main():
            write_json(run.dir / "config.json", {"job": job, **asdict(cfg)})
            log.info(f"continuing to {cfg.epochs} epochs (the run was set to {run.config['epochs']})")
        yield run


def machine_name(device: torch.device) -> str:
    """What trained the model, for reports: the GPU, else the CPU model and the threads torch used."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    job = machine.job_threads()
    return f"{machine.cpu_model()}, {job.describe() if job else f'{torch.get_num_threads()} threads'}"


def model_metadata(model: torch.nn.Module, cfg: TrainConfig, data: Dataset, **results) -> dict:
    """What a model file says about itself: architecture, classes, input format, config, data, results."""
    return {
        "architecture": cfg.model,
        "parameters": count_parameters(model),
        "class_names": list(data.class_names),
        "input": {"shape": [1, 28, 28], "scale": "pixel / 255", "background": "dark",
                  "layout": "light object on black, centred, 28x28 grayscale"},
        "config": asdict(cfg),
        "tta": cfg.tta,  # load_model sets it on the model, so every user of the file evaluates alike
        "data": {"source": data.source, "sha256": data.checksums},
        **results,
    }


def log_class_counts(labels: torch.Tensor, class_names: Sequence[str], cfg: TrainConfig) -> None:
    """The training images per class, before training starts: an imbalance shows up front."""
    counts = class_counts(labels, len(class_names))
    line = "training images per class: " + ", ".join(f"{name} {n}" for name, n in zip(class_names, counts))
    if 0 in counts:
        line += "; none at all of " + ", ".join(name for name, n in zip(class_names, counts) if not n)
    elif max(counts) >= 2 * min(counts) and cfg.class_weights == "none":
        line += (f"; the largest class has {max(counts) / min(counts):.1f}x the images of the smallest: "
                 "--class-weights auto weighs every class alike")
    log.info(line)
