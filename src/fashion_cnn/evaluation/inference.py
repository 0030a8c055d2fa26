"""Batched inference: logits of a model for uint8 or float images, through the model's own fast path.
Every caller gets the same dtype rule: uint8 is scaled (data.to_float), float must be in [0, 1], anything
else is refused.

Prediction, serving, export and evaluation all call `predict_logits`; it imports no metrics library.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm import tqdm

from fashion_cnn.data.images import to_float
from fashion_cnn.models.registry import builder_of

IMAGES = "uint8 images (0-255, scaled as in training) or float images in [0, 1]"


def check_images(images: torch.Tensor) -> None:
    """Refuse (ValueError) what no model takes: dtypes other than uint8 and float, float values outside
    [0, 1] (NaN included), shapes other than (N, H, W) and (N, 1, H, W)."""
    if images.dtype != torch.uint8 and not images.dtype.is_floating_point:
        raise ValueError(f"images of type {images.dtype}: expected {IMAGES}")
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[1] == 1)):
        raise ValueError(f"images of shape {tuple(images.shape)}: expected (N, H, W) or (N, 1, H, W)")
    if images.dtype.is_floating_point and images.numel():
        low, high = torch.aminmax(images)
        if low.isnan() or high.isnan():
            raise ValueError(f"float images containing NaN: expected {IMAGES}")
        if not (low >= 0 and high <= 1):
            raise ValueError(f"float images with values from {low.item():g} to {high.item():g}: expected "
                             f"{IMAGES} (divide 0-255 floats by 255)")


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 1000,
                   desc: str | None = None) -> torch.Tensor:
    """Logits for images (N, 28, 28) or (N, 1, 28, 28): uint8 is scaled by data.to_float as in training,
    float must already be in [0, 1]; anything else is a ValueError (check_images).

    desc: a progress bar with this label, on a terminal, when there is more than one batch.
    """
    check_images(images)
    if images.ndim == 4:
        images = images[:, 0]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    builder = builder_of(model)
    forward = (builder.fast_logits and builder.fast_logits(model)) or model
    out = []
    with tqdm(total=len(images), desc=desc, unit="img", leave=False,
              disable=None if desc and len(images) > batch_size else True) as bar:
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(device)
            x = to_float(x) if x.dtype == torch.uint8 else x.float().unsqueeze(1)
            out.append(forward(x).float().cpu())
            bar.update(len(x))
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, model.num_classes)


def loss_and_accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      batch_size: int = 1000) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on held-out images, as the training loop validates."""
    logits = predict_logits(model, images, batch_size)
    labels = labels.cpu()
    return F.cross_entropy(logits, labels).item(), (logits.argmax(1) == labels).float().mean().item()
