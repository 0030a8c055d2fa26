import csv
import sys

import pytest

from fashion_cnn.app.cli import main

pytest.importorskip("tensorboard", reason="--tensorboard needs the tensorboard extra")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_train_and_every_cv_fold_write_event_files_of_their_epochs(tiny_data_dir, tmp_path):
    args = ["--data", str(tiny_data_dir), "--out", str(tmp_path / "runs"), "--epochs", "2", "--device", "cpu",
            "--tensorboard"]
    assert main(["cv", "--folds", "2", *args]) == 0
    assert main(["train", "--val-size", "50", *args]) == 0
    cv_run, train_run = sorted((tmp_path / "runs").iterdir())
    with open(cv_run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    for fold in (1, 2):
        logged = scalars(cv_run / "tensorboard" / f"fold{fold}")
        expected = [(int(r["epoch"]), float(r["val_accuracy"])) for r in rows if r["fold"] == str(fold)]
        assert [(s, pytest.approx(v)) for s, v in logged["accuracy/validation"]] == expected
    logged = scalars(train_run / "tensorboard")
    assert {"loss/train", "loss/validation", "accuracy/train", "accuracy/validation", "time/seconds"} <= set(logged)
    assert [step for step, _ in logged["loss/train"]] == [1, 2]


def test_without_the_package_it_is_a_one_line_error_before_any_work(tiny_data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    assert main(["train", "--tensorboard", "--data", str(tiny_data_dir), "--out", str(tmp_path / "runs")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fashion-cnn: error: --tensorboard needs the tensorboard package: pip install "
                   "'fashion-cnn[tensorboard]'"]
    assert not (tmp_path / "runs").exists()
