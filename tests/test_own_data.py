"""End to end on folders of real images: every command on a 3-class folder of handwritten digits, fine-tuning
the packaged model on photos rendered from Fashion-MNIST test items, and those photos added to
Fashion-MNIST. The class names of the folder must reach every output: reports, predict (CLI and Python),
the web API and page, and the ONNX file."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sample_images import write_digits_folder, write_photo_folder

from fashion_cnn.app.cli import main
from fashion_cnn.data.fmnist import CLASS_NAMES
from fashion_cnn.evaluation.metrics import format_scores
from fashion_cnn.evaluation.predict import predict
from fashion_cnn.models.files import load_model
from fashion_cnn.models.locate import packaged_model

DIGITS = ["1", "4", "7"]


@pytest.fixture(scope="module")
def digits3(tmp_path_factory) -> Path:
    """180 real handwritten digits of three classes, 60 each, as DIR/<digit>/<index>.png."""
    root = tmp_path_factory.mktemp("own") / "digits"
    write_digits_folder(root, per_class=60)
    for folder in root.iterdir():
        if folder.name not in DIGITS:
            shutil.rmtree(folder)
    return root


def run(capsys, *argv) -> tuple[str, str]:
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    return capsys.readouterr()


def only_run(folder: Path) -> Path:
    [run_dir] = folder.iterdir()
    return run_dir


def test_every_command_on_a_three_class_folder(digits3, tmp_path, capsys):
    common = ["--data", digits3, "--device", "cpu"]
    out = run(capsys, "data", *common[:2]).out
    assert "image folder, 3 classes" in out and [line.split()[0] for line in out.splitlines()[3:6]] == DIGITS

    err = run(capsys, "cv", *common, "--folds", "2", "--epochs", "2", "--out", tmp_path / "cv").err
    cv_dir = only_run(tmp_path / "cv")
    summary = json.loads((cv_dir / "cv_results.json").read_text())
    assert len(summary["fold_macro_f1"]) == 2 and "2 stratified folds" in err
    assert "training images per class: 1 " in err and "macro-F1 mean" in err

    err = run(capsys, "train", *common, "--epochs", "3", "--class-weights", "auto", "--out", tmp_path / "train").err
    run_dir = only_run(tmp_path / "train")
    model, meta = load_model(run_dir / "model.safetensors")
    assert meta["class_names"] == DIGITS and model.num_classes == 3
    report = json.loads((run_dir / "test_report.json").read_text())
    assert [row["class"] for row in report["per_class"]] == DIGITS
    assert report["accuracy"] > 0.6  # three classes: chance is a third
    assert f"test accuracy: {format_scores(report)}" in err

    out = run(capsys, "evaluate", "--model", run_dir, "--data", digits3).out
    assert [line.split()[0] for line in out.splitlines()[2:5]] == DIGITS and "macro F1" in out

    # predict: the CLI and the Python API name the folder's classes
    fours = sorted((digits3 / "4").iterdir())[:5]
    answer = json.loads(run(capsys, "predict", *fours, "--model", run_dir, "--json", "--top-k", "5").out)
    for p in answer["predictions"]:
        assert list(p["probabilities"]) == DIGITS and len(p["top_k"]) == 3 and p["class_name"] in DIGITS
    predictions = predict(fours, model=run_dir)
    assert [p.class_name for p in predictions] == [p["class_name"] for p in answer["predictions"]]
    assert all(len(p.probabilities) == 3 for p in predictions)
    assert sum(p.class_name == "4" for p in predictions) >= 3

    # the web API and the page
    pytest.importorskip("fastapi_offline")
    from fastapi.testclient import TestClient

    from fashion_cnn.app.serve import create_app

    with TestClient(create_app(run_dir)) as client:
        assert client.get("/model").json()["class_names"] == DIGITS
        assert client.get("/samples").json() == []  # Fashion-MNIST's test images are not its classes
        assert "1, 4, 7" in client.get("/openapi.json").json()["info"]["description"]
        assert "meta.class_names" in client.get("/static/app.js").text  # the page shows them
        files = [("files", (f.name, f.read_bytes(), "image/png")) for f in fours]
        answer = client.post("/predict?top_k=3", files=files).json()
        assert [r["class_name"] for r in answer["predictions"]] == [p.class_name for p in predictions]
        assert all(list(r["probabilities"]) == DIGITS for r in answer["predictions"])
        assert client.post("/predict?top_k=4", files=files).status_code == 422  # only 3 classes to rank

    # export: three outputs, and the names in the file
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    onnx_file = tmp_path / "digits.onnx"
    run(capsys, "export", "--model", run_dir, onnx_file)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert json.loads(session.get_modelmeta().custom_metadata_map["class_names"]) == DIGITS
    images = np.stack([p.image for p in predictions]).astype(np.float32)
    probabilities = session.run(["probabilities"], {"images": images})[0]
    assert probabilities.shape == (5, 3)
    np.testing.assert_allclose(probabilities, [p.probabilities for p in predictions], atol=1e-4)


def photo_folder(root: Path, real_data, classes: dict[str, str], per_class: int) -> Path:
    """Fashion-MNIST test items of some classes rendered as photos: root/<folder>/<item>.jpg, with the
    folder name given for each class name."""
    labels = real_data.test_labels.numpy()
    folders = [classes.get(name) for name in CLASS_NAMES]
    items = np.concatenate([np.flatnonzero(labels == CLASS_NAMES.index(c))[:per_class] for c in classes])
    write_photo_folder(root, real_data.test_images.numpy(), labels, folders, np.sort(items))
    return root


@pytest.mark.skipif(packaged_model() is None, reason="no packaged model")
def test_fine_tuning_the_packaged_model_on_photos(real_data, tmp_path, capsys):
    photos = photo_folder(tmp_path / "photos", real_data, {"Sneaker": "sneaker", "Bag": "bag", "Trouser": "TROUSERS"},
                          per_class=25)
    photos.joinpath("TROUSERS").rename(photos / "trouser")  # "trousers" is not one of its classes: "trouser" is
    err = run(capsys, "train", "--data", photos, "--init", "packaged", "--epochs", "1", "--lr", "0.01",
              "--device", "cpu", "--out", tmp_path / "runs").err
    assert "head kept for the 3 classes it shares with the file" in err
    run_dir = only_run(tmp_path / "runs")
    _, meta = load_model(run_dir / "model.safetensors")
    assert meta["architecture"] == "strong" and meta["class_names"] == ["bag", "sneaker", "trouser"]
    assert meta["init"]["path"] == str(packaged_model()) and meta["init"]["head"] == "matched"
    assert meta["test_accuracy"] >= 0.8  # the packaged model knows these classes already

    err = run(capsys, "train", "--data", photos, "--init", run_dir, "--freeze-backbone", "--epochs", "1",
              "--device", "cpu", "--out", tmp_path / "frozen").err
    assert "head kept (the same classes)" in err and "training 387 of" in err  # 128 x 3 + 3
    tuned = only_run(tmp_path / "frozen")
    answer = json.loads(run(capsys, "predict", photos / "bag", "--model", tuned, "--json").out)
    assert {p["class_name"] for p in answer["predictions"]} <= {"bag", "sneaker", "trouser"}


def test_add_to_fashion_mnist(real_data, tmp_path, capsys):
    photos = photo_folder(tmp_path / "photos", real_data, {"T-shirt/top": "tshirt-top", "Sneaker": "Sneaker"},
                          per_class=20)
    data_dir = ["--data-dir", real_data.source]
    out = run(capsys, "data", "--data", photos, "--add-to", "fashion-mnist", *data_dir).out
    assert ", 10000 from Fashion-MNIST, " in out and " from photos, 28x28 uint8" in out
    assert "T-shirt/top" in out.splitlines()[3]

    err = run(capsys, "train", "--data", photos, "--add-to", "fashion-mnist", *data_dir, "--limit", "600",
              "--epochs", "1", "--device", "cpu", "--out", tmp_path / "runs").err
    run_dir = only_run(tmp_path / "runs")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    parts = metrics["test_parts"]
    assert list(parts) == ["Fashion-MNIST", "photos"] and parts["Fashion-MNIST"]["images"] == 10_000
    assert f"photos: {100 * parts['photos']['accuracy']:.2f}%" in err
    _, meta = load_model(run_dir / "model.safetensors")
    assert meta["class_names"] == list(CLASS_NAMES)

    out = run(capsys, "evaluate", "--model", run_dir, "--data", photos, "--add-to", "fashion-mnist", *data_dir).out
    assert f"Fashion-MNIST: {100 * parts['Fashion-MNIST']['accuracy']:.2f}%" in out

    (photos / "hat").mkdir()
    shutil.copy(next((photos / "Sneaker").iterdir()), photos / "hat" / "a.jpg")
    assert main(["data", "--data", str(photos), "--add-to", "fashion-mnist", *data_dir]) == 1
    assert "class folders hat do not each name one class" in capsys.readouterr().err


def test_dollar_signs_in_class_file_and_data_names_are_drawn_as_they_are(digits3, tmp_path, capsys):
    """matplotlib read `$...$` in names as mathtext: a class folder `$10_to_$20` killed `train` after training
    (no model saved), a file `shoe$_$.png` aborted `explain`, a swept `--data 'd$_$1'` killed the sweep at
    its plots."""
    data = tmp_path / "d$_$1"
    shutil.copytree(digits3, data)
    (data / "1").rename(data / "$10_to_$20")
    shoe = data / "4" / "shoe$_$.png"
    next((data / "4").iterdir()).rename(shoe)
    common = ["--data", data, "--device", "cpu", "--threads", "1", "--epochs", "1"]
    run(capsys, "train", *common, "--out", tmp_path / "train")
    run_dir = only_run(tmp_path / "train")
    assert load_model(run_dir / "model.safetensors")[1]["class_names"] == ["$10_to_$20", "4", "7"]
    assert (run_dir / "confusion_matrix.png").is_file()

    other_class = sorted((data / "$10_to_$20").iterdir())[0]
    out = run(capsys, "explain", shoe, other_class, "--model", run_dir, "--out", tmp_path / "seen").out
    assert f"{shoe}: " in out and f"{other_class}: " in out and len(list((tmp_path / "seen").iterdir())) == 2

    other = tmp_path / "d$_$2"
    shutil.copytree(data, other)
    run(capsys, "sweep", *common, "--data", data, other, "--folds", "1", "--val-size", "30", "--limit", "90",
        "--out", tmp_path / "sweep")
    sweep_dir = only_run(tmp_path / "sweep")
    assert (sweep_dir / "sweep_curves.png").is_file() and (sweep_dir / "sweep_metric.png").is_file()
