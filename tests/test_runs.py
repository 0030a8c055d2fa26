import os

import pytest
import torch
from safetensors.torch import save_file

from fashion_cnn.models import create_model
from fashion_cnn.runs import (ModelFileError, load_model, load_tensors, new_run_dir, save_model, save_tensors,
                             write_atomic)


def test_model_round_trip(tmp_path):
    model = create_model("baseline")
    save_model(tmp_path / "m.safetensors", model, {"architecture": "baseline", "note": "hi"})
    loaded, meta = load_model(tmp_path / "m.safetensors")
    assert meta["note"] == "hi" and meta["format"] == "fashion-cnn-model/1"
    assert not loaded.training
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(loaded(x), model.eval()(x))


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "no such file"),
    (lambda p: p.write_bytes(b"\x00" * 7), "not a readable safetensors file"),
    (lambda p: p.write_bytes(os.urandom(4096)), "not a readable safetensors file"),
    (lambda p: save_file({"w": torch.zeros(2)}, str(p)), "not a fashion-cnn model"),
    (lambda p: save_tensors(p, {"w": torch.zeros(2)}, {"format": "other/1"}), "not a fashion-cnn model file"),
    (lambda p: save_model(p, create_model("baseline"), {"architecture": "vgg99"}), "unknown architecture 'vgg99'"),
    (lambda p: save_tensors(p, {"conv.weight": torch.zeros(2)},
                            {"format": "fashion-cnn-model/1", "architecture": "baseline"}), "do not fit"),
])
def test_bad_model_files_are_refused_clearly(tmp_path, make, message):
    path = tmp_path / "model.safetensors"
    make(path)
    with pytest.raises(ModelFileError, match=message):
        load_model(path)


def test_new_run_dirs_never_collide(tmp_path):
    dirs = {new_run_dir(tmp_path, "cv") for _ in range(3)}
    assert len(dirs) == 3 and all(d.is_dir() for d in dirs)


def test_atomic_write_replaces_whole_file_with_ordinary_permissions(tmp_path):
    target = tmp_path / "f.json"
    write_atomic(target, b"old")
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]  # no temp file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_loaded_tensors_sit_in_fresh_64_byte_aligned_memory(tmp_path):
    """safetensors' loader returns views into the mapped file, 8 + header length + offset bytes in: 8-byte
    aligned at a place set by the metadata's length (the history's float values, in a checkpoint). A
    momentum buffer restored there is where matrix products write, and MKL's kernels may round differently
    for another alignment; a fresh tensor from torch's allocator is 64-byte aligned."""
    tensors = {"a": torch.arange(10.0), "b": torch.ones(3, 5)}
    for pad in range(64):  # every header length modulo 64
        save_tensors(tmp_path / "t.safetensors", tensors, {"pad": "x" * pad})
        loaded, meta = load_tensors(tmp_path / "t.safetensors")
        assert meta["pad"] == "x" * pad
        for name, t in loaded.items():
            assert t.data_ptr() % 64 == 0, (pad, name)
            assert torch.equal(t, tensors[name])
