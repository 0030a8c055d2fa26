"""Fashion-MNIST: IDX reading, where the files come from, and checksums; the Dataset type.

Images stay uint8 tensors of shape (N, 28, 28); batches are slices scaled to [0, 1] where they are used.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import struct
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fashion_cnn.data.images import Findings
from fashion_cnn.io import atomic_path, cache_dir, write_json

CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# The dataset authors' S3 bucket through its REST endpoint, which serves https (its website endpoint,
# http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/, serves only http). The checksums below
# stay the integrity guard either way.
MIRROR_URL = "https://fashion-mnist.s3.eu-central-1.amazonaws.com/"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "FASHION_CNN_DATA"


@dataclass(frozen=True)
class IdxFile:
    name: str
    magic: int  # 0x0803: uint8 images (3 dims), 0x0801: uint8 labels (1 dim)
    count: int
    sha256: str  # of the decompressed bytes: Debian recompresses the .gz files

    @property
    def size(self) -> int:
        """Bytes once decompressed: magic, one 4-byte size per dimension, then count items."""
        ndim = self.magic & 0xFF
        return 4 + 4 * ndim + self.count * (28 * 28 if ndim == 3 else 1)


FILES = {
    "train_images": IdxFile("train-images-idx3-ubyte.gz", 0x0803, 60_000,
                            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train_labels": IdxFile("train-labels-idx1-ubyte.gz", 0x0801, 60_000,
                            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "test_images": IdxFile("t10k-images-idx3-ubyte.gz", 0x0803, 10_000,
                           "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "test_labels": IdxFile("t10k-labels-idx1-ubyte.gz", 0x0801, 10_000,
                           "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}


class DataError(Exception):
    """A data file is missing, corrupt or not what it should be; the message names the file."""


@dataclass
class Dataset:
    """A data set split into train and test: Fashion-MNIST, or one that `datasets.load_dataset` imported."""

    train_images: torch.Tensor  # uint8 (N, 28, 28); Fashion-MNIST: 60,000
    train_labels: torch.Tensor  # int64 (N,), 0 .. len(class_names) - 1
    test_images: torch.Tensor  # uint8 (M, 28, 28); Fashion-MNIST: 10,000
    test_labels: torch.Tensor  # int64 (M,)
    source: str  # where the data came from, for logs and model metadata
    checksums: dict[str, str]  # its fingerprint for model metadata: file name or part -> SHA-256
    class_names: list[str] = field(default_factory=lambda: list(CLASS_NAMES))
    train_files: list[str] | None = field(default=None, repr=False)  # image folders: each image's file,
    test_files: list[str] | None = field(default=None, repr=False)  # relative to the folder
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason): what the import left out
    duplicates: list[tuple[str, ...]] = field(default_factory=list)  # identical files in 2 classes or splits
    notes: list[str] = field(default_factory=list)  # other findings of the import, one line each
    test_parts: list[tuple[str, int]] = field(default_factory=list)  # (name, count): consecutive blocks of
    # the test set from different sources (--add-to), which reports score apart as well as together
    findings: dict[str, Findings] = field(default_factory=dict, repr=False)  # image folders: file -> what
    # preprocessing found in it


FashionMNIST = Dataset  # its name before other data sets could be loaded


def inflate(path: Path, limit: int | None, gzipped: bool = True) -> bytes:
    """Up to limit + 1 bytes of path, decompressed (a plain file as it is; None: all of it): reading stops
    there, however much more it holds."""
    try:
        with (gzip.open if gzipped else open)(path, "rb") as f:
            return f.read(-1 if limit is None else limit + 1)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt or truncated gzip file ({e})") from None


def decompress(path: Path, limit: int | None = None, gzipped: bool = True) -> bytes:
    """path's decompressed bytes, refused once they pass limit, the size expected: a gzip bomb (4 GiB
    from 4 MB) is stopped after limit + 1 bytes instead of being inflated whole."""
    raw = inflate(path, limit, gzipped)
    if limit is not None and len(raw) > limit:
        raise DataError(f"{path}: inflates past the {limit:,} bytes expected (a gzip bomb?)")
    return raw


def idx_size(path: Path, magic: int, count: int | None = None, gzipped: bool = True) -> int:
    """The decompressed size path's IDX header promises, read from its first bytes only."""
    header = 4 + 4 * (magic & 0xFF)
    dims = parse_header(inflate(path, header, gzipped)[:header], str(path), magic, count)
    return header + int(np.prod(dims))


def parse_header(raw: bytes, name: str, magic: int, count: int | None = None) -> tuple[int, ...]:
    """The dimensions an IDX byte string's header declares, after checking its magic, image size and count."""
    if len(raw) < 4:
        raise DataError(f"{name}: too short to be an IDX file ({len(raw)} bytes)")
    (found,) = struct.unpack(">I", raw[:4])
    if found != magic:
        raise DataError(f"{name}: wrong magic number 0x{found:08x}, expected 0x{magic:08x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{name}: truncated header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if ndim == 3 and dims[1:] != (28, 28):
        raise DataError(f"{name}: images are {dims[1]}x{dims[2]}, expected 28x28")
    if count is not None and dims[0] != count:
        raise DataError(f"{name}: holds {dims[0]} items, expected {count}")
    return dims


def parse_idx(raw: bytes, name: str, magic: int, count: int | None = None) -> np.ndarray:
    """Validate an IDX byte string (magic, dimensions, size) and return it as a uint8 array."""
    dims = parse_header(raw, name, magic, count)
    header = 4 + 4 * len(dims)
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(f"{name}: {len(raw) - header} data bytes, header promises {expected} (truncated?)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_idx(path: Path, magic: int, count: int | None = None) -> np.ndarray:
    """Read and validate one gzipped IDX file, inflating no more than its header promises."""
    path = Path(path)
    return parse_idx(decompress(path, idx_size(path, magic, count)), str(path), magic, count)


def has_all_files(directory: Path) -> bool:
    return all((directory / f.name).is_file() for f in FILES.values())


def find_data_dir(data_dir: str | Path | None = None, download: bool = True,
                  url: str = MIRROR_URL) -> Path:
    """The first directory holding all four files: explicit, $FASHION_CNN_DATA, Debian's, the cache.

    Falls back to downloading into the cache. An explicitly named directory that lacks the files is an
    error rather than a silent fall-through, so users learn their path is wrong.
    """
    for label, candidate in (("--data-dir", data_dir), (ENV_VAR, os.environ.get(ENV_VAR))):
        if candidate:
            path = Path(candidate)
            if not has_all_files(path):
                missing = [f.name for f in FILES.values() if not (path / f.name).is_file()]
                raise DataError(f"{path} (from {label}) lacks {', '.join(missing)}")
            return path
    for path in (DEBIAN_DIR, cache_dir()):
        if has_all_files(path):
            return path
    if not download:
        raise DataError("Fashion-MNIST not found; pass --data-dir, set $FASHION_CNN_DATA, "
                        "or install the Debian package dataset-fashion-mnist")
    download_all(cache_dir(), url)
    return cache_dir()


def download_all(dest: Path, url: str = MIRROR_URL) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for spec in FILES.values():
        if not (dest / spec.name).is_file():
            download_file(url.rstrip("/") + "/" + spec.name, dest / spec.name, spec)


def download_file(url: str, target: Path, spec: IdxFile) -> None:
    """Fetch into a temp file beside the target, verify it, then rename: never a partial file."""
    try:
        with atomic_path(target) as tmp, open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=target.name, disable=None) as bar:
                while chunk := resp.read(1 << 16):
                    out.write(chunk)
                    bar.update(len(chunk))
                    if out.tell() > 2 * spec.size + 1024:  # gzip never grows data that much: not our file
                        raise DataError(f"{url}: over {out.tell():,} bytes, more than the file can be")
            if total is not None and out.tell() != total:
                raise DataError(f"{url}: transfer interrupted ({out.tell()} of {total} bytes)")
            out.close()
            verify(tmp, spec, label=url)
    except (OSError, ValueError) as e:  # urllib's errors are OSErrors; http.client's IncompleteRead too
        raise DataError(f"{url}: download failed ({e})") from None


def verify(path: Path, spec: IdxFile, label: str | None = None) -> bytes:
    raw = decompress(path, spec.size)
    digest = hashlib.sha256(raw).hexdigest()
    if digest != spec.sha256:
        raise DataError(f"{label or path}: SHA-256 of the decompressed data is {digest}, "
                        f"expected {spec.sha256}")
    return raw


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def load_fashion_mnist(data_dir: str | Path | None = None, download: bool = True,
                       url: str = MIRROR_URL, check: bool = True) -> Dataset:
    """Load all four files, verifying their checksums the first time each file is seen.

    `check=False` skips the checksums, for IDX files of your own (same format, other content).
    """
    directory = find_data_dir(data_dir, download, url)
    verified_log = cache_dir() / "verified.json"
    try:
        verified = set(json.loads(verified_log.read_text()))
    except (OSError, ValueError):
        verified = set()
    arrays, newly_verified = {}, set()
    for key, spec in FILES.items():
        path = directory / spec.name
        stamp = _stamp(path)
        if check and stamp not in verified:
            raw = verify(path, spec)
            newly_verified.add(stamp)
        else:
            raw = decompress(path, idx_size(path, spec.magic, spec.count if check else None))
        arrays[key] = parse_idx(raw, str(path), spec.magic, spec.count if check else None)
    if newly_verified:
        with contextlib.suppress(OSError):  # the log only saves time; a read-only cache must not stop training
            write_json(verified_log, sorted(verified | newly_verified))
    for split in ("train", "test"):
        if len(arrays[f"{split}_images"]) != len(arrays[f"{split}_labels"]):
            raise DataError(f"{directory}: {split} images and labels differ in count")
        if arrays[f"{split}_labels"].max(initial=0) >= len(CLASS_NAMES):
            raise DataError(f"{directory}: {split} labels outside 0..9")
    tensors = {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}
    return Dataset(
        train_images=tensors["train_images"], train_labels=tensors["train_labels"].long(),
        test_images=tensors["test_images"], test_labels=tensors["test_labels"].long(),
        source=str(directory), checksums={s.name: s.sha256 for s in FILES.values()} if check else {},
    )


def class_counts(labels: torch.Tensor, num_classes: int = len(CLASS_NAMES)) -> list[int]:
    return torch.bincount(labels, minlength=num_classes).tolist()
