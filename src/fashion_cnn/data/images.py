"""Images from strangers: decoding within limits, and the photo preprocessing that turns a picture into a
Fashion-MNIST-like 28x28 image (background, main object, upright turn)."""

from __future__ import annotations

import base64
import ctypes
import io
import os
import stat
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Union

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from scipy import ndimage


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W) -> float32 (N, 1, H, W) in [0, 1]: the one pixel scaling that training,
    evaluation, prediction and export share, so a saved 8-bit image is exactly what a model saw."""
    return images.unsqueeze(1).float().div_(255.0)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """float in [0, 1] -> uint8: the inverse of to_float, exact for the images `predict.preprocess` returns."""
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
MAX_PIXELS = 40_000_000  # a 12-megapixel phone photo is far below; a decompression bomb far above
MAX_BYTES = 20_000_000
MAX_ASPECT = 50  # a longer strip is no picture of one object; also bounds each side to ~45,000 pixels
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")  # no EPS (Ghostscript), PSD, ICO... from strangers
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
SIZE = 28
WORKING_SIZE = 1024  # photos shrink to this first: border statistics and the crop need no more detail
# The brightest pixel of an object stands this many robust standard deviations of the border's noise above
# it: a bare wall's noise reaches 5-6.2 (its brightest pixel of ~10^5; predict_clutter.py's walls), 7.8 for
# the most of 300 unknown_rate.py's walls; a garment 8.8 or more on photos of 1,200 held-out training items,
# plain, textured, unevenly lit or all at once (benchmarks/preprocess_constants.py); without this the crop
# would blow up a speck of noise into an "object".
OBJECT_CONTRAST = 7
# Where no background is found at the border, a picture is taken as content (and kept whole) when its
# brightest block (of those `shrink` averages) stands this far above the border's median: 0.26 at most for
# 90 renders of bare walls (plain, textured, unevenly lit as benchmarks/predict_clutter.py lights them),
# 0.19 for JPEG photos of random noise (0.35 at 200x150), 0.52 at least for the first 1,000 Fashion-MNIST
# training items framed in 7 ways (tests/sample_images.py's `framings`) whose border held no background;
# 0 for an object darker than its background (predict --no-invert on a photo).
CONTENT = 0.4
BACKGROUNDS = ("plane", "level", "none")  # how remove_background found the background (above)
# One level is taken before the plane where its border's noise is below this share of the plane's: it is 0
# (of the plane's) for every one of the 1,797 bare 8x8 digits, whose strokes on one edge tilt the plane, and
# 0.93 or more for photo renders of training items (plain, textured or unevenly lit), which keep the plane.
LEVEL_BETTER = 0.5
FOREGROUND = 0.05  # after the background is set to 0, what is brighter than this belongs to the object
# After the resize: on photos of 300 held-out training items a kind, agreement with and without it differs
# by at most a point either way (preprocess_constants.py): no difference beyond the noise; kept as it was
SHARPEN = ImageFilter.UnsharpMask(radius=1, percent=50, threshold=0)
# Finding the main object (benchmarks/predict_clutter.py measured each choice):
ANALYSIS_SIZE = 128  # objects are found on a copy shrunk to this by block means: fast, and texture averages out
MERGE = 0.08  # parts of one garment lie closer than this share of its size (a sandal's straps, a coat's
#               halves: whole for 99.70% of training items, 99.90% at 0.12, 96.33% unmerged; benchmarks/
#               preprocess_constants.py), an unrelated coin or tag lies farther (predict_clutter.py)
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


def spread(x: np.ndarray) -> tuple[float, float]:
    """The median of the border and its noise: a robust standard deviation (from the median absolute deviation)."""
    edge = border(x)
    middle = np.median(edge)
    return middle, 1.4826 * np.median(np.abs(edge - middle))


def without(x: np.ndarray, middle: float, sd: float) -> np.ndarray | None:
    """A background-free x (its border at `middle`, with noise `sd`): the noise (3 sd) to 0 and the brightest
    pixel to 1; None when nothing stands out of the noise by OBJECT_CONTRAST."""
    floor = middle + 3 * sd
    top = x.max()
    if top <= middle + OBJECT_CONTRAST * sd:  # (above the floor too: the floor is 3 sd)
        return None
    return np.clip((x - floor) / (top - floor), 0, 1)


def background_fits(x: np.ndarray) -> list[tuple[str, np.ndarray, float, float]]:
    """(name, x less that background, the border's median and noise after it) for the plane and the level,
    in the order remove_background tries them: the level first where its border is LEVEL_BETTER."""
    fits = [(name, y, *spread(y)) for name, y in zip(BACKGROUNDS, (x - background(x), x - np.median(border(x))))]
    if fits[1][3] < LEVEL_BETTER * fits[0][3]:
        fits.reverse()
    return fits


def remove_background(x: np.ndarray) -> tuple[np.ndarray, str]:
    """Background (and its noise) to 0, the brightest pixel to 1, as in Fashion-MNIST; and which of
    BACKGROUNDS it took. The first that finds an object: a plane through the edges (uneven light), one
    level (first where the border is LEVEL_BETTER: an object lying on one edge tilts the plane, as in the
    bare 8x8 digits), or, where the object fills the border and leaves no background there (a tight crop),
    none: darkest pixel to 0. All 0 (and "none") only for a picture with no content: nothing stands out
    of the border's noise, nor by CONTENT of the gray scale above its median (a wall, however lit)."""
    for name, y, middle, sd in background_fits(x):
        if (found := without(y, middle, sd)) is not None:
            return found, name
    blocks = shrink(x)[0]  # pixel noise averages out (a picture of noise has no object)
    if blocks.max() - np.median(border(blocks)) < CONTENT:
        return np.zeros_like(x), BACKGROUNDS[2]
    low = np.percentile(x, 0.5)  # not the minimum: one dark speck would set the scale
    return np.clip((x - low) / (x.max() - low), 0, 1), BACKGROUNDS[2]


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
    upright in Fashion-MNIST, and for 95.8% of training items this box is smallest within 2 degrees of upright
    (benchmarks/preprocess_constants.py)."""
    degrees, area = turned_box_areas(obj)
    return float(degrees[np.argmin(area)])


def crop_to_object(x: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The main object of a background-free image, cropped (other objects and its shadow set to 0), the
    turn (degrees) that would set it upright (0 where it stands less than a degree off), and the share of
    the image's brightness the crop left out."""
    low, f = shrink(x)
    obj = main_object(low)
    if obj is None:
        return x, 0.0, 0.0
    total = x.sum()
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
    left_out = 1 - x.sum() / total
    x /= x.max()  # the object's brightest pixel to 1, though a darker coin beside it set the scale
    return x, upright_angle(obj), float(left_out)


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


@dataclass
class Findings:
    """What preprocessing did to one picture, which an import counts and reports."""

    inverted: bool = False
    background: str = BACKGROUNDS[0]  # how remove_background found it; "none" also for a framed picture
    touches_frame: bool = False  # what stands out of the background reaches the picture's edge
    left_out: float = 0.0  # the share of its brightness that the crop left out (another object, a shadow)
    turned: float = 0.0  # degrees the object was turned to stand upright
    pixels: int = 0  # object pixels (brighter than FOREGROUND) in the 28x28 result; 0: an empty result


def object_pixels(x: np.ndarray) -> int:
    """The pixels of a preprocessed image that belong to an object (brighter than FOREGROUND); 0: empty."""
    return int((x > FOREGROUND).sum())


def preprocess_picture(image: Source, invert: bool | None = None, crop: bool = True,
                       framed: bool = False) -> tuple[list[np.ndarray], Findings]:
    """preprocess_views' views, and what it found and did on the way (Findings).

    framed: take the picture as framed like Fashion-MNIST (the object filling it, as a bare scanned digit):
    only inverted (if at all), padded to a square and resized, as a 28x28 picture always is.
    """
    x = to_grayscale(load_image(image))
    found = Findings(inverted=has_light_background(x) if invert is None else invert)
    if found.inverted:
        x = 1 - x
    if framed or x.shape == (SIZE, SIZE):
        found.background = BACKGROUNDS[2]
        views = [x if x.shape == (SIZE, SIZE) else pad_and_resize(x)]
    else:
        x, found.background = remove_background(x)
        found.touches_frame = bool((border(shrink(x)[0]) > FOREGROUND).any())
        if crop:
            x, found.turned, found.left_out = crop_to_object(x)
        views = [pad_and_resize(turn(x, found.turned)), pad_and_resize(x)] if found.turned else [pad_and_resize(x)]
    found.pixels = object_pixels(views[0])
    return views, found


def preprocess_views(image: Source, invert: bool | None = None, crop: bool = True,
                     framed: bool = False) -> list[np.ndarray]:
    """What `predict` shows the model: float32 (28, 28) images in [0, 1], light object on black, as the
    model was trained on. One, or two where the crop found the object standing 1-20 degrees off upright:
    turned upright, then as it stands. Either can be right (a garment can have a slanted outline, or a
    box smallest off upright): `predict` answers from the one the model is surer of, which scores as well
    as never turning on upright photos and as well as always turning on turned ones
    (benchmarks/upright_turn.py).

    invert=None inverts when the border is light. A 28x28 input is taken as already framed like
    Fashion-MNIST: only inverted (if at all), never cropped or rescaled, so test-set images pass
    through unchanged; framed=True takes any picture so (preprocess_picture).
    """
    return preprocess_picture(image, invert, crop, framed)[0]


def preprocess(image: Source, invert: bool | None = None, crop: bool = True) -> np.ndarray:
    """The one image that stands for a picture where only one can (an imported training image): its
    first view, turned upright where the crop turns it (preprocess_views)."""
    return preprocess_views(image, invert, crop)[0]


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
