"""How long importing a folder of images takes: cold (every file decoded), warm (from the cache), and a
plain loop of `predict.preprocess` over the same files as the reference (the decoding alone).

Folders: scikit-learn's 1,797 handwritten digits as 12x12 PNG files (tests/sample_images.py), and
--photos N Fashion-MNIST test items rendered as 300x400 JPEG photos (0 to leave them out; needs the
data). Each import runs --repeats times with a fresh cache; medians are reported, with the share of the
CPUs that other processes used meanwhile; wall and CPU seconds (this process's), the CPU time being the
steadier on a busy machine. Saves import_digits.json in --out.

    .venv/bin/python benchmarks/import_digits.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import (
    HERE,
    cpu_snapshot,
    folder_name,
    other_cpu_share,
    others_busy_now,
    own_cpu_seconds,
    save_result,
    seconds,
    write_digits_folder,
    write_photo_folder,
)

from fashion_cnn.data.fmnist import load_fashion_mnist
from fashion_cnn.data.folders import load_dataset
from fashion_cnn.data.images import preprocess


def write_photos(root: Path, n: int) -> None:
    data = load_fashion_mnist(download=False)
    write_photo_folder(root, data.test_images.numpy(), data.test_labels.numpy(),
                       [folder_name(c) for c in data.class_names], range(n))


def timed(fn) -> dict:
    """Wall and CPU seconds of one call: on a busy machine the CPU time is the steadier of the two."""
    cpu = own_cpu_seconds()
    wall = seconds(fn)
    return {"wall_s": wall, "cpu_s": own_cpu_seconds() - cpu}


def medians(runs: list[dict]) -> dict:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def time_imports(folder: Path, repeats: int, tmp: Path) -> dict:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    cold, warm = [], []
    for k in range(repeats):
        os.environ["XDG_CACHE_HOME"] = str(tmp / f"cache-{folder.name}-{k}")  # cache_dir() reads it per call
        cold.append(timed(lambda: load_dataset(folder)))
        warm.append(timed(lambda: load_dataset(folder)))
    reference = [timed(lambda: [preprocess(p) for p in files]) for _ in range(repeats)]
    ds = load_dataset(folder)
    return {"files": len(files), "train": len(ds.train_images), "test": len(ds.test_images),
            "cold": medians(cold), "warm": medians(warm), "preprocess_loop": medians(reference),
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
        print(f"{name}: {row['files']} files; wall (CPU) seconds: import cold {row['cold']['wall_s']:.2f} "
              f"({row['cold']['cpu_s']:.2f}), warm {row['warm']['wall_s']:.3f} ({row['warm']['cpu_s']:.3f}); "
              f"preprocess loop alone {row['preprocess_loop']['wall_s']:.2f} ({row['preprocess_loop']['cpu_s']:.2f})")
    print(f"other processes used {100 * busy:.0f}% of the CPUs meanwhile ({100 * busy_before:.0f}% just before)")
    save_result(args.out / "import_digits.json", {
        "started": started, "cpus": os.cpu_count(), "repeats": args.repeats,
        "other_cpu_share": busy, "other_cpu_share_before": busy_before, **rows})


if __name__ == "__main__":
    main()
