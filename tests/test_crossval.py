import csv
import itertools
import json

import numpy as np
import pytest
import torch
from conftest import run_killed_at
from test_train import BUSY

from fashion_cnn import machine
from fashion_cnn.config import CVConfig
from fashion_cnn.data.fmnist import load_fashion_mnist
from fashion_cnn.jobs import crossval
from fashion_cnn.jobs.crossval import cross_validate, kfold_splits
from fashion_cnn.models import fastpath
from fashion_cnn.training import loop as train


def test_out_none_keeps_nothing_on_disk_and_verbose_0_prints_nothing(real_data, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"  # tmp_path holds the test's cache (conftest.isolated_cache)
    work.mkdir()
    monkeypatch.chdir(work)
    result = cross_validate(CVConfig(limit=300, folds=2, epochs=2, threads=1), data=real_data, out=None, verbose=0)
    assert list(work.iterdir()) == []
    assert capsys.readouterr() == ("", "")
    assert result.run_dir is None and len(result.fold_accuracies) == 2 and 0 < result.mean < 1
    for history in result.histories.values():
        assert history.epoch == [0, 1] and set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
        assert history.history["val_accuracy"][-1] in result.fold_accuracies


def test_verbose_1_prints_a_line_per_epoch_and_per_fold(real_data, tmp_path, capsys):
    result = cross_validate(CVConfig(limit=300, folds=2, epochs=1, threads=1, out=str(tmp_path)), data=real_data)
    lines = [line for line in capsys.readouterr().err.splitlines() if not line.endswith(BUSY)]
    assert [line.split(":")[0] for line in lines] == ["fold 1/2 epoch 1/1", "fold 1/2", "fold 2/2 epoch 1/1",
                                                      "fold 2/2"]
    [advice] = [line for line in (result.run_dir / "log.txt").read_text().splitlines() if line.startswith("next: ")]
    assert advice.startswith("next: fashion-cnn train ") and " --limit 300 " in advice
    assert advice.endswith("  (the final model on the first 300 training images)")


def test_kfold_splits_stratified_disjoint_covering_reproducible():
    labels = np.repeat(np.arange(3), [60, 30, 13])[np.random.default_rng(0).permutation(103)]  # imbalanced
    splits = kfold_splits(labels, 5, seed=1)
    assert len(splits) == 5
    all_val = np.concatenate([val for _, val in splits])
    assert sorted(all_val) == list(range(103))  # every image validated exactly once
    for fold_train, val in splits:
        assert not set(fold_train) & set(val)
        assert len(fold_train) + len(val) == 103
        # each class's share in every fold: 12, 6 and 2.6 of each class
        assert np.abs(np.bincount(labels[val], minlength=3) - np.array([60, 30, 13]) / 5).max() < 1
    again = kfold_splits(torch.from_numpy(labels), 5, seed=1)  # a tensor of labels as well
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(splits, again))
    assert not np.array_equal(splits[0][1], kfold_splits(labels, 5, seed=2)[0][1])
    assert not np.array_equal(splits[0][1], np.arange(len(splits[0][1])))  # shuffled, not blocks


def test_balanced_classes_get_the_tutorials_kfold(real_data):
    from sklearn.model_selection import KFold

    labels = real_data.train_labels.numpy()
    assert np.bincount(labels).tolist() == [6000] * 10
    tutorial = KFold(n_splits=5, shuffle=True, random_state=1).split(np.zeros((60000, 28, 28)))
    assert all(np.array_equal(a, b) and np.array_equal(c, d)
               for (a, c), (b, d) in zip(kfold_splits(labels, 5, seed=1), tutorial, strict=True))
    for _, val in kfold_splits(labels, 5, seed=1, stratify=True):  # asked for: exactly 1,200 a class
        assert np.bincount(labels[val]).tolist() == [1200] * 10
    imbalanced = labels[:59999]  # one image fewer: stratified folds, each class's share in every fold
    for _, val in kfold_splits(imbalanced, 5, seed=1):
        assert np.abs(np.bincount(imbalanced[val]) - np.bincount(imbalanced) / 5).max() < 1


def test_bad_fold_count():
    with pytest.raises(ValueError, match="--folds"):
        kfold_splits(np.zeros(10), 1, 1)


def small_cv(tmp_path) -> CVConfig:
    return CVConfig(limit=1200, folds=3, epochs=2, out=str(tmp_path / "runs"))


def metrics_without_timings(run_dir) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in csv.DictReader(f)]


def test_cross_validation_writes_results(real_data, tmp_path):
    result = cross_validate(small_cv(tmp_path), data=real_data)
    run_dir, summary = result.run_dir, result.summary
    assert len(summary["fold_accuracies"]) == 3 and list(result.histories) == [1, 2, 3]
    assert [len(h) for h in result.histories.values()] == [2, 2, 2]
    assert summary["mean"] == pytest.approx(np.mean(summary["fold_accuracies"]))
    assert summary["mean"] > 0.6  # 800 images, 2 epochs: well above chance (0.1)
    for name in ("config.json", "metrics.csv", "cv_results.json", "learning_curves.png", "fold_accuracies.png",
                 "log.txt", "checkpoint-fold1.safetensors", "checkpoint-fold3.safetensors"):
        assert (run_dir / name).is_file(), name
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 1 + 3 * 2
    assert json.loads((run_dir / "config.json").read_text())["folds"] == 3
    assert "accuracy: mean" in (run_dir / "log.txt").read_text()


def test_same_seed_same_numbers_and_new_dirs(real_data, tmp_path):
    cfg = small_cv(tmp_path)
    cfg.folds, cfg.epochs = 2, 1
    a, b = cross_validate(cfg, data=real_data), cross_validate(cfg, data=real_data)
    assert a.run_dir != b.run_dir  # never overwrites another run
    assert a.fold_accuracies == b.fold_accuracies


def test_resume_after_interruption_is_exact(real_data, tmp_path, monkeypatch):
    cfg = small_cv(tmp_path)
    reference = cross_validate(cfg, data=real_data)

    # killed during fold 2, epoch 2
    run_killed_at(monkeypatch, train, "save_checkpoint", 4, lambda: cross_validate(cfg, data=real_data))
    run_dir = max((tmp_path / "runs").iterdir())
    assert not (run_dir / "cv_results.json").exists()

    resumed = cross_validate(resume=run_dir, data=real_data)
    assert resumed.run_dir == run_dir
    assert resumed.fold_accuracies == reference.fold_accuracies
    # every epoch's losses and accuracies, identical to the uninterrupted run
    assert metrics_without_timings(run_dir) == metrics_without_timings(reference.run_dir)



def test_the_training_time_counts_every_session(tiny_data_dir, tmp_path, monkeypatch):
    data = load_fashion_mnist(tiny_data_dir, download=False, check=False)
    cfg = CVConfig(folds=2, epochs=2, limit=100, threads=1, device="cpu", out=str(tmp_path / "runs"))
    run_killed_at(monkeypatch, train, "save_checkpoint", 3, lambda: cross_validate(cfg, data=data))  # in fold 2
    [run_dir] = (tmp_path / "runs").iterdir()
    cross_validate(resume=run_dir, data=data)
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    results = json.loads((run_dir / "cv_results.json").read_text())
    assert len(rows) == 4 and "seconds_this_session" not in results  # which the resume would have overwritten
    for key in ("seconds", "cpu_seconds"):
        assert results[f"train_{key}"] == pytest.approx(sum(float(row[key]) for row in rows))


def test_resume_refuses_folds_other_than_the_checkpoints(real_data, tmp_path, monkeypatch):
    """A run resumed where the folds come out otherwise (another version's splitter, say) would continue a
    fold's epochs on other images: refused, and the checkpoint kept as it was."""
    cfg = CVConfig(limit=600, folds=2, epochs=2, out=str(tmp_path / "runs"))
    run_killed_at(monkeypatch, train, "save_checkpoint", 2, lambda: cross_validate(cfg, data=real_data))
    [run_dir] = (tmp_path / "runs").iterdir()
    saved = (run_dir / "checkpoint-fold1.safetensors").read_bytes()
    monkeypatch.setattr(crossval, "kfold_splits", lambda labels, folds, seed: kfold_splits(labels, folds, seed + 1))
    with pytest.raises(ValueError, match="checkpoint-fold1.safetensors: its epochs trained on other images"):
        cross_validate(resume=run_dir, data=real_data)
    assert (run_dir / "checkpoint-fold1.safetensors").read_bytes() == saved
    monkeypatch.undo()
    assert len(cross_validate(resume=run_dir, data=real_data).fold_accuracies) == 2  # its own folds resume


def tiny_cv(tmp_path, threads: int) -> CVConfig:
    return CVConfig(limit=600, folds=2, epochs=2, threads=threads, out=str(tmp_path / "runs"))


@pytest.mark.parametrize("n_threads", [1, 2])
def test_resume_is_exact_after_a_kill_at_any_checkpoint(real_data, tmp_path, monkeypatch, stage, n_threads):
    """Killed before the 2nd or the 4th checkpoint (in fold 1, in fold 2 after a finished fold), on one
    thread or two, with the C kernel and without: resuming gives the uninterrupted run's every number."""
    cfg = tiny_cv(tmp_path, n_threads)
    reference = cross_validate(cfg, data=real_data)
    for kill_at in (2, 4):
        before = set((tmp_path / "runs").iterdir())
        run_killed_at(monkeypatch, train, "save_checkpoint", kill_at, lambda: cross_validate(cfg, data=real_data))
        [run_dir] = set((tmp_path / "runs").iterdir()) - before
        resumed = cross_validate(resume=run_dir, data=real_data)
        assert resumed.fold_accuracies == reference.fold_accuracies, kill_at
        assert metrics_without_timings(run_dir) == metrics_without_timings(reference.run_dir), kill_at


def test_threads_that_follow_the_load_give_a_quiet_runs_numbers(real_data, tmp_path, monkeypatch, stage):
    """With --threads unset, a load that comes and goes at every step moves the C kernel's step between
    1 and 2 threads, and the run's numbers are those of a run on 2 threads. The torch fallback, whose
    bits depend on the thread count, keeps 2 threads (as does the C kernel's step where torch has no MKL)."""
    quiet = cross_validate(tiny_cv(tmp_path, 2), data=real_data)

    monkeypatch.setattr(machine, "default_threads", lambda: 2)
    monkeypatch.setattr(machine, "usable_cpus", lambda: [0, 1])
    monkeypatch.setattr(machine, "CHECK_SECONDS", 0.0)
    load = itertools.cycle([1.0, 0.0])  # other processes: a whole core busy, then none, ...
    monkeypatch.setattr(machine.LoadMeter, "read", lambda self: next(load))
    counts = []
    real_set, before = torch.set_num_threads, torch.get_num_threads()
    real_set(2)  # what the job restores at its end, as on a 2-core machine whatever OMP_NUM_THREADS says
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (counts.append(n), real_set(n)))
    try:
        busy = cross_validate(tiny_cv(tmp_path, 0), data=real_data)
    finally:
        real_set(before)

    adapts = stage == "native" and fastpath.mkl_functions() is not None
    assert set(counts) == ({1, 2} if adapts else {2})
    assert busy.fold_accuracies == quiet.fold_accuracies
    assert metrics_without_timings(busy.run_dir) == metrics_without_timings(quiet.run_dir)
