"""fashion-cnn vs Keras/TensorFlow: the tutorial's baseline CNN trained side by side, in one run on one machine.

Both sides train the same model with the same optimiser (SGD 0.01, momentum 0.9) at the same batch size
on the same 48,000 images (fold 1 of the 5-fold split), validate on the same 12,000, and predict the same
10,000 test images. The CPU's fp32 matrix-multiply speed, measured here too, bounds how fast an epoch
can be. Prints a table of ratios; saves speed_vs_keras.json and speed_vs_keras.png in --out.

    make bench-speed                 # 3 epochs
    make bench-speed EPOCHS=10 ARGS="--seeds 5"   # the tutorial's 10 epochs, 5 seeds a side: the docs' table
    .venv/bin/python benchmarks/speed_vs_keras.py --epochs 1 --limit 4000   # a quick check
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import (
    HERE,
    cpu_snapshot,
    median_seconds,
    other_cpu_share,
    others_busy_now,
    run_keras,
    save_result,
    seconds,
    tutorial_fold1,
)

from fashion_cnn.config import TrainConfig
from fashion_cnn.data.fmnist import find_data_dir, load_fashion_mnist
from fashion_cnn.evaluation.inference import predict_logits
from fashion_cnn.machine import cpu_model, flush_denormals
from fashion_cnn.training.loop import TrainState, fit

SIDES = ("keras", "fashion_cnn")


# --- the machine: what else is running, and how fast it multiplies matrices -------------------------

def gemm_gflops(sizes=(1024, 2048, 4096), repeats: int = 3) -> dict[int, float]:
    """fp32 square matrix-multiply speed through torch (MKL), torch's threads: best of `repeats` per size."""
    speeds = {}
    for n in sizes:
        a, b, c = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
        torch.mm(a, b, out=c)  # warm-up: first touch of the pages, MKL's dispatch
        speeds[n] = 2 * n**3 / min(seconds(lambda: torch.mm(a, b, out=c)) for _ in range(repeats)) / 1e9
    return speeds


def train_flop_per_image() -> int:
    """Matrix-multiply FLOP to train on one image, counted from the architecture (2 FLOP per multiply-add).

    Forward: conv (26x26 positions x 32 filters x 3x3), dense 5408->100, dense 100->10. Backward: the
    weight gradient of each layer (as many multiply-adds as its forward pass) and the input gradients of
    the two dense layers; the conv's input gradient is never needed (images are not trained). Counting
    that too gives 4.4 MFLOP. Element-wise work (ReLU, pooling, softmax, the SGD update) is not counted.
    """
    conv, fc1, fc2 = 26 * 26 * 32 * 9, 13 * 13 * 32 * 100, 100 * 10
    forward = conv + fc1 + fc2
    backward = forward + fc1 + fc2
    return 2 * (forward + backward)


# --- the two sides --------------------------------------------------------------------------------

def run_fashion_cnn(data, train_idx: np.ndarray, val_idx: np.ndarray, epochs: int, batch_size: int,
                    seed: int) -> dict:
    """The fashion-cnn side, in this process, through the public API: fold 1 of `fashion-cnn cv`, exactly."""
    flush_denormals()  # as the jobs do (machine.start_job_threads)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, device="cpu", seed=seed)
    state = TrainState.create(cfg, 10, 0)
    model = state.model
    train_idx, val_idx = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    epoch_ends = [time.perf_counter()]
    history = fit(state, cfg, (data.train_images[train_idx], data.train_labels[train_idx]),
                  (data.train_images[val_idx], data.train_labels[val_idx]), keys=(0,),
                  on_epoch=[lambda row: epoch_ends.append(time.perf_counter())])

    test = data.test_images
    predict = lambda: predict_logits(model, test, 1000)
    predict()  # warm-up, as on the Keras side
    one = lambda: predict_logits(model, test[:1], 1)
    for _ in range(10):
        one()
    return {
        "framework": f"fashion-cnn (torch {torch.__version__}, {torch.get_num_threads()} threads)",
        "train_seconds": [row["seconds"] for row in history],
        "epoch_seconds": np.diff(epoch_ends).tolist(),
        "history": history,
        "val_accuracy": history[-1]["val_accuracy"],
        "predict_seconds": median_seconds(predict, 5),
        "predict_method": "fashion_cnn.evaluation.inference.predict_logits(model, uint8 images, 1000)",
        "latency_ms": 1000 * median_seconds(one, 200),
        "latency_method": "predict_logits(model, one uint8 image, 1), the public API (scaling included)",
    }


# --- comparing them ---------------------------------------------------------------------------------

# (key, label, format, how the ratio reads): "time" ratios are Keras / fashion-cnn (how many times faster
# fashion-cnn is), "rate" ratios fashion-cnn / Keras, "points" the accuracy difference.
ROWS = [
    ("train_s_epoch1", "train s, epoch 1 (Keras: + tracing)", "{:.2f}", "time"),
    ("train_s_steady", "train s/epoch, later epochs", "{:.2f}", "time"),
    ("train_img_s", "train images/s, later epochs", "{:,.0f}", "rate"),
    ("epoch_s_with_val", "epoch s incl. validation", "{:.2f}", "time"),
    ("val_accuracy_pct", "val accuracy after last epoch, %", "{:.2f}", "points"),
    ("predict_s", "predict 10,000 test images, s", "{:.3f}", "time"),
    ("predict_img_s", "predict images/s (batch 1000)", "{:,.0f}", "rate"),
    ("latency_ms", "single-image latency, ms (median)", "{:.2f}", "time"),
]


def later(values: list[float]) -> float:
    """Mean over epochs 2..N (steady state: no tracing, warm caches); epoch 1 when there is only one."""
    return statistics.mean(values[1:] or values)


def summarize(side: dict, n_train: int, n_test: int) -> dict:
    return {
        "train_s_epoch1": side["train_seconds"][0],
        "train_s_steady": later(side["train_seconds"]),
        "train_img_s": n_train / later(side["train_seconds"]),
        "epoch_s_with_val": later(side["epoch_seconds"]),
        "val_accuracy_pct": 100 * side["val_accuracy"],
        "predict_s": side["predict_seconds"],
        "predict_img_s": n_test / side["predict_seconds"],
        "latency_ms": side["latency_ms"],
    }


def summarize_runs(runs: list[dict], n_train: int, n_test: int) -> dict:
    """Each row's mean over the runs (one per seed), and the spread of the validation accuracy."""
    rows = [summarize(run, n_train, n_test) for run in runs]
    accuracies = [row["val_accuracy_pct"] for row in rows]
    return {**{key: statistics.mean(row[key] for row in rows) for key in rows[0]},
            "val_accuracy_pct_runs": accuracies,
            "val_accuracy_pct_std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0}


def ratios(keras: dict, ours: dict) -> dict:
    reads = {"time": lambda k, o: k / o, "rate": lambda k, o: o / k, "points": lambda k, o: o - k}
    return {key: reads[how](keras[key], ours[key]) for key, _, _, how in ROWS}


def bound(gflops: dict[int, float], n_train: int, achieved: dict[str, dict]) -> dict:
    """The epoch time the CPU's best GEMM speed allows, and the share of it each side reaches."""
    peak = max(gflops.values())
    epoch_gflop = train_flop_per_image() * n_train / 1e9
    return {
        "gemm_gflops": {str(n): v for n, v in gflops.items()},
        "peak_gflops": peak,
        "train_flop_per_image": train_flop_per_image(),
        "epoch_gflop": epoch_gflop,
        "epoch_bound_s": epoch_gflop / peak,
        **{f"{side}_gflops": epoch_gflop / s["train_s_steady"] for side, s in achieved.items()},
        **{f"{side}_share_of_peak": epoch_gflop / s["train_s_steady"] / peak for side, s in achieved.items()},
    }


def format_table(summary: dict, ratio: dict, gemm: dict, epochs: int) -> str:
    runs = len(summary["keras"]["val_accuracy_pct_runs"])
    lines = [f"{'mean of ' + str(runs) + ' runs (seeds)' if runs > 1 else '':36} "
             f"{'Keras/TF':>10} {'fashion-cnn':>12} {'ratio':>9}"]
    for key, label, fmt, how in ROWS:
        r = f"{ratio[key]:+.2f} pts" if how == "points" else f"{ratio[key]:.2f}x"
        lines.append(f"{label:36} {fmt.format(summary['keras'][key]):>10} "
                     f"{fmt.format(summary['fashion_cnn'][key]):>12} {r:>9}")
    if runs > 1:
        lines.append("val accuracy per seed, %: " + "; ".join(
            f"{name} " + ", ".join(f"{a:.2f}" for a in summary[side]["val_accuracy_pct_runs"])
            + f" (std {summary[side]['val_accuracy_pct_std']:.2f})"
            for side, name in zip(SIDES, ("Keras", "fashion-cnn"))))
    lines += [
        "",
        f"GEMM: fp32 sgemm peak {gemm['peak_gflops']:.0f} GFLOP/s ("
        + ", ".join(f"n={n}: {v:.0f}" for n, v in gemm["gemm_gflops"].items()) + ")",
        f"training: {gemm['train_flop_per_image'] / 1e6:.2f} MFLOP/image, {gemm['epoch_gflop']:.0f} GFLOP/epoch "
        f"-> bound {gemm['epoch_bound_s']:.2f} s/epoch",
        f"fashion-cnn reaches {gemm['fashion_cnn_gflops']:.0f} GFLOP/s = "
        f"{100 * gemm['fashion_cnn_share_of_peak']:.0f}% of peak "
        f"(Keras {gemm['keras_gflops']:.0f} GFLOP/s = {100 * gemm['keras_share_of_peak']:.0f}%)",
        "",
        f"targets: training >= 3x: {ratio['train_s_steady']:.2f}x; inference >= 2x: {ratio['predict_s']:.2f}x; "
        f"accuracy within 0.5 pts after 10 epochs: {ratio['val_accuracy_pct']:+.2f} pts"
        + ("" if epochs == 10 else f" (after {epochs}, not 10)"),
    ]
    return "\n".join(lines)


def plot(summary: dict, ratio: dict, gemm: dict, path: Path) -> None:
    """Three small panels, Keras beside fashion-cnn: training, batch inference, single-image latency."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("train_s_steady", "training, s/epoch"), ("predict_s", "predict 10,000 images, s"),
              ("latency_ms", "one image, ms")]
    fig, axes = plt.subplots(1, 3, figsize=(9, 3))
    for ax, (key, title) in zip(axes, panels):
        values = [summary[side][key] for side in SIDES]
        bars = ax.bar(["Keras/TF", "fashion-cnn"], values, color=["#999999", "#1f77b4"])
        ax.bar_label(bars, fmt="%.2f")
        ax.set_title(f"{title}\nfashion-cnn speed-up: {ratio[key]:.2f}x", fontsize=10)
        ax.set_ylim(0, 1.2 * max(values))
    axes[0].axhline(gemm["epoch_bound_s"], color="k", linestyle="--", linewidth=1)
    axes[0].text(1.45, gemm["epoch_bound_s"], "GEMM bound", ha="right", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=1, help="train each side this many times: "
                        "the accuracy of one run after 10 epochs of constant-rate SGD varies by about a point")
    parser.add_argument("--first-seed", type=int, default=1, help="seeds run from here: more seeds in a later run")
    parser.add_argument("--limit", type=int, help="quick checks: train on the first N of the 48,000 images "
                        "and validate on the first N/4 of the 12,000")
    parser.add_argument("--threads", type=int, help="threads for both sides and the GEMM measurement "
                        "(default: each library's own choice, all cores); 1 is steadier on a busy machine")
    parser.add_argument("--keras-python", type=Path, default=HERE.parent / ".venv-keras/bin/python")
    parser.add_argument("--data-dir", type=Path, help="Fashion-MNIST directory (default: fashion-cnn's search)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()

    busy_before = others_busy_now()
    if args.threads:
        torch.set_num_threads(args.threads)
    start, load_before = cpu_snapshot(), os.getloadavg()
    data_dir = find_data_dir(args.data_dir)
    data = load_fashion_mnist(data_dir)
    train_idx, val_idx = tutorial_fold1(len(data.train_images))
    if args.limit:
        train_idx, val_idx = train_idx[:args.limit], val_idx[:max(1, args.limit // 4)]

    print(f"measuring fp32 GEMM speed ({torch.get_num_threads()} threads)...", file=sys.stderr)
    gflops = gemm_gflops()
    # Keras first, in its own process, while this one waits: it gets the quieter machine, if anything.
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    with tempfile.TemporaryDirectory() as tmp:
        split = Path(tmp) / "split.npz"
        np.savez(split, train_idx=train_idx, val_idx=val_idx)
        raw = {"keras": [], "fashion_cnn": []}
        for seed in seeds:
            print(f"Keras: {args.epochs} epochs on {len(train_idx)} images, seed {seed}...", file=sys.stderr)
            raw["keras"].append(run_keras(args.keras_python, data_dir, split, args.epochs, args.batch_size,
                                          args.threads, seed))
    for seed in seeds:
        print(f"fashion-cnn: {args.epochs} epochs on {len(train_idx)} images, seed {seed}...", file=sys.stderr)
        raw["fashion_cnn"].append(run_fashion_cnn(data, train_idx, val_idx, args.epochs, args.batch_size, seed))

    summary = {side: summarize_runs(raw[side], len(train_idx), len(data.test_images)) for side in SIDES}
    ratio = ratios(summary["keras"], summary["fashion_cnn"])
    gemm = bound(gflops, len(train_idx), summary)
    machine = {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "other_processes_cpu_share_before": busy_before,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "other_processes_cpu_share": other_cpu_share(start),
    }
    table = format_table(summary, ratio, gemm, args.epochs)
    print(f"\n{raw['keras'][0]['framework']} vs {raw['fashion_cnn'][0]['framework']}; {args.epochs} epochs, "
          f"batch {args.batch_size}, {len(train_idx)} training / {len(val_idx)} validation images\n")
    print(table)
    print(f"\nmachine: {machine['cpu']}, {machine['cpus']} CPUs; other processes used "
          f"{100 * machine['other_processes_cpu_share']:.0f}% of the CPUs during the run, "
          f"{100 * busy_before:.0f}% just before "
          f"(load average {load_before[0]:.2f} before, {machine['load_average_after'][0]:.2f} after)")

    args.out.mkdir(parents=True, exist_ok=True)
    defaults = TrainConfig()
    result = {"config": {"epochs": args.epochs, "batch_size": args.batch_size, "threads": args.threads,
                         "seeds": list(seeds),
                         "lr": defaults.lr, "momentum": defaults.momentum,
                         "train_images": len(train_idx), "val_images": len(val_idx),
                         "split": "fold 1 of KFold(5, shuffle=True, random_state=1)"},
              "machine": machine, "gemm": gemm, "summary": summary, "ratios": ratio, "raw": raw,
              "table": table}
    save_result(args.out / "speed_vs_keras.json", result)
    plot(summary, ratio, gemm, args.out / "speed_vs_keras.png")
    print(f"saved {args.out / 'speed_vs_keras.png'}")


if __name__ == "__main__":
    main()
