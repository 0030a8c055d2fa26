"""Prediction on new images: which model to use, image decoding and preprocessing, inference.

Fashion-MNIST items are light objects on a black background, centred, their long side spanning all 28
pixels, 8-bit grayscale. `preprocess` turns an ordinary picture (usually a dark object on a light
background, anywhere in the frame) into that: grayscale, invert if the border is light, background to 0,
crop to the main object (not a coin beside it, not its shadow) turned upright, pad to a square, resize
to 28x28. Where it turned the object, the model also sees it as it stood, and answers from the view it
is surer of.
"""

from __future__ import annotations

import base64
import csv
import ctypes
import io
import os
import re
import stat
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import IO, Iterable, Iterator, Literal, Union

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from scipy import ndimage

from . import calibration
from .data import CLASS_NAMES, to_float
from .inference import IMAGES, predict_logits
from .runs import RUNS_ROOT, ModelFileError, check_output_file, load_model, write_atomic
from .terminal import printable

DEFAULT_MODEL = "weights/default.safetensors"  # inside the package: the strong model (README)
MAX_PIXELS = 40_000_000  # a 12-megapixel phone photo is far below; a decompression bomb far above
MAX_BYTES = 20_000_000
MAX_ASPECT = 50  # a longer strip is no picture of one object; also bounds each side to ~45,000 pixels
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")  # no EPS (Ghostscript), PSD, ICO... from strangers
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
SIZE = 28
WORKING_SIZE = 1024  # photos shrink to this first: border statistics and the crop need no more detail
# The brightest pixel of an object stands this many robust standard deviations of the border's noise above
# it: a bare wall's noise reaches 5-6.2 (its brightest pixel of ~10^5), a garment on a textured background
# 8.4 or more (benchmarks/predict_clutter.py's renders); without this the crop would blow up a speck of
# noise into an "object".
OBJECT_CONTRAST = 7
FOREGROUND = 0.05  # after the background is set to 0, what is brighter than this belongs to the object
SHARPEN = ImageFilter.UnsharpMask(radius=1, percent=50, threshold=0)  # +0.5-1% photo agreement (benchmark)
TOP_K = 3  # classes listed per image unless asked otherwise (predict, explain, the web API)
UNKNOWN = "unknown"  # the class_name of an image unlike anything the model was trained on
# Finding the main object (benchmarks/predict_clutter.py measured each choice):
ANALYSIS_SIZE = 128  # objects are found on a copy shrunk to this by block means: fast, and texture averages out
MERGE = 0.08  # parts of one garment lie closer than this share of its size (a sandal's straps, a coat's
#               halves: 99.95% of test items), an unrelated coin or tag lies farther
SHADOW = 0.4  # a shadow: fainter than this share of the object's median brightness, outside it, and
#               thicker than the object's own soft edge
MAX_TURN = 20  # degrees: an object turned by up to this much is set upright
EIGHT = np.ones((3, 3), bool)  # 8-connectivity: diagonal neighbours touch

Image.init()  # register every plugin now: Image.open(formats=...) fails on ones not yet loaded
# Pillow only warns between its limit and twice its limit; make that an error (decode() also checks).
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
warnings.simplefilter("error", Image.DecompressionBombWarning)
# Corrupt files make Pillow warn about each odd tag; the file's one-line error says enough.
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")


def silence_libtiff() -> None:
    """libtiff prints its own complaints about a corrupt TIFF on stderr, beside our one-line error for
    the file (Pillow raises an OSError for them as well): turn them off. Linux only, where the library
    Pillow loaded is found in /proc/self/maps; elsewhere they stay."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return
    # Each line: address, permissions, offset, device, inode, then the file's path (which may hold spaces).
    paths = {fields[5] for fields in (line.split(maxsplit=5) for line in maps.splitlines())
             if len(fields) == 6 and "/libtiff" in fields[5]}
    for path in paths:
        libtiff = ctypes.CDLL(path)  # the library already loaded, not a second copy
        libtiff.TIFFSetErrorHandler(None)
        libtiff.TIFFSetWarningHandler(None)


silence_libtiff()

Source = Union[str, Path, bytes, Image.Image, np.ndarray]


class ImageError(ValueError):
    """An input that cannot be used as an image; the message is one line naming the input."""

    def __init__(self, reason: str, source: str | None = None) -> None:
        super().__init__(f"{source}: {reason}" if source else reason)
        self.reason, self.source = reason, source


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


# --- decoding ------------------------------------------------------------------------------------

def over_limit(max_pixels: int, size: tuple[int, int] | None = None) -> ImageError:
    found = f"{size[0]}x{size[1]} pixels, " if size else ""
    return ImageError(f"{found}over the {max_pixels:,}-pixel limit (decompression bomb?)")


def check_size(size: tuple[int, int], max_pixels: int) -> None:
    """Refuse, before any pixel is decoded, a size that is empty, over the limit or a thin strip."""
    width, height = size
    if width * height > max_pixels:
        raise over_limit(max_pixels, size)
    if min(size) < 1:
        raise ImageError(f"{width}x{height} pixels: no picture")
    if max(size) > MAX_ASPECT * min(size):
        raise ImageError(f"{width}x{height} pixels: one side over {MAX_ASPECT} times the other, not a picture")


@contextmanager
def pillow_errors() -> Iterator[None]:
    """Whatever Pillow raises inside this block becomes an ImageError.

    On hostile bytes Pillow's plugins raise far more than the OSError they document: TypeError,
    KeyError, ZeroDivisionError, ... (fuzzing found them; tests/fuzz_corpus keeps examples). So the
    blocks this wraps hold only Pillow's work on one untrusted image (decoding, converting, resizing):
    an exception there is the image's fault, not a bug of ours to hide.
    """
    try:
        yield
    except ImageError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageError(f"not a {'/'.join(FORMATS)} image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise over_limit(MAX_PIXELS) from None  # Pillow's own guard, past twice its limit
    except MemoryError:
        raise ImageError("too large to decode") from None
    except Exception as e:  # noqa: BLE001 - see the docstring
        reason = " ".join(str(e).split())[:200] or type(e).__name__  # one line, bounded
        raise ImageError(f"truncated or corrupt image ({reason})") from None


def read_limited(path: Path) -> bytes:
    """A regular file's bytes, up to one past the limit. O_NONBLOCK: opening a FIFO must not wait for a
    writer; its type is then checked on the open descriptor, so it cannot be swapped in between."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ImageError("no such file") from None
    except OSError as e:
        raise ImageError(f"cannot read ({e.strerror or e})") from None
    try:  # the type before fdopen, which refuses a folder with an exception of its own
        kind = os.fstat(fd).st_mode
        if stat.S_ISDIR(kind):
            raise ImageError("a folder, not an image file")
        if not stat.S_ISREG(kind):
            raise ImageError("not a regular file (a FIFO, device or socket)")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(MAX_BYTES + 1)  # enough to tell it is over the limit
    except OSError as e:
        raise ImageError(f"cannot read ({e.strerror or e})") from None
    finally:
        os.close(fd)


def image_from_array(array: np.ndarray) -> Image.Image:
    """uint8/uint16 gray, RGB or RGBA arrays as they are; float arrays must already be in [0, 1]."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))) or 0 in array.shape:
        raise ImageError(f"array of shape {array.shape} is not an image (H, W), (H, W, 3) or (H, W, 4)")
    if array.dtype.kind == "f":
        if array.ndim != 2:
            raise ImageError("float arrays must be grayscale (H, W); use uint8 for colour")
        if not (np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1):
            raise ImageError("float arrays must hold values in [0, 1]")
        return Image.fromarray(array.astype(np.float32))
    if array.dtype not in (np.uint8, np.uint16) or (array.dtype == np.uint16 and array.ndim == 3):
        raise ImageError(f"unsupported array type {array.dtype} (use uint8, gray uint16 or float in [0, 1])")
    return Image.fromarray(array)


def decode(data: bytes, max_pixels: int) -> Image.Image:
    """Decode fully (so truncation shows here), first frame only, EXIF orientation applied; the size is
    checked from the header, before any pixel is decoded."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    if len(data) > MAX_BYTES:
        raise ImageError(f"over the {MAX_BYTES:,}-byte limit")
    with pillow_errors():
        image = Image.open(io.BytesIO(data), formats=FORMATS)
        check_size(image.size, max_pixels)
        image.load()
        ImageOps.exif_transpose(image, in_place=True)  # in place: no second copy of a large image
    return image


def load_image(source: Source, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """An untrusted path, file content, PIL image or array as a decoded PIL image, within the limits.

    Pillow's own bomb guard stays at MAX_PIXELS, so max_pixels can only tighten it.
    """
    if isinstance(source, (str, Path)):
        try:
            return decode(read_limited(Path(source)), max_pixels)
        except ImageError as e:
            raise ImageError(e.reason, str(source)) from None
    if isinstance(source, bytes):
        return decode(source, max_pixels)
    image = source if isinstance(source, Image.Image) else image_from_array(source)
    check_size(image.size, max_pixels)
    with pillow_errors():
        return ImageOps.exif_transpose(image)


# --- preprocessing -------------------------------------------------------------------------------

def working_image(image: Image.Image) -> Image.Image:
    """Any decoded image as 8-bit gray ("L"), or "F" for float images, at most WORKING_SIZE on its long
    side. Every mode shrinks first, so nothing after this holds more than WORKING_SIZE² pixels, however
    large the input; transparency is composited onto white."""
    if image.mode in ("1", "P", "PA"):  # Pillow resizes these by nearest neighbour; convert first
        image = image.convert("RGBA" if image.has_transparency_data else "L" if image.mode == "1" else "RGB")
    if max(image.size) > WORKING_SIZE:
        image = ImageOps.contain(image, (WORKING_SIZE, WORKING_SIZE), Image.Resampling.BOX)
    if image.mode == "F":
        return image
    if image.mode.startswith("I"):  # 16-bit: Pillow's convert("L") would clip to 255, not scale
        return Image.fromarray(np.clip(np.asarray(image) >> 8, 0, 255).astype(np.uint8))
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    return image if image.mode == "L" else image.convert("RGB").convert("L")


def float_pixels(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """A float image in [0, 1]: as it is if its pixels (from low to high) are in [0, 1], divided by 255
    if they are in [0, 255] (TIFFs saved from 8-bit data); anything else has no meaning we can know."""
    if not np.isfinite(x).all():  # also after shrinking: a box filter spreads NaN and inf, never hides them
        raise ImageError("float pixels that are NaN or infinite")
    if low >= 0 and high <= 1:
        return x
    if low >= 0 and high <= 255:
        return x / np.float32(255)
    raise ImageError(f"float pixels from {low:g} to {high:g}: expected [0, 1] or [0, 255]")


def to_grayscale(image: Image.Image) -> np.ndarray:
    """float32 (H, W) in [0, 1], at most WORKING_SIZE on the long side (see working_image)."""
    with pillow_errors():
        extrema = image.getextrema() if image.mode == "F" else None  # of every pixel, before shrinking
        gray = working_image(image)
    if extrema is None:
        return as_float(gray)
    return float_pixels(np.asarray(gray, dtype=np.float32), *extrema)


def as_float(gray: Image.Image) -> np.ndarray:
    """8-bit grayscale to float32 in [0, 1], by the conversion training uses (data.to_float)."""
    return to_float(torch.from_numpy(np.array(gray, dtype=np.uint8))[None])[0, 0].numpy()


def border(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x[0], x[-1], x[1:-1, 0], x[1:-1, -1]])


def has_light_background(x: np.ndarray) -> bool:
    return bool(np.median(border(x)) > 0.5)


def background(x: np.ndarray) -> np.ndarray:
    """The background as a plane through the medians of the four edges: it follows a photo's uneven
    lighting, and a median ignores an object that touches part of an edge."""
    top, bottom, left, right = (np.median(edge) for edge in (x[0], x[-1], x[:, 0], x[:, -1]))
    h, w = x.shape
    rows = np.linspace(top - bottom, bottom - top, h, dtype=np.float32)[:, None] / 2
    cols = np.linspace(left - right, right - left, w, dtype=np.float32)[None, :] / 2
    return np.median(border(x)) + rows + cols


def remove_background(x: np.ndarray) -> np.ndarray:
    """Background (and its noise) to 0, the brightest pixel to 1, as in Fashion-MNIST; all 0 when nothing
    stands out of the background's noise by OBJECT_CONTRAST."""
    x = x - background(x)
    edge = border(x)
    level = np.median(edge)
    sd = 1.4826 * np.median(np.abs(edge - level))  # robust: a median absolute deviation
    floor = level + 3 * sd
    top = x.max()
    if top <= level + OBJECT_CONTRAST * sd:  # (above the floor too: the floor is 3 sd)
        return np.zeros_like(x)
    return np.clip((x - floor) / (top - floor), 0, 1)


def box(mask: np.ndarray) -> tuple[slice, slice] | None:
    """The slices of the smallest box holding every true pixel; None if there is none."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)) if len(rows) else None


def crop_box(x: np.ndarray) -> np.ndarray:
    """The box around every pixel brighter than FOREGROUND (all of x if there is none)."""
    found = box(x > FOREGROUND)
    return x[found] if found else x


def shrink(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Means of f x f blocks (partial ones at the far edges), f chosen so the long side is at most
    ANALYSIS_SIZE; and f."""
    f = -(-max(x.shape) // ANALYSIS_SIZE)
    return np.asarray(Image.fromarray(x.astype(np.float32, copy=False)).reduce(f)) if f > 1 else x, f


def long_side(mask: np.ndarray) -> int:
    rows, cols = box(mask)
    return max(rows.stop - rows.start, cols.stop - cols.start)


def disk(radius: float) -> np.ndarray:
    r = max(1, round(radius))
    y, x = np.ogrid[-r:r + 1, -r:r + 1]
    return x * x + y * y <= r * r


def main_object(low: np.ndarray) -> np.ndarray | None:
    """The pixels of the main object: of the groups of parts lying within MERGE of its size of each other,
    the one with the most brightness. None if nothing is brighter than the background."""
    mask = low > FOREGROUND
    parts, n = ndimage.label(mask, EIGHT)
    if n == 0:
        return None
    obj = parts == 1 + np.argmax(ndimage.sum(low, parts, np.arange(1, n + 1)))
    if n > 1:
        gap = ndimage.distance_transform_edt(~mask)
        for _ in range(2):  # the group's size sets the distance: once from the largest part, once from the group
            groups, k = ndimage.label(gap <= MERGE * long_side(obj) / 2, EIGHT)
            obj = mask & (groups == 1 + np.argmax(ndimage.sum(low, groups, np.arange(1, k + 1))))
    return obj


def shadow_of(low: np.ndarray, obj: np.ndarray) -> np.ndarray:
    """The object's shadow: the faint band (below SHADOW of its median brightness) that joins it to the
    background, where that band is thicker than one Fashion-MNIST pixel, the object's own soft edge."""
    faint, _ = ndimage.label(~obj | (low < SHADOW * np.median(low[obj])))
    outside = obj & np.isin(faint, np.setdiff1d(border(faint), [0]))
    edge = disk(long_side(obj) / SIZE)
    shadow = ndimage.binary_dilation(ndimage.binary_opening(outside, edge), edge) & outside
    return shadow if (obj & ~shadow).any() else np.zeros_like(obj)


def turned_box_areas(obj: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The turns tried (whole degrees within MAX_TURN, smallest first: 0 is the first) and the area of the
    object's bounding box after each."""
    rows, cols = np.nonzero(obj & ~ndimage.binary_erosion(obj))
    degrees = np.array(sorted(range(-MAX_TURN, MAX_TURN + 1), key=abs))  # ties go to the smallest turn
    angles = np.deg2rad(degrees)[:, None]
    across = cols * np.cos(angles) + rows * np.sin(angles)
    down = rows * np.cos(angles) - cols * np.sin(angles)
    return degrees, (np.ptp(across, 1) + 1) * (np.ptp(down, 1) + 1)


def upright_angle(obj: np.ndarray) -> float:
    """The turn (degrees, within MAX_TURN) that makes the object's bounding box smallest: garments stand
    upright in Fashion-MNIST, and for 90% of test items this box is smallest within 2 degrees of upright."""
    degrees, area = turned_box_areas(obj)
    return float(degrees[np.argmin(area)])


def crop_to_object(x: np.ndarray) -> tuple[np.ndarray, float]:
    """The main object of a background-free image, cropped (other objects and its shadow set to 0), and
    the turn (degrees) that would set it upright: 0 where it stands less than a degree off."""
    low, f = shrink(x)
    obj = main_object(low)
    if obj is None:
        return x, 0.0
    rows, cols = box(obj)  # from here on, only the object's box (and a 1-block rim) matters
    rim = slice(max(rows.start - 1, 0), rows.stop + 1), slice(max(cols.start - 1, 0), cols.stop + 1)
    low, obj = low[rim], obj[rim]
    top, left = rim[0].start, rim[1].start
    shadow = shadow_of(low, obj)
    obj &= ~shadow
    # with the soft edge that the block means dimmed, except next to the shadow, whose faint ends it holds
    keep = obj | ndimage.binary_dilation(obj, EIGHT) & ~ndimage.binary_dilation(shadow, EIGHT)
    x = x[top * f:(top + len(keep)) * f, left * f:(left + keep.shape[1]) * f]
    blocks = keep[np.arange(x.shape[0]) // f][:, np.arange(x.shape[1]) // f]
    x = crop_box(x * blocks)
    x /= x.max()  # the object's brightest pixel to 1, though a darker coin beside it set the scale
    return x, upright_angle(obj)


def turn(x: np.ndarray, angle: float) -> np.ndarray:
    """A cropped object turned by `angle` degrees and cropped again."""
    # at 4x the final size at most: more detail would be resized away
    turned = Image.fromarray(x.astype(np.float32, copy=False)).reduce(max(1, max(x.shape) // (4 * SIZE)))
    turned = turned.rotate(angle, Image.Resampling.BICUBIC, expand=True)
    return crop_box(np.clip(np.asarray(turned), 0, 1))


def pad_and_resize(x: np.ndarray) -> np.ndarray:
    """Centre on a black square (aspect ratio kept, no margin: Fashion-MNIST's long side spans all 28
    pixels), resize to 28x28 with antialiasing, then sharpen as Fashion-MNIST's own pipeline did.

    The result is 8-bit like the training data, so a saved PNG is exactly what the model saw.
    """
    h, w = x.shape
    side = max(h, w)
    square = np.zeros((side, side), np.float32)
    top, left = (side - h) // 2, (side - w) // 2
    square[top:top + h, left:left + w] = x
    small = np.asarray(Image.fromarray(square).resize((SIZE, SIZE), Image.Resampling.LANCZOS))
    return as_float(Image.fromarray(np.round(np.clip(small, 0, 1) * 255).astype(np.uint8)).filter(SHARPEN))


def preprocess_views(image: Source, invert: bool | None = None, crop: bool = True) -> list[np.ndarray]:
    """What `predict` shows the model: float32 (28, 28) images in [0, 1], light object on black, as the
    model was trained on. One, or two where the crop found the object standing 1-20 degrees off upright:
    turned upright, then as it stands. Either can be right (a garment can have a slanted outline, or a
    box smallest off upright): `predict` answers from the one the model is surer of, which scores as well
    as never turning on upright photos and as well as always turning on turned ones
    (benchmarks/upright_turn.py).

    invert=None inverts when the border is light. A 28x28 input is taken as already framed like
    Fashion-MNIST: only inverted (if at all), never cropped or rescaled, so test-set images pass
    through unchanged.
    """
    x = to_grayscale(load_image(image))
    if invert is None:
        invert = has_light_background(x)
    if invert:
        x = 1 - x
    if x.shape == (SIZE, SIZE):
        return [x]
    x = remove_background(x)
    if not crop:
        return [pad_and_resize(x)]
    x, angle = crop_to_object(x)
    return [pad_and_resize(turn(x, angle)), pad_and_resize(x)] if angle else [pad_and_resize(x)]


def preprocess(image: Source, invert: bool | None = None, crop: bool = True) -> np.ndarray:
    """The one image that stands for a picture where only one can (an imported training image): its
    first view, turned upright where the crop turns it (preprocess_views)."""
    return preprocess_views(image, invert, crop)[0]


# --- inference -----------------------------------------------------------------------------------

@dataclass
class Prediction:
    """One input's answer. class_name is "unknown" (and class_index None) when the image is unlike the
    training images; top_k and probabilities still hold the model's best guesses."""

    source: str
    class_name: str | None = None
    class_index: int | None = None
    probabilities: list[float] = field(default_factory=list)  # calibrated, one per class, in the model's order
    top_k: list[tuple[str, float]] = field(default_factory=list)
    image: np.ndarray | None = None  # the 28x28 the model saw and answered from
    other_view: np.ndarray | None = None  # where the crop turned the object, the view it did not answer from
    error: str | None = None  # why this input could not be used; the other fields are then empty
    unknown: bool = False  # unlike the training images: by the model file's rule, or --min-confidence

    @property
    def probability(self) -> float | None:
        """The top class's calibrated probability (of the best guess, for an unknown image)."""
        return self.top_k[0][1] if self.top_k else None


Errors = Literal["raise", "report"]
ERRORS = ("raise", "report")  # what predict does with an input it cannot use: raise, or set its `error`


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def source_name(item: Source, index: int) -> str:
    return str(item) if isinstance(item, (str, Path)) else f"<{type(item).__name__} {index}>"


def batch_images(array: np.ndarray) -> list[np.ndarray] | None:
    """The images of a batch array, or None for an array of one image (H, W) or (H, W, 1|3|4). A batch
    is grayscale, in any of the layouts Fashion-MNIST arrays come in: (N, H, W), Keras's (N, H, W, 1)
    or PyTorch's (N, 1, H, W); anything else of 4 or more dimensions is an ImageError."""
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4)):
        return None
    if array.ndim == 3:
        return list(array)
    if array.ndim == 4 and array.shape[3] == 1:
        return list(array[..., 0])
    if array.ndim == 4 and array.shape[1] == 1:
        return list(array[:, 0])
    raise ImageError(f"array of shape {array.shape} is neither an image (H, W), (H, W, 3) or (H, W, 4) nor a "
                     "batch of grayscale images (N, H, W), (N, H, W, 1) or (N, 1, H, W)")


def array_sources(name: str, array: np.ndarray | torch.Tensor) -> list[tuple[str, Source | ImageError]]:
    """expand_sources for an array: itself, or a batch's images named name[0], name[1], ..."""
    try:
        batch = batch_images(np.asarray(array))
    except ImageError as e:
        return [(name, e)]
    return [(name, array)] if batch is None else [(f"{name}[{j}]", image) for j, image in enumerate(batch)]


def expand_sources(images: Source | Iterable[Source]) -> list[tuple[str, Source | ImageError]]:
    """(name, source) per image: one image or a list of them; folders become their image files, batch
    arrays (batch_images) their images, named `<ndarray 0>[i]`."""
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    expanded: list[tuple[str, Source | ImageError]] = []
    for i, item in enumerate(items):
        if isinstance(item, (np.ndarray, torch.Tensor)):
            expanded += array_sources(source_name(item, i), item)
        elif not (isinstance(item, (str, Path)) and Path(item).is_dir()):
            expanded.append((source_name(item, i), item))
        elif files := image_files(Path(item)):
            expanded += [(str(f), f) for f in files]
        else:
            no_images = ImageError(f"a folder with no image files ({', '.join(IMAGE_SUFFIXES)})")
            expanded.append((str(item), no_images))
    return expanded


def prepare(name: str, source: Source | ImageError, invert: bool | None, crop: bool) -> Prediction:
    try:
        if isinstance(source, ImageError):
            raise source
        image, *other = preprocess_views(source, invert, crop)
        return Prediction(name, image=image, other_view=other[0] if other else None)
    except ImageError as e:
        return Prediction(name, error=e.reason)


class Predictor:
    """A loaded model, the class names it predicts, its temperature and its rule for "unknown"; `model` as
    resolve_model_path reads it (default: the model shipped with the package).

    min_confidence: call every image whose calibrated top probability is below this unknown, instead of
    the model file's own rule (0: never unknown). Model files without calibration have temperature 1 and
    no rule of their own.
    """

    def __init__(self, model: str | Path | None = None, device: str = "cpu",
                 min_confidence: float | None = None) -> None:
        self.path = resolve_model_path(model)
        self.model, self.meta = load_model(self.path, device)
        self.class_names = list(self.meta.get("class_names", CLASS_NAMES))
        self.temperature, self.unknown_rule = calibration.from_metadata(self.meta, self.path)
        if min_confidence is not None:
            self.unknown_rule = calibration.min_confidence_rule(min_confidence, self.temperature)

    def logits(self, x: np.ndarray) -> torch.Tensor:
        """Raw logits (N, classes) for float32 images (N, 28, 28) in [0, 1]."""
        return predict_logits(self.model, torch.from_numpy(np.asarray(x, np.float32)).unsqueeze(1))

    def predict_arrays(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """Calibrated probabilities (N, classes) for a batch of Fashion-MNIST-like images (N, 28, 28), numpy
        or torch: uint8 as `load_fashion_mnist` gives them (scaled as in training) or float in [0, 1].
        Other dtypes, float values outside [0, 1] (NaN too) and other shapes are a ValueError."""
        if not isinstance(x, torch.Tensor):
            x = np.asarray(x)
            if x.dtype.kind not in "uif":  # torch cannot even hold strings or objects
                raise ValueError(f"images of type {x.dtype}: expected {IMAGES}")
            x = torch.from_numpy(np.ascontiguousarray(x))
        if x.ndim != 3 or tuple(x.shape[1:]) != (SIZE, SIZE):
            raise ValueError(f"images of shape {tuple(x.shape)}: expected (N, {SIZE}, {SIZE})")
        return calibration.probabilities(predict_logits(self.model, x.detach().cpu()), self.temperature).numpy()

    def predict(self, images: Source | Iterable[Source], top_k: int = TOP_K, invert: bool | None = None,
                crop: bool = True, min_confidence: float | None = None, errors: Errors = "raise"
                ) -> list[Prediction]:
        """One Prediction per image: `images` is one image (a path, bytes, a PIL image or an array) or a
        list of them; folders stand for their image files, and batch arrays (N, H, W), (N, H, W, 1) or
        (N, 1, H, W), uint8 or float in [0, 1] as Keras and PyTorch hold Fashion-MNIST, for their N images.

        errors: "raise" (the default): an input that cannot be used is an ImageError (a ValueError) naming
        it, before the model runs; "report": its Prediction gets `error` set instead, and the others are
        still predicted (the CLI and the web API report bad files so).
        min_confidence overrides the predictor's rule for unknown images for this call (see Predictor).
        """
        if errors not in ERRORS:
            raise ValueError(f"errors must be one of {', '.join(ERRORS)}, not {errors!r}")
        predictions = [prepare(name, source, invert, crop) for name, source in expand_sources(images)]
        if errors == "raise":
            raise_first_error(predictions)
        self.predict_prepared(predictions, top_k, min_confidence)
        if errors == "raise":
            raise_first_error(predictions)  # a model that gives no finite answer
        return predictions

    def predict_prepared(self, predictions: list[Prediction], top_k: int = TOP_K,
                         min_confidence: float | None = None) -> list[Prediction]:
        """Fill in the classes of predictions made by `prepare` (those with an `error` stay as they are)."""
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, not {top_k}")
        rule = self.unknown_rule if min_confidence is None else \
            calibration.min_confidence_rule(min_confidence, self.temperature)
        ok = [p for p in predictions if p.error is None]
        if ok:
            second = [i for i, p in enumerate(ok) if p.other_view is not None]
            views = self.logits(np.stack([p.image for p in ok] + [ok[i].other_view for i in second]))
            view_probabilities = calibration.probabilities(views, self.temperature)
            top = view_probabilities.amax(1)
            answer = list(range(len(ok)))  # the row of `views` each prediction answers from
            for j, i in enumerate(second, start=len(ok)):  # the view the model is surer of
                if top[j] > top[i]:
                    answer[i], ok[i].image, ok[i].other_view = j, ok[i].other_view, ok[i].image
            logits = views[answer]
            unknown = rule.unknown(logits).tolist() if rule else [False] * len(ok)
            probabilities = view_probabilities[answer].numpy()
            for p, probs, is_unknown in zip(ok, probabilities, unknown):
                if not np.isfinite(probs).all():  # NaN is no answer, and not even valid JSON
                    p.error = "the model gave non-finite probabilities (a broken model file?)"
                    p.image = p.other_view = None
                    continue
                order = np.argsort(-probs, kind="stable")
                p.unknown = is_unknown
                p.class_index = None if p.unknown else int(order[0])
                p.class_name = UNKNOWN if p.unknown else self.class_names[order[0]]
                p.probabilities = probs.tolist()
                p.top_k = [(self.class_names[i], float(probs[i])) for i in order[:top_k]]
        return predictions

    def describe(self) -> str:
        """`model: PATH (architecture, test accuracy; calibration and the rule for unknown)`: the line every
        command that uses a model prints first."""
        accuracy = self.meta.get("test_accuracy")
        score = f", test accuracy {100 * accuracy:.2f}%" if accuracy is not None else ""
        calibrated = f"temperature {self.temperature:.3g}" if "calibration" in self.meta else "not calibrated"
        rule = self.unknown_rule.describe() if self.unknown_rule else "never unknown"
        return f"model: {self.path} ({self.meta['architecture']}{score}; {calibrated}, {rule})"


def raise_first_error(predictions: list[Prediction]) -> None:
    """The first prediction's error, if any has one, as an ImageError naming its input."""
    failed = next((p for p in predictions if p.error), None)
    if failed is not None:
        raise ImageError(failed.error, failed.source)


def predict(images: Source | Iterable[Source], model: str | Path | None = None, top_k: int = TOP_K,
            **options) -> list[Prediction]:
    """Predict with the shipped model, or the one `model` names (see resolve_model_path); see
    Predictor.predict."""
    return Predictor(model).predict(images, top_k=top_k, **options)


# --- output --------------------------------------------------------------------------------------

def format_line(p: Prediction) -> str:
    """`shoe.jpg: Sneaker (0.93)  [Sneaker 0.93, Sandal 0.05, Ankle boot 0.01]`, or for an unknown image
    `wall.jpg: unknown (best guess Bag 0.41)  [Bag 0.41, ...]`"""
    ranked = ", ".join(f"{name} {prob:.2f}" for name, prob in p.top_k)
    best = f"best guess {p.top_k[0][0]} {p.top_k[0][1]:.2f}" if p.unknown else f"{p.top_k[0][1]:.2f}"
    return f"{printable(p.source)}: {p.class_name} ({best})  [{ranked}]"


# The fields of a prediction's record: Prediction's attributes of the same names, so that the Python API, the
# CLI's --json and the web API's results (serve.FileResult) speak one vocabulary.
RECORD_FIELDS = ("source", "class_name", "class_index", "probability", "top_k", "probabilities", "unknown", "error")


def as_record(p: Prediction, class_names: list[str]) -> dict:
    """One prediction as JSON-ready fields (the CLI's --json and the web API's results): RECORD_FIELDS,
    with top_k as {class_name, probability} objects and probabilities by class name."""
    record = {name: getattr(p, name) for name in RECORD_FIELDS}
    record["top_k"] = [{"class_name": name, "probability": prob} for name, prob in p.top_k]
    record["probabilities"] = dict(zip(class_names, p.probabilities))
    return record


def as_json(predictions: list[Prediction], predictor: Predictor) -> dict:
    return {
        "model": {"path": str(predictor.path), "architecture": predictor.meta["architecture"],
                  "test_accuracy": predictor.meta.get("test_accuracy"), "temperature": predictor.temperature,
                  "unknown_rule": predictor.unknown_rule.describe() if predictor.unknown_rule else None},
        "predictions": [as_record(p, predictor.class_names) for p in predictions],
    }


def write_csv(predictions: list[Prediction], class_names: list[str], out: IO[str]) -> None:
    """source, class_name, probability, one column per class, error."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["source", "class_name", "probability", *class_names, "error"])
    for p in predictions:
        best = f"{p.top_k[0][1]:.6f}" if p.top_k else ""
        probs = [f"{q:.6f}" for q in p.probabilities] or [""] * len(class_names)
        writer.writerow([p.source, p.class_name or "", best, *probs, p.error or ""])


def png_bytes(image: np.ndarray) -> bytes:
    """A grayscale image as 8-bit PNG: uint8 as it is, float in [0, 1] (as the model sees it) scaled."""
    if image.dtype != np.uint8:
        image = np.round(image * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def data_url(png: bytes) -> str:
    """PNG bytes as a data URL, which a page shows without another request or file."""
    return "data:image/png;base64," + base64.b64encode(png).decode()


def output_name(index: int, source: str) -> str:
    """<index>-<name>.png for the index-th input: unique, in input order, safe as a file name."""
    stem = re.sub(r"[^\w.-]+", "_", Path(source).stem).strip("_") or "image"
    return f"{index:04d}-{stem}.png"


def save_preprocessed(predictions: list[Prediction], out_dir: str | Path, force: bool = False) -> list[Path]:
    """The 28x28 images the model saw, as PNG: <index>-<name>.png in input order (the view it answered
    from), and where the crop turned the object, the other view beside it (<index>-<name>-other-view.png).
    Every file is checked before the first is written (runs.check_output_file): one already there is
    replaced only with force, an input image never."""
    views = []
    for i, p in enumerate(predictions):
        if p.image is None:
            continue
        path = Path(out_dir) / output_name(i, p.source)
        views.append((path, p.image))
        if p.other_view is not None:
            views.append((path.with_name(f"{path.stem}-other-view.png"), p.other_view))
    inputs = tuple(p.source for p in predictions)
    for path, _ in views:
        check_output_file(path, force, inputs)
    for path, image in views:
        write_atomic(path, png_bytes(image))
    return [path for path, _ in views]
