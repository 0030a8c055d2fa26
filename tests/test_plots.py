import subprocess
import sys

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from fashion_cnn.reporting.plots import (
    confusion_matrix_figure,
    fold_boxplot,
    learning_curves,
    samples_figure,
    save_figure,
)


def rows(epochs: int, validation: bool = True) -> list[dict]:
    out = []
    for e in range(1, epochs + 1):
        row = {"epoch": e, "loss": 1 / e, "accuracy": 1 - 0.5 / e}
        if validation:
            row |= {"val_loss": 1.1 / e, "val_accuracy": 1 - 0.6 / e}
        out.append(row)
    return out


def test_importing_and_plotting_leaves_the_users_matplotlib_alone():
    script = ("import matplotlib; before = matplotlib.get_backend(); "
              "import fashion_cnn.reporting.plots as p; fig = p.learning_curves([{'epoch': 1, 'loss': 1, 'accuracy': 0.5}]); "
              "import matplotlib.pyplot as plt; "
              "print(before == matplotlib.get_backend(), len(plt.get_fignums()))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "0"]  # backend unchanged, and no figure left in pyplot's global list


def test_a_one_epoch_run_draws_points_not_empty_axes(tmp_path):
    fig = learning_curves(rows(1))
    assert isinstance(fig, Figure)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 2 and all(line.get_marker() == "o" for line in lines)
    save_figure(fig, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_epoch_ticks_are_whole_numbers():
    fig = learning_curves(rows(3))
    fig.canvas.draw()
    ticks = [t for t in fig.axes[0].get_xticks() if 1 <= t <= 3]
    assert ticks and all(float(t).is_integer() for t in ticks)


def test_folds_have_their_own_colours_and_a_legend_and_the_best_epoch_is_marked():
    fig = learning_curves({"fold 1": rows(4), "fold 2": rows(4)}, best_epochs={"fold 1": 2, "fold 2": None})
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["fold 1 train", "fold 1 validation", "fold 1 best epoch 2", "fold 2 train", "fold 2 validation"]
    colours = {line.get_label(): line.get_color() for line in ax.get_lines()}
    assert colours["fold 1 train"] != colours["fold 2 train"]
    star = next(line for line in ax.get_lines() if line.get_label() == "fold 1 best epoch 2")
    assert list(star.get_xdata()) == [2] and star.get_ydata()[0] == pytest.approx(1.1 / 2)


def test_fold_boxplot_shows_every_fold_and_the_mean():
    fig = fold_boxplot([0.9, 0.91, 0.92])
    ax = fig.axes[0]
    dots = next(line for line in ax.get_lines() if line.get_marker() == "o" and len(line.get_ydata()) == 3)
    assert np.allclose(sorted(dots.get_ydata()), [90, 91, 92])
    assert ax.get_legend().get_texts()[0].get_text() == "mean 91.00%"


def test_confusion_matrix_and_samples_take_any_class_names():
    fig = confusion_matrix_figure([[3, 1], [0, 4]], ["cat", "dog"])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["cat", "dog"]
    images = torch.randint(0, 255, (6, 28, 28), dtype=torch.uint8)
    fig = samples_figure(images, torch.tensor([0, 1, 2, 0, 1, 2]), ["a", "b", "c"], per_class=2)
    assert len(fig.axes) == 6
