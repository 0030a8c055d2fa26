"""Real images for tests and benchmarks: scikit-learn's handwritten digits as a folder of PNG files, and
Fashion-MNIST items rendered as photos (benchmarks/common.py re-exports these)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

CANVAS = (300, 400)  # width, height: a portrait phone photo, small enough to render quickly


MARGIN = 2  # black pixels around each 8x8 digit (below)


def digits(per_class: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 real 8x8 handwritten digits as uint8 images, light on dark (0..16 scaled to
    0..255), framed by a MARGIN of black, and their labels; with per_class, the first that many of each class.

    Why the margin: `predict.preprocess` estimates the background from the border pixels, and 9% of the
    bare 8x8 digits touch the border with their strokes (they were cropped to the digit): it turns 115 of
    them black and 49 mostly white. A photo or scan of a digit has a margin; with 2 pixels of it, none fails.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.pad(np.round(bunch.images * (255 / 16)).astype(np.uint8), ((0, 0), (MARGIN, MARGIN), (MARGIN, MARGIN)))
    keep = np.arange(len(images)) if per_class is None else \
        np.sort(np.concatenate([np.flatnonzero(bunch.target == c)[:per_class] for c in range(10)]))
    return images[keep], bunch.target[keep]


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


def render_photo(item: np.ndarray, rng: np.random.Generator) -> bytes:
    """A 28x28 uint8 test item as a JPEG of a dark object on a light background, off-centre."""
    width, height = CANVAS
    side = int(28 * rng.uniform(5, 10))
    alpha = np.asarray(Image.fromarray(item).resize((side, side), Image.Resampling.BICUBIC), np.float32) / 255
    mask = np.zeros((height, width), np.float32)
    top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
    mask[top:top + side, left:left + side] = alpha
    background = rng.uniform(200, 250, 3)  # off-white paper or wall, slightly tinted
    light = 1 + rng.uniform(-0.06, 0.06) * np.linspace(-1, 1, width)  # uneven lighting, left to right
    colour = rng.uniform(0, 70, 3)  # a dark garment, not pure black
    photo = (background * light[None, :, None] * (1 - mask[..., None]) + colour * mask[..., None]
             + rng.normal(0, 3, (height, width, 3)))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


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
