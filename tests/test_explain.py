"""Explanations: the layer each registered model is explained on, the heat maps, `fashion-cnn explain` (its
pictures, refusals and bad inputs, which get the very lines `predict` gives), the web API's heat maps, the
model-randomisation check (stages, randomise) and issue 16's sanity criteria on the packaged model."""

import base64
import io
import json

import numpy as np
import pytest
import torch
from conftest import tiny_arrays, with_calibration
from PIL import Image
from test_predict import encode, garment, write, write_bad_files

from fashion_cnn.app.cli import main
from fashion_cnn.data.images import to_float
from fashion_cnn.evaluation.explain import cam_layer, evidence_on_object, heatmaps, overlay, randomise, stages
from fashion_cnn.evaluation.inference import predict_logits
from fashion_cnn.models.locate import packaged_model
from fashion_cnn.models.registry import create_model
from fashion_cnn.models.specs import list_models


def images(n: int = 6) -> np.ndarray:
    return to_float(torch.from_numpy(tiny_arrays(n)[0]))[:, 0].numpy()


@pytest.mark.parametrize("name", list_models())
def test_each_model_is_explained_on_its_last_convolution(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    ran = []
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(lambda m, i, o: ran.append(m))
    model(torch.rand(1, 1, 28, 28))
    assert any(ran[-1] is m for m in cam_layer(model).modules())  # no convolution runs after the layer

    x = images()
    heats = heatmaps(model, x, [0, 1, 2, 3, 4, 5])
    assert heats.shape == (6, 28, 28) and heats.dtype == np.float32
    assert np.isfinite(heats).all() and heats.min() >= 0
    assert set(np.round(heats.max(axis=(1, 2)), 6)) <= {0.0, 1.0}  # each map scaled to 1, or empty


@pytest.mark.parametrize("name", ["fast", "strong"])
def test_the_map_decomposes_the_class_logit_over_the_layers_positions(name):
    """What makes HiResCAM faithful here: after the cam layer these models are piecewise linear without
    bias until the logits, so the map (before its ReLU) sums to the logit less its bias, for any weights.
    (The baseline's dense layer has a bias: within 7% there, on the trained model.)"""
    from fashion_cnn.evaluation.explain import class_activation

    model = randomise(create_model(name), seed=0).eval()  # no zero anywhere: biases and shifts included
    x = torch.from_numpy(images(4))[:, None]
    targets = torch.tensor([0, 3, 5, 9])
    with torch.no_grad():
        expected = model.logits(x)[range(4), targets] - model.fc.bias[targets]
    total = class_activation(model)(model, x, targets).sum((1, 2, 3))
    assert torch.allclose(total, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_a_test_time_augmented_model_explains_a_mirror_image_as_the_mirror_of_its_map():
    torch.manual_seed(0)
    x = images(4)
    targets = [1, 2, 3, 4]
    tta = create_model("fast", tta=True).eval()
    assert np.allclose(heatmaps(tta, x[:, :, ::-1].copy(), targets), heatmaps(tta, x, targets)[:, :, ::-1],
                       atol=1e-5)
    plain = create_model("fast").eval()
    plain.load_state_dict(tta.state_dict())
    assert not np.allclose(heatmaps(plain, x[:, :, ::-1].copy(), targets), heatmaps(plain, x, targets)[:, :, ::-1],
                           atol=1e-3)


def test_evidence_on_object_counts_mass_and_area():
    image = np.zeros((1, 28, 28), np.float32)
    image[0, :14] = 1  # the object: the top half
    heat = np.zeros((1, 28, 28), np.float32)
    heat[0, 10:18] = 1  # 4 of its 8 rows on the object
    share, covered = evidence_on_object(heat, image)
    assert share[0] == pytest.approx(0.5) and covered[0] == pytest.approx(0.5)
    assert np.isnan(evidence_on_object(np.zeros_like(heat), image)[0][0])


def test_an_unpadded_convolution_is_mapped_onto_the_pixels_its_units_sit_on():
    """The baseline's convolution has 26x26 units, each centred on an input pixel one in from the border.
    With zero biases, only the units whose 3x3 window holds the one bright pixel are active: the map must
    lie on that pixel and its 8 neighbours (stretching 26 to 28 shifted it by up to a pixel at the edges)."""
    torch.manual_seed(0)
    model = create_model("baseline").eval()
    for r, c in ((4, 4), (23, 23), (4, 23)):
        x = np.zeros((10, 28, 28), np.float32)
        x[:, r, c] = 1
        heats = heatmaps(model, x, range(10))
        assert heats.max() == 1  # some class has evidence there
        outside = heats.copy()
        outside[:, r - 1:r + 2, c - 1:c + 2] = 0
        assert outside.max() == 0


# --- the model-randomisation check (Adebayo et al., 2018) -------------------------------------------------

@pytest.mark.parametrize("name", list_models())
def test_stages_hold_every_parameter_once_from_the_input_to_the_logits(name):
    model = create_model(name)
    names = stages(model)
    for parameter, _ in model.named_parameters():
        assert sum(parameter.startswith(stage + ".") for stage in names) == 1, parameter
    first, last = model.get_submodule(names[0]), model.get_submodule(names[-1])
    assert any(isinstance(m, torch.nn.Conv2d) and m.in_channels == 1 for m in first.modules())
    assert isinstance(last, torch.nn.Linear) and last.out_features == model.num_classes


@pytest.mark.parametrize("name", list_models())
def test_randomise_draws_every_parameter_of_the_named_stages_and_nothing_else(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    for module in model.modules():  # statistics as a trained model has them
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.fill_(0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    top = stages(model)[-1]
    randomise(model, [top], seed=1)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {k for k, _ in model.named_parameters() if k.startswith(top + ".")}

    randomise(model, seed=1)
    for key, value in model.named_parameters():
        assert not torch.equal(value, before[key]), key
        assert value.abs().min() > 0, key  # no structural zeros: biases and batch-norm shifts included
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # without images: reset
            assert module.running_mean.eq(0).all() and module.running_var.eq(1).all()
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):  # He's scale, cut at 2 standard deviations
            std = (2 / module.weight[0].numel()) ** 0.5
            assert module.weight.abs().max() <= 2 * std and 0.6 * std < module.weight.std() < std
    again = randomise(create_model(name), seed=1)
    assert all(torch.equal(a, b) for a, b in zip(again.parameters(), model.parameters()))


@pytest.mark.parametrize("name", ["fast", "strong"])
def test_batch_norm_statistics_are_measured_from_the_randomised_stage_up(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.fill_(0.5)
    names = stages(model)
    middle = names[len(names) // 2]
    x = torch.from_numpy(images(8))[:, None]
    randomise(model, [middle], seed=0, images=x)
    seen = {}

    def record(stage: str):
        def hook(module, inputs, output) -> None:
            seen[module] = stage, inputs[0]
        return hook

    for stage in names:
        for module in model.get_submodule(stage).modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.register_forward_hook(record(stage))
    with torch.no_grad():
        model.logits(x)
    assert not model.training and all(not m.training for m in model.modules())
    for module, (stage, inputs) in seen.items():
        if names.index(stage) < names.index(middle):  # below the randomised stage: as they were
            assert module.running_mean.eq(0.5).all()
        else:  # the mean of what each receives now, over the images (up to 1%: the batch norms below,
            # measuring, divided by the batch's biased variance, and now by the unbiased one; that
            # difference, 0.26% on a 7x7 layer of 8 images, compounds from layer to layer)
            assert torch.allclose(module.running_mean, inputs.mean((0, 2, 3)), rtol=0.01, atol=1e-3)
            assert module.momentum == 0.1


def test_a_fresh_model_maps_only_the_garment_and_a_randomised_one_does_not():
    """Why the check randomises biases too: the models initialise them to zero, so a fresh model's
    activations are exactly zero on a black background and its maps lie on the garment whatever it is."""
    torch.manual_seed(0)
    fresh = create_model("baseline").eval()
    x = np.zeros((10, 28, 28), np.float32)
    x[:, 10:18, 8:20] = np.linspace(0.3, 1, 12)
    near = np.zeros((28, 28), bool)
    near[9:19, 7:21] = True  # the garment and the pixels whose 3x3 window touches it
    fresh_maps = heatmaps(fresh, x, range(10))
    assert fresh_maps.max() == 1 and fresh_maps[:, ~near].max() == 0
    randomised = heatmaps(randomise(fresh, seed=0), x, range(10))
    assert (randomised[:, ~near].sum(1) / randomised.sum((1, 2))).min() > 0.1


@pytest.mark.skipif(packaged_model() is None, reason="no packaged model")
def test_the_trained_model_puts_more_evidence_on_the_garment_than_a_randomised_one(real_data):
    """Issue 16's two criteria on 50 test images, for the packaged model: its maps put more of their mass
    on the garment than the garment's share of the image, and more than the maps of the same network with
    every parameter randomised, which have nothing in common with them; and they depend on the class
    (benchmarks/explain_sanity.py measures all this on 200: docs/benchmarks/explain-sanity.md). Measured here:
    0.605 on the garment against an area of 0.441; randomised 0.425 (seeds 1 and 2: 0.382, 0.424), rank
    correlation with the trained maps -0.22 (-0.39, -0.41); rank correlation of the maps of the first and
    second class 0.03 (Guided Grad-CAM's, which hardly depend on the class, 0.81 in the benchmark)."""
    from scipy.stats import spearmanr

    from fashion_cnn.models.files import load_model

    def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.mean([spearmanr(x.ravel(), y.ravel())[0] for x, y in zip(a, b)]))

    trained, _ = load_model(packaged_model())
    randomised = randomise(load_model(packaged_model())[0], seed=0,
                           images=to_float(real_data.train_images[:500]))
    x = to_float(real_data.test_images[:50])
    images = x[:, 0].numpy()
    maps, shares = {}, {}
    for name, model in (("trained", trained), ("randomised", randomised)):
        maps[name] = heatmaps(model, images, predict_logits(model, x).argmax(1))
        share, covered = evidence_on_object(maps[name], images)
        shares[name] = np.nanmean(share)
    assert shares["trained"] > covered.mean() + 0.08
    assert shares["trained"] > shares["randomised"] + 0.1
    assert rank_correlation(maps["trained"], maps["randomised"]) < 0.2

    ranked = predict_logits(trained, x).argsort(1, descending=True)
    first, second = heatmaps(trained, images, ranked[:, 0]), heatmaps(trained, images, ranked[:, 1])
    assert rank_correlation(first, second) < 0.3


# --- the command line --------------------------------------------------------------------------------

def explain(capsys, *args) -> tuple[int, str, str]:
    code = main(["explain", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_explain_writes_one_picture_per_image_and_json(model_file, tmp_path, capsys):
    first = write(tmp_path / "shirt.png", encode(garment(), "PNG"))
    second = write(tmp_path / "photo.jpg", encode(garment(90, 200), "JPEG"))
    out = tmp_path / "out"
    code, text, _ = explain(capsys, first, second, "--model", model_file, "--out", out)
    assert code == 0
    assert [line.rsplit(" -> ", 1)[1] for line in text.splitlines()[1:]] == [
        str(out / "0000-shirt.png"), str(out / "0001-photo.png")]
    for path in sorted(out.iterdir()):
        with Image.open(path) as picture:
            assert picture.format == "PNG" and picture.width > 600

    code, text, _ = explain(capsys, first, "--model", model_file, "--out", tmp_path / "json", "--json",
                            "--top-k", "2")
    record = json.loads(text)["predictions"][0]
    assert code == 0 and record["explanation"] == str(tmp_path / "json" / "0000-shirt.png")
    assert len(record["top_k"]) == 2 and np.asarray(record["heatmap"]).shape == (28, 28)


def test_existing_files_are_refused_unless_forced_and_inputs_never(model_file, tmp_path, capsys):
    item = write(tmp_path / "item.png", encode(garment(), "PNG"))
    out = tmp_path / "out"
    out.mkdir()
    taken = write(out / "0000-item.png", b"not yours to replace")
    code, _, err = explain(capsys, item, "--model", model_file, "--out", out)
    assert code == 1 and err.strip() == f"fashion-cnn: error: {taken}: exists; pass --force to replace it"
    assert taken.read_bytes() == b"not yours to replace"

    assert explain(capsys, item, "--model", model_file, "--out", out, "--force")[0] == 0
    assert taken.read_bytes().startswith(b"\x89PNG")

    # the first image's picture would replace the second image itself: refused even with --force
    code, _, err = explain(capsys, item, taken, "--model", model_file, "--out", out, "--force")
    assert code == 1 and err.strip() == (f"fashion-cnn: error: {taken}: is one of the input images; "
                                         "choose another --out")
    assert len(list(out.iterdir())) == 1

    code, _, err = explain(capsys, item, "--model", model_file, "--out", taken)
    assert code == 1 and err.strip() == (f"fashion-cnn: error: {taken}: not a folder; "
                                         "--out names the folder for the pictures")


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")  # as predict.py sets; pytest resets it
def test_bad_inputs_get_the_lines_predict_gives(model_file, tmp_path, capsys):
    inputs = write_bad_files(tmp_path) + [write(tmp_path / "good.png", encode(garment(), "PNG"))]
    predicted = main(["predict", *map(str, inputs), "--model", str(model_file)])
    predict_err = capsys.readouterr().err
    code, out, err = explain(capsys, *inputs, "--model", model_file, "--out", tmp_path / "out")
    assert code == predicted == 1
    assert err == predict_err and len(err.splitlines()) == len(inputs) - 1
    assert out.count(" -> ") == 1 and len(list((tmp_path / "out").iterdir())) == 1


def test_an_unknown_image_is_explained_by_its_best_guess(model_file, tmp_path):
    from fashion_cnn.evaluation.explain import explain_predictions
    from fashion_cnn.evaluation.predict import Predictor

    strict = with_calibration(model_file, tmp_path / "strict.safetensors",
                              {"temperature": 1.0, "unknown": {"score": "max_probability", "threshold": 0.99}})
    predictor = Predictor(strict)
    [p] = predictor.predict([encode(garment(), "PNG")])
    assert p.unknown and p.class_index is None
    guess = predictor.class_names.index(p.top_k[0][0])
    [heat] = explain_predictions(predictor, [p])
    np.testing.assert_array_equal(heat, heatmaps(predictor.model, p.image[None], [guess])[0])


# --- the web API ---------------------------------------------------------------------------------------

def test_the_api_returns_heat_maps_when_asked(model_file):
    pytest.importorskip("fastapi_offline")
    from fastapi.testclient import TestClient

    from fashion_cnn.app.serve import create_app

    client = TestClient(create_app(model_file))
    files = [("files", ("item.png", encode(garment(), "PNG"), "image/png")),
             ("files", ("notes.txt", b"not an image", "text/plain"))]
    plain = client.post("/predict", files=files).json()["predictions"]
    assert [r["heatmap"] for r in plain] == [None, None]
    explained = client.post("/predict?explain=true", files=files).json()["predictions"]
    assert explained[1]["heatmap"] is None and explained[1]["error"]
    header, payload = explained[0]["heatmap"].split(",", 1)
    assert header == "data:image/png;base64"
    with Image.open(io.BytesIO(base64.b64decode(payload))) as picture:
        assert picture.size == (112, 112) and picture.mode == "RGB"
    assert explained[0]["class_name"] == plain[0]["class_name"]


def test_no_crop_no_invert_and_framed_reach_explain_as_they_reach_predict(model_file, tmp_path, capsys):
    item = write(tmp_path / "item.png", encode(garment(), "PNG"))
    maps = {}
    for flags in ((), ("--no-crop",), ("--no-invert",), ("--framed",)):
        code, text, _ = explain(capsys, item, "--model", model_file, "--out", tmp_path / "-".join(flags or ("x",)),
                                "--json", *flags)
        assert code == 0
        maps[flags] = np.asarray(json.loads(text)["predictions"][0]["heatmap"])
    assert not any(np.allclose(maps[()], maps[flags]) for flags in (("--no-crop",), ("--no-invert",), ("--framed",)))


def test_a_speckled_map_shows_where_its_evidence_is():
    """A map of single pixels, as the baseline's unpooled conv layer gives: a patch of many small values
    (most of the evidence) and one isolated peak. The picture colours the patch, not a few faint specks."""
    heat = np.zeros((28, 28), np.float32)
    heat[6:16:2, 6:16:2] = heat[7:16:2, 7:16:2] = 0.2  # a checkerboard patch: 50 pixels of 0.2
    heat[22, 22] = 1.0
    picture = overlay(np.zeros((28, 28), np.float32), heat, scale=1).max(2) / 255  # on black: the colour shows
    assert picture[6:16, 6:16].mean() > 0.3
    assert picture[:2].max() == 0 and picture[:, :2].max() == 0  # absent where there is no evidence
