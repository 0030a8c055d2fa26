"""Data sets beyond Fashion-MNIST: IDX files of other data sets, and folders of your own images.

`load_dataset(spec)` takes a name ("fashion-mnist", the default) or a folder, and returns a `Dataset`:
- a folder of IDX files (MNIST, KMNIST, EMNIST style: train-images-idx3-ubyte[.gz] and the other three),
  class names from `classes.txt` beside them or `classes=`;
- a folder of images, `DIR/<class>/<image>` (torchvision's ImageFolder layout), or split already into
  `DIR/train/<class>/` and `DIR/test/<class>/`.

Each image is decoded and preprocessed by `predict.preprocess`, exactly as `fashion-cnn predict` does, so a
model trains on what it will see at prediction time. The result is cached per folder, keyed by the files'
content hashes, so a second import decodes only new or changed files.
"""

from __future__ import annotations

import errno
import hashlib
import importlib
import os
import re
import stat
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from fashion_cnn.data.fmnist import (
    CLASS_NAMES,
    FILES,
    DataError,
    Dataset,
    class_counts,
    decompress,
    idx_size,
    load_fashion_mnist,
    parse_idx,
)
from fashion_cnn.data.images import (
    BACKGROUNDS,
    IMAGE_SUFFIXES,
    Findings,
    ImageError,
    preprocess_picture,
    read_limited,
    to_uint8,
)
from fashion_cnn.io import ModelFileError, cache_dir, load_tensors, save_tensors
from fashion_cnn.models.specs import unknown
from fashion_cnn.text import printable

__all__ = ["Dataset", "load_dataset", "describe", "parse_classes", "split_key", "class_key"]

NAMES = ("fashion-mnist",)
MAX_FILES = 1_000_000  # image files in one folder; more is a mistake (the wrong folder) or an attack
MAX_IDX_BYTES = 1 << 31  # one decompressed IDX file; EMNIST's largest is 550 MB
MAX_CLASSES_TXT = 1 << 20
CACHE_FORMAT = "fashion-cnn-image-cache/3"  # 2: entry checksums, 3: with what preprocessing found (Findings)
# A file's stamp is trusted only once it is older than this when read: a file rewritten within the clock
# tick of its last read keeps size, mtime and ctime (FAT's times tick every 2 s), so it is read again.
SETTLE_NS = 2_000_000_000
UNSURE = (-1, -1, -1)  # the stamp kept for a file changed too recently: it never matches, so it is read again
# The cache file's tensors: (dtype, shape after the first dimension). hashes, images, findings and checks are
# one entry per content hash; paths the file names, "\0"-separated; stamps and file_hashes one row per file.
CACHE_TENSORS = {"hashes": (torch.uint8, (32,)), "images": (torch.uint8, (28, 28)), "findings": (torch.float64, (6,)),
                 "checks": (torch.uint8, (32,)), "paths": (torch.uint8, ()), "stamps": (torch.int64, (3,)),
                 "file_hashes": (torch.uint8, (32,))}
MAX_EMPTY = 0.01  # an import with a larger share of images that come out empty stops (a blank image
#                   teaches nothing and costs its class accuracy); fewer are listed
NEARLY_EMPTY = 20  # object pixels: a result with fewer is "nearly empty" (the fewest in any of
#                    Fashion-MNIST's 60,000 training items is 38)
# MNIST, KMNIST, EMNIST (emnist-letters-train-images-idx3-ubyte.gz) and MNIST's "train-images.idx3-ubyte".
IDX_NAME = re.compile(r"(?:.*[-_.])?(train|t10k|test)[-_.](images|labels)[-_.]idx[13][-_.]ubyte(?:\.gz)?",
                      re.IGNORECASE)
IDX_MAGIC = {"images": 0x0803, "labels": 0x0801}


# --- what a name or a folder is --------------------------------------------------------------------

def load_model_data(meta: dict, model_path: str | Path) -> Dataset:
    """The data set a model file's metadata says it was trained on, where that is a known data set (NAMES),
    from the usual places. A model file is untrusted: a folder it names (its --data, --add-to images or
    --data-dir) is never read on its word; that is a ValueError asking for --data DIR."""
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    spec = config.get("data")
    if spec is None or (isinstance(spec, str) and spec.lower() in NAMES and config.get("add_to") is None):
        return load_dataset(None)
    raise ValueError(f"{model_path}: trained on {str(spec)[:200]}, a folder; a model file does not choose what "
                     "is read: pass --data DIR (that folder, if you trust the file)")


def load_dataset(spec: str | Path | None = None, *, classes: str | Sequence[str] | None = None,
                 seed: int = 1, test_fraction: float = 0.2, data_dir: str | Path | None = None,
                 download: bool = True, add_to: str | None = None, framed: bool = False) -> Dataset:
    """Fashion-MNIST (spec None or "fashion-mnist", from data_dir or the usual places), a folder of IDX
    files, or a folder of images.

    classes: names for an IDX folder's labels 0..K-1 (instead of its classes.txt), or for an image folder
    the class folders to use, in that order (default: all, sorted). A list, or one comma-separated string.
    seed, test_fraction: how an image folder without train/ and test/ is split (see `split_key`).
    add_to: "fashion-mnist" adds the folder's images to Fashion-MNIST's (from data_dir); see `added_to`.
    framed: an image folder's pictures are framed like Fashion-MNIST (the object filling each): only
    inverted and resized, not searched for the object (predict.preprocess_picture).
    """
    if add_to is not None:
        if str(add_to).lower() not in NAMES:
            raise unknown("data set to add to", add_to, NAMES)
        if spec is None or str(spec).lower() in NAMES:
            raise ValueError(f"--add-to {add_to} adds images of your own to it: give them with --data DIR")
        own = load_dataset(spec, classes=classes, seed=seed, test_fraction=test_fraction, framed=framed)
        return added_to(load_fashion_mnist(data_dir, download=download), own, Path(spec).name)
    framed_already = ValueError("--framed is for folders of images; IDX files hold framed 28x28 images")
    if spec is None or str(spec).lower() in NAMES:
        if framed:
            raise framed_already
        if classes is not None:
            raise ValueError("--classes is for IDX files and image folders; Fashion-MNIST has its own names")
        return load_fashion_mnist(data_dir, download=download)
    if data_dir is not None:
        raise ValueError("--data-dir names Fashion-MNIST's folder; give either --data-dir or --data PATH")
    root = Path(spec)
    if not root.is_dir():
        if root.exists():
            raise DataError(f"{root}: not a folder (--data takes a folder or a data set name)")
        raise unknown("data set (no such folder)", str(spec), NAMES)
    names = parse_classes(classes)
    if not 0 < test_fraction < 1:
        raise ValueError(f"the test fraction must be between 0 and 1, not {test_fraction}")
    try:
        if idx_files(root):
            if framed:
                raise framed_already
            return load_idx_folder(root, names)
        return load_image_folder(root, names, seed, test_fraction, framed)
    except PermissionError as e:  # a folder we may not list; files we may not read are skipped instead
        raise DataError(f"{e.filename}: cannot read ({e.strerror})") from None


def parse_classes(classes: str | Sequence[str] | None) -> list[str] | None:
    """A list of class names, from a list or a comma-separated string; None stays None."""
    if classes is None:
        return None
    names = [c.strip() for c in (classes.split(",") if isinstance(classes, str) else classes)]
    if not names or not all(names):
        raise ValueError(f"empty class name in {printable(', '.join(names))!r}")
    if len(set(names)) < len(names):
        twice = sorted(n for n, k in Counter(names).items() if k > 1)
        raise ValueError(f"class names given twice: {printable(', '.join(twice))}")
    return names


# --- IDX folders -----------------------------------------------------------------------------------

def idx_files(root: Path) -> dict[tuple[str, str], list[Path]]:
    """The folder's IDX files by (train|test, images|labels)."""
    found: dict[tuple[str, str], list[Path]] = defaultdict(list)
    for path in sorted(root.iterdir()):
        if (m := IDX_NAME.fullmatch(path.name)) and path.is_file():
            found["train" if m[1].lower() == "train" else "test", m[2].lower()].append(path)
    return found


def load_idx_folder(root: Path, names: list[str] | None) -> Dataset:
    """The four IDX files of a folder; labels 0..K-1 named by `names`, classes.txt, or "0".."K-1"."""
    files = idx_files(root)
    arrays, checksums = {}, {}
    for part in ("train", "test"):
        for kind in ("images", "labels"):
            paths = files.get((part, kind), [])
            if len(paths) != 1:
                what = "no" if not paths else f"{len(paths)} ({', '.join(printable(p.name) for p in paths)})"
                raise DataError(f"{root}: {what} {part} {kind} files; an IDX folder holds one data set: "
                                f"[prefix-]{'train' if part == 'train' else 't10k'}-{kind}-idx"
                                f"{3 if kind == 'images' else 1}-ubyte[.gz] and the three others")
            gzipped = paths[0].suffix.lower() == ".gz"
            size = idx_size(paths[0], IDX_MAGIC[kind], gzipped=gzipped)
            if size > MAX_IDX_BYTES:
                raise DataError(f"{paths[0]}: its header declares {size:,} bytes, over the "
                                f"{MAX_IDX_BYTES:,}-byte limit")
            raw = decompress(paths[0], size, gzipped)  # no more than the header declares: a bomb stops there
            arrays[part, kind] = parse_idx(raw, str(paths[0]), IDX_MAGIC[kind])
            checksums[paths[0].name] = hashlib.sha256(raw).hexdigest()
    labels = {part: torch.from_numpy(arrays[part, "labels"].astype(np.int64)) for part in ("train", "test")}
    for part in ("train", "test"):
        if len(arrays[part, "images"]) != len(labels[part]):
            raise DataError(f"{root}: {len(arrays[part, 'images'])} {part} images but {len(labels[part])} labels")
    source = f"{root} (IDX files)"
    names = names or read_classes_txt(root)
    if names is None and sorted(checksums.values()) == sorted(f.sha256 for f in FILES.values()):
        names, source = list(CLASS_NAMES), f"{root} (IDX files of Fashion-MNIST)"
    top = max(int(arrays[part, "labels"].max(initial=0)) for part in ("train", "test"))
    if names is None:
        names = [str(k) for k in range(top + 1)]
    elif top >= len(names):
        raise DataError(f"{root}: label {top} found, but only {len(names)} class names "
                        f"({printable(', '.join(names[:5]))}{', ...' if len(names) > 5 else ''})")
    return Dataset(train_images=torch.from_numpy(arrays["train", "images"].copy()), train_labels=labels["train"],
                   test_images=torch.from_numpy(arrays["test", "images"].copy()), test_labels=labels["test"],
                   source=source, checksums=checksums, class_names=[printable(n) for n in names])


def read_classes_txt(root: Path) -> list[str] | None:
    """classes.txt beside IDX files: one class name per line, in label order; blank lines ignored."""
    path = root / "classes.txt"
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        raw = f.read(MAX_CLASSES_TXT + 1)
    if len(raw) > MAX_CLASSES_TXT:
        raise DataError(f"{path}: over the {MAX_CLASSES_TXT:,}-byte limit")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        return parse_classes([line for line in text.splitlines() if line.strip()])
    except ValueError as e:
        raise DataError(f"{path}: {e}") from None


# --- image folders: finding the files ----------------------------------------------------------------

@dataclass(frozen=True)
class ImageFile:
    rel: str  # path relative to the folder, as the cache and the report name it
    path: Path
    label: int
    part: str | None  # "train" or "test" from the folder layout; None: drawn by split_key
    stamp: tuple[int, int, int]  # size, mtime_ns, ctime_ns: unchanged files are not read again; ctime
    # because no one can set it (os.utime can restore a rewritten file's mtime, not its ctime)


def image_suffixes() -> tuple[str, ...]:

    return IMAGE_SUFFIXES


def subfolders(folder: Path, root: Path, skipped: list[tuple[str, str]]) -> list[str]:
    """The names of the folder's non-hidden folders, sorted; links to folders go to `skipped`."""
    names = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_dir():
            continue
        if path.is_symlink():
            skipped.append((relative(path, root), "a link to a folder, not followed"))
        else:
            names.append(path.name)
    return names


def class_folders(root: Path, names: list[str] | None,
                  skipped: list[tuple[str, str]]) -> tuple[list[str], list[tuple[str | None, Path]]]:
    """(class folder names, [(part, folder holding the class folders)]) for either layout."""
    subdirs = subfolders(root, root, skipped)
    if {"train", "test"} <= set(subdirs):
        if len(subdirs) > 2:
            others = ", ".join(printable(s) for s in subdirs if s not in ("train", "test"))
            raise DataError(f"{root}: has train/ and test/ beside other folders ({others}); use either "
                            "DIR/train/<class>/ and DIR/test/<class>/ only, or DIR/<class>/")
        parts = [("train", root / "train"), ("test", root / "test")]
        found = subfolders(root / "train", root, skipped)
        extra = [name for name in subfolders(root / "test", root, skipped) if name not in found]
        if extra and names is None:
            raise DataError(f"{root / 'test'}: classes with no folder in train/: "
                            f"{', '.join(printable(e) for e in extra)}")
    else:
        parts, found = [(None, root)], subdirs
    if names is not None:
        missing = [n for n in names if n not in found]
        if missing:
            raise DataError(f"{root}: no folder for class {', '.join(printable(m) for m in missing)} "
                            f"(found: {', '.join(printable(f) for f in found) or 'none'})")
        found = names
    if len(found) < 2:
        raise DataError(f"{root}: {len(found)} class folder{'s' if len(found) != 1 else ''}; a classifier "
                        "needs at least 2: DIR/<class>/<image> or DIR/train/<class>/ and DIR/test/<class>/")
    return found, parts


def scan(root: Path, names: list[str], parts: list[tuple[str | None, Path]],
         skipped: list[tuple[str, str]]) -> tuple[list[ImageFile], list[str]]:
    """The image files of every class folder (recursively; hidden names ignored), sorted by path, and
    notes on the files left out because of their names or places.

    Links are followed only to files inside the folder; others go to `skipped` with the reason.
    """
    suffixes = image_suffixes()
    real_root = root.resolve()
    files: list[ImageFile] = []
    ignored: Counter = Counter()
    for part, top in parts:
        for label, name in enumerate(names):
            if not (top / name).is_dir() or (top / name).is_symlink():
                continue  # a class with no folder in test/, or a link (in `skipped` already)
            for path in walk(top / name, root, real_root, skipped):
                rel = relative(path, root)
                if path.suffix.lower() not in suffixes:
                    ignored[path.suffix.lower() or "no suffix"] += 1
                    continue
                try:
                    st = path.stat()
                except OSError as e:
                    skipped.append((rel, f"cannot read ({e.strerror or e})"))
                    continue
                if not stat.S_ISREG(st.st_mode):
                    skipped.append((rel, "not a regular file"))
                    continue
                files.append(ImageFile(rel, path, label, part, (st.st_size, st.st_mtime_ns, st.st_ctime_ns)))
                if len(files) > MAX_FILES:
                    raise DataError(f"{root}: more than {MAX_FILES:,} image files; is it the right folder?")
    notes = []
    if ignored:
        counts = ", ".join(f"{printable(suffix)} {n}" for suffix, n in ignored.most_common())
        notes.append(f"ignored {sum(ignored.values())} files not named as images ({counts}); "
                     f"images end in {' '.join(suffixes)}")
    for part, top in parts:
        loose = sum(1 for p in top.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
        if loose:
            notes.append(f"ignored {loose} images in {printable(relative(top, root) or '.')}/, "
                         "outside the class folders")
    return sorted(files, key=lambda f: f.rel), notes


def walk(folder: Path, root: Path, real_root: Path, skipped: list[tuple[str, str]]) -> Iterator[Path]:
    """Non-hidden files under folder. Links to folders are not followed (no loops, no file seen twice),
    links to files only inside real_root; what is not followed goes to `skipped`."""
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError as e:
            skipped.append((relative(current, root), f"cannot list the folder ({e.strerror or e})"))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            if entry.is_symlink():
                try:
                    target = path.resolve(strict=True)
                except (OSError, RuntimeError) as e:  # Python 3.11 raises RuntimeError on a loop, 3.13 OSError
                    loop = isinstance(e, RuntimeError) or e.errno == errno.ELOOP
                    skipped.append((relative(path, root), "a link that loops, not followed" if loop
                                    else f"a link to nothing ({e.strerror or e})"))
                    continue
                if not target.is_relative_to(real_root):
                    skipped.append((relative(path, root), "a link to outside the folder, not followed"))
                    continue
                if target.is_dir():
                    skipped.append((relative(path, root), "a link to a folder, not followed"))
                    continue
            if entry.is_dir(follow_symlinks=False):
                stack.append(path)
            else:
                yield path


def relative(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path != root else ""


# --- image folders: decoding, with a cache --------------------------------------------------------

def decode_image(data: bytes, framed: bool = False) -> tuple[np.ndarray, Findings]:
    """A file's bytes as the 28x28 uint8 image `fashion-cnn predict` would feed the model (framed: taken as
    framed like Fashion-MNIST), and what preprocessing found on the way."""
    views, found = preprocess_picture(data, framed=framed)
    return to_uint8(views[0]), found


def findings_row(found: Findings) -> list[float]:
    """Findings as numbers, for the cache's tensor (findings_of reads them back)."""
    return [found.inverted, BACKGROUNDS.index(found.background), found.touches_frame, found.left_out,
            found.turned, found.pixels]


def findings_of(row: list[float]) -> Findings:
    inverted, background, touches, left_out, turned, pixels = row
    return Findings(bool(inverted), BACKGROUNDS[int(background)], bool(touches), left_out, turned, int(pixels))


def preprocess_version() -> str:
    """Changes whenever the decoding may: the code of images.py and fmnist.py, and Pillow's version."""
    import PIL  # only its version, for the cache key

    code = b"".join(Path(importlib.import_module(f".{name}", __package__).__file__).read_bytes()
                    for name in ("images", "fmnist"))
    return hashlib.sha256(code + PIL.__version__.encode()).hexdigest()


@dataclass
class ImportCache:
    """What earlier imports of one folder found, keyed by content hash (SHA-256 of a file's bytes):
    a renamed or copied file is not decoded again, a changed one is.

    Stored as safetensors (hashes, images, file stamps as tensors; JSON metadata), never pickled. Nothing
    in it is trusted: each entry carries a checksum (entry_check), and one that fails it, or a file of
    other shapes or types, is decoded again from the folder's file. (A checksum of all the images together
    spares the 1,797 entry checks of a 1,797-image folder, 4 ms, when nothing is damaged.)
    """

    path: Path
    framed: bool  # how the images were preprocessed: taken as framed (preprocess_picture)
    images: dict[str, np.ndarray]  # content hash -> 28x28 uint8
    found: dict[str, Findings]  # content hash -> what preprocessing found
    bad: dict[str, str]  # content hash -> why it is not a usable image
    stamps: dict[str, tuple[tuple[int, int, int], str]]  # file -> (its ImageFile.stamp, content hash)

    @classmethod
    def load(cls, root: Path, framed: bool = False) -> ImportCache:
        """The folder's cache, for its pictures taken as framed or not (each has its own); empty when there is
        none, or it is unreadable or from other code."""
        path = cache_dir() / "datasets" / (hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:32]
                                           + ("-framed" if framed else "") + ".safetensors")
        empty = cls(path, framed, {}, {}, {}, {})
        if not path.is_file():
            return empty
        try:
            tensors, meta = load_tensors(path)
            if meta.get("format") != CACHE_FORMAT or meta.get("preprocess") != preprocess_version():
                return empty
            for name, (dtype, shape) in CACHE_TENSORS.items():
                if tensors[name].dtype != dtype or tuple(tensors[name].shape[1:]) != shape:
                    return empty
            hashes = hex_hashes(tensors["hashes"])
            blob = tensors["paths"].numpy().tobytes()
            paths = os.fsdecode(blob).split("\0") if blob else []
            file_hashes = hex_hashes(tensors["file_hashes"])
            if not len(hashes) == len(tensors["images"]) == len(tensors["findings"]) == len(tensors["checks"]) \
                    or not len(paths) == len(file_hashes) == len(tensors["stamps"]):
                return empty
            entries = {h: (image, row) for h, image, row in zip(hashes, tensors["images"].numpy(),
                                                                 tensors["findings"].numpy())}
            if meta["images_check"] != fingerprint(tensors["hashes"], tensors["images"], tensors["findings"]):
                entries = {h: entry for (h, entry), check in zip(entries.items(), hex_hashes(tensors["checks"]))
                           if entry_check(h, *entry) == check}  # find the damage
            bad = {h: reason for h, (reason, check) in meta["bad"].items()
                   if entry_check(h, reason.encode()) == check}
            stamps = {p: (tuple(stamp), h) for p, stamp, h in zip(paths, tensors["stamps"].tolist(), file_hashes)}
            return cls(path, framed, {h: image for h, (image, _) in entries.items()},
                       {h: findings_of(row.tolist()) for h, (_, row) in entries.items()}, bad, stamps)
        except (ModelFileError, KeyError, ValueError, TypeError, AttributeError, IndexError):
            return empty  # a cache only saves time: rebuild it

    def save(self, used: dict[str, str]) -> None:
        """Keep what the folder's files now use (`used`: file -> content hash); drop the rest."""
        live = set(used.values())
        good = sorted(h for h in live if h in self.images)
        rels = sorted(used)
        tensors = {
            "hashes": hash_tensor(good),
            "images": torch.from_numpy(np.stack([self.images[h] for h in good]) if good
                                       else np.zeros((0, 28, 28), np.uint8)),
            "findings": torch.tensor([findings_row(self.found[h]) for h in good], dtype=torch.float64).reshape(-1, 6),
            "checks": hash_tensor([entry_check(h, self.images[h], findings_row(self.found[h])) for h in good]),
            "paths": torch.from_numpy(np.frombuffer(os.fsencode("\0".join(rels)), np.uint8).copy()),
            "stamps": torch.tensor([self.stamps[r][0] for r in rels], dtype=torch.int64).reshape(-1, 3),
            "file_hashes": hash_tensor([used[r] for r in rels]),
        }
        meta = {"format": CACHE_FORMAT, "preprocess": preprocess_version(),
                "images_check": fingerprint(tensors["hashes"], tensors["images"], tensors["findings"]),  # spares
                # checking each entry
                "bad": {h: [self.bad[h], entry_check(h, self.bad[h].encode())]
                        for h in sorted(live) if h in self.bad}}
        try:
            save_tensors(self.path, tensors, meta)
        except OSError:
            pass  # a read-only cache must not stop the job; the next import decodes again


def entry_check(digest: str, *values: bytes | np.ndarray | list[float]) -> str:
    """A cache entry's checksum, in hex: SHA-256 of its key (a content hash) and its values (an image and
    its findings as float64, or a reason's bytes), so a damaged or edited value, or one moved to another
    key, is found and decoded again rather than used."""
    digest_of = hashlib.sha256(bytes.fromhex(digest))
    for value in values:
        digest_of.update(value if isinstance(value, bytes) else  # a list of findings: float64, as stored
                         np.ascontiguousarray(value, getattr(value, "dtype", np.float64)).tobytes())
    return digest_of.hexdigest()


def hash_tensor(hashes: list[str]) -> torch.Tensor:
    """Hex SHA-256 digests as a (N, 32) uint8 tensor: a third of the bytes, and no JSON header limit."""
    return torch.from_numpy(np.frombuffer(bytes.fromhex("".join(hashes)), np.uint8).reshape(-1, 32).copy())


def hex_hashes(tensor: torch.Tensor) -> list[str]:
    blob = tensor.numpy().tobytes().hex()
    return [blob[i:i + 64] for i in range(0, len(blob), 64)]


def import_files(files: list[ImageFile], cache: ImportCache,
                 skipped: list[tuple[str, str]]) -> dict[str, str]:
    """file -> content hash for every usable image; reads only files whose stamp (size, mtime, ctime)
    changed and decodes only contents the cache does not know. Unusable files go to `skipped` with the
    reason."""

    usable, seen, changed = {}, {}, False
    for f in tqdm(files, desc="importing images", unit="file", disable=None):
        stamp, digest = cache.stamps.get(f.rel, (UNSURE, ""))
        if stamp != f.stamp or (digest not in cache.images and digest not in cache.bad):
            settled = f.stamp[2] < time.time_ns() - SETTLE_NS  # now, before the read: see SETTLE_NS
            try:
                data = read_limited(f.path)
            except ImageError as e:
                skipped.append((f.rel, e.reason))
                continue
            digest = hashlib.sha256(data).hexdigest()
            if digest not in cache.images and digest not in cache.bad:
                try:
                    cache.images[digest], cache.found[digest] = decode_image(data, cache.framed)
                except (ImageError, ValueError) as e:
                    cache.bad[digest] = getattr(e, "reason", None) or f"cannot be preprocessed ({e})"
            cache.stamps[f.rel] = (f.stamp if settled else UNSURE, digest)
            changed = True
        seen[f.rel] = digest
        if digest in cache.bad:
            skipped.append((f.rel, cache.bad[digest]))
        else:
            usable[f.rel] = digest
    if changed or len(cache.stamps) != len(seen):  # new, changed or removed files
        cache.save(seen)
    return usable


# --- image folders: the split and the Dataset -------------------------------------------------------

def split_key(content_hash: str, seed: int) -> float:
    """An image's place in [0, 1) for a seed: from SHA-256 of the seed and the file's content hash.

    A folder without train/ and test/ puts an image in the test part when its key is below the test
    fraction. The split thus depends only on each file's content and the seed: the same files and seed
    give the same split on any machine, with or without the cache, and adding, removing or renaming
    other files never moves an image between train and test (which a shuffle of the whole list would).
    The price: per class the test part is the fraction on average, with a binomial spread (a class of
    100 images gets 20 +- 4). Identical files get one key, so they land on the same side.
    """
    return int.from_bytes(hashlib.sha256(f"{seed}:{content_hash}".encode()).digest()[:8], "big") / 2**64


def draw_split(files: list[ImageFile], usable: dict[str, str], seed: int, fraction: float) -> dict[str, str]:
    """file -> "train" or "test" by split_key, with two fixes for small classes: a class always has a
    training image (if all drew test, the highest key trains) and a class of 2+ distinct images a test
    image (if none drew test, the lowest key tests).

    Only these fixes move an existing image when files are added: a forced test image goes back to
    train once another image of its class draws test, and a forced training image to test once another
    draws train (which happens only in a class whose one or two images all drew test).
    """
    keys_by_class: dict[int, dict[str, float]] = defaultdict(dict)
    for f in files:
        if f.rel in usable:
            keys_by_class[f.label][usable[f.rel]] = split_key(usable[f.rel], seed)
    side: dict[tuple[int, str], str] = {}
    for label, keys in keys_by_class.items():
        sides = {h: "test" if k < fraction else "train" for h, k in keys.items()}
        if "train" not in sides.values():
            sides[max(keys, key=keys.get)] = "train"
        if len(sides) > 1 and "test" not in sides.values():
            sides[min(keys, key=keys.get)] = "test"
        side |= {(label, h): s for h, s in sides.items()}
    return {f.rel: side[f.label, usable[f.rel]] for f in files if f.rel in usable}


def load_image_folder(root: Path, names: list[str] | None, seed: int = 1, test_fraction: float = 0.2,
                      framed: bool = False) -> Dataset:
    """Import a folder of images, DIR/<class>/<image> or DIR/train|test/<class>/<image>; see the module.
    More than MAX_EMPTY of them coming out empty stops it (DataError)."""
    skipped: list[tuple[str, str]] = []
    names, parts = class_folders(root, names, skipped)
    class_names = [printable(n) for n in names]
    if len(set(class_names)) < len(class_names):
        raise DataError(f"{root}: class folder names that print alike: {', '.join(class_names)}")
    files, notes = scan(root, names, parts, skipped)
    cache = ImportCache.load(root, framed)
    usable = import_files(files, cache, skipped)
    found = {rel: cache.found[digest] for rel, digest in usable.items()}
    check_empty(root, found, framed)
    drawn = parts[0][0] is None
    part = draw_split(files, usable, seed, test_fraction) if drawn else {f.rel: f.part for f in files}
    ok = sorted((f for f in files if f.rel in usable), key=lambda f: (split_key(usable[f.rel], seed), f.rel))
    by_part = {p: [f for f in ok if part[f.rel] == p] for p in ("train", "test")}
    counts = Counter((f.label, part[f.rel]) for f in ok)
    empty = [n for k, n in enumerate(class_names) if not counts[k, "train"]]
    if empty:
        label_of = {f.rel: f.label for f in files}
        bad = Counter(label_of[rel] for rel, _ in skipped if rel in label_of)
        raise DataError(f"{root}: no usable {'' if drawn else 'training '}image for class "
                        + ", ".join(f"{n} ({bad[class_names.index(n)]} files skipped)" for n in empty))
    notes += [f"class {n} has no test images" + (" (a class needs 2 different images or more for one to be drawn "
                                                  "for the test set)" if drawn else "")
              for k, n in enumerate(class_names) if not counts[k, "test"]]
    arrays = {}
    for p, chosen in by_part.items():
        images = np.stack([cache.images[usable[f.rel]] for f in chosen]) if chosen else \
            np.zeros((0, 28, 28), np.uint8)
        arrays[p] = (torch.from_numpy(images), torch.tensor([f.label for f in chosen], dtype=torch.int64))
    how = (f"test: {test_fraction:.0%} of each class drawn with seed {seed}" if drawn
           else "split into train/ and test/")
    return Dataset(
        train_images=arrays["train"][0], train_labels=arrays["train"][1],
        test_images=arrays["test"][0], test_labels=arrays["test"][1],
        source=f"{printable(str(root))} (image folder, {len(names)} classes; {how})",
        checksums={p: fingerprint(*arrays[p]) for p in ("train", "test")},
        class_names=class_names,
        train_files=[f.rel for f in by_part["train"]], test_files=[f.rel for f in by_part["test"]],
        skipped=sorted(skipped), duplicates=find_duplicates(ok, usable, part), notes=notes, findings=found,
    )


def check_empty(root: Path, found: dict[str, Findings], framed: bool) -> None:
    """Stop an import where more than MAX_EMPTY of the images came out empty, naming the way to keep them."""
    empty = sorted(rel for rel, f in found.items() if not f.pixels)
    if len(empty) <= MAX_EMPTY * len(found):
        return
    some = ", ".join(printable(rel) for rel in empty[:3]) + (", ..." if len(empty) > 3 else "")
    advice = "" if framed else ("; where the object fills each picture (framed like Fashion-MNIST, as bare "
                                "scanned digits), --framed keeps them")
    raise DataError(f"{root}: {len(empty)} of {len(found)} images came out empty after preprocessing (more than "
                    f"{MAX_EMPTY:.0%}: {some}): remove those that show nothing{advice}")


def find_duplicates(files: list[ImageFile], usable: dict[str, str], part: dict[str, str]) -> list[tuple[str, ...]]:
    """Groups of identical files (same content hash) that span two classes or both train and test."""
    groups: dict[str, list[ImageFile]] = defaultdict(list)
    for f in sorted(files, key=lambda f: f.rel):
        groups[usable[f.rel]].append(f)
    return sorted(tuple(f.rel for f in group) for group in groups.values()
                  if len({f.label for f in group}) > 1 or len({part[f.rel] for f in group}) > 1)


def fingerprint(*tensors: torch.Tensor, names: Sequence[str] = ()) -> str:
    """SHA-256 of the tensors' bytes one after the other (and of class names, one per line, where given):
    of images and labels exactly as imported, what a model trained on."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy())  # its buffer, not a copy (47 MB for Fashion-MNIST)
    if names:
        h.update("\n".join(names).encode())
    return h.hexdigest()


# --- your images added to Fashion-MNIST ------------------------------------------------------------

def class_key(name: str) -> str:
    """What two class names must share to be the same class: their letters and digits, lower-cased.
    "T-shirt/top" cannot be a folder name; "T-shirt-top", "tshirt_top" and "TShirt top" all match it."""
    return "".join(c for c in name.casefold() if c.isalnum())


def class_mapping(names: Sequence[str], onto: Sequence[str]) -> list[int] | None:
    """For each of `names`, the index of the class of `onto` it matches by class_key; None unless every
    name matches exactly one of `onto` and no two names match the same one."""
    keys = [class_key(n) for n in onto]
    found = [keys.index(class_key(n)) if keys.count(class_key(n)) == 1 else None for n in names]
    return found if None not in found and len(set(found)) == len(found) else None


def added_to(base: Dataset, own: Dataset, name: str) -> Dataset:
    """`own`'s images added to `base`'s, each of own's classes relabelled as the class of base it is named
    after (class_key). The training images are shuffled together once, by a fixed seed, so --limit
    samples both; the test set is base's then own's, scored apart as well (Dataset.test_parts)."""
    mapping = class_mapping(own.class_names, base.class_names)
    if mapping is None:
        known, seen = {class_key(n) for n in base.class_names}, Counter(class_key(n) for n in own.class_names)
        wrong = [n for n in own.class_names if class_key(n) not in known or seen[class_key(n)] > 1]
        raise DataError(f"{name}: class folders {', '.join(printable(n) for n in wrong)} do not each name one class "
                        f"of {base.source}: {', '.join(base.class_names)} (compared by letters and digits, "
                        "ignoring case: T-shirt-top is T-shirt/top)")
    relabel = torch.tensor(mapping)
    train_images = torch.cat([base.train_images, own.train_images])
    train_labels = torch.cat([base.train_labels, relabel[own.train_labels]])
    order = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(0))
    parts = [("Fashion-MNIST", len(base.test_images)), (printable(name), len(own.test_images))]
    return Dataset(
        train_images=train_images[order], train_labels=train_labels[order],
        test_images=torch.cat([base.test_images, own.test_images]),
        test_labels=torch.cat([base.test_labels, relabel[own.test_labels]]),
        source=f"{base.source} + {own.source}",
        checksums={**base.checksums, **{f"{name}/{k}": v for k, v in own.checksums.items()}},
        class_names=list(base.class_names), skipped=own.skipped, duplicates=own.duplicates,
        notes=own.notes, test_parts=[(n, k) for n, k in parts if k], findings=own.findings,
    )


# --- the report ---------------------------------------------------------------------------------------

def test_set_problem(ds: Dataset) -> str | None:
    """Why a model trained on `ds` could not be tested: a split that leaves no test image (as a folder of
    classes of one image each does); None where there are test images."""
    if len(ds.test_images):
        return None
    return ("no test images, so a model trained on it could not be tested: give each class 2 different images "
            "or more (one or more of them is drawn for the test set), or put test images in DIR/test/<class>/")


# A crop that left out more of the picture's brightness counts as "cropped": of photo renders of 60
# training items (tests/sample_images.py), the plain ones lost 1.8% at most, half of those with a coin beside
# more than 2.2%, with a drop shadow 0.6% in the median and up to 7%.
LEFT_OUT = 0.02


def preprocessing_counts(findings: dict[str, Findings]) -> dict[str, list[str]]:
    """The files of each kind of finding, worst first (fewest object pixels): what `data` and the report list."""
    order = sorted(findings, key=lambda rel: (findings[rel].pixels, rel))
    kinds = {
        "empty": lambda f: f.pixels == 0,
        f"nearly empty (under {NEARLY_EMPTY} object pixels)": lambda f: 0 < f.pixels < NEARLY_EMPTY,
        "inverted (dark on light)": lambda f: f.inverted,
        "cropped (another object or a shadow left out)": lambda f: f.left_out > LEFT_OUT,
        "turned upright": lambda f: f.turned != 0,
        "with the object touching the frame": lambda f: f.touches_frame,
        "kept whole, with no background removed": lambda f: f.background == BACKGROUNDS[2] and f.pixels,
    }
    return {kind: [rel for rel in order if test(findings[rel])] for kind, test in kinds.items()}


def describe(ds: Dataset) -> list[str]:
    """The lines `fashion-cnn data` prints: source, counts per class, skipped and duplicate files, notes."""
    width = max(12, *(len(n) + 1 for n in ds.class_names))
    k = len(ds.class_names)
    lines = [f"source: {ds.source}",
             f"train: {len(ds.train_images)} images, test: {len(ds.test_images)} images"
             + "".join(f", {n} from {name}" for name, n in ds.test_parts) + ", 28x28 uint8",
             f"{'class':<{width}} {'train':>6} {'test':>6}"]
    lines += [f"{name:<{width}} {n_train:>6} {n_test:>6}" for name, n_train, n_test
              in zip(ds.class_names, class_counts(ds.train_labels, k), class_counts(ds.test_labels, k))]
    if ds.skipped:
        lines.append(f"skipped {len(ds.skipped)} file{'s' if len(ds.skipped) > 1 else ''}:")
        lines += [f"  {printable(rel)}: {printable(reason)}" for rel, reason in ds.skipped]
    if ds.duplicates:
        lines.append(f"{len(ds.duplicates)} set{'s' if len(ds.duplicates) > 1 else ''} of identical files "
                     "in two classes or in train and test:")
        lines += ["  " + ", ".join(printable(rel) for rel in group) for group in ds.duplicates]
    if ds.findings:
        counts = preprocessing_counts(ds.findings)
        lines.append(f"preprocessing of the {len(ds.findings)} images:")
        for k, (kind, files) in enumerate(counts.items()):
            lines.append(f"  {kind + ':':<48} {len(files):>6}")
            if k < 2 and files:  # empty and nearly empty: the ones to look at
                lines.append("    " + ", ".join(printable(rel) for rel in files[:10])
                             + (f" and {len(files) - 10} more" if len(files) > 10 else ""))
    problem = test_set_problem(ds)
    return lines + ds.notes + ([f"warning: {problem}"] if problem else [])
