"""Model files: safetensors weights plus JSON metadata, saved and loaded (`locate` finds the models
`--model` and `--init` name, and reads a file's metadata without torch)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fashion_cnn.io import (
    MODEL_FORMAT,
    ModelFileError,
    load_tensors,
    save_tensors,
)
from fashion_cnn.models.locate import init_path, model_meta
from fashion_cnn.models.registry import create_model
from fashion_cnn.version import __version__


def save_model(path: str | Path, model: torch.nn.Module, meta: dict) -> None:
    """Weights plus a JSON description (architecture, classes, preprocessing, results)."""
    save_tensors(path, model.state_dict(), {"format": MODEL_FORMAT, "version": __version__, **meta})


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild a saved model in eval mode; a file that is not a usable model fails with ModelFileError."""

    meta = model_meta(path)
    tensors = load_tensors(path)[0]
    arch = meta["architecture"]
    # test-time augmentation as the model was evaluated in training
    model = create_model(arch, num_classes=len(meta["class_names"]), tta=meta.get("tta") is True)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        raise ModelFileError(f"{path}: weights do not fit architecture {arch!r} ({str(e)[:200]})") from None
    bad = [name for name, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise ModelFileError(f"{path}: weights are not finite (NaN or infinity in {', '.join(bad[:3])}): "
                             "the training that wrote it diverged")
    return model.to(device).eval(), meta


def read_init(init: str) -> tuple[Path, nn.Module, dict]:
    """(path, model, metadata) of the --init model file; ModelFileError naming --init when unusable."""
    path = init_path(init)
    try:
        model, meta = load_model(path)
    except ModelFileError as e:
        raise ModelFileError(f"--init {e}") from None
    return path, model, meta
