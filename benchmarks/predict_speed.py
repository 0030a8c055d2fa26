"""How fast `predict` is in-process: single-image latency from a file, and throughput on the test set.

Latency: `Predictor.predict(path)` on one file, repeated (decoding, preprocessing and the model; the
model is loaded once, as in a server). Measured for a 28x28 test-set PNG and for a 300x400 JPEG photo,
which takes the full preprocessing path. Throughput: the 10,000 test images as one batch, from
preprocessed arrays (the model alone), from uint8 arrays and from PNG files. Prints a table; saves
predict_speed-<threads>-threads.json in --out.

    .venv/bin/python benchmarks/predict_speed.py --model /tmp/predict-runs
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import render_photo, save_result
from PIL import Image

from fashion_cnn.data.fmnist import load_fashion_mnist
from fashion_cnn.evaluation.predict import Predictor

HERE = Path(__file__).resolve().parent


def latencies_ms(predictor: Predictor, path: Path, runs: int) -> list[float]:
    predictor.predict(path)  # warm-up: first calls allocate
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        predictor.predict(path)
        times.append(1000 * (time.perf_counter() - started))
    return times


def images_per_second(run, n: int) -> float:
    started = time.perf_counter()
    run()
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model file or run directory (default: as `fashion-cnn predict`)")
    parser.add_argument("--runs", type=int, default=200, help="single-image repetitions (default: %(default)s)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice, one per core); "
                        "on a busy machine 1 gives far steadier single-image latency")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where the JSON goes")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    predictor = Predictor(args.model)
    print(predictor.describe(), f"| torch threads: {torch.get_num_threads()}")
    items = load_fashion_mnist().test_images.numpy()
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, item in enumerate(items):
            buffer = io.BytesIO()
            Image.fromarray(item).save(buffer, "PNG")
            files.append(Path(tmp, f"{i:05d}.png"))
            files[-1].write_bytes(buffer.getvalue())
        photo = Path(tmp, "photo.jpg")
        photo.write_bytes(render_photo(items[0], np.random.default_rng(0)))

        rows = {}
        for name, path in (("28x28 PNG", files[0]), ("300x400 JPEG photo", photo)):
            times = latencies_ms(predictor, path, args.runs)
            rows[f"latency, {name} (ms)"] = {"median": statistics.median(times),
                                             "p95": float(np.percentile(times, 95))}
        x = items.astype(np.float32) / np.float32(255)
        n = len(items)
        rows["throughput (images/s)"] = {
            "model only (float arrays)": images_per_second(lambda: predictor.predict_arrays(x), n),
            "uint8 arrays": images_per_second(lambda: predictor.predict(list(items)), n),
            "PNG files": images_per_second(lambda: predictor.predict(files), n),
        }

    for title, values in rows.items():
        print(f"{title:<36}" + "  ".join(f"{k}: {v:,.1f}" for k, v in values.items()))
    save_result(args.out / f"predict_speed-{torch.get_num_threads()}-threads.json", {"model": str(predictor.path), "runs": args.runs,
                                                 "torch_threads": torch.get_num_threads(), **rows})


if __name__ == "__main__":
    main()
