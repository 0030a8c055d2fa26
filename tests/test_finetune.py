"""Fine-tuning (--init, --freeze-backbone) and the imbalance options (--class-weights, class counts)."""

import hashlib
import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import run_killed_at, tiny_arrays

from fashion_cnn.config import TRANSFER_BACKBONE_LR, TRANSFER_WARMUP, TrainConfig
from fashion_cnn.data.fmnist import CLASS_NAMES, load_fashion_mnist
from fashion_cnn.evaluation.metrics import format_scores
from fashion_cnn.io import ModelFileError
from fashion_cnn.jobs.final import train_final
from fashion_cnn.models.files import load_model, save_model
from fashion_cnn.models.locate import PACKAGED, packaged_model
from fashion_cnn.models.registry import create_model
from fashion_cnn.models.specs import SPECS
from fashion_cnn.training import loop as train
from fashion_cnn.training.loop import TrainState, balanced_weights, fit


def saved_model(path: Path, name: str, class_names=CLASS_NAMES, seed: int = 123) -> Path:
    torch.manual_seed(seed)
    save_model(path, create_model(name, len(class_names)), {"architecture": name, "class_names": list(class_names)})
    return path


@pytest.fixture(params=sorted(SPECS))
def init_file(request, tmp_path) -> Path:
    """An untrained model of each registered architecture as a model file, with Fashion-MNIST's classes."""
    return saved_model(tmp_path / f"{request.param}.safetensors", request.param)


def tiny_split(n: int = 128, classes: int = 10):
    images, labels = tiny_arrays(n)
    return torch.from_numpy(images), torch.from_numpy(labels).long() % classes


def head_name(model) -> str:
    return SPECS[model.arch].head


def split_state(model) -> tuple[dict, dict]:
    """(head tensors, every other tensor: weights and batch-norm statistics)."""
    head = head_name(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return ({k: v for k, v in state.items() if k.split(".")[0] == head},
            {k: v for k, v in state.items() if k.split(".")[0] != head})


def test_the_architecture_comes_from_the_init_file_and_a_different_model_is_refused(init_file, tmp_path):
    _, meta = load_model(init_file)
    cfg = TrainConfig(init=str(init_file), device="cpu")
    assert cfg.model == meta["architecture"]
    assert cfg.epochs == SPECS[cfg.model].recipe.get("epochs", 10)  # the model's own recipe
    other = next(name for name in SPECS if name != cfg.model)
    with pytest.raises(ValueError, match=f"is a '{cfg.model}' model, not '{other}'"):
        train_final(TrainConfig(model=other, init=str(init_file), out=str(tmp_path / "runs")))
    assert not (tmp_path / "runs").exists()  # refused before a run directory exists


def test_head_kept_matched_or_replaced(init_file):
    source, _ = load_model(init_file)
    head_source, body_source = split_state(source)
    cfg = TrainConfig(init=str(init_file), device="cpu")

    same = TrainState.create(cfg, CLASS_NAMES, 0)
    assert same.init["head"] == "kept" and same.init["sha256"] == hashlib.sha256(init_file.read_bytes()).hexdigest()
    for key, value in source.state_dict().items():
        assert torch.equal(same.model.state_dict()[key], value), key

    # folder names for three of its classes, in another order: their rows of the head, in this order
    subset = TrainState.create(cfg, ["ankle-boot", "tshirt_top", "BAG"], 0)
    head, body = split_state(subset.model)
    assert subset.init["head"] == "matched"
    for key, value in head.items():
        assert torch.equal(value, head_source[key][[9, 0, 8]]), key
    assert all(torch.equal(body[k], v) for k, v in body_source.items())

    # other classes: a fresh head, seeded as a new model's would be; the rest from the file
    other = TrainState.create(cfg, ["cat", "dog"], 0)
    head, body = split_state(other.model)
    fresh, _ = split_state(train.make_model(cfg, 2, 0))
    assert other.init["head"] == "replaced"
    assert all(torch.equal(head[k], v) for k, v in fresh.items())
    assert all(torch.equal(body[k], v) for k, v in body_source.items())


def test_freeze_backbone_trains_the_head_alone(init_file):
    cfg = TrainConfig(init=str(init_file), freeze_backbone=True, epochs=1, batch_size=32, device="cpu")
    state = TrainState.create(cfg, ["a", "b", "c"], 0)
    head_before, body_before = split_state(state.model)
    trainable = [p for group in state.optimizer.param_groups for p in group["params"]]
    assert {id(p) for p in trainable} == {id(p) for p in getattr(state.model, head_name(state.model)).parameters()}
    fit(state, cfg, tiny_split(classes=3))
    head_after, body_after = split_state(state.model)
    for key, value in body_before.items():  # weights and batch-norm statistics alike
        assert torch.equal(body_after[key], value), key
    assert any(not torch.equal(head_after[k], v) for k, v in head_before.items())
    if state.ema is not None:  # the average of an unmoving backbone is that backbone
        _, ema_body = split_state(state.ema.model)
        assert all(torch.equal(ema_body[k], v) for k, v in body_before.items())


def test_frozen_backbone_stays_in_eval_mode_while_training():
    model = create_model("fast")
    from fashion_cnn.models.registry import freeze_backbone

    freeze_backbone(model)
    model.train()
    assert model.training and model.fc.training
    assert not any(m.training for name, m in model.named_modules() if name and not name.startswith("fc"))
    model.eval()
    model.train()  # as predict_logits restores it after validating
    assert not model.layers.training


def test_finetune_run_records_its_init_and_resumes_exactly_without_it(tiny_data_dir, tmp_path, monkeypatch):
    data = load_fashion_mnist(tiny_data_dir, download=False, check=False)
    data.class_names = [f"c{k}" for k in range(10)]  # not the init file's: a new head
    init = saved_model(tmp_path / "init.safetensors", "baseline")
    cfg = TrainConfig(init=str(init), epochs=2, batch_size=50, device="cpu", out=str(tmp_path / "runs"))
    reference = train_final(cfg, data=data)
    meta = load_model(reference.model_path)[1]
    assert meta["init"]["path"] == str(init) and meta["init"]["head"] == "replaced"
    assert meta["init"]["sha256"] == hashlib.sha256(init.read_bytes()).hexdigest()
    assert meta["config"]["init"] == str(init)

    run_killed_at(monkeypatch, train, "save_checkpoint", 2, lambda: train_final(cfg, data=data))  # in epoch 2
    run_dir = max((tmp_path / "runs").iterdir())
    shutil.move(init, tmp_path / "moved.safetensors")  # the checkpoint has the weights: the file is not read
    resumed = train_final(resume=run_dir, data=data)
    for (name, p), q in zip(reference.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(p, q), name
    assert load_model(resumed.model_path)[1]["init"] == meta["init"]


def test_new_classes_get_the_transfer_recipe_by_default_and_the_log_says_so(tmp_path, caplog):
    init = saved_model(tmp_path / "fast.safetensors", "fast")
    cfg = TrainConfig(init=str(init), epochs=10, device="cpu")
    with caplog.at_level(logging.INFO, logger="fashion_cnn"):
        new = TrainState.create(cfg, ["cat", "dog"], 0)
    assert (new.init["head_warmup"], new.init["backbone_lr"]) == (TRANSFER_WARMUP, TRANSFER_BACKBONE_LR)
    warmup = round(10 * TRANSFER_WARMUP)
    assert (f"transfer recipe: the head alone for {warmup} of 10 epochs, then all layers, the backbone at "
            f"{TRANSFER_BACKBONE_LR:g} x --lr") in caplog.text
    head = {id(p) for p in new.model.fc.parameters()}
    for group in new.optimizer.param_groups:
        backbone = {id(p) for p in group["params"]}.isdisjoint(head)
        assert group["lr"] == pytest.approx(cfg.lr * (TRANSFER_BACKBONE_LR if backbone else 1))

    same = TrainState.create(cfg, CLASS_NAMES, 0)  # the same classes: fine-tuning as before
    assert (same.init["head_warmup"], same.init["backbone_lr"]) == (0.0, 1.0)
    assert all(group["lr"] == cfg.lr for group in same.optimizer.param_groups)
    given = TrainState.create(replace(cfg, head_warmup=0.0, backbone_lr=1.0), ["cat", "dog"], 0)
    assert (given.init["head_warmup"], given.init["backbone_lr"]) == (0.0, 1.0)  # options win


@pytest.mark.parametrize("warmup", [0.0, 0.5])
def test_head_warmup_trains_the_head_alone_first_then_all_layers(tmp_path, warmup):
    init = saved_model(tmp_path / "fast.safetensors", "fast")
    cfg = TrainConfig(init=str(init), epochs=2, batch_size=32, head_warmup=warmup, device="cpu", threads=1)
    state = TrainState.create(cfg, ["a", "b", "c"], 0)
    _, before = split_state(state.model)
    bodies = []
    fit(state, cfg, tiny_split(64, classes=3), on_epoch=[lambda row: bodies.append(split_state(state.model)[1])],
        verbose=0)
    unchanged = [all(torch.equal(body[k], v) for k, v in before.items()) for body in bodies]
    assert unchanged == ([True, False] if warmup else [False, False])  # weights and batch-norm statistics


def test_backbone_lr_scales_the_backbones_steps_alone(tmp_path):
    init = saved_model(tmp_path / "fast.safetensors", "fast")
    moved = {}
    for backbone_lr in (1.0, 0.1):
        cfg = TrainConfig(init=str(init), epochs=1, batch_size=64, momentum=0.0, nesterov=False, weight_decay=0.0,
                          schedule="constant", warmup=0.0, head_warmup=0.0, backbone_lr=backbone_lr, device="cpu",
                          threads=1, ema=0.0)
        state = TrainState.create(cfg, ["a", "b", "c"], 0)
        weight = state.model.layers[0][0].weight
        start = weight.detach().clone()
        fit(state, cfg, tiny_split(64, classes=3), verbose=0)  # one plain SGD step
        moved[backbone_lr] = weight.detach() - start
    assert moved[1.0].abs().max() > 0
    torch.testing.assert_close(moved[0.1], 0.1 * moved[1.0], rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("killed_in", [1, 2])
def test_transfer_recipe_resumes_exactly(tiny_data_dir, tmp_path, monkeypatch, killed_in):
    data = load_fashion_mnist(tiny_data_dir, download=False, check=False)
    data.class_names = [f"c{k}" for k in range(10)]  # a new head
    init = saved_model(tmp_path / "init.safetensors", "fast")
    cfg = TrainConfig(init=str(init), epochs=3, batch_size=50, head_warmup=0.34, limit=100, device="cpu",
                      threads=1, out=str(tmp_path / "runs"))  # the head alone in epoch 1
    reference = train_final(cfg, data=data, verbose=0)
    run_killed_at(monkeypatch, train, "save_checkpoint", killed_in, lambda: train_final(cfg, data=data, verbose=0))
    resumed = train_final(resume=max((tmp_path / "runs").iterdir()), data=data, verbose=0)
    for (name, p), q in zip(reference.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(p, q), name


@pytest.mark.skipif(packaged_model() is None, reason="no packaged model")
def test_init_packaged_is_the_shipped_model():
    cfg = TrainConfig(init=PACKAGED, device="cpu")
    assert cfg.model == "strong" and cfg.ema == SPECS["strong"].recipe["ema"]
    state = TrainState.create(cfg, [name.replace("/", "-") for name in CLASS_NAMES], 0)
    assert state.init["head"] == "kept" and state.init["path"] == str(packaged_model())


def test_init_latest_without_a_trained_model_names_init(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no runs/ here
    with pytest.raises(ModelFileError, match="^--init latest: no trained model under runs/"):
        TrainConfig(init="latest")


# --- imbalance ---------------------------------------------------------------------------------------

def test_balanced_weights_are_inverse_frequency():
    labels = torch.tensor([0] * 6 + [1] * 3 + [2])
    weights = balanced_weights(labels, 4)
    torch.testing.assert_close(weights, torch.tensor([10 / 24, 10 / 12, 10 / 4, 10 / 4]))
    assert (weights[labels].sum() / len(labels)) == pytest.approx(0.75)  # each present class weighs 10/4 in all


@pytest.mark.parametrize("model", ["baseline", "fast"])
def test_class_weights_auto_reach_the_step_from_the_training_labels(model, monkeypatch):
    seen = []
    real = train.make_step

    def spy(*args):
        seen.append(args[4])
        return real(*args)

    monkeypatch.setattr(train, "make_step", spy)
    images, labels = tiny_split(120)
    labels[:90] = 0  # class 0 dominates
    for weights in ("none", "auto"):
        cfg = TrainConfig(model=model, epochs=1, class_weights=weights, device="cpu")
        fit(TrainState.create(cfg, 10, 0), cfg, (images, labels))
    assert seen[0] is None
    torch.testing.assert_close(seen[1], balanced_weights(labels, 10))


def test_train_and_cv_log_the_class_counts_of_the_images_they_train_on(tiny_data_dir, tmp_path):
    from fashion_cnn.config import CVConfig
    from fashion_cnn.jobs.crossval import cross_validate

    data = load_fashion_mnist(tiny_data_dir, download=False, check=False)
    result = train_final(TrainConfig(limit=150, val_size=20, epochs=1, device="cpu", out=str(tmp_path)), data=data)
    log = (result.run_dir / "log.txt").read_text()
    train_labels = train.holdout_split(*train.limited(data.train_images, data.train_labels, 150), 20)[0][1]
    counts = torch.bincount(train_labels, minlength=10).tolist()
    assert "training images per class: " + ", ".join(f"{n} {c}" for n, c in zip(data.class_names, counts)) in log
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["test_macro_f1"] == result.test["macro_f1"]
    assert format_scores(result.test) in log and result.test["images"] == 100

    cv = cross_validate(CVConfig(limit=150, folds=2, epochs=1, device="cpu", out=str(tmp_path)), data=data)
    log = (cv.run_dir / "log.txt").read_text()
    counts = torch.bincount(data.train_labels[:150], minlength=10).tolist()
    assert "training images per class: " + ", ".join(f"{n} {c}" for n, c in zip(data.class_names, counts)) in log
    assert len(cv.summary["fold_macro_f1"]) == 2 and "macro-F1 mean" in log
