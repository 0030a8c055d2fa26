"""ONNX export: the CLI writes a file that plain onnxruntime runs like PyTorch, at any batch size."""

import contextlib
import io
import json

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from fashion_cnn import export  # noqa: E402
from fashion_cnn.cli import main  # noqa: E402
from fashion_cnn.data import CLASS_NAMES  # noqa: E402
from fashion_cnn.predict import Predictor  # noqa: E402


@pytest.fixture(scope="module")
def exported(model_file, tmp_path_factory):
    """(ONNX file, CLI output): one export for the whole module, tracing takes seconds."""
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(["export", "--format", "onnx", "--model", str(model_file), str(path)]) == 0
    return path, out.getvalue()


@pytest.fixture
def onnx_file(exported):
    return exported[0]


def test_cli_reports_the_check(exported, model_file):
    path, out = exported
    assert out.startswith(f"model: {model_file}\n")
    assert f"saved {path}" in out and "same classes as PyTorch" in out


@pytest.mark.parametrize("batch", [1, 7])
def test_plain_onnxruntime_matches_pytorch(onnx_file, model_file, batch):
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(batch).random((batch, 28, 28), dtype=np.float32)
    (probabilities,) = session.run(None, {"images": images})
    expected = Predictor(model_file).predict_arrays(images)
    assert probabilities.shape == (batch, 10)
    assert np.abs(probabilities - expected).max() < 1e-4
    assert (probabilities.argmax(1) == expected.argmax(1)).all()
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["class_names"]) == list(CLASS_NAMES)


def test_the_batch_dimension_is_dynamic(onnx_file):
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert isinstance(session.get_inputs()[0].shape[0], str)
    assert session.get_inputs()[0].shape[1:] == [28, 28]


def test_a_failed_check_writes_nothing(onnx_file, model_file, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "onnx_bytes", lambda module, meta: onnx_file.read_bytes())  # skip tracing
    images = np.random.default_rng(0).random((5, 28, 28), dtype=np.float32)
    report = export.export_onnx(model_file, tmp_path / "ok.onnx", check_images=images)
    assert report["same_classes"] and report["max_abs_diff"] < 1e-4 and (tmp_path / "ok.onnx").is_file()
    with pytest.raises(ValueError, match="disagrees with PyTorch"):
        export.export_onnx(model_file, tmp_path / "bad.onnx", check_images=images, tolerance=-1.0)
    assert list(tmp_path.iterdir()) == [tmp_path / "ok.onnx"]
