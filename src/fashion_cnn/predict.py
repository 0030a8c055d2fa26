"""Prediction on new images: which model to use, image preprocessing, inference."""

from __future__ import annotations

from pathlib import Path

from .runs import ModelFileError

RUNS_DIR = Path("runs")


def resolve_model_path(model: str | Path | None = None, runs_dir: Path = RUNS_DIR) -> Path:
    """A model file from a file or run directory; by default the newest final model under runs/."""
    if model is not None:
        path = Path(model)
        return path / "model.safetensors" if path.is_dir() else path
    candidates = sorted(runs_dir.glob("*/model.safetensors"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise ModelFileError(f"no model given and none found under {runs_dir}/; "
                             "train one with `fashion-cnn train` or pass --model")
    return candidates[-1]
