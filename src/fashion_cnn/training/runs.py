"""Run directories: each job's own folder (config.json first, a lock, log.txt), its checkpoints, and how
a job's output reaches the terminal (verbose) and the log.

Checkpoints are safetensors with JSON in the header (io.save_tensors): nothing is ever unpickled, so
loading one cannot run code from it. A run directory appears only once its config.json is in it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator

import torch

from fashion_cnn.io import (
    TEMP_SUFFIX,
    ModelFileError,
    load_tensors,
    parse_json,
    remove_stale_temps,
    save_tensors,
    write_json,
)
from fashion_cnn.version import __version__

CHECKPOINT_FORMAT = "fashion-cnn-checkpoint/1"

log = logging.getLogger("fashion_cnn")
# `extra` of the log lines that verbose=1 shows on the terminal (besides warnings): one per epoch, and per fold
PROGRESS_LINE = {"progress_line": True}
VERBOSE = (0, 1, 2)  # the jobs' terminal output: nothing; a line per epoch; the CLI's full log


class RunError(ValueError):
    """A run directory that cannot be used: not a run, another job's run, or in use by another process."""


# --- run directories ----------------------------------------------------------------------------------

def read_config(run_dir: str | Path) -> dict:
    """A run directory's config.json, or RunError saying why it is not a run directory."""
    path = Path(run_dir) / "config.json"
    if not Path(run_dir).is_dir():
        why = "a file, not a folder" if os.path.lexists(run_dir) else "no such folder"
        raise RunError(f"{run_dir}: not a run directory ({why})")
    if not path.is_file():
        raise RunError(f"{run_dir}: not a run directory (no config.json)")
    try:
        config = parse_json(path.read_text())
    except (OSError, ValueError) as e:
        raise RunError(f"{path}: unreadable ({e})") from None
    if not isinstance(config, dict):
        raise RunError(f"{path}: not a run's config (a JSON object is expected)")
    return config


def create_run_dir(root: str | Path, job: str, config: dict) -> Path:
    """root/<timestamp>-<job>[-k]/ with config.json already inside: built under a temporary name and
    renamed into place, so a run directory never exists without its config, and none is reused."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=root, prefix=f".{job}.", suffix=TEMP_SUFFIX))
    try:
        write_json(building / "config.json", {"job": job, **config})
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for k in range(1, 1000):
            path = root / (f"{stamp}-{job}" + (f"-{k}" if k > 1 else ""))
            if path.exists():
                continue
            try:
                os.rename(building, path)  # fails if another process took the name meanwhile
                return path
            except OSError:
                continue
        raise RunError(f"could not create a new run directory under {root}")
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise


def lock_run_dir(run_dir: Path) -> IO:
    """An exclusive lock on the run directory for as long as the returned file stays open: two
    processes never train the same run."""
    handle = open(run_dir / ".lock", "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise RunError(f"{run_dir}: in use by another fashion-cnn process") from None
    return handle


def check_verbose(verbose: int) -> None:
    """ValueError for a `verbose` that is none of VERBOSE."""
    if verbose not in VERBOSE:
        raise ValueError(f"verbose must be 0 (silent), 1 (a line per epoch) or 2 (the full log), not {verbose!r}")


def start_log(run_dir: Path | None, verbose: int = 2) -> None:
    """Log to the terminal as `verbose` (VERBOSE) says, and all of it to run_dir/log.txt when there is a run."""
    check_verbose(verbose)
    log.setLevel(logging.INFO)
    stop_log()
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("%(message)s"))
    if verbose < 2:  # the handler stays even when silent: fit then adds no console of its own
        console.addFilter(lambda record: verbose == 1 and (record.levelno >= logging.WARNING
                                                           or getattr(record, "progress_line", False)))
    log.addHandler(console)
    if run_dir is not None:
        logfile = logging.FileHandler(run_dir / "log.txt")
        logfile.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(logfile)
    log.propagate = False


def stop_log() -> None:
    """Detach and close the handlers start_log added."""
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()


@dataclass
class Run:
    """An open run directory: its saved config, and the lock that keeps other processes out."""

    dir: Path
    config: dict
    resumed: bool
    lock: IO = field(repr=False)


@contextlib.contextmanager
def no_run(verbose: int = 2) -> Iterator[None]:
    """open_run's stand-in for a job that keeps nothing on disk: only the terminal log, for the block."""
    start_log(None, verbose)
    try:
        yield None
    finally:
        stop_log()


@contextlib.contextmanager
def open_run(config: dict, job: str, root: str | Path, resume: str | Path | None = None,
             verbose: int = 2) -> Iterator[Run]:
    """A new run directory holding `config`, or the interrupted run `resume` with its saved config;
    locked and logged to for the length of the block (on the terminal as `verbose` says). An
    interruption inside the block carries the run directory (`run_dir` on the KeyboardInterrupt), so
    the message can name it."""
    check_verbose(verbose)  # before a run directory is made
    if resume is not None:
        run_dir = Path(resume)
        saved = read_config(run_dir)
        if saved.get("job") != job:
            raise RunError(f"{run_dir}: a {saved.get('job', 'unknown')!r} run, not a {job!r} run; "
                           f"resume it with `fashion-cnn {saved.get('job')} --resume`")
        lock = lock_run_dir(run_dir)
        remove_stale_temps(run_dir)
        run = Run(run_dir, {k: v for k, v in saved.items() if k != "job"}, True, lock)
    else:
        run_dir = create_run_dir(root, job, config)
        run = Run(run_dir, config, False, lock_run_dir(run_dir))
    start_log(run.dir, verbose)
    try:
        yield run
    except KeyboardInterrupt as e:
        e.run_dir = run.dir
        raise
    finally:
        stop_log()
        run.lock.close()


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer's state into tensors (for safetensors) and JSON."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """The inverse of optimizer_tensors."""
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


Saveable = torch.nn.Module | torch.optim.Optimizer


def save_checkpoint(path: str | Path, parts: dict[str, Saveable | None], progress: dict, config: dict) -> None:
    """Named modules and optimizers (model, EMA, optimizer, ...), the job's progress and its config in
    one file, replaced atomically: a kill loses one epoch at most."""
    tensors, meta = {}, {"format": CHECKPOINT_FORMAT, "version": __version__, "config": config,
                         "progress": progress, "optimizers": {}}
    for name, part in parts.items():
        if isinstance(part, torch.optim.Optimizer):
            part_tensors, meta["optimizers"][name] = optimizer_tensors(part)
        elif part is not None:
            part_tensors = part.state_dict()
        else:
            continue
        tensors.update({f"{name}.{k}": v for k, v in part_tensors.items()})
    save_tensors(path, tensors, meta)


def load_checkpoint(path: str | Path, parts: dict[str, Saveable | None]) -> dict:
    """Restore the named parts saved by save_checkpoint; returns the saved progress."""
    tensors, meta = load_tensors(path)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(f"{path}: not a fashion-cnn checkpoint (format {meta.get('format')!r})")
    for name, part in parts.items():
        if part is None:
            continue
        prefix = name + "."
        own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            if isinstance(part, torch.optim.Optimizer):
                restore_optimizer(part, own, meta["optimizers"][name])
            else:
                part.load_state_dict(own)
        except (KeyError, ValueError, RuntimeError) as e:
            raise ModelFileError(f"{path}: its {name!r} does not fit this run ({str(e)[:200]})") from None
    return meta["progress"]
