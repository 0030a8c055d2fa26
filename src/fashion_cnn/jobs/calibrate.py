"""The calibrate job: fit a model file's temperature and unknown threshold on held-out images."""

from __future__ import annotations

from pathlib import Path

import torch

from fashion_cnn.config import TrainConfig
from fashion_cnn.data.fmnist import FILES
from fashion_cnn.data.folders import load_model_data
from fashion_cnn.evaluation.calibration import TEST_FLAG, check_held_out, fit
from fashion_cnn.io import ModelFileError, check_output_file, load_tensors, save_tensors
from fashion_cnn.models.card import model_card
from fashion_cnn.models.files import load_model
from fashion_cnn.training.loop import holdout_split, limited

TRAINED_OPTIONS = ("data", "classes", "test_fraction", "data_dir", "val_size", "limit")  # what calibrate reads


def trained_config(meta: dict, path: str | Path) -> TrainConfig:
    """The options calibrate reads (TRAINED_OPTIONS) of those a model file's metadata says it was trained
    with: an untrusted file's, so checked as options given are (those it does not record take defaults)."""
    config = meta.get("config") or {}
    if not isinstance(config, dict):
        raise ModelFileError(f"{path}: corrupt metadata (its config is not a table of options)")
    try:
        return TrainConfig.from_dict({k: config[k] for k in TRAINED_OPTIONS if k in config}, "its config")
    except ValueError as e:
        raise ModelFileError(f"{path}: corrupt metadata ({e})") from None


def held_out(config: TrainConfig, data, fit_on_test_images: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor, str, str | None]:
    """(images, labels, their name, a note) that the model never trained on: its validation split when it
    was trained with --val-size (config: the options it was trained with); the test set only when asked
    (fit_on_test_images), which the note says. A model trained on every training image is refused without
    it (check_held_out, which callers run before reading data)."""
    check_held_out(config, "the model file", fit_on_test_images)
    if not fit_on_test_images:
        _, (images, labels) = holdout_split(*limited(data.train_images, data.train_labels, config.limit),
                                            config.val_size)
        return images, labels, "validation images", None

    fashion_mnist = set(data.checksums) == {f.name for f in FILES.values()}
    return (data.test_images, data.test_labels, "Fashion-MNIST test images" if fashion_mnist else "test images",
            f"fitted on test images as asked ({TEST_FLAG}): these no longer measure the model unseen, and its "
            "reports leave them out of the calibration error")


def calibrate_file(model_path: str | Path, out: str | Path, data=None, force: bool = False,
                   fit_on_test_images: bool = False) -> dict:
    """Write a copy of a model file whose metadata holds a calibration fitted on held-out images (see
    held_out) of `data`: its validation split, or with fit_on_test_images the test set's first half (a
    model without a validation split is refused otherwise); the weights are copied unchanged. Without
    `data`, Fashion-MNIST when the model was trained on it; a folder the (untrusted) model file names is
    refused, never read.
    An existing OUT is replaced only with force, and the input never."""

    check_output_file(out, force, inputs=(model_path,))
    tensors, meta = load_tensors(model_path)
    model, _ = load_model(model_path)
    trained = trained_config(meta, model_path)
    check_held_out(trained, model_path, fit_on_test_images)
    if data is None:
        data = load_model_data(meta, model_path)  # a model file does not choose what calibrate reads
    images, labels, source, note = held_out(trained, data, fit_on_test_images)
    meta.update(fit(model, images, labels, source))
    if note:
        meta["calibration"]["note"] = note
    card = meta.get("model_card")
    if isinstance(card, dict):  # its calibration and protocol change with this; its known limits stay
        meta["model_card"] = model_card(meta, *([card["limits"]] if isinstance(card.get("limits"), str) else []))
    save_tensors(out, tensors, meta)
    return meta["calibration"]
