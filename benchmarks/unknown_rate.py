"""How often does `predict` answer "unknown": for Fashion-MNIST images it should know (wrongly) and for
pictures that are not clothing (rightly)?

In-distribution images are the model's held-out images (`calibrate.held_out`: for the shipped model the
5,000 training images `--val-size 5000` held out of its training; never test images): the first half is
what its temperature and threshold were fitted on, the second half
is only measured, as 28x28 arrays and as rendered photos. Out-of-distribution sets are generated: scikit-
learn's 8x8 digits (framed like MNIST, and as ink-on-paper photos), uniform and Gaussian noise (28x28 and
photo-sized), blank images, plain-wall photos, gradients, textures and non-clothing shapes. Every image
goes through `Predictor.predict`, as a user's would (photos are inverted, cropped and resized there).

Each set is drawn twice: a selection draw (seed, the first half of the digits) on which the candidate
scores of `calibration.SCORES` are compared, each with its threshold set at 1.5% of the fitting half, and
a report draw (seed + 1, the other digits) on which the model's stored rule is measured.
Prints a table and saves unknown.json in --out.

    .venv/bin/python benchmarks/unknown_rate.py                       # the shipped model
    .venv/bin/python benchmarks/unknown_rate.py --n 50 --examples /tmp/ood   # quick; look at some inputs
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from common import CANVAS, HERE, render_photo, save_result
from PIL import Image, ImageDraw
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score

from fashion_cnn.data.fmnist import load_fashion_mnist
from fashion_cnn.data.images import png_bytes
from fashion_cnn.evaluation import calibration
from fashion_cnn.evaluation.predict import Predictor
from fashion_cnn.io import write_atomic
from fashion_cnn.jobs import calibrate

WIDTH, HEIGHT = CANVAS
RESAMPLES = 200
RELIABILITY_EDGES = (0.0, 0.5, 0.7, 0.9, 0.99, 1.0)  # coarse confidence bins for docs/benchmarks/unknown.md's table


# --- out-of-distribution sets: (rng, n, digits) -> inputs for Predictor.predict ------------------------

def jpeg(pixels: np.ndarray) -> bytes:
    """(H, W, 1 or 3) values in [0, 255] as an RGB JPEG of quality 85."""
    rgb = np.broadcast_to(np.clip(pixels, 0, 255), (*pixels.shape[:2], 3)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def photo_of(mask: np.ndarray, rng: np.random.Generator) -> bytes:
    """A mask in [0, 1] (HEIGHT, WIDTH) drawn in dark ink on light, tinted paper with sensor noise."""
    paper, ink = rng.uniform(200, 250, 3), rng.uniform(0, 80, 3)
    pixels = paper * (1 - mask[..., None]) + ink * mask[..., None] + rng.normal(0, 3, (HEIGHT, WIDTH, 3))
    return jpeg(pixels)


def digits_mnist_like(rng, n, digits):
    """8x8 digits upscaled to 20x20 and centred on a black 28x28, light on dark, as MNIST frames them."""
    out = []
    for digit in digits[:n]:
        big = np.asarray(Image.fromarray(np.float32(digit * 255 / 16)).resize((20, 20), Image.Resampling.BILINEAR))
        framed = np.zeros((28, 28), np.float32)
        framed[4:24, 4:24] = big
        out.append(np.clip(framed, 0, 255).astype(np.uint8))
    return out


def digit_photos(rng, n, digits):
    """The digits written large in dark ink on paper, anywhere on a phone-photo-sized JPEG."""
    out = []
    for digit in digits[:n]:
        side = int(rng.integers(120, 260))
        ink = np.asarray(Image.fromarray(np.float32(digit / 16)).resize((side, side), Image.Resampling.BICUBIC))
        mask = np.zeros((HEIGHT, WIDTH), np.float32)
        top, left = rng.integers(0, HEIGHT - side), rng.integers(0, WIDTH - side)
        mask[top:top + side, left:left + side] = ink.clip(0, 1)
        out.append(photo_of(mask, rng))
    return out


def uniform_noise(rng, n, digits):
    return [rng.integers(0, 256, (28, 28), dtype=np.uint8) for _ in range(n)]


def gaussian_noise(rng, n, digits):
    return [np.clip(rng.normal(rng.uniform(40, 200), rng.uniform(10, 60), (28, 28)), 0, 255).astype(np.uint8)
            for _ in range(n)]


def noise_photos(rng, n, digits):
    return [jpeg(rng.integers(0, 256, (HEIGHT, WIDTH, 3))) for _ in range(n)]


def blank_images(rng, n, digits):
    """One grey level, any size from 28x28 to photo size."""
    return [np.full((int(rng.integers(28, HEIGHT)),) * 2, rng.integers(0, 256), np.uint8) for _ in range(n)]


def wall_photos(rng, n, digits):
    """A plain wall of any colour, unevenly lit, with sensor noise."""
    out = []
    for _ in range(n):
        light = 1 + rng.uniform(-0.1, 0.1) * np.linspace(-1, 1, WIDTH)[None, :, None]
        out.append(jpeg(rng.uniform(60, 250, 3) * light + rng.normal(0, 3, (HEIGHT, WIDTH, 1))))
    return out


def gradients(rng, n, digits):
    """Linear gradients between two grey levels, at any angle."""
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH] / HEIGHT
    out = []
    for _ in range(n):
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(angle) * cols + np.sin(angle) * rows
        ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())
        low, high = sorted(rng.uniform(0, 255, 2))
        out.append(jpeg((low + (high - low) * ramp)[..., None] + rng.normal(0, 3, (HEIGHT, WIDTH, 1))))
    return out


def textures(rng, n, digits):
    """Stripes, checkerboards and sinusoidal gratings at any frequency and angle."""
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    out = []
    for i in range(n):
        frequency, angle = rng.uniform(0.02, 0.3), rng.uniform(0, np.pi)
        wave = np.sin(frequency * (np.cos(angle) * cols + np.sin(angle) * rows))
        if i % 2:
            wave = wave * np.sin(frequency * (np.cos(angle) * rows - np.sin(angle) * cols))
        out.append(jpeg(128 + 100 * (np.sign(wave) if i % 3 == 0 else wave)[..., None] * np.ones(3)))
    return out


def shapes(rng, n, digits):
    """Filled circles, triangles, stars, crosses and rings, dark on light paper."""
    out = []
    for i in range(n):
        canvas = Image.new("F", (WIDTH, HEIGHT))
        draw = ImageDraw.Draw(canvas)
        x, y, r = rng.uniform(100, 200), rng.uniform(120, 280), rng.uniform(40, 95)
        kind = i % 5
        if kind == 0:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=1)
        elif kind == 1:
            draw.regular_polygon((x, y, r), 3, rotation=rng.uniform(0, 360), fill=1)
        elif kind == 2:
            radii = [r if j % 2 == 0 else r / 2.5 for j in range(10)]
            draw.polygon([(x + q * np.cos(j * np.pi / 5), y + q * np.sin(j * np.pi / 5))
                          for j, q in enumerate(radii)], fill=1)
        elif kind == 3:
            draw.rectangle([x - r, y - r / 3, x + r, y + r / 3], fill=1)
            draw.rectangle([x - r / 3, y - r, x + r / 3, y + r], fill=1)
        else:
            draw.ellipse([x - r, y - r, x + r, y + r], outline=1, width=int(r / 4))
        out.append(photo_of(np.asarray(canvas), rng))
    return out


OOD_SETS: dict[str, tuple[str, Callable]] = {
    "digits": ("scikit-learn digits, 28x28 framed like MNIST", digits_mnist_like),
    "digit_photos": ("scikit-learn digits as ink-on-paper photos", digit_photos),
    "uniform_noise": ("uniform noise, 28x28", uniform_noise),
    "gaussian_noise": ("Gaussian noise, 28x28", gaussian_noise),
    "noise_photos": ("uniform colour noise, 300x400 JPEG", noise_photos),
    "blank": ("blank images (one grey level, 28 to 400 px)", blank_images),
    "walls": ("plain-wall photos (uneven light, sensor noise)", wall_photos),
    "gradients": ("linear gradients", gradients),
    "textures": ("stripes, checkerboards, gratings", textures),
    "shapes": ("circles, triangles, stars, crosses, rings on paper", shapes),
}


# --- measuring ---------------------------------------------------------------------------------------

def run(predictor: Predictor, inputs: list) -> tuple[np.ndarray, torch.Tensor]:
    """(unknown flags as `predict` answers them, logits of the 28x28 images the model saw)."""
    predictions = predictor.predict(inputs)
    assert not any(p.error for p in predictions), [p.error for p in predictions if p.error]
    return np.array([p.unknown for p in predictions]), predictor.logits(np.stack([p.image for p in predictions]))


def compare_scores(fitting: torch.Tensor, reference: torch.Tensor, ood: dict[str, torch.Tensor], t: float) -> dict:
    """Per candidate score: its threshold at UNKNOWN_RATE of the fitting logits, then the share of each
    set called unknown, and AUROC against the reference in-distribution logits."""
    table = {}
    for name in calibration.SCORES:
        threshold = calibration.choose_threshold(calibration.ood_score(fitting, t, name))
        held_scores = calibration.ood_score(reference, t, name).numpy()
        rates, aurocs = {}, {}
        for key, logits in ood.items():
            scores = calibration.ood_score(logits, t, name).numpy()
            rates[key] = float((scores < threshold).mean())
            truth = np.r_[np.ones(len(held_scores)), np.zeros(len(scores))]
            aurocs[key] = float(roc_auc_score(truth, np.r_[held_scores, scores]))
        table[name] = {"threshold": threshold, "in_distribution_rate": float((held_scores < threshold).mean()),
                       "unknown_rate": rates, "auroc": aurocs,
                       "mean_unknown_rate": float(np.mean(list(rates.values()))),
                       "mean_auroc": float(np.mean(list(aurocs.values())))}
    return table


def resampled_rates(logits: torch.Tensor, labels: torch.Tensor, seed: int) -> list[float]:
    """The held-out share wrongly called unknown when the held-out images are split in random halves
    (temperature and threshold refitted on each first half): how much the one split's number can vary."""
    generator = torch.Generator().manual_seed(seed)
    rates = []
    for _ in range(RESAMPLES):
        order = torch.randperm(len(labels), generator=generator)
        fit, held = order[:len(order) // 2], order[len(order) // 2:]
        t = calibration.fit_temperature(logits[fit], labels[fit])
        threshold = calibration.choose_threshold(calibration.ood_score(logits[fit], t))
        rates.append(float((calibration.ood_score(logits[held], t) < threshold).double().mean()))
    return rates


def accuracy_split(unknown: np.ndarray, logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """What calling images unknown costs and buys: accuracy on all, on the answered rest, and how many of
    the images called unknown the model would have got wrong."""
    right = (logits.argmax(1) == labels).numpy()
    return {"accuracy_all": float(right.mean()), "accuracy_answered": float(right[~unknown].mean()),
            "wrong_among_unknown": float((~right[unknown]).mean()) if unknown.any() else None}


def reliability(logits: torch.Tensor, labels: torch.Tensor, t: float) -> list[dict]:
    """Per coarse confidence bin: how many images, their mean top probability, and how many were right."""
    confidence, predicted = calibration.probabilities(logits, t).double().max(1)
    right = (predicted == labels).double()
    rows = []
    for low, high in zip(RELIABILITY_EDGES, RELIABILITY_EDGES[1:]):
        inside = (confidence > low) & (confidence <= high)
        rows.append({"bin": [low, high], "n": int(inside.sum()),
                     "mean_confidence": float(confidence[inside].mean()) if inside.any() else None,
                     "accuracy": float(right[inside].mean()) if inside.any() else None})
    return rows


def runner_ups(logits: torch.Tensor, labels: torch.Tensor, t: float) -> dict:
    """Do the classes after the best one carry information? The probability left to the 3rd-10th classes
    (label smoothing's floor), and how often the runner-up is the right class when the best one is wrong."""
    probs = calibration.probabilities(logits, t)
    ranked = probs.sort(1, descending=True)
    wrong = ranked.indices[:, 0] != labels
    return {"mean_probability_of_3rd_to_last": float(ranked.values[:, 2:].sum(1).mean()),
            "mean_runner_up_probability": float(ranked.values[:, 1].mean()),
            "wrong": int(wrong.sum()),
            "runner_up_right_when_wrong": float((ranked.indices[wrong, 1] == labels[wrong]).double().mean())}


def save_examples(folder: Path, name: str, inputs: list, predictor: Predictor) -> None:
    for i, (item, p) in enumerate(zip(inputs[:3], predictor.predict(inputs[:3]))):
        data = item if isinstance(item, bytes) else png_bytes(item)
        write_atomic(folder / f"{name}-{i}{'.jpg' if isinstance(item, bytes) else '.png'}", data)
        write_atomic(folder / f"{name}-{i}-seen-{p.class_name.replace('/', '-')}.png", png_bytes(p.image))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a calibrated model file or run directory (default: as `fashion-cnn predict`)")
    parser.add_argument("--n", type=int, default=300, help="images per generated set and draw (default: %(default)s)")
    parser.add_argument("--photos", type=int, default=1000,
                        help="held-out items rendered as photos (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where unknown.json goes")
    parser.add_argument("--examples", type=Path, help="also save a few inputs of each set, and what the model saw")
    args = parser.parse_args()

    predictor = Predictor(args.model)
    print(predictor.describe())
    stored = predictor.meta.get("calibration")
    if stored is None or predictor.unknown_rule is None:
        raise SystemExit(f"{predictor.path} is not calibrated; run `fashion-cnn calibrate` first")
    t, rule = predictor.temperature, predictor.unknown_rule

    data = load_fashion_mnist()
    images, labels, source, _ = calibrate.held_out(calibrate.trained_config(predictor.meta, predictor.path), data)
    half = len(labels) // 2
    fit_unknown, fit_logits = run(predictor, list(images[:half].numpy()))
    held_unknown, held_logits = run(predictor, list(images[half:].numpy()))
    rng = np.random.default_rng(args.seed)
    picked = rng.choice(np.arange(half, len(labels)), min(args.photos, len(labels) - half), replace=False)
    photo_unknown, photo_logits = run(predictor, [render_photo(images[i].numpy(), rng) for i in picked])

    digits = load_digits().images
    draws = {}
    for draw, (seed, part) in {"selection": (args.seed, digits[:len(digits) // 2]),
                               "report": (args.seed + 1, digits[len(digits) // 2:])}.items():
        draws[draw] = {}
        for key, (_, make) in OOD_SETS.items():
            inputs = make(np.random.default_rng([seed, len(draws[draw])]), args.n, part)
            draws[draw][key] = run(predictor, inputs)
            if args.examples and draw == "report":
                save_examples(args.examples, key, inputs, predictor)
            print(f"{draw} {key}: {100 * draws[draw][key][0].mean():.1f}% unknown", flush=True)

    # the choice sees only the fitting half and the selection draw; the report draw and held-out half judge it
    selection = compare_scores(fit_logits, fit_logits, {k: v[1] for k, v in draws["selection"].items()}, t)
    best = max(selection, key=lambda name: selection[name]["mean_unknown_rate"])
    rates = resampled_rates(torch.cat([fit_logits, held_logits]), labels, args.seed)
    report = {key: float(unknown.mean()) for key, (unknown, _) in draws["report"].items()}
    held_labels = labels[half:]
    bins = {"before": reliability(held_logits, held_labels, 1.0), "after": reliability(held_logits, held_labels, t)}
    seconds = {"before": runner_ups(held_logits, held_labels, 1.0), "after": runner_ups(held_logits, held_labels, t)}
    result = {
        "model": str(predictor.path), "temperature": t, "rule": rule.describe(), "calibration": stored,
        "reliability_held_out": bins, "runner_ups_held_out": seconds,
        "in_distribution": {
            "source": source, "fitted_on": stored["fitted_on"], "reported_on": stored["reported_on"],
            "fitting_half_unknown_rate": float(fit_unknown.mean()),
            "held_out_unknown_rate": float(held_unknown.mean()),
            "held_out": accuracy_split(held_unknown, held_logits, labels[half:]),
            "held_out_photos": len(picked), "held_out_photos_unknown_rate": float(photo_unknown.mean()),
            "held_out_photos_accuracy": accuracy_split(photo_unknown, photo_logits, labels[torch.from_numpy(picked)]),
            "resampled_halves": {"count": RESAMPLES, "mean": float(np.mean(rates)), "std": float(np.std(rates)),
                                 "max": float(np.max(rates))},
        },
        "out_of_distribution": {key: {"description": OOD_SETS[key][0], "n": len(draws["report"][key][0]),
                                      "unknown_rate": report[key]} for key in OOD_SETS},
        "score_selection": {"best_by_mean_unknown_rate": best, "stored_score": rule.score, "scores": selection},
        "score_comparison_report_draw": compare_scores(
            fit_logits, held_logits, {k: v[1] for k, v in draws["report"].items()}, t),
        "n": args.n, "seed": args.seed,
    }

    print(f"\nreliability on {stored['reported_on']}: confidence bin, images, mean confidence, accuracy "
          "(before -> after calibration)")
    for before, after in zip(bins["before"], bins["after"]):
        cells = [f"{row['n']:>5} {100 * (row['mean_confidence'] or 0):5.1f}% {100 * (row['accuracy'] or 0):5.1f}%"
                 for row in (before, after)]
        print(f"  ({before['bin'][0]:g}, {before['bin'][1]:g}]: " + "  ->  ".join(cells))
    print("runner-ups: 3rd-10th classes' probability {:.1%} -> {:.1%}; runner-up right in {:.0%} of the {} errors".format(
        seconds["before"]["mean_probability_of_3rd_to_last"], seconds["after"]["mean_probability_of_3rd_to_last"],
        seconds["after"]["runner_up_right_when_wrong"], seconds["after"]["wrong"]))
    print(f"\nscore selection (selection draw; threshold at {100 * calibration.UNKNOWN_RATE:g}% of the fitting half):")
    for name, row in selection.items():
        print(f"  {name:<16} mean unknown {100 * row['mean_unknown_rate']:5.1f}%, mean AUROC {row['mean_auroc']:.3f}")
    print(f"  best: {best}; stored in the model: {rule.score}")
    print(f"\n| images ({rule.describe()}) | n | called unknown |\n|---|---:|---:|")
    print(f"| {stored['fitted_on']} (fitted on) | {half:,} | {100 * fit_unknown.mean():.2f}% |")
    print(f"| {stored['reported_on']} | {len(labels) - half:,} | {100 * held_unknown.mean():.2f}% |")
    print(f"| photos of held-out items | {len(picked):,} | {100 * photo_unknown.mean():.2f}% |")
    for key, (description, _) in OOD_SETS.items():
        print(f"| {description} | {len(draws['report'][key][0]):,} | {100 * report[key]:.1f}% |")
    for name, split in ((source, result["in_distribution"]["held_out"]),
                        ("photos of them", result["in_distribution"]["held_out_photos_accuracy"])):
        print(f"{name}: accuracy {100 * split['accuracy_all']:.2f}%, on those answered "
              f"{100 * split['accuracy_answered']:.2f}%; of those called unknown, "
              f"{100 * (split['wrong_among_unknown'] or 0):.0f}% would have been wrong")
    print(f"\nheld-out rate over {RESAMPLES} random halves: {100 * np.mean(rates):.2f}% "
          f"(std {100 * np.std(rates):.2f}, max {100 * np.max(rates):.2f})")
    save_result(args.out / "unknown.json", result)


if __name__ == "__main__":
    main()
