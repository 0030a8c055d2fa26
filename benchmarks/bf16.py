"""bfloat16 autocast against float32 on this machine: the seconds of one training epoch of the fast and the
strong model each way, which decide where their recipes' `amp` is on (machine.bf16_native).

Each run is `fashion-cnn train --model M --limit N --epochs 2 --amp|--no-amp` in a child process; the second
epoch's seconds count (the first includes oneDNN's kernel set-up), median over --repeats runs. Saves
bf16.json in --out, with whether this CPU has AMX.

    python benchmarks/bf16.py                 # ~5 minutes on 2 cores without AMX
    python benchmarks/bf16.py --limit 1000 --repeats 1 --out /tmp    # a quick check
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from common import HERE, run_job, save_result

from fashion_cnn.machine import bf16_native, cpuinfo_line


def epoch_seconds(model: str, amp: bool, limit: int) -> float:
    """The second epoch's training seconds of one run."""
    _, metrics = run_job(["train", "--model", model, "--limit", str(limit), "--epochs", "2",
                          "--amp" if amp else "--no-amp"], "metrics.json")
    return metrics["history"][-1]["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["fast", "strong"])
    parser.add_argument("--limit", type=int, default=4000, help="training images per epoch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where bf16.json goes")
    args = parser.parse_args()

    models = {}
    for model in args.models:
        times = {way: [epoch_seconds(model, way == "bf16", args.limit) for _ in range(args.repeats)]
                 for way in ("bf16", "fp32")}
        median = {way: statistics.median(t) for way, t in times.items()}
        models[model] = {"seconds": times, "median_seconds": median, "bf16_over_fp32": median["bf16"] / median["fp32"]}
        print(f"{model}: epoch of {args.limit} images, bf16 {median['bf16']:.2f} s, fp32 {median['fp32']:.2f} s: "
              f"bf16 takes {models[model]['bf16_over_fp32']:.2f}x as long", flush=True)
    save_result(args.out / "bf16.json", {"limit": args.limit, "repeats": args.repeats, "models": models,
                                         "amx": "amx_bf16" in cpuinfo_line("flags").split(),
                                         "bf16_native_on_cpu": bf16_native("cpu")})


if __name__ == "__main__":
    main()
