"""ONNX export: the CLI writes a file that plain onnxruntime runs like PyTorch, at any batch size."""

import contextlib
import io
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from conftest import with_calibration  # noqa: E402

from fashion_cnn.app import export
from fashion_cnn.app.cli import main
from fashion_cnn.data.fmnist import CLASS_NAMES
from fashion_cnn.evaluation.predict import Predictor


@pytest.fixture(scope="module")
def calibrated(model_file, tmp_path_factory):
    """The test model with a stored temperature, which the export must apply like Predictor does."""
    return with_calibration(model_file, tmp_path_factory.mktemp("calibrated") / "model.safetensors",
                            {"temperature": 2.5})


@pytest.fixture(scope="module")
def exported(calibrated, tmp_path_factory):
    """(ONNX file, CLI output): one export for the whole module, tracing takes seconds."""
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(["export", "--model", str(calibrated), str(path)]) == 0
    return path, out.getvalue()


@pytest.fixture
def onnx_file(exported):
    return exported[0]


def test_cli_reports_the_check(exported, calibrated):
    path, out = exported
    assert out.startswith(f"model: {calibrated}\n")
    assert f"saved {path}" in out and "same classes as PyTorch" in out


@pytest.mark.parametrize("batch", [1, 7])
def test_plain_onnxruntime_matches_pytorch(onnx_file, calibrated, model_file, batch):
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(batch).random((batch, 28, 28), dtype=np.float32)
    (probabilities,) = session.run(None, {"images": images})
    expected = Predictor(calibrated).predict_arrays(images)  # with the stored temperature
    uncalibrated = Predictor(model_file).predict_arrays(images)
    assert probabilities.shape == (batch, 10)
    assert np.abs(probabilities - expected).max() < 1e-4 < np.abs(probabilities - uncalibrated).max()
    assert (probabilities.argmax(1) == expected.argmax(1)).all()
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["class_names"]) == list(CLASS_NAMES)


def test_the_batch_dimension_is_dynamic(onnx_file):
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert isinstance(session.get_inputs()[0].shape[0], str)
    assert session.get_inputs()[0].shape[1:] == [28, 28]


def test_a_failed_check_writes_nothing(onnx_file, calibrated, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "onnx_bytes", lambda module, meta: onnx_file.read_bytes())  # skip tracing
    images = np.random.default_rng(0).random((5, 28, 28), dtype=np.float32)
    report = export.export_onnx(calibrated, tmp_path / "ok.onnx", check_images=images)
    assert report["same_classes"] and report["max_abs_diff"] < 1e-4 and (tmp_path / "ok.onnx").is_file()
    with pytest.raises(ValueError, match="disagrees with PyTorch"):
        export.export_onnx(calibrated, tmp_path / "bad.onnx", check_images=images, tolerance=-1.0)
    assert list(tmp_path.iterdir()) == [tmp_path / "ok.onnx"]


# --- what sits at OUT ------------------------------------------------------------------------------

def export_cli(capsys, *args) -> tuple[int, str]:
    code = main(["export", *map(str, args)])
    return code, capsys.readouterr().err


def test_export_refuses_to_replace_what_it_must_not(model_file, tmp_path, monkeypatch, capsys):
    """`export --model M M` replaced the model with the ONNX file; a symlink, a FIFO or a device at OUT was
    replaced by a regular file (as root, /dev/full too)."""
    monkeypatch.setattr(export, "onnx_bytes", lambda module, meta: pytest.fail("work done before the checks"))
    model = tmp_path / "m.safetensors"
    model.write_bytes(model_file.read_bytes())
    os.link(model, tmp_path / "hard-link.onnx")
    (tmp_path / "link.onnx").symlink_to(tmp_path / "elsewhere.onnx")
    os.mkfifo(tmp_path / "fifo.onnx")
    (tmp_path / "old.onnx").write_bytes(b"keep me")
    (tmp_path / "folder").mkdir()
    (tmp_path / "notes.txt").write_text("a file")
    cases = [(model, f"{model}: is the input {model}"), (tmp_path / "hard-link.onnx", "is the input"),
             (tmp_path / "link.onnx", "a symbolic link; refusing to replace it"),
             (tmp_path / "fifo.onnx", "not a regular file (a FIFO, device or socket); refusing to replace it"),
             (tmp_path / "old.onnx", f"{tmp_path / 'old.onnx'}: already exists; --force replaces it"),
             (tmp_path / "folder", "a folder; name a file"),
             (tmp_path / "notes.txt" / "m.onnx", f"{tmp_path / 'notes.txt'}: a file, not a folder")]
    if Path("/proc/self").is_dir():
        cases.append((Path("/proc/m.onnx"), "/proc: cannot write here"))
    if os.geteuid() == 0:  # a device node of our own, as /dev/full was (root only)
        os.mknod(tmp_path / "device.onnx", stat.S_IFCHR | 0o666, os.makedev(1, 7))
        cases.append((tmp_path / "device.onnx", "not a regular file (a FIFO, device or socket)"))
    for out, reason in cases:
        for force in ((), ("--force",)):
            if force and out == tmp_path / "old.onnx":
                continue
            code, err = export_cli(capsys, "--model", model, out, *force)
            assert code == 1 and err.startswith("fashion-cnn: error: ") and err.count("\n") == 1, err
            assert reason in err, err
    assert model.read_bytes() == model_file.read_bytes() and (tmp_path / "old.onnx").read_bytes() == b"keep me"
    assert (tmp_path / "link.onnx").is_symlink() and stat.S_ISFIFO((tmp_path / "fifo.onnx").lstat().st_mode)
    assert os.geteuid() != 0 or stat.S_ISCHR((tmp_path / "device.onnx").lstat().st_mode)


def test_force_replaces_an_existing_file(onnx_file, calibrated, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(export, "onnx_bytes", lambda module, meta: onnx_file.read_bytes())  # skip tracing
    out = tmp_path / "old.onnx"
    out.write_bytes(b"old")
    assert export_cli(capsys, "--model", calibrated, out, "--force")[0] == 0
    assert out.read_bytes() == onnx_file.read_bytes()
