"""Real images for tests and benchmarks: scikit-learn's handwritten digits as a folder of PNG files, and
Fashion-MNIST items rendered as photos, plain or with clutter (a Scene): other objects, textured
backgrounds, shadows, uneven light, rotation (benchmarks/common.py re-exports these)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

CANVAS = (300, 400)  # width, height: a portrait phone photo, small enough to render quickly


MARGIN = 2  # black pixels around each 8x8 digit (below)


def digits(per_class: int | None = None, margin: int = MARGIN) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 real 8x8 handwritten digits as uint8 images, light on dark (0..16 scaled to
    0..255), framed by `margin` pixels of black, and their labels; with per_class, the first that many of
    each class.

    Why a margin by default: a photo or scan of a digit has one. The bare digits fill their frame (they were
    cropped to the digit), which `predict.preprocess` also handles (test_predict.py).
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.pad(np.round(bunch.images * (255 / 16)).astype(np.uint8), ((0, 0), (margin, margin), (margin, margin)))
    keep = np.arange(len(images)) if per_class is None else \
        np.sort(np.concatenate([np.flatnonzero(bunch.target == c)[:per_class] for c in range(10)]))
    return images[keep], bunch.target[keep]


def resized(image: np.ndarray, side: int) -> np.ndarray:
    """A uint8 image resized (bicubic) so that its long side is `side` pixels, its aspect ratio kept."""
    h, w = image.shape
    size = (max(1, round(w * side / max(h, w))), max(1, round(h * side / max(h, w))))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))


def cropped_tight(image: np.ndarray) -> np.ndarray:
    """A light-on-black image cut to the box around its non-black pixels: the object touches all four sides."""
    rows, cols = np.nonzero(image)
    return image[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


def framings(item: np.ndarray) -> dict[str, np.ndarray]:
    """A Fashion-MNIST item (28x28 uint8, light on black) as people save such pictures: inverted (dark on
    light), upscaled, padded, cropped tight to the garment (as it is and upscaled), either way round."""
    tight = cropped_tight(item)
    return {"inverted": 255 - item, "upscaled 56": resized(item, 56),
            "inverted, upscaled 100": 255 - resized(item, 100), "inverted, padded": 255 - np.pad(item, 6),
            "cropped tight": tight, "inverted, cropped tight": 255 - tight,
            "cropped tight, upscaled 64": resized(tight, 64),
            "inverted, cropped tight, upscaled 64": 255 - resized(tight, 64)}


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def write_digits_folder(root: Path, per_class: int | None = None, first: int = 0) -> list[Path]:
    """root/<digit>/<index>.png, 12x12 PNG files of the digits (preprocessing scales them to 28x28);
    `first` skips that many of each class (to add other files to a folder later)."""
    images, labels = digits(None if per_class is None else first + per_class)
    paths, seen = [], {}
    for index, (image, label) in enumerate(zip(images, labels)):
        seen[label] = seen.get(label, 0) + 1
        if seen[label] <= first:
            continue
        path = root / str(label) / f"{index:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes(image))
        paths.append(path)
    return paths


@dataclass(frozen=True)
class Scene:
    """What a photo shows beyond the plain render: each distortion is off by default."""
    distractor: bool = False  # a small dark coin, button or tag elsewhere in the frame
    texture: bool = False  # mottled paper, wood grain or woven fabric instead of a flat background
    shadow: bool = False  # a soft drop shadow of the garment, offset to a random side
    lighting: bool = False  # a strong gradient and an off-centre vignette over the whole photo
    rotation: float = 0.0  # the garment turned by up to this many degrees, either way


def render_photo(item: np.ndarray, rng: np.random.Generator, scene: Scene = Scene()) -> bytes:
    """A 28x28 uint8 test item as a JPEG of a dark object on a light background, off-centre.

    The plain scene draws exactly the random numbers it always drew, so earlier results stay
    reproducible; each distortion draws its own numbers only when it is on.
    """
    width, height = CANVAS
    roomy = scene.distractor or scene.rotation  # leave room for the distractor or the turned corners
    side = int(28 * rng.uniform(5, 8 if roomy else 10))
    alpha = np.asarray(Image.fromarray(item).resize((side, side), Image.Resampling.BICUBIC), np.float32) / 255
    if scene.rotation:
        alpha = turned(alpha, rng.uniform(-scene.rotation, scene.rotation))
    mask = np.zeros((height, width), np.float32)
    top, left = rng.integers(0, height - alpha.shape[0] + 1), rng.integers(0, width - alpha.shape[1] + 1)
    mask[top:top + alpha.shape[0], left:left + alpha.shape[1]] = alpha
    background = rng.uniform(200, 250, 3)  # off-white paper or wall, slightly tinted
    light = 1 + rng.uniform(-0.06, 0.06) * np.linspace(-1, 1, width)  # uneven lighting, left to right
    colour = rng.uniform(0, 70, 3)  # a dark garment, not pure black
    paper = background * light[None, :, None]
    if scene.texture:
        paper = paper + texture(rng, (height, width))[..., None]
    if scene.shadow:
        paper = paper * (1 - drop_shadow(mask, side, rng))[..., None]
    if scene.distractor:
        spot, spot_colour = distractor(mask, side, rng)
        paper = paper * (1 - spot[..., None]) + spot_colour * spot[..., None]
    photo = paper * (1 - mask[..., None]) + colour * mask[..., None]
    if scene.lighting:
        photo = photo * lighting(rng, (height, width))[..., None]
    photo = photo + rng.normal(0, 3, (height, width, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def turned(alpha: np.ndarray, degrees: float) -> np.ndarray:
    """The garment's coverage turned about its centre, cut to what it covers."""
    out = np.asarray(Image.fromarray(alpha).rotate(degrees, Image.Resampling.BICUBIC, expand=True))
    out = np.clip(out, 0, 1)
    rows, cols = np.nonzero(out > 0.02)
    return out[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


def grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (rows, columns) as float arrays."""
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    return rows.astype(np.float32), cols.astype(np.float32)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian noise blurred by sigma pixels, scaled back to unit standard deviation."""
    noise = ndimage.gaussian_filter(rng.normal(size=shape), sigma)
    return (noise / noise.std()).astype(np.float32)


def texture(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Gray-level offsets of a textured surface (standard deviation 5-12 levels): mottled paper or
    plaster, wood grain along a random direction, or a fine fabric weave."""
    rows, cols = grid(shape)
    kind = rng.integers(3)
    if kind == 0:
        surface = smooth_noise(rng, shape, rng.uniform(1.5, 10))
    elif kind == 1:
        angle = rng.uniform(0, np.pi)
        along = rows * np.cos(angle) + cols * np.sin(angle)
        surface = np.sin(2 * np.pi * along / rng.uniform(10, 30) + 2 * smooth_noise(rng, shape, 25))
    else:
        period = rng.uniform(3, 7)
        surface = np.sin(2 * np.pi * rows / period) * np.sin(2 * np.pi * cols / period)
        surface = surface + 0.7 * smooth_noise(rng, shape, 4)
    return rng.uniform(5, 12) * surface / surface.std()


def drop_shadow(mask: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    """How much light a soft shadow takes away (0.15-0.4 where it is darkest): the garment's silhouette
    (opaque wherever it covers at least 20%) blurred by 2-6% of its size and shifted by 3-8% of it in a
    random direction."""
    blurred = ndimage.gaussian_filter(np.minimum(mask / 0.2, 1), rng.uniform(0.02, 0.06) * side)
    direction, distance = rng.uniform(0, 2 * np.pi), rng.uniform(0.03, 0.08) * side
    shifted = ndimage.shift(blurred, (distance * np.sin(direction), distance * np.cos(direction)), order=1)
    return rng.uniform(0.15, 0.4) * np.clip(shifted, 0, 1)


def distractor(mask: np.ndarray, side: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(coverage, RGB colour) of a small dark object that does not touch the garment: a coin (8-16% of
    the garment's size across), a button with two or four holes (6-12%) or a tag (a rotated rectangle
    of 8-16% by 5-9%, with a hole), at least 10% of the garment's size away from it."""
    rows, cols = grid(mask.shape)
    kind = rng.integers(3)
    if kind == 2:
        half = np.array([rng.uniform(0.04, 0.08), rng.uniform(0.025, 0.045)]) * side
    else:
        half = np.full(2, rng.uniform(0.04, 0.08) if kind == 0 else rng.uniform(0.03, 0.06)) * side
    reach = float(np.hypot(*half))  # the object fits in this circle whatever its angle
    clearance = ndimage.distance_transform_edt(mask < 0.05)
    height, width = mask.shape
    free = (clearance >= 0.1 * side + reach) & (rows >= reach) & (rows < height - reach) \
        & (cols >= reach) & (cols < width - reach)
    centre = np.argwhere(free)[rng.integers(free.sum())]
    dy, dx = rows - centre[0], cols - centre[1]
    if kind == 2:
        angle = rng.uniform(0, np.pi)
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        outside = np.maximum(np.abs(u) - half[0], np.abs(v) - half[1])
        holes = [(0.7 * half[0] * np.cos(angle), 0.7 * half[0] * np.sin(angle))]
    else:
        outside = np.hypot(dy, dx) - half[0]
        holes = [] if kind == 0 else [(0.35 * half[0] * np.cos(a), 0.35 * half[0] * np.sin(a))
                                      for a in np.arange(rng.choice([2, 4])) * 2 * np.pi / 4 + rng.uniform(0, 1)]
    for hx, hy in holes:  # each hole lets the background through
        outside = np.maximum(outside, 0.12 * half[0] - np.hypot(dx - hx, dy - hy))
    coverage = np.clip(0.5 - outside, 0, 1).astype(np.float32)
    return coverage, rng.uniform(10, 110) + rng.uniform(-10, 10, 3)


def lighting(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Light across the photo: a gradient of +-10-25% in a random direction times a vignette that darkens
    by 10-30% towards the corner farthest from a random bright spot."""
    rows, cols = grid(shape)
    y, x = 2 * rows / (shape[0] - 1) - 1, 2 * cols / (shape[1] - 1) - 1
    direction = rng.uniform(0, 2 * np.pi)
    light = 1 + rng.uniform(0.1, 0.25) * (x * np.cos(direction) + y * np.sin(direction)) / np.sqrt(2)
    cy, cx = rng.uniform(-0.5, 0.5, 2)
    distance = (y - cy) ** 2 + (x - cx) ** 2
    return light * (1 - rng.uniform(0.1, 0.3) * distance / distance.max())


def folder_name(class_name: str) -> str:
    """A class name as a folder name: "T-shirt/top" -> "T-shirt-top" (a slash cannot be in one)."""
    return class_name.replace("/", "-")


def write_photo_folder(root: Path, images: np.ndarray, labels: np.ndarray, folders: Sequence[str | None],
                       items: Iterable[int], seed: int = 0) -> list[Path]:
    """root/<folders[label]>/<item>.jpg: each chosen item (of uint8 28x28 `images`) rendered as a photo;
    items whose class has no folder (None) are left out."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in items:
        folder = folders[int(labels[i])]
        if folder is None:
            continue
        path = root / folder / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(render_photo(np.asarray(images[i]), rng))
        paths.append(path)
    return paths
