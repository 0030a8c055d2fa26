import csv
import json

import numpy as np
import pytest
from test_cli import reads  # noqa: F401  (the fixture)

from fashion_cnn.app.cli import main
from fashion_cnn.jobs.lrfind import SMOOTHING, lr_find_figure, suggest
from fashion_cnn.jobs.options import LR_FIND_OPTIONS


def range_test(data_dir, out, *extra) -> list[str]:
    return ["lr-find", "--data", str(data_dir), "--out", str(out), "--device", "cpu", "--batch-size", "16", *extra]


def test_the_learning_rate_grows_exponentially_until_the_loss_explodes(tiny_data_dir, tmp_path, capsys):
    assert main(range_test(tiny_data_dir, tmp_path / "runs", "--steps", "40", "--start-lr", "1e-4",
                           "--end-lr", "1000")) == 0
    [run] = (tmp_path / "runs").iterdir()
    assert run.name.endswith("-lr-find") and (run / "lr_find.png").stat().st_size > 10_000
    with open(run / "lr_find.csv") as f:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    lrs = np.array([r["lr"] for r in rows])
    assert lrs[0] == pytest.approx(1e-4) and np.allclose(lrs[1:] / lrs[:-1], (1000 / 1e-4) ** (1 / 39))
    assert len(rows) < 40  # SGD at hundreds does not train: stopped early
    result = json.loads((run / "lr_find.json").read_text())
    assert "explode" in result["stopped"] or "became" in result["stopped"]
    assert (result["suggestion"], result["minimum_lr"], result["steepest_lr"]) == pytest.approx(suggest(rows))
    assert result["rule"] == "one tenth of the learning rate at the smoothed loss's minimum"
    assert f"suggested --lr {result['suggestion']:.3g}" in capsys.readouterr().err


def test_the_suggestion_is_a_tenth_of_the_minimum_and_the_steepest_descent_comes_before_it():
    lrs = np.logspace(-5, 1, 61)
    loss = 2 - np.tanh(np.log10(lrs) + 3) + np.where(lrs > 0.1, 50 * (np.log10(lrs) + 1) ** 2, 0)
    rows = [{"lr": lr, "smoothed_loss": v} for lr, v in zip(lrs, loss)]
    suggestion, minimum, steepest = suggest(rows)
    assert minimum == pytest.approx(0.1, rel=0.3) and suggestion == pytest.approx(minimum / 10)
    assert steepest == pytest.approx(1e-3, rel=0.3)  # where tanh falls fastest


@pytest.mark.parametrize("argv, message", [(["--start-lr", "1", "--end-lr", "0.1"], "--start-lr (1) must be below"),
                                           (["--steps", "5"], "--steps must be at least 10"),
                                           (["--start-lr", "0"], "--start-lr must be a positive number"),
                                           (["--batch-size", "500"], "more than the 200 training images")])
def test_bad_range_test_options(argv, message, tiny_data_dir, tmp_path, capsys):
    assert main(range_test(tiny_data_dir, tmp_path / "runs", *argv)) == 1
    assert message in capsys.readouterr().err and not (tmp_path / "runs").exists()


def test_every_range_test_option_acts(reads, tiny_data_dir, tmp_path):  # noqa: F811
    assert main(range_test(tiny_data_dir, tmp_path / "runs", "--steps", "10")) == 0
    assert set(LR_FIND_OPTIONS) - {"start_lr", "end_lr", "steps"} <= reads  # the range's own: the test above


def test_the_plot_shows_the_raw_loss_and_a_smoothed_curve_that_does_not_lag():
    """A synthetic range test: a loss that falls, has its minimum at 0.1 and then diverges, with noise."""
    lrs = np.logspace(-6, 1, 200)
    clean = 2.3 - 1.5 * (np.log10(lrs) + 6) / 5 + np.where(lrs > 0.1, 5 * (np.log10(lrs) + 1) ** 2, 0)
    loss = clean * (1 + 0.3 * np.random.default_rng(0).standard_normal(200))
    average, rows = 0.0, []
    for i, (lr, value) in enumerate(zip(lrs, loss)):  # the test's own running average, as lr_find keeps it
        average = SMOOTHING * average + (1 - SMOOTHING) * value
        rows.append({"lr": lr, "loss": value, "smoothed_loss": average / (1 - SMOOTHING ** (i + 1))})
    ax = lr_find_figure(rows, *suggest(rows), 0.01).axes[0]
    low, high = ax.get_ylim()
    useful = loss[lrs <= 0.1]  # the raw loss below the divergence: all of it in view
    assert low <= useful.min() and useful.max() <= high
    line = next(line for line in ax.get_lines() if line.get_label() == "smoothed loss")
    x, y = line.get_data()
    assert abs(np.log10(x[np.argmin(y)]) - np.log10(0.1)) < 0.3  # within 0.3 decades of the true minimum
