"""Are `fashion-cnn explain`'s heat maps about the model, or only about the image? Issue 16's two criteria.

For each model, on N test images (a seeded sample) and the class the model predicts for each, every
attribution method below, for the trained model and for the same architecture with its parameters
destroyed (the model-randomisation check of Adebayo et al., 2018):
- mass on the garment: the share of the map's mass on pixels brighter than a threshold (a fraction of the
  image's brightest pixel: 0.05, as `predict` defines the object, and 0.1, 0.2, 0.3), beside the share of
  the image those pixels cover, which is what a map that ignored the image would score;
- rank correlation (Spearman) of the trained model's map and the randomised model's map of the same image,
  the paper's own measure: a map that stays when the weights are destroyed explains the image, not the model;
- rank correlation of each map with its image: how much of any map is the picture itself, trained or not;
- class sensitivity (trained model): the rank correlation of the maps of the predicted and of the
  runner-up class; a map that does not depend on the class cannot tell a person why this class.

Randomised models, each over --seeds seeds:
- fresh: the architecture as `create_model` initialises it (zero biases, batch norm the identity);
- randomised: every parameter of every stage drawn from a truncated normal, as the paper does
  (explain.randomise, whose docstring gives the recipe), batch norm's running statistics measured again on
  --calibration training images (--batch-norm: or reset to 0 and 1, or kept from the trained model);
- cascade (the method `explain` uses, and --cascade): the stages randomised one after the other from the
  top (the logits) down, one seed.
Prints a table and saves explain_sanity.json in --out.

    .venv/bin/python benchmarks/explain_sanity.py                                # the packaged model
    .venv/bin/python benchmarks/explain_sanity.py runs/<baseline-run> runs/<fast-run> --n 200
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from common import HERE, save_result
from scipy import ndimage
from scipy.stats import spearmanr
from torch import nn
from torch.overrides import TorchFunctionMode

from fashion_cnn.data.fmnist import load_fashion_mnist
from fashion_cnn.data.images import FOREGROUND, SIZE, to_float
from fashion_cnn.evaluation.explain import (
    METHOD,
    LayerMap,
    class_activation,
    evidence_on_object,
    heatmaps,
    mass_in,
    object_mask,
    randomise,
    stages,
    to_input_grid,
)
from fashion_cnn.evaluation.inference import predict_logits
from fashion_cnn.models.files import load_model
from fashion_cnn.models.locate import resolve_model_path
from fashion_cnn.models.registry import create_model, spec_of

THRESHOLDS = (FOREGROUND, 0.1, 0.2, 0.3)
NEAR = (1, 2)  # pixels around the garment (FOREGROUND) counted as its outline
IG_STEPS = 16  # few: from black, its map is zero on black pixels at any number of steps, which decides the measure
OCCLUSION = (4, 4)  # patches of 4x4 pixels, side by side (every 2 pixels costs 3.4x as much)
SMOOTHGRAD = (16, 0.15)  # noisy copies per image, and the noise's standard deviation (pixels in [0, 1])
GRAY = 0.286  # Fashion-MNIST's mean pixel: a reference that is not zero on the background


def blurred(x: torch.Tensor) -> torch.Tensor:
    """The image under a 9x9 box blur: a reference that keeps its rough brightness but not its shape."""
    return F.avg_pool2d(F.pad(x, (4, 4, 4, 4), mode="replicate"), 9, stride=1)


REFERENCES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "black": torch.zeros_like, "gray": lambda x: torch.full_like(x, GRAY), "blurred": blurred}


def earlier_layer(model: nn.Module) -> str | None:
    """The last stage whose output is finer than the cam layer's (None where the cam layer is the first)."""
    names = stages(model)
    sizes: dict[str, int] = {}

    def record(name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            sizes[name] = output.shape[-1]
        return hook
    hooks = [model.get_submodule(n).register_forward_hook(record(n)) for n in names]
    with torch.no_grad():
        model.logits(torch.zeros(1, 1, SIZE, SIZE))
    for hook in hooks:
        hook.remove()
    cam = spec_of(model).cam_layer
    finer = [n for n in names[:names.index(cam)] if sizes.get(n, 0) > sizes[cam]]
    return finer[-1] if finer else None


class GuidedReLU(torch.autograd.Function):
    """ReLU whose backward pass lets only positive gradients through where the input was positive."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad.clamp(min=0) * (x > 0)


class GuidedBackprop(TorchFunctionMode):
    """Guided backpropagation for models that call F.relu: captum's GuidedBackprop only replaces the
    gradients of nn.ReLU modules, and these models have none."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.relu:
            return GuidedReLU.apply(args[0])
        return func(*args, **(kwargs or {}))


def guided_grad_cam(model: nn.Module) -> LayerMap:
    """Guided backpropagation times the Grad-CAM map on the input grid, as captum's GuidedGradCam."""
    from captum.attr import Saliency

    cam = class_activation(model, "Grad-CAM")

    def attribute(m: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with GuidedBackprop():
            guided = Saliency(m.logits).attribute(x, target=target, abs=False)
        return guided * to_input_grid(cam(m, x, target).clamp(min=0))
    return attribute


def input_method(name: str, reference: str = "black") -> Callable[[nn.Module], LayerMap]:
    """A captum attribution on the input pixels, against a reference image (REFERENCES)."""
    from captum.attr import InputXGradient, IntegratedGradients, Occlusion

    def build(model: nn.Module) -> LayerMap:
        if name == "Integrated Gradients":
            return lambda m, x, target: IntegratedGradients(m.logits).attribute(
                x, baselines=REFERENCES[reference](x), target=target, n_steps=IG_STEPS,
                internal_batch_size=len(x) * 8)
        if name == "Input x Gradient":
            return lambda m, x, target: InputXGradient(m.logits).attribute(x, target=target)
        window, stride = OCCLUSION
        return lambda m, x, target: Occlusion(m.logits).attribute(
            x, target=target, sliding_window_shapes=(1, window, window), strides=(1, stride, stride),
            baselines=REFERENCES[reference](x), perturbations_per_eval=32)
    return build


def gradient(smooth: bool) -> Callable[[nn.Module], LayerMap]:
    """The size of the logit's gradient at each pixel (Simonyan et al., 2014), or its mean over noisy copies
    of the image (SmoothGrad, Smilkov et al., 2017): no reference image, so black pixels count like any."""
    from captum.attr import NoiseTunnel, Saliency

    def build(model: nn.Module) -> LayerMap:
        if smooth:
            return lambda m, x, target: NoiseTunnel(Saliency(m.logits)).attribute(
                x, target=target, nt_type="smoothgrad", nt_samples=SMOOTHGRAD[0], stdevs=SMOOTHGRAD[1], abs=True)
        return lambda m, x, target: Saliency(m.logits).attribute(x, target=target, abs=True)
    return build


def earlier(method: str) -> Callable[[nn.Module], LayerMap | None]:
    def build(model: nn.Module) -> LayerMap | None:
        layer = earlier_layer(model)
        return class_activation(model, method, layer) if layer else None
    return build


METHODS: dict[str, Callable[[nn.Module], LayerMap | None]] = {
    "Grad-CAM": lambda model: class_activation(model, "Grad-CAM"),
    "HiResCAM": lambda model: class_activation(model, "HiResCAM"),
    "Grad-CAM, earlier layer": earlier("Grad-CAM"),
    "HiResCAM, earlier layer": earlier("HiResCAM"),
    "Guided Grad-CAM": guided_grad_cam,
    "Integrated Gradients": input_method("Integrated Gradients"),
    "Input x Gradient": input_method("Input x Gradient"),
    "Occlusion": input_method("Occlusion"),
    # references that are not black, so that the background can carry attribution
    "Integrated Gradients, gray reference": input_method("Integrated Gradients", "gray"),
    "Integrated Gradients, blurred reference": input_method("Integrated Gradients", "blurred"),
    "Occlusion, gray patches": input_method("Occlusion", "gray"),
    "Gradient": gradient(smooth=False),
    "SmoothGrad": gradient(smooth=True),
}
# zero wherever the input is zero (or, for occlusion, wherever a black patch covers only black pixels), for
# any model whatever: such a map is on the garment by construction
ZERO_ON_BLACK = ("Integrated Gradients", "Input x Gradient", "Occlusion")


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Spearman correlation over images whose two maps both vary (a constant map has no ranks)."""
    rhos = [spearmanr(x.ravel(), y.ravel())[0] for x, y in zip(a, b) if x.std() > 0 and y.std() > 0]
    return float(np.mean(rhos)) if rhos else float("nan")


def near_garment(images: np.ndarray, pixels: int) -> np.ndarray:
    """The garment (FOREGROUND) and every pixel within `pixels` of it (a square neighbourhood): its outline's
    outer side, where the evidence of a shape lies as much as on its inner side."""
    return ndimage.binary_dilation(object_mask(images), np.ones((1, 2 * pixels + 1, 2 * pixels + 1), bool))


def scores(maps: np.ndarray, images: np.ndarray) -> dict:
    """Mass on the garment at each threshold and within NEAR pixels of it (means over non-empty maps), and
    the number of empty maps."""
    shares = {str(t): evidence_on_object(maps, images, t)[0] for t in THRESHOLDS}
    return {"mass_on_garment": {t: float(np.nanmean(s)) for t, s in shares.items()},
            "mass_near_garment": {str(d): float(np.nanmean(mass_in(maps, near_garment(images, d)))) for d in NEAR},
            "empty_maps": int(np.isnan(shares[str(FOREGROUND)]).sum()),
            "image_rank_correlation": rank_correlation(maps, images)}


def resolution_ceiling(images: np.ndarray, size: int) -> dict:
    """Mass on the garment of the best map a layer `size` units wide can draw: the garment itself, averaged
    over each unit's pixels and put back on the input grid as the layer's maps are (explain.to_input_grid)."""
    out = {}
    for t in THRESHOLDS:
        garment = torch.from_numpy(object_mask(images, t).astype(np.float32))[:, None]
        if SIZE % size:  # an unpadded convolution: its units sit on the pixels inside the border
            border = (SIZE - size) // 2
            units = garment[..., border:border + size, border:border + size]
        else:
            units = F.adaptive_avg_pool2d(garment, size)
        share, _ = evidence_on_object(to_input_grid(units)[:, 0].numpy(), images, t)
        out[str(t)] = float(np.nanmean(share))
    return out


def copy_of(trained: nn.Module) -> nn.Module:
    model = create_model(trained.arch, trained.num_classes, trained.tta)
    model.load_state_dict(trained.state_dict())
    return model.eval()


def explain_model(model: nn.Module, build: Callable, images: np.ndarray, rank: int = 0) -> np.ndarray:
    """The maps of the class the model ranks `rank` (0: its prediction) for each image."""
    logits = predict_logits(model, torch.from_numpy(images)[:, None])
    return heatmaps(model, images, logits.argsort(1, descending=True)[:, rank].numpy(), method=build(model))


def summary(runs: list[dict]) -> dict:
    """Mean and range over seeds of each number."""
    def spread(values: list[float]) -> dict:
        return {"mean": float(np.mean(values)), "min": min(values), "max": max(values)}
    out = {key: {k: spread([r[key][k] for r in runs]) for k in runs[0][key]}
           for key in ("mass_on_garment", "mass_near_garment")}
    for key in ("rank_correlation", "image_rank_correlation"):
        out[key] = spread([r[key] for r in runs])
    out["runs"] = runs
    return out


class Randomiser:
    """explain.randomise with the benchmark's choice of batch norm statistics."""

    def __init__(self, trained: nn.Module, batch_norm: str, calibration: torch.Tensor) -> None:
        self.trained, self.batch_norm, self.calibration = trained, batch_norm, calibration

    def __call__(self, model: nn.Module, names: list[str] | None, seed: int) -> nn.Module:
        randomise(model, names, seed, self.calibration if self.batch_norm == "measure" else None)
        if self.batch_norm == "keep":
            kept = {k: v for k, v in self.trained.state_dict().items() if "running_" in k}
            model.load_state_dict({**model.state_dict(), **kept})
        return model


def measure_method(trained: nn.Module, name: str, images: np.ndarray, seeds: int, cascade: bool,
                   randomiser: Randomiser) -> dict | None:
    build = METHODS[name]
    if build(trained) is None:
        return None
    trained_maps = explain_model(trained, build, images)
    runner_up = explain_model(trained, build, images, rank=1)
    probe = torch.from_numpy(images[:1])[:, None]
    size = build(trained)(trained, probe, torch.zeros(1, dtype=torch.int64)).shape[-1]
    result = {"map_size": size, "resolution_ceiling": resolution_ceiling(images, size),
              "trained": {**scores(trained_maps, images),
                          "class_rank_correlation": rank_correlation(trained_maps, runner_up)}}
    for variant in ("fresh", "randomised"):
        runs = []
        for seed in range(seeds):
            if variant == "fresh":
                torch.manual_seed(seed)
                model = create_model(trained.arch, trained.num_classes, trained.tta).eval()
            else:
                model = randomiser(copy_of(trained), None, seed)
            maps = explain_model(model, build, images)
            runs.append({"seed": seed, **scores(maps, images), "rank_correlation": rank_correlation(trained_maps, maps)})
        result[variant] = summary(runs)
    if cascade:
        model, steps = copy_of(trained), []
        for stage in reversed(stages(trained)):
            randomiser(model, [stage], len(steps))
            maps = explain_model(model, build, images)
            steps.append({"randomised_down_to": stage, **scores(maps, images),
                          "rank_correlation": rank_correlation(trained_maps, maps)})
        result["cascade"] = steps
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", help="model files or run directories (default: the packaged model)")
    parser.add_argument("--n", type=int, default=200, help="test images (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="of the sample")
    parser.add_argument("--seeds", type=int, default=2, help="random models per kind (default: %(default)s)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), metavar="METHOD",
                        help=f"default: all ({', '.join(METHODS)})")
    parser.add_argument("--cascade", nargs="*", choices=METHODS, default=[METHOD], metavar="METHOD",
                        help="methods to run the cascading randomisation for (default: %(default)s)")
    parser.add_argument("--batch-norm", choices=("measure", "reset", "keep"), default="measure",
                        help="batch norm statistics of randomised stages (default: %(default)s; the others "
                             "write explain_sanity-<choice>.json)")
    parser.add_argument("--calibration", type=int, default=2000,
                        help="training images to measure them on (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where explain_sanity.json goes")
    parser.add_argument("--tag", help="write explain_sanity-TAG.json instead (a run of some of the methods)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", "Input Tensor 0 did not already require gradients")

    data = load_fashion_mnist()
    picked = np.random.default_rng(args.seed).choice(len(data.test_images), args.n, replace=False)
    images = to_float(data.test_images[picked])[:, 0].numpy()
    labels = data.test_labels[picked]
    calibration = to_float(data.train_images[:args.calibration])
    area = {str(t): float(evidence_on_object(images, images, t)[1].mean()) for t in THRESHOLDS}
    near_area = {str(d): float(near_garment(images, d).mean()) for d in NEAR}
    print("share of the image that is garment: " + ", ".join(f"{v:.3f} (>{t} of max)" for t, v in area.items()))
    models: list[dict] = []
    for name in args.models or [None]:
        path = resolve_model_path(name)
        trained, meta = load_model(path)
        accuracy = float((predict_logits(trained, torch.from_numpy(images)[:, None]).argmax(1) == labels)
                         .float().mean())
        entry = {"model": str(path), "architecture": meta["architecture"], "accuracy_on_sample": accuracy,
                 "cam_layer": spec_of(trained).cam_layer, "earlier_layer": earlier_layer(trained),
                 "stages": stages(trained), "methods": {}}
        models.append(entry)
        for method in args.methods:
            r = measure_method(trained, method, images, args.seeds, method in args.cascade,
                               Randomiser(trained, args.batch_norm, calibration))
            if r is None:
                continue
            entry["methods"][method] = r
            t = str(FOREGROUND)
            cascade = " | cascade " + " ".join(f"{s['randomised_down_to']} {s['mass_on_garment'][t]:.2f}/"
                                               f"{s['rank_correlation']:.2f}" for s in r.get("cascade", []))
            print(f"{meta['architecture']:<9} {method:<24} mass on garment (area {area[t]:.3f}): trained "
                  f"{r['trained']['mass_on_garment'][t]:.3f}, fresh {r['fresh']['mass_on_garment'][t]['mean']:.3f}, "
                  f"randomised {r['randomised']['mass_on_garment'][t]['mean']:.3f} "
                  f"[{r['randomised']['mass_on_garment'][t]['min']:.3f}-{r['randomised']['mass_on_garment'][t]['max']:.3f}]"
                  f" | rank correlation with trained: fresh {r['fresh']['rank_correlation']['mean']:.2f}, randomised "
                  f"{r['randomised']['rank_correlation']['mean']:.2f} | with the image: trained "
                  f"{r['trained']['image_rank_correlation']:.2f}, randomised "
                  f"{r['randomised']['image_rank_correlation']['mean']:.2f} | class rank correlation "
                  f"{r['trained']['class_rank_correlation']:.2f} | empty {r['trained']['empty_maps']} | ceiling "
                  f"{r['resolution_ceiling'][t]:.3f} | within 1 / 2 pixels of the garment (area "
                  + " / ".join(f"{near_area[str(d)]:.3f}" for d in NEAR) + "): trained "
                  + " / ".join(f"{r['trained']['mass_near_garment'][str(d)]:.3f}" for d in NEAR) + ", randomised "
                  + " / ".join(f"{r['randomised']['mass_near_garment'][str(d)]['mean']:.3f}" for d in NEAR)
                  + cascade, flush=True)
        # after each model: a long run keeps what it has measured
        save(args, {"garment_area": area, "near_garment_area": near_area}, models)
    print(f"saved {result_path(args)}")


def result_path(args: argparse.Namespace) -> Path:
    tag = args.tag or (args.batch_norm if args.batch_norm != "measure" else None)
    return args.out / (f"explain_sanity-{tag}.json" if tag else "explain_sanity.json")


def save(args: argparse.Namespace, areas: dict, models: list[dict]) -> None:
    save_result(result_path(args),
               {"n": args.n, "seed": args.seed, "seeds": args.seeds, "thresholds": list(THRESHOLDS),
                "batch_norm": args.batch_norm, "calibration": args.calibration, **areas,
                "zero_on_black": list(ZERO_ON_BLACK), "ig_steps": IG_STEPS,
                "occlusion_window_stride": list(OCCLUSION), "models": models})


if __name__ == "__main__":
    main()
