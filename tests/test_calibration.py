"""Calibration: the temperature fit, ECE, the out-of-distribution scores and threshold, the metadata a model
file carries, `fashion-cnn calibrate`, and the training job's hook."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import with_calibration

from fashion_cnn.app.cli import main
from fashion_cnn.data import folders as datasets
from fashion_cnn.evaluation import calibration
from fashion_cnn.evaluation.calibration import (
    UnknownRule,
    calibrate_logits,
    choose_threshold,
    expected_calibration_error,
    fit_temperature,
    from_metadata,
    min_confidence_rule,
    ood_score,
    probabilities,
)
from fashion_cnn.evaluation.inference import predict_logits
from fashion_cnn.io import ModelFileError, load_tensors, save_tensors
from fashion_cnn.models.files import load_model


def sampled(n: int, temperature: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits, and labels drawn from softmax(logits / temperature): temperature is the true one."""
    generator = torch.Generator().manual_seed(seed)
    logits = 4 * torch.randn(n, 10, generator=generator)
    labels = torch.multinomial(torch.softmax(logits / temperature, 1), 1, generator=generator)[:, 0]
    return logits, labels


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.5])
def test_the_fit_recovers_a_known_temperature(temperature):
    logits, labels = sampled(20_000, temperature, seed=1)
    assert fit_temperature(logits, labels) == pytest.approx(temperature, rel=0.05)


def test_the_fit_stays_finite_when_every_answer_is_right():
    logits = torch.eye(10).repeat(30, 1) * 5  # perfectly separated: the likelihood grows as T goes to 0
    t = fit_temperature(logits, torch.arange(10).repeat(30))
    assert calibration.TEMPERATURE_RANGE[0] <= t < 0.5 and math.isfinite(t)


def test_ece_by_hand():
    probs = torch.tensor([[0.9, 0.05, 0.05],   # confidence 0.9, right   } bin (13/15, 14/15]
                          [0.9, 0.05, 0.05],   # confidence 0.9, wrong   }
                          [0.2, 0.5, 0.3],     # confidence 0.5, right     bin (7/15, 8/15]
                          [0.45, 0.25, 0.3]])  # confidence 0.45, wrong    bin (6/15, 7/15]
    labels = torch.tensor([0, 1, 1, 2])
    # 2/4 * |0.9 - 1/2| + 1/4 * |0.5 - 1| + 1/4 * |0.45 - 0| = 0.2 + 0.125 + 0.1125
    assert expected_calibration_error(probs, labels) == pytest.approx(0.4375)
    # one bin: |mean confidence 0.6875 - accuracy 0.5|
    assert expected_calibration_error(probs, labels, bins=1) == pytest.approx(0.1875)


def test_ece_is_small_for_calibrated_and_large_for_overconfident_probabilities():
    logits, labels = sampled(20_000, 1.0, seed=2)
    assert expected_calibration_error(probabilities(logits), labels) < 0.02
    assert expected_calibration_error(probabilities(logits, 0.3), labels) > 0.1


def test_the_threshold_calls_at_most_the_rate_unknown():
    scores = torch.randperm(1000).float()
    threshold = choose_threshold(scores, rate=0.015)
    assert threshold == 15 and (scores < threshold).sum() == 15
    assert (torch.zeros(100) < choose_threshold(torch.zeros(100))).sum() == 0  # ties: never more


def test_the_scores():
    logits = torch.tensor([[4.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    assert torch.allclose(ood_score(logits, 1.0, "max_logit"), torch.tensor([4.0, 1.0]))
    assert torch.allclose(ood_score(logits, 2.0, "max_probability"), probabilities(logits, 2.0).amax(1))
    energy = ood_score(logits, 0.5, "energy")
    assert torch.allclose(energy, 0.5 * torch.logsumexp(logits / 0.5, 1))
    assert (energy >= logits.amax(1)).all() and ood_score(logits, 1e-3, "energy")[0] == pytest.approx(4.0)
    with pytest.raises(ValueError, match="unknown score 'nope'; known: energy"):
        ood_score(logits, 1.0, "nope")


def test_fitted_on_the_first_half_and_reported_on_the_second():
    first, first_labels = sampled(4000, 2.0, seed=3)
    second, second_labels = sampled(4000, 0.5, seed=4)
    result = calibrate_logits(torch.cat([first, second]), torch.cat([first_labels, second_labels]), "images")
    assert result["temperature"] == pytest.approx(2.0, rel=0.1)  # the second half's 0.5 did not pull it
    assert result["fitted_on"] == "images 1-4,000 of 8,000"
    assert result["reported_on"].startswith("images 4,001-8,000 of 8,000")
    assert result["ece_after"] == pytest.approx(
        expected_calibration_error(probabilities(second, result["temperature"]), second_labels))
    assert result["ece_before"] == pytest.approx(expected_calibration_error(probabilities(second), second_labels))
    rule = result["unknown"]
    assert rule["score"] == calibration.SCORE and rule["rate_fitted"] <= calibration.UNKNOWN_RATE
    scores = ood_score(second, result["temperature"])
    assert rule["rate_reported"] == pytest.approx((scores < rule["threshold"]).double().mean().item())
    with pytest.raises(ValueError, match="too few"):
        calibrate_logits(first[:50], first_labels[:50], "images")


def test_metadata_is_read_and_checked(tmp_path):
    assert from_metadata({}, "m") == (1.0, None)  # older files: temperature 1, never unknown
    rule = {"score": "energy", "threshold": 2.5}
    assert from_metadata({"calibration": {"temperature": 0.7, "unknown": rule}}, "m") == \
        (0.7, UnknownRule("energy", 2.5, 0.7))
    for bad in ([], {}, {"temperature": -1}, {"temperature": "1"}, {"temperature": float("nan")},
                {"temperature": True}, {"temperature": 1, "unknown": {"score": "nope", "threshold": 1}},
                {"temperature": 1, "unknown": {"score": "energy", "threshold": None}},
                {"temperature": 1, "unknown": "energy"}):
        with pytest.raises(ModelFileError, match="m: corrupt calibration metadata"):
            from_metadata({"calibration": bad}, "m")


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), "0.5"])
def test_min_confidence_is_a_probability(value):
    with pytest.raises(ValueError, match="--min-confidence must be a probability"):
        min_confidence_rule(value)


def test_calibrate_writes_a_new_file_fitted_on_the_first_test_half(model_file, real_data, tmp_path, capsys):
    out = tmp_path / "calibrated.safetensors"
    assert main(["calibrate", "--model", str(model_file), "--data-dir", real_data.source, str(out),
                 "--fit-on-test-images"]) == 0
    assert f"saved {out}" in capsys.readouterr().out
    tensors, meta = load_tensors(out)
    original_tensors, original_meta = load_tensors(model_file)
    assert tensors.keys() == original_tensors.keys()
    assert all(torch.equal(tensors[k], original_tensors[k]) for k in tensors)  # the weights, unchanged
    stored = meta.pop("calibration")
    assert meta == original_meta
    assert stored["fitted_on"] == "Fashion-MNIST test images 1-5,000 of 10,000"
    assert "--fit-on-test-images" in stored["note"]
    model, _ = load_model(model_file)
    logits = predict_logits(model, real_data.test_images[:5000])
    assert stored["temperature"] == pytest.approx(fit_temperature(logits, real_data.test_labels[:5000]), rel=1e-4)


def test_calibrate_never_replaces_a_file(model_file, tmp_path, capsys):
    existing = tmp_path / "existing.safetensors"
    existing.write_bytes(b"keep me")
    model_bytes = model_file.read_bytes()
    for out, message in ((model_file, "is the input"), (existing, "already exists; --force replaces it")):
        assert main(["calibrate", "--model", str(model_file), str(out)]) == 1
        assert message in capsys.readouterr().err
    assert existing.read_bytes() == b"keep me" and model_file.read_bytes() == model_bytes
    assert main(["calibrate", "--model", str(model_file), str(model_file), "--force"]) == 1  # never the input
    assert model_file.read_bytes() == model_bytes


def with_config(model_file, path, config: dict):
    """A copy of model_file whose metadata says it was trained with `config`, as an untrusted file may."""
    tensors, meta = load_tensors(model_file)
    save_tensors(path, tensors, {**meta, "config": config})
    return path


def test_calibrate_never_reads_a_folder_the_model_file_names(model_file, tmp_path, capsys, monkeypatch):
    imported, real = [], datasets.load_image_folder
    monkeypatch.setattr(datasets, "load_image_folder", lambda *args: imported.append(args) or real(*args))
    (tmp_path / "secrets" / "a").mkdir(parents=True)
    for config in ({"data": str(tmp_path / "secrets")},  # (a config that is not options: the test below)
                   {"data": str(tmp_path / "secrets"), "add_to": "fashion-mnist"}):
        model = with_config(model_file, tmp_path / "m.safetensors", config)
        out = tmp_path / "out.safetensors"
        assert main(["calibrate", "--model", str(model), str(out), "--fit-on-test-images"]) == 1
        err = capsys.readouterr().err.strip()
        assert "a model file does not choose what is read: pass --data DIR" in err
        assert len(err.splitlines()) == 1 and not out.exists() and imported == []


def test_calibrate_reads_fashion_mnist_from_the_usual_places_not_the_model_files_folder(model_file, real_data,
                                                                                         tmp_path, capsys):
    config = {"data": "fashion-mnist", "data_dir": str(tmp_path / "elsewhere")}  # no such folder: not read
    model = with_config(model_file, tmp_path / "m.safetensors", config)
    assert main(["calibrate", "--model", str(model), str(tmp_path / "out.safetensors"), "--fit-on-test-images"]) == 0
    assert load_tensors(tmp_path / "out.safetensors")[1]["calibration"]["fitted_on"].startswith("Fashion-MNIST")


def test_calibrate_refuses_test_images_unless_asked(model_file, tmp_path, capsys, monkeypatch):
    read = []
    monkeypatch.setattr(datasets, "load_model_data", lambda *args, **kwargs: read.append(args))
    out = tmp_path / "out.safetensors"
    assert main(["calibrate", "--model", str(model_file), str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "saw all its training images" in err
    assert "--val-size N" in err and "--fit-on-test-images" in err
    assert not out.exists() and read == []  # refused before any data is read


@pytest.mark.parametrize("config, message", [
    ([1, 2], "corrupt metadata (its config is not a table of options)"),
    ({"data": 5}, "corrupt metadata (its config: --data must be text or unset, got 5)"),
    ({"val_size": "all"}, "corrupt metadata (its config: --val-size must be a whole number, got 'all')"),
])
def test_calibrate_of_a_model_whose_config_is_not_options_is_a_one_line_error(model_file, tmp_path, capsys,
                                                                             config, message):
    tensors, meta = load_tensors(model_file)
    bad = tmp_path / "bad.safetensors"
    save_tensors(bad, tensors, {**meta, "config": config})
    assert main(["calibrate", "--model", str(bad), str(tmp_path / "out.safetensors")]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line == f"fashion-cnn: error: {bad}: {message}"
    assert not (tmp_path / "out.safetensors").exists()


def test_training_with_a_validation_split_calibrates_and_calibrate_refits_the_same(real_data, tmp_path, capsys):
    from fashion_cnn.config import TrainConfig
    from fashion_cnn.jobs.final import train_final

    common = dict(limit=2000, epochs=1, out=str(tmp_path), device="cpu", data_dir=real_data.source, threads=1)
    with_val = train_final(TrainConfig(val_size=400, **common), data=real_data).model_path
    without = train_final(TrainConfig(**common), data=real_data).model_path
    logged = (without.parent / "log.txt").read_text()
    assert "train with --val-size N" in logged and "test images" not in logged  # the hint: hold images out
    stored = load_tensors(with_val)[1]["calibration"]
    assert stored["fitted_on"] == "validation images 1-200 of 400"
    assert json.loads((with_val.parent / "metrics.json").read_text())["calibration"] == stored
    assert "calibration" not in load_tensors(without)[1]  # nothing held out: temperature 1, never unknown

    out = tmp_path / "again.safetensors"
    assert main(["calibrate", "--model", str(with_val), "--data-dir", real_data.source, str(out)]) == 0
    refitted = load_tensors(out)[1]
    assert refitted["calibration"]["temperature"] == pytest.approx(stored["temperature"], rel=1e-4)
    assert refitted["model_card"]["calibration"]["temperature"] == refitted["calibration"]["temperature"]
    assert main(["calibrate", "--model", str(without), str(tmp_path / "refused.safetensors")]) == 1


def test_a_calibrated_file_is_used_by_the_predictor(model_file, tmp_path):
    from fashion_cnn.evaluation.predict import Predictor

    path = with_calibration(model_file, tmp_path / "m.safetensors",
                            {"temperature": 2.0, "unknown": {"score": "max_logit", "threshold": 0.0}})
    predictor = Predictor(path)
    assert predictor.temperature == 2.0 and predictor.unknown_rule == UnknownRule("max_logit", 0.0, 2.0)
    x = np.random.default_rng(0).random((4, 28, 28), dtype=np.float32)
    logits = predictor.logits(x)
    assert np.allclose(predictor.predict_arrays(x), torch.softmax(logits / 2, 1).numpy(), atol=1e-6)
