"""Files: atomic writes, JSON and safetensors files, output checks, the cache directory, where runs go.

Everything tensor-shaped is stored as safetensors, with JSON in the header for the rest; nothing is ever
unpickled, so loading a file cannot run code from it. Every file is written under a temporary name and
renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from safetensors import SafetensorError, safe_open

if TYPE_CHECKING:
    import torch

UMASK = os.umask(0o022)
os.umask(UMASK)
RUNS_ROOT = "runs"  # where train and cv write their run directories by default (--out), and `--model latest` looks
MODEL_FORMAT = "fashion-cnn-model/1"
META_KEY = "fashion_cnn"
TEMP_SUFFIX = ".tmp"


class ModelFileError(Exception):
    """A model or checkpoint file is missing, corrupt, not ours, or of an unknown architecture."""


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


# --- tensors, checkpoints and model files ----------------------------------------------------------------
# torch is imported where tensors are read or written: the command line imports this module before torch.

def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Tensors as safetensors with `meta` as JSON in the header, written atomically."""
    from safetensors.torch import save  # torch costs seconds of start-up: `--help` goes without it

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
    from safetensors.torch import load_file  # torch costs seconds of start-up: `--help` goes without it

    meta = load_meta(path)
    try:
        tensors = {name: t.clone() for name, t in load_file(str(path)).items()}
    except SAFETENSORS_ERRORS as e:
        raise ModelFileError(f"{path}: not a readable safetensors file ({e})") from None
    return tensors, meta


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fashion-cnn"
