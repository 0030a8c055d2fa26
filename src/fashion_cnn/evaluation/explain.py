"""Explanations of single predictions: where in the 28x28 input the model found its evidence for a class.

The heat map is HiResCAM (Draelos & Carin, 2020), computed with captum: the gradient of the class's logit
times the activations of the model's last convolutional stage (the module its registry spec names as
`cam_layer`), summed over channels, kept where positive and put on the 28x28 input grid. For the fast and
strong models the map is an exact decomposition of the logit (less its bias) over the stage's positions:
what follows the stage is piecewise linear and without bias until the logits; for the baseline, nearly so.
For a model that ends in global average pooling (strong) it is exactly Grad-CAM; for models whose dense
layer reads every position (baseline, fast), Grad-CAM averages the gradient over positions first and its
maps lie mostly off the garment (8% and 22% of their mass on it). Among the captum methods compared by
benchmarks/explain_sanity.py, it is the one whose trained maps beat those of a randomised model (the check
of Adebayo et al., 2018, as `randomise` does it) on the garment for the fast and strong models, and it
depends on the class; methods that are zero wherever the input is black (Integrated Gradients or Input x
Gradient from a black image, occlusion by black patches) lie on the garment for any model, trained or not.
Models evaluated with test-time augmentation get the mean of the maps of both views.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from scipy import ndimage
from torch import nn

from fashion_cnn.config import TOP_K
from fashion_cnn.data.images import FOREGROUND, SIZE, Source, png_bytes
from fashion_cnn.evaluation.predict import Prediction, Predictor, expand_sources, output_name, prepare
from fashion_cnn.io import write_atomic
from fashion_cnn.models.registry import spec_of
from fashion_cnn.models.specs import unknown
from fashion_cnn.text import plain

METHOD = "HiResCAM"
OVERLAY_SCALE = 4  # 28x28 inputs are shown 112x112
# A map of single pixels (the baseline's unpooled 26x26 conv layer) is a scatter of isolated values under
# one peak: shown as it is, a few faint specks. Pictures show it blurred by a pixel (the scale of the 2x2
# pooling that follows that layer) and scaled to its own maximum again; maps of coarser layers, smooth
# already, hardly change. The maps themselves (heatmaps, --json, the benchmarks) are not blurred.
OVERLAY_BLUR = 1.0  # standard deviation, in input pixels


def cam_layer(model: nn.Module) -> nn.Module:
    """The module whose activations the heat map is computed on, as the model's registry spec names it."""
    spec = spec_of(model)
    if not spec.cam_layer:
        raise ValueError(f"model {spec.name!r} names no layer to explain (ModelSpec.cam_layer)")
    return model.get_submodule(spec.cam_layer)


LayerMap = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]  # (model, x, targets) -> (N, 1, h, w)


def class_activation(model: nn.Module, method: str = METHOD, layer: str | None = None) -> LayerMap:
    """(model, images, targets) -> the layer's map (N, 1, h, w) before the ReLU: HiResCAM, or Grad-CAM for
    comparison (benchmarks/explain_sanity.py), on `layer` (default: the spec's cam_layer)."""
    from captum.attr import LayerGradCam, LayerGradientXActivation  # captum loads only when a map is drawn

    module = model.get_submodule(layer) if layer else cam_layer(model)
    if method == "HiResCAM":
        def hirescam(m: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return LayerGradientXActivation(m.logits, module).attribute(x, target=target).sum(1, keepdim=True)
        return hirescam
    if method == "Grad-CAM":
        return lambda m, x, target: LayerGradCam(m.logits, module).attribute(x, target=target,
                                                                              relu_attributions=False)
    raise unknown("explanation method", method, ("HiResCAM", "Grad-CAM"))


def to_input_grid(layer_map: torch.Tensor) -> torch.Tensor:
    """A layer's map (N, 1, h, w) on the 28x28 input grid. A strided or pooled layer (h divides 28) is
    stretched bilinearly, which puts each unit on the centre of the pixels it pools; an unpadded
    convolution's map (28 - k + 1 wide) is its units' centres already, framed by the border pixels no unit
    is centred on (stretching it would shift the map by up to a pixel at the garment's edges)."""
    from captum.attr import LayerAttribution  # likewise

    h = layer_map.shape[-1]
    if SIZE % h == 0:
        return LayerAttribution.interpolate(layer_map.float(), (SIZE, SIZE), interpolate_mode="bilinear")
    border = (SIZE - h) // 2
    return torch.nn.functional.pad(layer_map.float(), (border, SIZE - h - border) * 2)


def heatmaps(model: nn.Module, images: np.ndarray | torch.Tensor, targets: Sequence[int],
             batch_size: int = 200, method: str | LayerMap = METHOD) -> np.ndarray:
    """float32 (N, 28, 28) in [0, 1], each map scaled to a maximum of 1 (all 0 where the layer holds no
    positive evidence), for float images (N, 28, 28) in [0, 1] and one target class per image.

    method: a name class_activation knows, or any (model, images, targets) -> (N, 1, h, w) map of one view.
    """
    images = torch.as_tensor(np.asarray(images, np.float32)).unsqueeze(1)
    targets = torch.as_tensor(np.asarray(targets, np.int64))
    device = next(model.parameters()).device
    attribute = class_activation(model, method) if isinstance(method, str) else method
    flips = (False, True) if model.tta else (False,)
    was_training = model.training
    model.eval()
    maps = []
    with torch.enable_grad():
        for start in range(0, len(images), batch_size):
            x, target = images[start:start + batch_size].to(device), targets[start:start + batch_size].to(device)
            total = 0
            for flip in flips:  # each view's map, on the input grid, then mirrored back onto the input
                view = to_input_grid(attribute(model, x.flip(3) if flip else x, target))
                total = total + (view.flip(3) if flip else view)
            maps.append(total[:, 0].detach().clamp(min=0).cpu())
    model.train(was_training)
    if not maps:
        return np.zeros((0, SIZE, SIZE), np.float32)
    out = torch.cat(maps).numpy()
    peak = out.max(axis=(1, 2), keepdims=True)
    return np.divide(out, peak, out=np.zeros_like(out), where=peak > 0)


def object_mask(images: np.ndarray, threshold: float = FOREGROUND) -> np.ndarray:
    """Per image (N, H, W): the object, the pixels brighter than `threshold` times the image's brightest."""
    return images > threshold * images.max(axis=(1, 2), keepdims=True)


def mass_in(heats: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Per image: the share of the heat map's mass in the region (NaN for an empty map)."""
    total = heats.sum(axis=(1, 2))
    inside = (heats * region).sum(axis=(1, 2))
    return np.divide(inside, total, out=np.full_like(total, np.nan), where=total > 0)


def evidence_on_object(heats: np.ndarray, images: np.ndarray, threshold: float = FOREGROUND
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the share of the heat map's mass on the object (object_mask; NaN for an empty map), and
    the share of the image the object covers. A map that ignored the image would put about the covered
    share of its mass there."""
    on = object_mask(images, threshold)
    return mass_in(heats, on), on.mean(axis=(1, 2))


# --- the model-randomisation check (Adebayo et al., 2018) ------------------------------------------------

def stages(model: nn.Module) -> list[str]:
    """The names of the model's stages in the order its forward runs them, which together hold every
    parameter once: its top-level modules, a container of blocks (ResNet's blocks, FastNet's layers) split
    into its blocks. The units that cascading randomisation destroys one after the other, from the top."""
    names = []
    for name, child in model.named_children():
        blocks = list(child.named_children()) if isinstance(child, (nn.Sequential, nn.ModuleList)) else []
        if blocks and all(any(True for _ in block.children()) for _, block in blocks):
            names += [f"{name}.{sub}" for sub, _ in blocks]
        else:
            names.append(name)
    ran: list[str] = []
    hooks = [model.get_submodule(name).register_forward_hook(lambda *_, name=name: ran.append(name))
             for name in names]
    try:
        with torch.no_grad():
            model.logits(torch.zeros(1, 1, SIZE, SIZE, device=next(model.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
    return list(dict.fromkeys(ran)) + [name for name in names if name not in ran]


def randomise(model: nn.Module, names: Iterable[str] | None = None, seed: int = 0,
              images: torch.Tensor | None = None, batch_size: int = 500) -> nn.Module:
    """The model, with every parameter of the named stages (default: all) drawn afresh, in place.

    As Adebayo et al. do: from a truncated normal (cut at 2 standard deviations), the weights and the
    biases alike. The scale is He's, sqrt(2 / fan-in), so that a signal keeps its size through every
    randomised layer and no layer's part vanishes or dominates; a bias is one more weight of its unit (fed
    a constant 1), and batch norm's scale and shift those of a unit with one input. Zero biases, as the
    models' own initialisation sets them, would not do: activations of a black image would then be
    exactly zero, and every map of a fresh model would lie on the garment.

    Batch norm's running statistics are no parameters but the mean and variance of its input over the
    data, and randomising a stage changes the input of every batch norm from that stage up. Given float
    `images` (N, 1, 28, 28), those statistics are measured again on them, as training mode computes them,
    so that each batch norm normalises what it now receives, as at the start of training. Without, they
    are reset to mean 0 and variance 1. (Keeping the trained ones would scale random activations by the
    statistics of others and keep a learned shift per channel.)
    """
    generator = torch.Generator().manual_seed(seed)
    order = stages(model)
    names = order if names is None else list(names)

    def draw(t: torch.Tensor, fan_in: int) -> None:
        std = (2 / fan_in) ** 0.5
        t.copy_(nn.init.trunc_normal_(torch.empty(t.shape), 0, std, -2 * std, 2 * std, generator=generator))

    with torch.no_grad():
        for name in names:
            for module in model.get_submodule(name).modules():
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    fan_in = module.weight[0].numel()
                    draw(module.weight, fan_in)
                    if module.bias is not None:
                        draw(module.bias, fan_in)
                elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                    draw(module.weight, 1)
                    draw(module.bias, 1)
                    module.reset_running_stats()
                elif any(True for _ in module.parameters(recurse=False)):
                    raise ValueError(f"cannot randomise {type(module).__name__} in {name!r}")
    if images is not None and names:
        changed = order[min(order.index(name) for name in names):]
        measure_batch_norm(model, images, changed, batch_size)
    return model


def measure_batch_norm(model: nn.Module, images: torch.Tensor, names: Iterable[str], batch_size: int = 500
                       ) -> None:
    """Batch norm's running statistics in the named stages, measured on the images: their plain average
    over the batches, as training mode computes them (no gradients; every other module as it was)."""
    norms = [m for name in names for m in model.get_submodule(name).modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average
        m.train()
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                model.logits(images[start:start + batch_size].to(device))
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
        model.train(was_training)


def overlay(image: np.ndarray, heat: np.ndarray, scale: int = OVERLAY_SCALE) -> np.ndarray:
    """uint8 RGB (28*scale, 28*scale, 3): the image in gray, the heat map over it in colour, opaque where
    the evidence is strongest and absent where there is none."""
    from matplotlib import colormaps  # where a picture is drawn: prediction starts without matplotlib

    size = (SIZE * scale, SIZE * scale)
    gray = np.asarray(Image.fromarray(np.asarray(image, np.float32)).resize(size, Image.Resampling.NEAREST))
    shown = ndimage.gaussian_filter(np.asarray(heat, np.float32), OVERLAY_BLUR)
    peak = shown.max()
    shown = shown / peak if peak > 0 else shown
    warm = np.asarray(Image.fromarray(shown).resize(size, Image.Resampling.BILINEAR))
    warm = np.clip(warm, 0, 1)
    alpha = 0.65 * warm[..., None]
    rgb = (1 - alpha) * gray[..., None] + alpha * colormaps["jet"](warm)[..., :3]
    return np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def explanation_png(p: Prediction, heat: np.ndarray) -> bytes:
    """One picture: the 28x28 input the model saw, the heat map of its predicted class, the top classes."""
    fig = Figure(figsize=(8.4, 2.8), layout="constrained")
    FigureCanvasAgg(fig)
    seen, cam, bars = fig.subplots(1, 3, width_ratios=[1, 1, 1.4])
    seen.imshow(p.image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    seen.set_title("the 28x28 input the model saw" if p.other_view is None else
                   "the 28x28 input the model was surer of\n(of the object turned upright and as it stood)",
                   fontsize=9)
    cam.imshow(overlay(p.image, heat))
    cam.set_title(f"{METHOD}: {plain(p.class_name)}", fontsize=9)
    for ax in (seen, cam):
        ax.set_xticks([])
        ax.set_yticks([])
    names = [plain(name) for name, _ in p.top_k][::-1]
    probs = [prob for _, prob in p.top_k][::-1]
    bars.barh(names, probs, color="tab:blue")
    bars.set_xlim(0, 1)
    bars.set_title("top classes", fontsize=9)
    bars.tick_params(labelsize=8)
    for y, prob in enumerate(probs):  # the value beside its bar, or inside it in white where it is long
        inside = prob > 0.8
        bars.text(prob - 0.02 if inside else prob + 0.02, y, f"{prob:.2f}", va="center", fontsize=8,
                  ha="right" if inside else "left", color="white" if inside else "black")
    fig.suptitle(plain(Path(p.source).name), fontsize=10)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def explain_predictions(predictor: Predictor, predictions: list[Prediction]) -> list[np.ndarray | None]:
    """The heat map of each prediction's class, or of its best guess where the image is unknown (None for
    inputs that could not be used)."""
    ok = [p for p in predictions if p.error is None]
    guesses = [int(np.argmax(p.probabilities)) for p in ok]
    found = iter(heatmaps(predictor.model, np.stack([p.image for p in ok]), guesses)
                 if ok else [])
    return [None if p.error else next(found) for p in predictions]


def output_paths(predictions: list[Prediction], sources: list[tuple[str, Source]], out_dir: Path,
                 force: bool) -> list[Path | None]:
    """Where each usable input's picture goes; refuses to replace an input, or any file without force."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: not a folder; --out names the folder for the pictures")
    inputs = {Path(source).resolve() for _, source in sources if isinstance(source, (str, Path))}
    paths: list[Path | None] = []
    for i, p in enumerate(predictions):
        path = None if p.error else out_dir / output_name(i, p.source)
        if path is not None and path.resolve() in inputs:
            raise ValueError(f"{path}: is one of the input images; choose another --out")
        if path is not None and os.path.lexists(path) and not force:
            raise ValueError(f"{path}: exists; pass --force to replace it")
        paths.append(path)
    return paths


def explain_files(images: Source | Iterable[Source], model: str | Path | None = None,
                  out_dir: str | Path = "explanations", force: bool = False, top_k: int = TOP_K,
                  invert: bool | None = None, crop: bool = True, framed: bool = False,
                  ) -> tuple[Predictor, list[Prediction], list[np.ndarray | None], list[Path | None]]:
    """Predict and explain images as `fashion-cnn predict` preprocesses them; one PNG per usable image in
    out_dir (<index>-<name>.png). Returns the predictor, the predictions, their heat maps and PNG paths
    (None where an input could not be used: its Prediction has `error`)."""
    predictor = Predictor(model)
    sources = expand_sources(images)
    predictions = [prepare(name, source, invert, crop, framed) for name, source in sources]
    paths = output_paths(predictions, sources, Path(out_dir), force)  # refused before any work is done
    predictor.predict_prepared(predictions, top_k)
    heats = explain_predictions(predictor, predictions)
    for p, heat, path in zip(predictions, heats, paths):
        if path is not None:
            write_atomic(path, explanation_png(p, heat))
    return predictor, predictions, heats, paths


def overlay_png(image: np.ndarray, heat: np.ndarray, scale: int = OVERLAY_SCALE) -> bytes:
    """The heat map over its image as a PNG (the web page's and the report's pictures)."""
    return png_bytes(overlay(image, heat, scale))
