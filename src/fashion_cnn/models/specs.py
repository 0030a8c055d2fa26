"""The registered models' facts, without torch: each architecture's name, description, classifier head,
training recipe, and the layer explanations read. `registry` builds the networks they describe; the option
schema (`config`) and the command line's --help need only these, and so start without torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture: what it is, its classifier head, its default training recipe, the layer
    explanations read. Its builder and fast paths are registry.BUILDERS[name]."""

    name: str
    description: str
    head: str  # the attribute holding the final nn.Linear (features -> classes), which fine-tuning may replace
    recipe: dict = field(default_factory=dict)  # TrainConfig fields this model trains best with
    cam_layer: str | None = None  # the module whose activations explain.py maps back onto the input


SPECS: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec("baseline", "the tutorial's CNN (542,230 parameters), SGD 0.01 momentum 0.9, batch 32", head="fc2",
              cam_layer="conv"),
    # Chosen on a 5,000-image validation split (fashion-cnn train --val-size 5000, one seed each, 18 epochs):
    # this net 94.36%; the same without the second convolution at 14 pixels 93.94%.
    ModelSpec("fast", "4-layer BN CNN (141,418 parameters), 4 minutes on 2 CPU cores with AMX, 9 without",
              head="fc", cam_layer="layers.3",
              recipe=dict(epochs=18, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True,
                          weight_decay=5e-4, schedule="onecycle", warmup=0.2, label_smoothing=0.1,
                          crop=2, flip=True, tta=True, amp=True)),
    ModelSpec("strong", "ResNet-14, widths 32/64/128 (696,042 parameters)", head="fc", cam_layer="blocks.5",
              recipe=dict(epochs=50, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True,
                          weight_decay=5e-4, schedule="cosine", warmup=0.02, label_smoothing=0.1,
                          crop=2, flip=True, erase=0.5, ema=0.999, tta=True, amp=True)),
)}


def unknown(what: str, name: object, known: Iterable[str]) -> ValueError:
    """The one wording of "no such X" errors: what was asked for and what exists."""
    return ValueError(f"unknown {what} {name!r}; known: {', '.join(sorted(known))}")


def get_spec(name: str) -> ModelSpec:
    """The spec registered under name, or ValueError listing the known ones."""
    if not isinstance(name, str) or name not in SPECS:
        raise unknown("model", name, SPECS)
    return SPECS[name]


def list_models() -> list[str]:
    """The registered architectures' names, as `create_model` takes them."""
    return sorted(SPECS)
