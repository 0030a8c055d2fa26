"""Data augmentation on whole batches of image tensors, on whatever device they live.

Each function maps a float batch (N, C, H, W) to an augmented batch of the same shape; image i stays
image i, so labels never move. Random numbers come from a CPU torch.Generator (seeded per seed, fold
and epoch by the training loop, which makes `--resume` exact) and are moved to the batch's device:
a few numbers per image, never per pixel.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def random_crop(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to `pad` pixels each way, filling with zeros (the black background)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n, 1), generator=generator).to(x.device)
    rows = dy + torch.arange(h, device=x.device)  # (N, H): the padded rows each image keeps
    cols = dx + torch.arange(w, device=x.device)
    batch = torch.arange(n, device=x.device)[:, None, None]
    # advanced indices around the channel slice gather (N, H, W, C); permuting back gives a
    # channels-last batch, the layout the convolutional models run in
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the images left to right: every class is left-right symmetric."""
    flip = (torch.rand(len(x), generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def random_erase(x: torch.Tensor, p: float, generator: torch.Generator,
                 area: tuple[float, float] = (0.02, 0.4), aspect: tuple[float, float] = (0.3, 3.3)) -> torch.Tensor:
    """Random erasing (Zhong et al., 2017): with probability p, zero a box of random area and aspect ratio."""
    n, _, h, w = x.shape
    u = torch.rand(5, n, generator=generator)
    box_area = h * w * (area[0] + (area[1] - area[0]) * u[0])
    ratio = torch.exp(math.log(aspect[0]) + (math.log(aspect[1]) - math.log(aspect[0])) * u[1])
    box_h = (box_area * ratio).sqrt().round().clamp(1, h)
    box_w = (box_area / ratio).sqrt().round().clamp(1, w)
    top = ((h - box_h + 1) * u[2]).floor()
    left = ((w - box_w + 1) * u[3]).floor()
    top, left, box_h, box_w, erase = (t.to(x.device) for t in (top, left, box_h, box_w, u[4] < p))
    rows = torch.arange(h, device=x.device)[None, :]
    cols = torch.arange(w, device=x.device)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + box_h)[:, None])  # (N, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + box_w)[:, None])  # (N, W)
    mask = in_rows[:, None, :, None] & in_cols[:, None, None, :] & erase[:, None, None, None]
    return x.masked_fill(mask, 0.0)


def make_augment(crop: int = 0, flip: bool = False, erase: float = 0.0) -> Augment | None:
    """The recipe's augmentation as one function (batch, generator) -> batch; None when all are off."""
    steps: list[Augment] = []
    if crop:
        steps.append(lambda x, g: random_crop(x, crop, g))
    if flip:
        steps.append(random_flip)
    if erase:
        steps.append(lambda x, g: random_erase(x, erase, g))
    if not steps:
        return None

    def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for step in steps:
            x = step(x, generator)
        return x
    return augment
