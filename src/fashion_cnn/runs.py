"""Files on disk: atomic writes, run directories, checkpoints and model files.

Everything tensor-shaped is stored as safetensors, with JSON in the header for the rest; nothing is
ever unpickled, so loading a file cannot run code from it. Every file is written under a temporary
name and renamed into place, and a run directory appears only once its config.json is in it.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import logging
import os
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save

from .version import __version__

UMASK = os.umask(0o022)
os.umask(UMASK)
RUNS_ROOT = "runs"  # where train and cv write their run directories by default (--out), and `--model latest` looks
MODEL_FORMAT = "fashion-cnn-model/1"
CHECKPOINT_FORMAT = "fashion-cnn-checkpoint/1"
META_KEY = "fashion_cnn"
TEMP_SUFFIX = ".tmp"

log = logging.getLogger("fashion_cnn")
# `extra` of the log lines that verbose=1 shows on the terminal (besides warnings): one per epoch, and per fold
PROGRESS_LINE = {"progress_line": True}
VERBOSE = (0, 1, 2)  # the jobs' terminal output: nothing; a line per epoch; the CLI's full log


class ModelFileError(Exception):
    """A model or checkpoint file is missing, corrupt, not ours, or of an unknown architecture."""


class RunError(ValueError):
    """A run directory that cannot be used: not a run, another job's run, or in use by another process."""


# --- atomic files -----------------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed over `path` when the block ends without an
    error, removed when it fails or is interrupted. Readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600; give the usual permissions of a new file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB pieces: what model metadata and reports record."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write bytes to path through atomic_path: never half a file."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def check_output_file(path: str | Path, force: bool = False, inputs: tuple[str | Path, ...] = ()) -> Path:
    """Refuse, before any work, a user-named output file that write_atomic must not or cannot replace:
    one of the inputs, a folder, a symbolic link, a FIFO, device or socket, an existing file unless
    force, or a place that cannot be written (see check_output_dir). ValueError with one line."""
    path = Path(path)
    try:
        found = path.lstat()
    except OSError:  # missing, or under a file that check_output_dir names
        found = None
    if found is not None:
        if stat.S_ISDIR(found.st_mode):
            raise ValueError(f"{path}: a folder; name a file to write")
        if stat.S_ISLNK(found.st_mode):
            raise ValueError(f"{path}: a symbolic link; refusing to replace it")
        if not stat.S_ISREG(found.st_mode):
            raise ValueError(f"{path}: not a regular file (a FIFO, device or socket); refusing to replace it")
        if same := next((i for i in inputs if os.path.exists(i) and os.path.samefile(path, i)), None):
            raise ValueError(f"{path}: is the input {same}; choose another output")
        if not force:
            raise ValueError(f"{path}: already exists; --force replaces it")
    check_output_dir(path.parent)
    return path


def check_output_dir(path: str | Path) -> Path:
    """Refuse, before any work, a folder to write into (created when missing, as write_atomic does) that
    cannot be: a file at it or at a parent, or a nearest existing folder where no file can be made (read-
    only, no permission). The test is a real file made and removed there: even root cannot write to a
    read-only mount. ValueError with one line."""
    path = Path(path)
    existing = next(p for p in (path, *path.parents) if os.path.lexists(p))
    if not existing.is_dir():
        raise ValueError(f"{existing}: a file, not a folder; cannot write {path}")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".fashion-cnn-probe-")
    except OSError as e:
        raise ValueError(f"{existing}: cannot write here ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(probe)
    return path


def parse_json(text: str | bytes):
    """json.loads for untrusted text, where nesting too deep for the parser is a ValueError like any
    other malformed JSON (json.loads raises RecursionError)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def write_json(path: str | Path, obj) -> None:
    """obj as indented JSON, written atomically."""
    write_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


def remove_stale_temps(directory: Path) -> list[Path]:
    """Delete the temporary files that a killed writer left in directory (only safe where no other
    process writes: a run directory whose lock we hold)."""
    stale = [p for p in directory.glob(f".*{TEMP_SUFFIX}") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def csv_bytes(rows: list[dict]) -> bytes:
    """Rows of per-epoch metrics as CSV, the columns those of the first row."""
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue().encode()


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


# --- tensors, checkpoints and model files ----------------------------------------------------------------

def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Tensors as safetensors with `meta` as JSON in the header, written atomically."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    write_atomic(path, save(tensors, metadata={META_KEY: json.dumps(meta)}))


SAFETENSORS_ERRORS = (SafetensorError, OSError, ValueError, RuntimeError)  # what a bad file makes safetensors raise


def load_meta(path: str | Path) -> dict:
    """The JSON metadata of a fashion-cnn safetensors file (model or checkpoint), without reading its
    tensors; ModelFileError saying why not."""
    path = Path(path)
    if not path.is_file():  # safe_open would wait forever on a FIFO
        why = "no such file" if not path.exists() else "a folder, not a file" if path.is_dir() else \
            "not a regular file (a FIFO, device or socket)"
        raise ModelFileError(f"{path}: {why}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except SAFETENSORS_ERRORS as e:
        raise ModelFileError(f"{path}: not a readable safetensors file ({e})") from None
    if META_KEY not in header:
        raise ModelFileError(f"{path}: a safetensors file, but not a fashion-cnn file (no metadata)")
    try:
        meta = parse_json(header[META_KEY])
    except ValueError:
        raise ModelFileError(f"{path}: corrupt metadata") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path}: corrupt metadata (a JSON object is expected)")
    return meta


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors of a safetensors file, each copied into memory of its own, and its JSON metadata.

    safetensors maps the file and returns views at 8 + header length + offset bytes into it: 8-byte
    aligned, at a position that depends on the metadata's length. A momentum buffer restored there and
    written by a matrix product (fastpath) could take another, alignment-dependent path through MKL than
    in the uninterrupted run; torch's allocator aligns every fresh tensor to 64 bytes.
    """
    meta = load_meta(path)
    try:
        tensors = {name: t.clone() for name, t in load_file(str(path)).items()}
    except SAFETENSORS_ERRORS as e:
        raise ModelFileError(f"{path}: not a readable safetensors file ({e})") from None
    return tensors, meta


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


def save_model(path: str | Path, model: torch.nn.Module, meta: dict) -> None:
    """Weights plus a JSON description (architecture, classes, preprocessing, results)."""
    save_tensors(path, model.state_dict(), {"format": MODEL_FORMAT, "version": __version__, **meta})


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild a saved model in eval mode; a file that is not a usable model fails with ModelFileError."""
    from .models import create_model

    tensors, meta = load_tensors(path)
    if meta.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{path}: not a fashion-cnn model file (format {meta.get('format')!r})")
    names = meta.get("class_names")
    if not (isinstance(names, list) and len(names) >= 2 and all(isinstance(n, str) and n for n in names)):
        raise ModelFileError(f"{path}: corrupt metadata (class_names must list at least 2 names)")
    arch = meta.get("architecture")
    try:
        # test-time augmentation as the model was evaluated in training
        model = create_model(arch, num_classes=len(names), tta=meta.get("tta") is True)
    except ValueError as e:
        raise ModelFileError(f"{path}: {str(e).replace('model', 'architecture', 1)}") from None
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        raise ModelFileError(f"{path}: weights do not fit architecture {arch!r} ({str(e)[:200]})") from None
    bad = [name for name, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise ModelFileError(f"{path}: weights are not finite (NaN or infinity in {', '.join(bad[:3])}): "
                             "the training that wrote it diverged")
    return model.to(device).eval(), meta
