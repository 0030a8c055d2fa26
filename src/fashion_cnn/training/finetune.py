"""Fine-tuning: a run that starts from a trained model file (--init) instead of fresh weights.

The run's architecture is the init file's. Its weights are copied into the new model, all but the
classifier head (the model spec's `head`, the final Linear) when the data has a class the file does not
know: then the head is the new model's own fresh one, seeded like any new model's. When every class of
the data is one of the file's, by name (`datasets.class_key`: "T-shirt-top" is "T-shirt/top"), the head
keeps those classes' rows, in the data's order: the same classes in another order, or some of them.

--freeze-backbone trains the head alone: every other parameter stops requiring gradients (so the
optimizer never sees it), and the rest of the network stays in eval mode while training, so batch norm
keeps normalising with the statistics the init model learnt instead of the batch's, and never updates
them. An EMA of such a model averages the head only: the rest does not move.

Onto classes the file does not know (a new head), training all layers follows a transfer recipe
(--head-warmup, --backbone-lr): the head alone first, for a fraction of the epochs, then all layers,
batch norm adapting to the new images, the backbone at a fraction of the head's learning rate. A random
head's first large gradients would otherwise pull apart the features that make fine-tuning worth it.
The recipe is recorded with the init file's details (the model file's metadata, and the checkpoint:
a resumed run builds the same optimizer groups).

The init file is read when a run starts; a resumed run takes its weights from its checkpoint, so it
neither needs the file nor notices a change to it.
"""

from __future__ import annotations

import logging
from typing import Sequence

from torch import nn

from fashion_cnn.config import TRANSFER_BACKBONE_LR, TRANSFER_WARMUP, TrainConfig
from fashion_cnn.data.folders import class_mapping
from fashion_cnn.io import file_sha256
from fashion_cnn.models.files import read_init
from fashion_cnn.models.registry import count_parameters, freeze_backbone, spec_of

log = logging.getLogger("fashion_cnn")


def check_architecture(cfg: TrainConfig, meta: dict) -> None:
    if meta["architecture"] != cfg.model:
        raise ValueError(f"--init {cfg.init} is a {meta['architecture']!r} model, not {cfg.model!r}: fine-tuning "
                         "keeps the architecture of the model it starts from (leave --model out)")


def check_init(cfg: TrainConfig) -> None:
    """Before a run starts: --init names a usable model file of the run's architecture."""
    check_architecture(cfg, read_init(cfg.init)[2])


def transfer_recipe(cfg: TrainConfig, head: str) -> dict:
    """The fine-tuning recipe for what became of the head ("kept", "matched" or "replaced"): the
    fraction of the epochs that train the head alone, and the backbone's learning rate as a fraction of
    --lr; given options win, and a frozen backbone trains the head alone throughout."""
    new = head == "replaced" and not cfg.freeze_backbone
    warmup = cfg.head_warmup if cfg.head_warmup is not None else TRANSFER_WARMUP if new else 0.0
    backbone_lr = cfg.backbone_lr if cfg.backbone_lr is not None else TRANSFER_BACKBONE_LR if new else 1.0
    return {"head_warmup": warmup, "backbone_lr": backbone_lr}


def head_warmup_epochs(cfg: TrainConfig, init: dict | None) -> int:
    """How many of the run's first epochs train the head alone (0 when not fine-tuning)."""
    return round(cfg.epochs * (init or {}).get("head_warmup", 0.0))


def start_from_init(model: nn.Module, cfg: TrainConfig, class_names: Sequence[str],
                    saved: dict | None = None) -> dict:
    """Make a freshly built model (make_model's) the start of a fine-tuning run: --init's weights, the
    head kept, matched or replaced as the classes ask, and the backbone frozen with --freeze-backbone.
    Returns what the model file's metadata records of the init file (path, sha256, its classes, what
    became of the head, the transfer recipe). A resumed run passes what its checkpoint recorded as
    `saved`: its weights come from the checkpoint, and the file is not read.
    """
    if cfg.freeze_backbone:
        freeze_backbone(model)
    if saved is not None:
        return saved
    path, source, meta = read_init(cfg.init)
    check_architecture(cfg, meta)
    head = spec_of(model).head
    rows = class_mapping(class_names, meta["class_names"])
    weights, fresh = source.state_dict(), model.state_dict()
    for key in weights:
        if key.split(".")[0] == head:
            weights[key] = fresh[key] if rows is None else weights[key][rows]
    model.load_state_dict(weights)
    kept = "replaced" if rows is None else "kept" if rows == list(range(len(meta["class_names"]))) else "matched"
    info = {"path": str(path), "sha256": file_sha256(path), "architecture": meta["architecture"],
            "class_names": meta["class_names"], "head": kept, "frozen_backbone": cfg.freeze_backbone,
            **transfer_recipe(cfg, kept)}
    training = sum(p.numel() for p in model.parameters() if p.requires_grad)
    head_line = {"kept": "head kept (the same classes)",
                 "matched": f"head kept for the {len(class_names)} classes it shares with the file, in this "
                            "data's order",
                 "replaced": f"new head for {len(class_names)} classes (the file's: {', '.join(meta['class_names'])})"}
    log.info(f"fine-tuning {path} ({meta['architecture']}, sha256 {info['sha256'][:12]}...): {head_line[kept]}; "
             f"training {training:,} of {count_parameters(model):,} parameters" + recipe_line(cfg, info))
    return info


def recipe_line(cfg: TrainConfig, info: dict) -> str:
    """The transfer recipe in words, for the log ("" when it trains every layer alike from the start)."""
    warmup, backbone_lr = head_warmup_epochs(cfg, info), info["backbone_lr"]
    parts = ([f"the head alone for {warmup} of {cfg.epochs} epochs, then all layers"] if warmup else []) + \
            ([f"the backbone at {backbone_lr:g} x --lr"] if backbone_lr != 1 else [])
    return f"; transfer recipe: {', '.join(parts)}" if parts else ""
