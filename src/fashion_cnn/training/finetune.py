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

The init file is read when a run starts; a resumed run takes its weights from its checkpoint, so it
neither needs the file nor notices a change to it.
"""

from __future__ import annotations

import logging
from typing import Sequence

from torch import nn

from fashion_cnn.config import TrainConfig
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


def start_from_init(model: nn.Module, cfg: TrainConfig, class_names: Sequence[str], load: bool = True) -> dict | None:
    """Make a freshly built model (make_model's) the start of a fine-tuning run: --init's weights (when
    `load`; a resumed run's come from its checkpoint), the head kept, matched or replaced as the
    classes ask, and the backbone frozen with --freeze-backbone. Returns what the model file's metadata
    records of the init file (path, sha256, its classes, what became of the head), or None without `load`.
    """
    if cfg.freeze_backbone:
        freeze_backbone(model)
    if not load:
        return None
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
            "class_names": meta["class_names"], "head": kept, "frozen_backbone": cfg.freeze_backbone}
    training = sum(p.numel() for p in model.parameters() if p.requires_grad)
    head_line = {"kept": "head kept (the same classes)",
                 "matched": f"head kept for the {len(class_names)} classes it shares with the file, in this "
                            "data's order",
                 "replaced": f"new head for {len(class_names)} classes (the file's: {', '.join(meta['class_names'])})"}
    log.info(f"fine-tuning {path} ({meta['architecture']}, sha256 {info['sha256'][:12]}...): {head_line[kept]}; "
             f"training {training:,} of {count_parameters(model):,} parameters")
    return info
