"""Helpers the benchmark scripts share: how busy the machine is, timing, the Keras side, photo renders,
and a real server in a child process (the tests' harness)."""

from __future__ import annotations

import io
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from server_harness import server_process  # noqa: E402,F401  (re-exported for serve_load.py)
from fashion_cnn.machine import cpu_snapshot, other_cpu_share  # noqa: E402,F401  (re-exported)


# --- the machine: what else is running ---------------------------------------------------------------

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
