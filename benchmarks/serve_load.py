"""Load test of `fashion-cnn serve`: many clients at once, every answer checked, latency percentiles.

Starts the server as a child process on a free port of 127.0.0.1, then sends --requests POST /predict
requests (one Fashion-MNIST test image each, as PNG) from --concurrency clients at once in this process.
Each answer must name the class the Predictor gives in-process for the same bytes, with the same
probabilities. Saves serve_load.json in --out; exits 1 if any answer was wrong or failed.

    .venv/bin/python benchmarks/serve_load.py --model runs/<run>/model.safetensors
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from common import save_result, server_process
from PIL import Image

from fashion_cnn.data.fmnist import load_fashion_mnist
from fashion_cnn.evaluation.predict import Predictor
from fashion_cnn.models.locate import resolve_model_path

HERE = Path(__file__).resolve().parent
N_IMAGES = 200  # distinct test images, cycled through


def test_pngs(n: int) -> list[bytes]:
    buffers = []
    for pixels in load_fashion_mnist(download=False).test_images[:n].numpy():
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "PNG")
        buffers.append(buffer.getvalue())
    return buffers


def expected_answers(model: Path, pngs: list[bytes]) -> list[tuple[str, np.ndarray]]:
    return [(p.class_name, np.array(p.probabilities)) for p in Predictor(model).predict(pngs)]


async def client(http: httpx.AsyncClient, url: str, jobs: asyncio.Queue, pngs: list[bytes],
                 expected: list[tuple[str, np.ndarray]], results: list[dict]) -> None:
    while not jobs.empty():
        i = jobs.get_nowait() % len(pngs)
        start = time.perf_counter()
        try:
            response = await http.post(url + "/predict", files={"files": (f"{i}.png", pngs[i], "image/png")})
            answer = response.json()["predictions"][0] if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, KeyError):
            answer = None
        seconds = time.perf_counter() - start
        name, probabilities = expected[i]
        correct = (answer is not None and answer["class_name"] == name and
                   np.allclose(list(answer["probabilities"].values()), probabilities, atol=1e-6))
        results.append({"seconds": seconds, "correct": bool(correct)})


async def load(url: str, pngs: list[bytes], expected: list, n_requests: int, concurrency: int) -> tuple[list, float]:
    """(per-request results, wall seconds) for n_requests sent by `concurrency` clients at once."""
    jobs: asyncio.Queue = asyncio.Queue()
    for i in range(n_requests):
        jobs.put_nowait(i)
    results: list[dict] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as http:
        await http.get(url + "/health")  # warm-up: the first connection and request
        start = time.perf_counter()
        await asyncio.gather(*(client(http, url, jobs, pngs, expected, results) for _ in range(concurrency)))
        return results, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="model file, run directory or latest (default: the shipped model)")
    parser.add_argument("--requests", type=int, default=1000, help="(default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=20, help="(default: %(default)s)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where serve_load.json goes")
    args = parser.parse_args()

    model = resolve_model_path(args.model)
    pngs = test_pngs(N_IMAGES)
    expected = expected_answers(model, pngs)
    load_before = os.getloadavg()
    with server_process(model) as url:
        results, wall = asyncio.run(load(url, pngs, expected, args.requests, args.concurrency))
    latencies_ms = 1000 * np.array([r["seconds"] for r in results])
    p50, p90, p99 = np.percentile(latencies_ms, [50, 90, 99])
    summary = {
        "model": str(model), "requests": len(results), "concurrency": args.concurrency,
        "correct": sum(r["correct"] for r in results), "wall_seconds": wall,
        "requests_per_second": len(results) / wall,
        "latency_ms": {"p50": p50, "p90": p90, "p99": p99, "max": latencies_ms.max()},
        "cpus": os.cpu_count(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    save_result(args.out / "serve_load.json", summary)
    print(f"{summary['correct']}/{len(results)} answers right; {summary['requests_per_second']:.0f} requests/s "
          f"with {args.concurrency} clients; latency p50 {p50:.1f} ms, p90 {p90:.1f} ms, p99 {p99:.1f} ms "
          f"(load average before: {load_before[0]:.1f}); saved {args.out / 'serve_load.json'}")
    return 0 if summary["correct"] == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
