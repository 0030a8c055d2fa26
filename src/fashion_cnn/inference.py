"""Batched inference: logits of a model for uint8 or float images, through the model's own fast path.

Prediction, serving, export and evaluation all call `predict_logits`; it imports no metrics library.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .data import to_float
from .models import spec_of


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 1000,
                   desc: str | None = None) -> torch.Tensor:
    """Logits for uint8 images (N, 28, 28), or float images (N, 1, 28, 28) already in [0, 1].

    desc: a progress bar with this label, on a terminal, when there is more than one batch.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    spec = spec_of(model)
    forward = (spec.fast_logits and spec.fast_logits(model)) or model
    out = []
    with tqdm(total=len(images), desc=desc, unit="img", leave=False,
              disable=None if desc and len(images) > batch_size else True) as bar:
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(device)
            if x.dtype == torch.uint8:
                x = to_float(x)
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
