"""Model registry: `create_model(name)` builds a registered architecture with fresh weights.

Every model maps float images (N, 1, 28, 28) in [0, 1] to logits (N, 10); softmax lives in the loss and
in prediction, as usual in PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[[], nn.Module]
    description: str
    recipe: dict = field(default_factory=dict)  # TrainConfig fields this model trains best with


REGISTRY: dict[str, ModelSpec] = {}


def register(name: str, description: str, **recipe) -> Callable:
    def decorator(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        REGISTRY[name] = ModelSpec(name, build, description, recipe)
        return build
    return decorator


def get_spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(REGISTRY))}") from None


def create_model(name: str) -> nn.Module:
    return get_spec(name).build()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class Baseline(nn.Module):
    """The tutorial's CNN: Conv 32 3x3, ReLU, MaxPool 2x2, Flatten, Dense 100, ReLU, Dense 10.

    Max-pooling runs before the ReLU: both are monotone, so the result is identical and the ReLU
    touches a quarter of the values. Flatten uses Keras's (height, width, channel) order, which
    lets the fast CPU path (fastpath.py) read channels-last activations without a copy.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 32, 3)
        self.fc1 = nn.Linear(13 * 13 * 32, 100)
        self.fc2 = nn.Linear(100, 10)
        for layer in (self.conv, self.fc1):  # the tutorial's he_uniform: U(+-sqrt(6 / fan_in))
            nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")
        nn.init.xavier_uniform_(self.fc2.weight)  # Keras's default (glorot_uniform) for the output layer
        for layer in (self.conv, self.fc1, self.fc2):
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.max_pool2d(self.conv(x), 2))
        x = x.permute(0, 2, 3, 1).flatten(1)
        return self.fc2(F.relu(self.fc1(x)))


register("baseline", "the tutorial's CNN (542,230 parameters), SGD 0.01 momentum 0.9, batch 32",
         )(Baseline)
