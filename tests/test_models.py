import dataclasses
import re

import pytest
import torch
from conftest import tiny_arrays

from fashion_cnn import machine
from fashion_cnn.config import TrainConfig
from fashion_cnn.models import fastpath, locate
from fashion_cnn.models.files import load_model
from fashion_cnn.models.registry import BUILDERS, count_parameters, create_model
from fashion_cnn.models.specs import SPECS
from fashion_cnn.training.loop import make_optimizer, make_step

SHIPPED = locate.packaged_model()  # None where the package ships none


def test_baseline_shape_and_parameter_count():
    model = create_model("baseline")
    assert model(torch.rand(4, 1, 28, 28)).shape == (4, 10)
    assert count_parameters(model) == 542_230  # 320 + 540,900 + 1,010, as the tutorial's summary


def test_baseline_he_uniform_init():
    torch.manual_seed(0)
    model = create_model("baseline")
    for layer, fan_in in ((model.conv, 9), (model.fc1, 5408)):
        bound = (6 / fan_in) ** 0.5
        assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.95 * bound
        assert torch.all(layer.bias == 0)


def test_every_spec_has_a_builder_and_every_builder_a_spec():
    assert set(BUILDERS) == set(SPECS)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_model_builds_with_documented_parameter_count(name):
    model = create_model(name)
    documented = re.search(r"\(([\d,]+) parameters\)", SPECS[name].description).group(1)
    assert count_parameters(model) == int(documented.replace(",", ""))
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_spec_names_the_final_linear_layer_as_the_head(name):
    model = create_model(name, num_classes=3).eval()
    head = getattr(model, SPECS[name].head)
    assert isinstance(head, torch.nn.Linear) and head.out_features == 3
    x = torch.rand(2, 1, 28, 28)
    features = []
    head.register_forward_hook(lambda module, args, out: features.append(args[0]))
    logits = model.logits(x)
    torch.testing.assert_close(logits, head(features[0]))  # nothing after it: it makes the logits


@pytest.mark.parametrize("name", sorted(SPECS))
def test_recipe_names_config_fields_and_fills_unset_ones(name, monkeypatch):
    monkeypatch.setattr(machine, "bf16_native", lambda device: True)  # a recipe's amp holds where native
    recipe = SPECS[name].recipe
    assert set(recipe) <= {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(model=name, epochs=3)
    assert cfg.epochs == 3  # what the user sets wins
    assert all(getattr(cfg, k) == v for k, v in recipe.items() if k != "epochs")


def test_baseline_defaults_are_the_tutorials():
    cfg = TrainConfig()
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.momentum, cfg.optimizer, cfg.nesterov) == (10, 32, 0.01, 0.9, "sgd", False)
    assert (cfg.weight_decay, cfg.schedule, cfg.label_smoothing, cfg.crop, cfg.flip, cfg.erase, cfg.ema,
            cfg.tta, cfg.amp) == (0.0, "constant", 0.0, 0, False, 0.0, 0.0, False, False)
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="linear")
    baseline = create_model("baseline")
    assert fastpath.supports(baseline, make_optimizer(baseline, cfg))  # the hand-derived CPU step still runs


@pytest.mark.parametrize("name", sorted(SPECS))
def test_trains_a_few_steps_with_falling_loss(name):
    cfg = TrainConfig(model=name)
    torch.manual_seed(0)
    model = create_model(name).train()
    optimizer = make_optimizer(model, dataclasses.replace(cfg, lr=min(cfg.lr, 0.05), weight_decay=0.0))
    step = make_step(model, optimizer, cfg.label_smoothing, cfg.amp)
    images, labels = tiny_arrays(64)
    x, y = torch.from_numpy(images).unsqueeze(1).float() / 255, torch.from_numpy(labels).long()
    losses = [step(x, y)[0].item() / len(y) for _ in range(8)]
    assert losses[-1] < 0.9 * losses[0], losses


def test_tta_averages_image_and_mirror_in_eval_only():
    model = create_model("fast").eval()
    x = torch.rand(4, 1, 28, 28)
    plain, mirrored = model(x), model(x.flip(3))
    model.tta = True
    torch.testing.assert_close(model(x), (plain + mirrored) / 2)
    model.train()  # batch statistics now, so compare with the plain logits in training mode
    torch.testing.assert_close(model(x), model.logits(x))


@pytest.mark.skipif(SHIPPED is None, reason="no shipped model")
def test_shipped_model_loads_and_scores_as_reported(real_data):
    model, meta = load_model(SHIPPED)
    assert meta["architecture"] in SPECS and model.tta == meta["tta"]
    # 500 images (a few seconds; the 95% interval of a share near 95% on them is about +-2 points)
    logits = model(real_data.test_images[:500].unsqueeze(1).float() / 255)
    accuracy = (logits.argmax(1) == real_data.test_labels[:500]).float().mean().item()
    assert abs(accuracy - meta["test_accuracy"]) < 0.02, (accuracy, meta["test_accuracy"])
    assert meta["test_accuracy"] > 0.94 and meta["architecture"] == "strong" and meta["parameters"] < 1_000_000


@pytest.mark.skipif(SHIPPED is None, reason="no shipped model")
def test_the_shipped_model_was_calibrated_on_training_images_never_on_test_images():
    _, meta = load_model(SHIPPED)
    calibration, card = meta["calibration"], meta["model_card"]
    assert "test images" not in calibration["fitted_on"] and "test images" not in calibration["reported_on"]
    assert calibration["fitted_on"].startswith("validation images")  # held out of its training images
    assert meta["training_images"] + meta["config"]["val_size"] == 60_000 and meta["test_images"] == 10_000
    assert card["calibration"]["fitted_on"] == calibration["fitted_on"] and "but" not in card["evaluation"]
