"""Evaluation's numbers an expert can check: bootstrap intervals of accuracy and macro-F1, and McNemar's paired
test of two models on the same test images."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.stats import binom
from sklearn.metrics import f1_score, precision_recall_fscore_support

from fashion_cnn.app.cli import main
from fashion_cnn.evaluation.metrics import bootstrap_interval, format_mcnemar, mcnemar, mid_p, score


def answers(n: int, accuracy: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels of n images and a model's answers, right with probability `accuracy`."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 10, n)
    return truth, np.where(rng.random(n) < accuracy, truth, rng.integers(0, 10, n))


def test_the_interval_brackets_the_scores_and_is_seeded():
    truth, pred = answers(2_000, 0.9, seed=1)
    interval = bootstrap_interval(truth, pred, 10)
    (low, high), (f1_low, f1_high) = interval["accuracy"], interval["macro_f1"]
    assert low < (pred == truth).mean() < high and f1_low < f1_score(truth, pred, average="macro") < f1_high
    assert 0.02 < high - low < 0.035  # about 4 standard errors, sqrt(0.9 * 0.1 / 2,000) = 0.0067 each
    assert bootstrap_interval(truth, pred, 10) == interval  # seeded: the same every time
    assert bootstrap_interval(truth, pred, 10, seed=1) != interval
    other_truth, other_pred = answers(2_000, 0.9, seed=2)
    assert bootstrap_interval(other_truth, other_pred, 10)["accuracy"] != interval["accuracy"]


@pytest.mark.parametrize("classes, never_predicted", [(10, None), (3, 2), (7, 0)])
def test_scores_are_scikit_learns_to_the_last_bit(classes, never_predicted):
    """score counts with numpy what scikit-learn's metrics count (they cost every training job 0.7 s of
    start-up): per-class precision, recall, F1 and support (0 for a class never predicted), the confusion
    matrix, and a part's macro-F1 over the classes it holds."""
    rng = np.random.default_rng(classes)
    truth = rng.integers(0, classes, 500)
    pred = np.where(rng.random(500) < 0.7, truth, rng.integers(0, classes, 500))
    if never_predicted is not None:
        pred[pred == never_predicted] = (never_predicted + 1) % classes
    logits = torch.nn.functional.one_hot(torch.from_numpy(pred), classes).float()
    report = score(logits, torch.from_numpy(truth), [f"c{k}" for k in range(classes)],
                   parts=[("first", 200), ("rest", 300)], interval=False)
    precision, recall, f1, support = precision_recall_fscore_support(truth, pred, labels=range(classes),
                                                                     zero_division=0)
    for row, p, r, f, n in zip(report["per_class"], precision, recall, f1, support):
        assert (row["precision"], row["recall"], row["support"]) == (p, r, n)
        assert row["f1"] == pytest.approx(f, abs=1e-15)
    assert report["confusion_matrix"] == [[int(((truth == t) & (pred == q)).sum()) for q in range(classes)]
                                          for t in range(classes)]
    part = slice(0, 200)
    assert report["parts"]["first"]["macro_f1"] == pytest.approx(
        f1_score(truth[part], pred[part], labels=np.unique(truth[part]), average="macro", zero_division=0), abs=1e-15)


@pytest.mark.parametrize("pairs", [1, 10, 77, 1_074, 1_075, 9_000])
def test_the_mid_p_value_is_scipys(pairs):
    for fewer in {0, 1, pairs // 3, pairs // 2}:
        expected = 2 * (binom.cdf(fewer, pairs, 0.5) - binom.pmf(fewer, pairs, 0.5) / 2)
        assert mid_p(fewer, pairs) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_a_training_job_starts_without_scikit_learn_or_scipy_stats():
    script = "import sys, fashion_cnn.jobs.final, fashion_cnn.jobs.budget; print(' '.join(sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert "fashion_cnn.jobs.crossval" in loaded and not {"sklearn", "scipy.stats"} & set(loaded)


def test_mcnemar_by_hand_identical_and_clearly_different_models():
    right = np.random.default_rng(0).random(1_000) < 0.9
    same = mcnemar(right, right)
    assert same == {"difference": 0.0, "only_a": 0, "only_b": 0, "p": 1.0, "noise": True}
    assert format_mcnemar(same).endswith("p = 1: within the noise")

    a, b = np.zeros(10, bool), np.zeros(10, bool)
    a[:3], b[3:] = True, True  # 3 images only a got right, 7 only b
    # mid-p: 2 * (P(X <= 3) - P(X = 3) / 2) for X ~ Binomial(10, 1/2) = 2 * (176 - 60) / 1024
    assert mcnemar(a, b)["p"] == pytest.approx(2 * (176 - 60) / 1024) and mcnemar(a, b)["noise"]

    better = right.copy()
    better[np.flatnonzero(~right)[:40]] = True  # right on 40 more images, wrong on none it had right
    test = mcnemar(right, better)
    assert test["p"] < 1e-6 and not test["noise"] and test["difference"] == pytest.approx(-0.04)
    assert "larger than the noise" in format_mcnemar(test)
    with pytest.raises(ValueError, match="same test images"):
        mcnemar(right, right[:10])


def test_evaluate_prints_and_writes_the_interval(model_file, real_data, tmp_path, capsys):
    out = tmp_path / "evaluation"
    assert main(["evaluate", "--model", str(model_file), "--data-dir", real_data.source, "--out", str(out)]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("test accuracy:"))
    report = json.loads((out / "test_report.json").read_text())
    low, high = (100 * x for x in report["interval"]["accuracy"])
    assert re.fullmatch(rf"test accuracy: {100 * report['accuracy']:.2f}% \(95% CI {low:.1f}-{high:.1f}\), "
                        r"macro-F1 [\d.]+ \(95% CI [\d.]+-[\d.]+\), on 10,000 images", line)
    assert low <= 100 * report["accuracy"] <= high and report["interval"]["resamples"] == 1000


def test_a_score_without_its_interval_is_the_same_score_and_skips_the_bootstrap(monkeypatch):
    """Cross-validation keeps only each fold's macro-F1: the fold's bootstrap (a third of a CPU second on
    10,000 images) was drawn and thrown away."""
    generator = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(500, 10, generator=generator), torch.randint(0, 10, (500,), generator=generator)
    names = [str(k) for k in range(10)]
    full = score(logits, labels, names)
    monkeypatch.setattr("fashion_cnn.evaluation.metrics.bootstrap_interval",
                        lambda *a, **k: pytest.fail("a bootstrap nobody keeps"))
    assert score(logits, labels, names, interval=False) == {k: v for k, v in full.items() if k != "interval"}
