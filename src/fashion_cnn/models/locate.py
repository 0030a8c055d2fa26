"""Which model file a command means, and what the file says of itself, without torch: the model shipped with
the package, a run directory's, the newest under runs/ ('latest'), --init's; a model file's metadata,
checked. The option schema (`config`) reads --init's architecture here; `files` loads the weights."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fashion_cnn.io import (
    MODEL_FORMAT,
    RUNS_ROOT,
    ModelFileError,
    load_meta,
)
from fashion_cnn.models.specs import get_spec

DEFAULT_MODEL = "weights/default.safetensors"  # inside the package: the strong model (README)


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


# --- what a model file says of itself -------------------------------------------------------------------

def model_meta(path: str | Path) -> dict:
    """A model file's metadata, read without its weights, checked to describe a model: of this format, with
    at least two class names and a registered architecture; ModelFileError saying why not."""
    meta = load_meta(path)
    if meta.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{path}: not a fashion-cnn model file (format {meta.get('format')!r})")
    names = meta.get("class_names")
    if not (isinstance(names, list) and len(names) >= 2 and all(isinstance(n, str) and n for n in names)):
        raise ModelFileError(f"{path}: corrupt metadata (class_names must list at least 2 names)")
    try:
        get_spec(meta.get("architecture"))
    except ValueError as e:
        raise ModelFileError(f"{path}: {str(e).replace('model', 'architecture', 1)}") from None
    return meta


def init_architecture(init: str) -> str:
    """The architecture of the --init model (from its metadata): the run's, when --model is not given. Its
    weights are checked when the job starts (finetune.check_init)."""
    path = init_path(init)
    try:
        return model_meta(path)["architecture"]
    except ModelFileError as e:
        raise ModelFileError(f"--init {e}") from None
