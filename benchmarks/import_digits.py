"""How long importing a folder of images takes: cold (every file decoded), warm (from the cache), and a
plain loop of `predict.preprocess` over the same files as the reference (the decoding alone).

Folders: scikit-learn's 1,797 handwritten digits as 12x12 PNG files (tests/sample_images.py), and
--photos N Fashion-MNIST test items rendered as 300x400 JPEG photos (0 to leave them out; needs the
data). Each import runs --repeats times with a fresh cache; medians are reported, with the share of the
CPUs that other processes used meanwhile. Saves import_digits.json in --out.

    .venv/bin/python benchmarks/import_digits.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from common import HERE, cpu_snapshot, other_cpu_share, others_busy_now, render_photo, seconds, write_digits_folder
from fashion_cnn.data import load_fashion_mnist
from fashion_cnn.datasets import load_dataset
from fashion_cnn.predict import preprocess
from fashion_cnn.runs import write_json


def write_photos(root: Path, n: int) -> None:
    data = load_fashion_mnist(download=False)
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = data.class_names[int(data.test_labels[i])].replace("/", "-")  # T-shirt/top: not a folder name
        path = root / folder / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(render_photo(data.test_images[i].numpy(), rng))


def time_imports(folder: Path, repeats: int, tmp: Path) -> dict:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    cold, warm = [], []
    for k in range(repeats):
        os.environ["XDG_CACHE_HOME"] = str(tmp / f"cache-{folder.name}-{k}")  # cache_dir() reads it per call
        cold.append(seconds(lambda: load_dataset(folder)))
        warm.append(seconds(lambda: load_dataset(folder)))
    reference = [seconds(lambda: [preprocess(p) for p in files]) for _ in range(repeats)]
    ds = load_dataset(folder)
    return {"files": len(files), "train": len(ds.train_images), "test": len(ds.test_images),
            "cold_s": statistics.median(cold), "warm_s": statistics.median(warm),
            "preprocess_loop_s": statistics.median(reference),
            "runs": {"cold": cold, "warm": warm, "preprocess_loop": reference}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=500, help="rendered photos to import (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="(default: %(default)s)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where the JSON goes")
    args = parser.parse_args()

    started = time.strftime("%Y-%m-%d %H:%M:%S")
    busy_before = others_busy_now()
    since = cpu_snapshot()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_digits_folder(Path(tmp, "digits"))
        rows["digits, 12x12 PNG"] = time_imports(Path(tmp, "digits"), args.repeats, Path(tmp))
        if args.photos:
            write_photos(Path(tmp, "photos"), args.photos)
            rows["photos, 300x400 JPEG"] = time_imports(Path(tmp, "photos"), args.repeats, Path(tmp))
    busy = other_cpu_share(since)

    for name, row in rows.items():
        n = row["files"]
        print(f"{name}: {n} files; import cold {row['cold_s']:.2f} s ({1000 * row['cold_s'] / n:.2f} ms/file), "
              f"warm {row['warm_s']:.3f} s; preprocess loop alone {row['preprocess_loop_s']:.2f} s")
    print(f"other processes used {100 * busy:.0f}% of the CPUs meanwhile ({100 * busy_before:.0f}% just before)")
    write_json(args.out / "import_digits.json", {
        "started": started, "cpus": os.cpu_count(), "repeats": args.repeats,
        "other_cpu_share": busy, "other_cpu_share_before": busy_before, **rows})


if __name__ == "__main__":
    main()
