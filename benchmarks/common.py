"""Helpers the benchmark scripts share: how busy the machine is, timing, the Keras side, photo renders,
and a real server in a child process (the tests' harness)."""

from __future__ import annotations

import io
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from server_harness import server_process  # noqa: E402,F401  (re-exported for serve_load.py)


# --- the machine: what else is running ---------------------------------------------------------------

def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, from /proc/stat, in clock ticks."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def own_cpu_seconds() -> float:
    """CPU seconds used by this process and its finished children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def cpu_snapshot() -> tuple[tuple[int, int], float]:
    return cpu_jiffies(), own_cpu_seconds()


def other_cpu_share(since: tuple[tuple[int, int], float]) -> float:
    """Share of all CPUs that processes other than this one and its children used since the snapshot:
    0 means the machine was otherwise quiet."""
    (busy0, total0), own0 = since
    busy1, total1 = cpu_jiffies()
    tick = os.sysconf("SC_CLK_TCK")
    others = (busy1 - busy0) / tick - (own_cpu_seconds() - own0)
    return max(0.0, others / ((total1 - total0) / tick))


def others_busy_now(seconds: float = 2.0) -> float:
    """other_cpu_share over the next few seconds, with a warning when the machine is not quiet."""
    since = cpu_snapshot()
    time.sleep(seconds)
    share = other_cpu_share(since)
    if share > 0.1:
        print(f"warning: other processes are using {100 * share:.0f}% of the CPUs; the times will be slower "
              "than on a quiet machine, and threaded torch more so than TF", file=sys.stderr)
    return share


# --- timing; keras_baseline.py has its own copies, as it runs without torch in .venv-keras ------------

def seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median_seconds(fn, repeats: int) -> float:
    return statistics.median(seconds(fn) for _ in range(repeats))


# --- the Keras side ------------------------------------------------------------------------------------

def run_keras(python: Path, data_dir: Path, split: Path, epochs: int, batch_size: int,
              threads: int | None, seed: int, extra: tuple[str, ...] = ()) -> dict:
    """The Keras side, in a fresh process of .venv-keras's python; its stderr (TF's logs) passes through."""
    cmd = [str(python), str(HERE / "keras_baseline.py"), "--data-dir", str(data_dir), "--split", str(split),
           "--epochs", str(epochs), "--batch-size", str(batch_size), "--seed", str(seed), *extra]
    cmd += ["--threads", str(threads)] if threads else []
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# --- photos of test items ------------------------------------------------------------------------------

CANVAS = (300, 400)  # width, height: a portrait phone photo, small enough to render quickly


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
