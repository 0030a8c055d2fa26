"""Model registry: the registered architectures' networks and builders, with their fast paths (what each
is, its head and its training recipe are its spec, in `specs`); `create_model(name, **options)` builds one
with fresh weights.

Every model maps float images (N, 1, 28, 28) in [0, 1] to logits (N, num_classes); softmax lives in the
loss and in prediction, as usual in PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fashion_cnn.models import fastpath
from fashion_cnn.models.specs import ModelSpec, get_spec

# A fast path takes the model (and, for training, its optimizer and config) and returns a callable that
# replaces the generic one, or None where it does not apply (another device, dtype or recipe).
FastLogits = Callable[[nn.Module], Callable[[torch.Tensor], torch.Tensor] | None]
FastStep = Callable[..., Callable | None]


@dataclass(frozen=True)
class Builder:
    """How a registered architecture (specs.SPECS) is built, and its fast paths."""

    build: Callable[..., nn.Module]  # (num_classes) -> model
    fast_logits: FastLogits | None = None  # inference without autograd's modules (inference.predict_logits)
    fast_step: FastStep | None = None  # (model, optimizer, cfg) -> training step (train.make_step)


BUILDERS: dict[str, Builder] = {}


def register(name: str, *, fast_logits: FastLogits | None = None, fast_step: FastStep | None = None) -> Callable:
    """Decorator: `build(num_classes) -> model` builds the architecture that specs.SPECS describes under
    `name`, with its fast paths."""
    get_spec(name)  # a builder of a model that has a spec

    def decorator(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        BUILDERS[name] = Builder(build, fast_logits, fast_step)
        return build
    return decorator


def create_model(name: str, num_classes: int = 10, tta: bool = False) -> nn.Module:
    """A registered architecture with fresh weights (seed torch first for reproducible ones).

    tta: average each image's logits with its mirror image's when evaluating (see Classifier).
    """
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes!r}")
    get_spec(name)  # ValueError naming the known models
    model = BUILDERS[name].build(num_classes)
    model.arch, model.tta = name, bool(tta)
    return model


def spec_of(model: nn.Module) -> ModelSpec:
    """The spec a model was built from by create_model."""
    return get_spec(getattr(model, "arch", None))


def builder_of(model: nn.Module) -> Builder:
    """The builder, with its fast paths, of a model built by create_model."""
    return BUILDERS[spec_of(model).name]


def count_parameters(model: nn.Module) -> int:
    """Trainable and frozen parameters alike (buffers such as batch-norm statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


class Classifier(nn.Module):
    """Base of the registered models: subclasses define `logits`, forward adds test-time augmentation.

    With `tta` set (by the training recipe, or from a saved model's metadata), evaluation averages the
    logits of each image and its mirror image: every class is left-right symmetric. Training ignores it.
    Living in forward, it reaches every user of the model: evaluate, predict, serving and export.
    """

    tta: bool = False
    frozen_backbone: bool = False  # set by finetune.freeze_backbone: only the head trains
    arch: str  # the registry name, set by create_model

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def train(self, mode: bool = True) -> "Classifier":
        """Training mode; with a frozen backbone, everything but the head stays in eval mode, so batch
        norm keeps normalising with (and never updates) the statistics it was trained with."""
        super().train(mode)
        if mode and self.frozen_backbone:
            head = spec_of(self).head
            for name, child in self.named_children():
                if name != head:
                    child.train(False)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tta and not self.training:
            return (self.logits(x) + self.logits(x.flip(3))) / 2
        return self.logits(x)


class Baseline(Classifier):
    """The tutorial's CNN: Conv 32 3x3, ReLU, MaxPool 2x2, Flatten, Dense 100, ReLU, Dense 10.

    Max-pooling runs before the ReLU: both are monotone, so the result is identical and the ReLU
    touches a quarter of the values. Flatten uses Keras's (height, width, channel) order, which
    lets the fast CPU path (fastpath.py) read channels-last activations without a copy.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(num_classes)
        self.conv = nn.Conv2d(1, 32, 3)
        self.fc1 = nn.Linear(13 * 13 * 32, 100)
        self.fc2 = nn.Linear(100, num_classes)
        for layer in (self.conv, self.fc1):  # the tutorial's he_uniform: U(+-sqrt(6 / fan_in))
            nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")
        nn.init.xavier_uniform_(self.fc2.weight)  # Keras's default (glorot_uniform) for the output layer
        for layer in (self.conv, self.fc1, self.fc2):
            nn.init.zeros_(layer.bias)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.max_pool2d(self.conv(x), 2))
        x = x.permute(0, 2, 3, 1).flatten(1)
        return self.fc2(F.relu(self.fc1(x)))


register("baseline", fast_logits=fastpath.fast_logits, fast_step=fastpath.fast_step)(Baseline)


def conv_bn(c_in: int, c_out: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    """Convolution ("same" padding) and batch norm; the convolution needs no bias, batch norm brings its own."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(c_out))


class FastNet(Classifier):
    """Four conv-BN-ReLU layers, max-pooling after the 1st, 3rd and 4th (28 -> 14 -> 7 -> 3 pixels),
    then one linear layer: two convolutions at 14 pixels, where they are cheap, buy the accuracy.

    Pooling runs before the ReLU: identical, on a quarter of the values.
    """

    def __init__(self, num_classes: int = 10,
                 plan: tuple[tuple[int, bool], ...] = ((32, True), (64, False), (64, True), (128, True))) -> None:
        super().__init__(num_classes)
        chans = (1, *(width for width, _ in plan))
        self.layers = nn.ModuleList(conv_bn(c_in, c_out) for c_in, c_out in zip(chans, chans[1:]))
        self.pools = [pool for _, pool in plan]
        self.fc = nn.Linear(chans[-1] * (28 >> sum(self.pools)) ** 2, num_classes)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        for layer, pool in zip(self.layers, self.pools):
            x = layer(x)
            x = F.relu(F.max_pool2d(x, 2) if pool else x)
        return self.fc(x.flatten(1))


class BasicBlock(nn.Module):
    """ResNet's two 3x3 convolutions plus a shortcut (1x1 convolution where the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(c_in, c_out, stride)
        self.conv2 = conv_bn(c_out, c_out)
        nn.init.zeros_(self.conv2[1].weight)  # each block starts as the identity: deep nets train from step one
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else conv_bn(c_in, c_out, stride, kernel=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x))) + self.shortcut(x))


class ResNet(Classifier):
    """A ResNet for 28x28 images: a 3x3 stem, stages at 28, 14 and 7 pixels, global average pooling."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (32, 64, 128), blocks: int = 2) -> None:
        super().__init__(num_classes)
        self.stem = conv_bn(1, widths[0])
        layers, c_in = [], widths[0]
        for i, c_out in enumerate(widths):
            for j in range(blocks):
                layers.append(BasicBlock(c_in, c_out, stride=2 if i > 0 and j == 0 else 1))
                c_in = c_out
        self.blocks = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, num_classes)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.stem(x)))
        return self.fc(x.mean((2, 3)))


def channels_last(model: nn.Module) -> nn.Module:
    """NHWC weights: oneDNN (CPU) and cuDNN (tensor cores) run convolutions fastest in this layout."""
    return model.to(memory_format=torch.channels_last)


@register("fast")
def fast(num_classes: int) -> nn.Module:
    return channels_last(FastNet(num_classes))


@register("strong")
def strong(num_classes: int) -> nn.Module:
    return channels_last(ResNet(num_classes))


def freeze_backbone(model: nn.Module, frozen: bool = True) -> None:
    """Only the head's parameters train, and the rest stays in eval mode (models.Classifier.train); or,
    with `frozen` False, every parameter trains again."""
    head = spec_of(model).head
    for name, p in model.named_parameters():
        p.requires_grad_(not frozen or name.split(".")[0] == head)
    model.frozen_backbone = frozen
    model.train(model.training)
