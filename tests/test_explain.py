"""Explanations: the layer each registered model is explained on, the heat maps, `fashion-cnn explain` (its
pictures, refusals and bad inputs, which get the very lines `predict` gives), the web API's heat maps, and
the model-randomisation check on the packaged model."""

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_arrays, with_calibration
from fashion_cnn.cli import main
from fashion_cnn.data import to_float
from fashion_cnn.explain import cam_layer, evidence_on_object, heatmaps
from fashion_cnn.inference import predict_logits
from fashion_cnn.models import create_model, list_models
from fashion_cnn.predict import packaged_model
from test_predict import encode, garment, write, write_bad_files


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


@pytest.mark.skipif(packaged_model() is None, reason="no packaged model")
def test_maps_of_the_trained_model_are_not_those_of_a_random_one(real_data):
    """The model-randomisation check (Adebayo et al., 2018) on 100 test images, against a fresh model of
    the same architecture: benchmarks/explain_sanity.py measures it on 200, with the numbers in the README."""
    from fashion_cnn.runs import load_model

    trained, _ = load_model(packaged_model())
    torch.manual_seed(0)
    randomised = create_model("strong", tta=True).eval()
    x = to_float(real_data.test_images[:100])
    maps = {}
    for name, model in (("trained", trained), ("random", randomised)):
        predicted = predict_logits(model, x).argmax(1)
        maps[name] = heatmaps(model, x[:, 0].numpy(), predicted)
    share, covered = evidence_on_object(maps["trained"], x[:, 0].numpy())
    assert np.nanmean(share) > covered.mean() + 0.05  # the evidence lies more on the garment than off it
    correlation = [np.corrcoef(np.argsort(np.argsort(a.ravel())), np.argsort(np.argsort(b.ravel())))[0, 1]
                   for a, b in zip(maps["trained"], maps["random"]) if a.std() > 0 and b.std() > 0]
    assert np.mean(correlation) < 0.8  # the maps depend on what the model learned, not only on the image


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
    from fashion_cnn.explain import explain_predictions
    from fashion_cnn.predict import Predictor

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

    from fashion_cnn.serve import create_app

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


def test_no_crop_and_no_invert_reach_explain_as_they_reach_predict(model_file, tmp_path, capsys):
    item = write(tmp_path / "item.png", encode(garment(), "PNG"))
    maps = {}
    for flags in ((), ("--no-crop",), ("--no-invert",)):
        code, text, _ = explain(capsys, item, "--model", model_file, "--out", tmp_path / "-".join(flags or ("x",)),
                                "--json", *flags)
        assert code == 0
        maps[flags] = np.asarray(json.loads(text)["predictions"][0]["heatmap"])
    assert not np.allclose(maps[()], maps[("--no-crop",)]) and not np.allclose(maps[()], maps[("--no-invert",)])
