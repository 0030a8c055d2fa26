import json

import pytest
import torch

from conftest import run_killed_at
from fashion_cnn import train
from fashion_cnn.inference import predict_logits
from fashion_cnn.runs import load_model
from fashion_cnn.train import TrainConfig, train_final


def small_train(tmp_path) -> TrainConfig:
    return TrainConfig(limit=1000, epochs=2, out=str(tmp_path / "runs"))


def test_final_model_saved_and_reloads_identically(real_data, tmp_path):
    run_dir = train_final(small_train(tmp_path), data=real_data)
    for name in ("config.json", "metrics.csv", "metrics.json", "learning_curves.png", "log.txt",
                 "model.safetensors", "confusion_matrix.png", "per_class.txt", "test_report.json"):
        assert (run_dir / name).is_file(), name
    report = json.loads((run_dir / "test_report.json").read_text())
    assert sum(map(sum, report["confusion_matrix"])) == 10_000
    assert len(report["per_class"]) == 10

    model, meta = load_model(run_dir / "model.safetensors")
    assert meta["architecture"] == "baseline" and meta["parameters"] == 542_230
    assert meta["class_names"][9] == "Ankle boot"
    assert meta["data"]["sha256"]["t10k-labels-idx1-ubyte.gz"].startswith("0402a96d")
    logits = predict_logits(model, real_data.test_images)
    assert (logits.argmax(1) == real_data.test_labels).float().mean().item() == pytest.approx(
        meta["test_accuracy"], abs=1e-6)

    # an identically seeded second run gives the very same weights
    again, _ = load_model(train_final(small_train(tmp_path), data=real_data) / "model.safetensors")
    assert torch.equal(predict_logits(again, real_data.test_images[:500]), logits[:500])


def test_resume_final_training_is_exact(real_data, tmp_path, monkeypatch):
    cfg = small_train(tmp_path)
    reference, _ = load_model(train_final(cfg, data=real_data) / "model.safetensors")

    # killed during the second epoch
    run_killed_at(monkeypatch, train, "save_checkpoint", 2, lambda: train_final(cfg, data=real_data))
    run_dir = max((tmp_path / "runs").iterdir())
    assert not (run_dir / "model.safetensors").exists()

    resumed, _ = load_model(train_final(cfg, resume=run_dir, data=real_data) / "model.safetensors")
    for (name, p), q in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), name


def test_restored_momentum_buffers_are_aligned_like_fresh_ones(tmp_path):
    """What resume hands to the baseline's step: momentum buffers that its matrix products write into
    (out=). They must sit in memory aligned as in the uninterrupted run, whatever the checkpoint's
    metadata length."""
    cfg = TrainConfig()
    model = train.make_model(cfg, 0)
    optimizer = train.make_optimizer(model, cfg)
    for p in model.parameters():
        optimizer.state[p]["momentum_buffer"] = torch.randn_like(p)
    for pad in range(0, 64, 8):
        train.save_checkpoint(tmp_path / "ckpt.safetensors", model, optimizer, {"history": "x" * pad})
        again = train.make_model(cfg, 0)
        restored = train.make_optimizer(again, cfg)
        assert train.load_checkpoint(tmp_path / "ckpt.safetensors", again, restored)["history"] == "x" * pad
        for p, q in zip(model.parameters(), again.parameters()):
            buf = restored.state[q]["momentum_buffer"]
            assert buf.data_ptr() % 64 == 0, pad
            assert torch.equal(buf, optimizer.state[p]["momentum_buffer"])


def test_device_choice():
    assert train.resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            train.resolve_device("cuda")



def test_threads_set_from_the_config_and_from_the_saved_one_on_resume(tmp_path):
    default = torch.get_num_threads()
    try:
        run_dir, _ = train.start_run(TrainConfig(threads=1, out=str(tmp_path)), "train", None)
        assert torch.get_num_threads() == 1
        torch.set_num_threads(default + 1)
        _, cfg = train.start_run(TrainConfig(), "train", run_dir)
        assert cfg.threads == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(default)
