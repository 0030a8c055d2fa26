"""Files on disk: run directories, atomic writes, checkpoints and model files.

Everything tensor-shaped is stored as safetensors, with JSON in the header for the rest; nothing is
ever unpickled, so loading a file cannot run code from it.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save

from .version import __version__

UMASK = os.umask(0o022)
os.umask(UMASK)
RUNS_ROOT = "runs"  # where train and cv write their run directories by default (--out), and `--model latest` looks
FORMAT = "fashion-cnn-model/1"
META_KEY = "fashion_cnn"


class ModelFileError(Exception):
    """A model or checkpoint file is missing, corrupt, not ours, or of an unknown architecture."""


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write to a temp file in the same directory, then rename over the target: never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600; give the usual permissions of a new file
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_json(path: str | Path, obj) -> None:
    write_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


def csv_bytes(rows: list[dict]) -> bytes:
    """Rows of per-epoch metrics as CSV, the columns those of the first row."""
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue().encode()


def read_config(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no config.json)")
    return json.loads(path.read_text())


def new_run_dir(root: str | Path, job: str) -> Path:
    """runs/<timestamp>-<job>[-k]/, created here and never reused."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for k in range(1, 1000):
        path = Path(root) / (f"{stamp}-{job}" + (f"-{k}" if k > 1 else ""))
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a new run directory under {root}")


def start_log(run_dir: Path) -> logging.Logger:
    """Log to the terminal and to run_dir/log.txt."""
    log = logging.getLogger("fashion_cnn")
    log.setLevel(logging.INFO)
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("%(message)s"))
    logfile = logging.FileHandler(run_dir / "log.txt")
    logfile.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(console)
    log.addHandler(logfile)
    log.propagate = False
    return log


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    write_atomic(path, save(tensors, metadata={META_KEY: json.dumps(meta)}))


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelFileError(f"{path}: not a readable safetensors file ({e})") from None
    if META_KEY not in header:
        raise ModelFileError(f"{path}: a safetensors file, but not a fashion-cnn model (no metadata)")
    try:
        return tensors, json.loads(header[META_KEY])
    except ValueError:
        raise ModelFileError(f"{path}: corrupt metadata") from None


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer's state into tensors (for safetensors) and JSON."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_model(path: str | Path, model: torch.nn.Module, meta: dict) -> None:
    """Weights plus a JSON description (architecture, classes, preprocessing, results)."""
    save_tensors(path, model.state_dict(), {"format": FORMAT, "version": __version__, **meta})


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild a saved model in eval mode; a file that is not ours fails with ModelFileError."""
    from .models import create_model

    tensors, meta = load_tensors(path)
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a fashion-cnn model file (format {meta.get('format')!r})")
    arch = meta.get("architecture")
    try:
        # test-time augmentation as the model was evaluated in training
        model = create_model(arch, num_classes=len(meta.get("class_names") or range(10)),
                             tta=bool(meta.get("tta", False)))
    except ValueError as e:
        raise ModelFileError(f"{path}: {str(e).replace('model', 'architecture', 1)}") from None
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        raise ModelFileError(f"{path}: weights do not fit architecture {arch!r} ({str(e)[:200]})") from None
    return model.to(device).eval(), meta
