"""Model files: safetensors weights plus JSON metadata, the packaged model, and the models `--model` and
`--init` name."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch
from torch import nn

from fashion_cnn.io import (
    MODEL_FORMAT,
    RUNS_ROOT,
    ModelFileError,
    load_tensors,
    save_tensors,
)
from fashion_cnn.models.registry import create_model
from fashion_cnn.version import __version__


def save_model(path: str | Path, model: torch.nn.Module, meta: dict) -> None:
    """Weights plus a JSON description (architecture, classes, preprocessing, results)."""
    save_tensors(path, model.state_dict(), {"format": MODEL_FORMAT, "version": __version__, **meta})


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild a saved model in eval mode; a file that is not a usable model fails with ModelFileError."""

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

DEFAULT_MODEL = "weights/default.safetensors"  # inside the package: the strong model (README)


# --- which model ---------------------------------------------------------------------------------

def packaged_model() -> Path | None:
    ref = resources.files(__package__).joinpath(DEFAULT_MODEL)
    return Path(str(ref)) if ref.is_file() else None


LATEST = "latest"
MODEL_RULE = (f"a model file, a run directory, or '{LATEST}' for the newest model under ./{RUNS_ROOT}/ "
              "(default: the model shipped with the package)")


def resolve_model_path(model: str | Path | None = None, runs_root: str | Path = RUNS_ROOT,
                       option: str = "--model") -> Path:
    """The model file to use: the model shipped with the package unless `model` names one, as a model
    file, a run directory (its model.safetensors) or 'latest' (the newest model.safetensors of the run
    directories under runs_root). A new run never replaces the default silently. option: the command-line
    option that named `model`, for error messages."""
    if model is None:
        packaged = packaged_model()
        if packaged is None:
            raise ModelFileError(f"the model shipped with the package is missing ({DEFAULT_MODEL}); "
                                 f"pass --model PATH, a run directory or '{LATEST}'")
        return packaged
    if str(model) == LATEST:
        candidates = sorted(Path(runs_root).glob("*/model.safetensors"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise ModelFileError(f"{option} {LATEST}: no trained model under {runs_root}/ "
                                 "(train one with `fashion-cnn train`, or give its path)")
        return candidates[-1]
    path = Path(model)
    return path / "model.safetensors" if path.is_dir() else path

PACKAGED = "packaged"  # --init packaged: the model shipped with fashion-cnn


def init_path(init: str) -> Path:
    """The model file --init names: a file, a run directory's model, or the packaged model."""

    if init == PACKAGED:
        path = packaged_model()
        if path is None:
            raise ModelFileError(f"--init {PACKAGED}: this installation of fashion-cnn has no packaged model")
        return path
    return resolve_model_path(init, option="--init")


def read_init(init: str) -> tuple[Path, nn.Module, dict]:
    """(path, model, metadata) of the --init model file; ModelFileError naming --init when unusable."""
    path = init_path(init)
    try:
        model, meta = load_model(path)
    except ModelFileError as e:
        raise ModelFileError(f"--init {e}") from None
    return path, model, meta


def init_architecture(init: str) -> str:
    """The architecture of the --init model: the run's, when --model is not given."""
    return read_init(init)[2]["architecture"]
