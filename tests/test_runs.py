import os

import pytest
import torch
from safetensors.torch import save_file

from fashion_cnn.io import ModelFileError, load_tensors, save_tensors, write_atomic
from fashion_cnn.models.files import load_model, save_model
from fashion_cnn.models.registry import create_model
from fashion_cnn.training.runs import (
    RunError,
    create_run_dir,
    load_checkpoint,
    open_run,
    read_config,
    save_checkpoint,
)


def test_model_round_trip(tmp_path):
    model = create_model("baseline")
    save_model(tmp_path / "m.safetensors", model, {"architecture": "baseline", "note": "hi",
                                                   "class_names": [str(i) for i in range(10)]})
    loaded, meta = load_model(tmp_path / "m.safetensors")
    assert meta["note"] == "hi" and meta["format"] == "fashion-cnn-model/1"
    assert not loaded.training
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(loaded(x), model.eval()(x))


def test_a_model_of_three_classes_reloads_with_three_outputs(tmp_path):
    save_model(tmp_path / "m.safetensors", create_model("fast", num_classes=3),
               {"architecture": "fast", "class_names": ["cat", "dog", "owl"]})
    model, _ = load_model(tmp_path / "m.safetensors")
    assert model.eval()(torch.rand(2, 1, 28, 28)).shape == (2, 3)


NAMES = {"class_names": [str(i) for i in range(10)]}


def nan_weights():
    model = create_model("baseline")
    with torch.no_grad():
        model.fc1.weight[0, 0] = float("nan")
    return model


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "no such file"),
    (lambda p: p.write_bytes(b"\x00" * 7), "not a readable safetensors file"),
    (lambda p: p.write_bytes(os.urandom(4096)), "not a readable safetensors file"),
    (lambda p: save_file({"w": torch.zeros(2)}, str(p)), "not a fashion-cnn file"),
    (lambda p: save_file({"w": torch.zeros(2)}, str(p), metadata={"fashion_cnn": "[1, 2]"}), "corrupt metadata"),
    (lambda p: save_tensors(p, {"w": torch.zeros(2)}, {"format": "other/1"}), "not a fashion-cnn model file"),
    (lambda p: save_model(p, create_model("baseline"), {"architecture": "vgg99", **NAMES}),
     "unknown architecture 'vgg99'"),
    (lambda p: save_model(p, create_model("baseline"), {"architecture": ["baseline"], **NAMES}),
     "unknown architecture"),
    (lambda p: save_model(p, create_model("baseline"), {"architecture": "baseline", "class_names": None}),
     "class_names"),
    (lambda p: save_model(p, create_model("baseline"), {"architecture": "baseline", "class_names": ["a", "b"]}),
     "do not fit"),
    (lambda p: save_tensors(p, {"conv.weight": torch.zeros(2)},
                            {"format": "fashion-cnn-model/1", "architecture": "baseline", **NAMES}), "do not fit"),
    (lambda p: save_model(p, nan_weights(), {"architecture": "baseline", **NAMES}), "not finite"),
])
def test_bad_model_files_are_refused_clearly(tmp_path, make, message):
    path = tmp_path / "model.safetensors"
    make(path)
    with pytest.raises(ModelFileError, match=message):
        load_model(path)


def test_atomic_write_replaces_whole_file_with_ordinary_permissions(tmp_path):
    target = tmp_path / "f.json"
    write_atomic(target, b"old")
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]  # no temp file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_run_dirs_never_collide_and_appear_with_their_config(tmp_path):
    dirs = [create_run_dir(tmp_path, "cv", {"epochs": k}) for k in range(3)]
    assert len(set(dirs)) == 3
    assert [read_config(d) for d in dirs] == [{"job": "cv", "epochs": k} for k in range(3)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(d.name for d in dirs)  # nothing half-built


def test_a_run_is_locked_while_open_and_resumes_only_as_its_own_job(tmp_path):
    with open_run({"epochs": 1}, "train", tmp_path) as run:
        with pytest.raises(RunError, match="in use by another"):
            with open_run({}, "train", tmp_path, resume=run.dir):
                pass
    with pytest.raises(RunError, match="a 'train' run, not a 'cv' run"):
        with open_run({}, "cv", tmp_path, resume=run.dir):
            pass
    with open_run({}, "train", tmp_path, resume=run.dir) as again:  # free once the first has closed
        assert again.resumed and again.config == {"epochs": 1}


def test_resume_of_something_that_is_not_a_run_touches_nothing(tmp_path):
    (tmp_path / "photos").mkdir()
    for target, message in ((tmp_path / "photos", "no config.json"), (tmp_path / "nowhere", "no such folder")):
        with pytest.raises(RunError, match=message):
            with open_run({}, "train", tmp_path, resume=target):
                pass
    assert list((tmp_path / "photos").iterdir()) == []  # no log.txt, no lock


def test_resume_clears_what_a_killed_writer_left(tmp_path):
    with open_run({}, "train", tmp_path) as run:
        pass
    (run.dir / ".metrics.csv.abc123.tmp").write_bytes(b"half")
    with open_run({}, "train", tmp_path, resume=run.dir):
        assert not list(run.dir.glob("*.tmp")) and not list(run.dir.glob(".*.tmp"))


def test_an_interruption_names_its_run_directory(tmp_path):
    with pytest.raises(KeyboardInterrupt) as caught:
        with open_run({}, "train", tmp_path) as run:
            raise KeyboardInterrupt
    assert caught.value.run_dir == run.dir


def test_checkpoints_hold_named_modules_optimizers_progress_and_config(tmp_path):
    torch.manual_seed(0)
    model, ema = create_model("fast"), create_model("fast")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.rand(4, 1, 28, 28)).sum().backward()
    optimizer.step()
    save_checkpoint(tmp_path / "c.safetensors", {"model": model, "optimizer": optimizer, "ema": ema, "best": None},
                    {"history": [{"epoch": 1}]}, {"lr": 0.1})

    torch.manual_seed(1)
    model2, ema2 = create_model("fast"), create_model("fast")
    optimizer2 = torch.optim.SGD(model2.parameters(), lr=0.5, momentum=0.9)
    progress = load_checkpoint(tmp_path / "c.safetensors", {"model": model2, "optimizer": optimizer2, "ema": ema2})
    assert progress == {"history": [{"epoch": 1}]}
    for a, b in ((model, model2), (ema, ema2)):
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(p, q), name
    assert optimizer2.param_groups[0]["lr"] == 0.1
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(optimizer.state[p]["momentum_buffer"], optimizer2.state[q]["momentum_buffer"])
    header = load_tensors(tmp_path / "c.safetensors")[1]
    assert header["config"] == {"lr": 0.1} and header["format"] == "fashion-cnn-checkpoint/1"

    with pytest.raises(ModelFileError, match="'model' does not fit"):
        load_checkpoint(tmp_path / "c.safetensors", {"model": create_model("baseline")})


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
