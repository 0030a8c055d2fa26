"""The README's Python examples run as written: the Keras-like session on Fashion-MNIST, and the one on a
folder of your own photos (made here from Fashion-MNIST test items) that fine-tunes the shipped model."""

import re
from pathlib import Path

import numpy as np
import pytest

from fashion_cnn.data import CLASS_NAMES
from fashion_cnn.predict import packaged_model
from sample_images import write_photo_folder

README = Path(__file__).resolve().parent.parent / "README.md"


def python_block(section: str, containing: str) -> str:
    """The ```python block of one `## section` of the README that holds `containing`."""
    body = README.read_text().split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return next(b for b in re.findall(r"```python\n(.*?)```", body, re.S) if containing in b)


def test_the_keras_like_session_runs_as_written(real_data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(python_block("Python API", "data = load_dataset()"), str(README), "exec"), {})
    out = capsys.readouterr().out
    assert "test accuracy" in out and "+-" in out
    assert (tmp_path / "curves.png").stat().st_size > 10_000 and (tmp_path / "folds.png").stat().st_size > 5_000
    assert len(list((tmp_path / "runs").iterdir())) == 2  # the train run and the cv run


@pytest.mark.skipif(packaged_model() is None, reason="the example fine-tunes the packaged model")
def test_the_own_photos_example_runs_as_written(real_data, tmp_path, monkeypatch, capsys):
    labels = real_data.test_labels.numpy()
    folders = {"Bag": "bag", "Sneaker": "sneaker", "Trouser": "trouser"}  # photos/<class>/<item>.jpg
    items = np.concatenate([np.flatnonzero(labels == CLASS_NAMES.index(c))[:15] for c in folders])
    write_photo_folder(tmp_path / "photos", real_data.test_images.numpy(), labels,
                       [folders.get(c) for c in CLASS_NAMES], np.sort(items))
    monkeypatch.chdir(tmp_path)
    exec(compile(python_block("Python API", 'data = load_dataset("photos/")'), str(README), "exec"), {})
    out = capsys.readouterr().out
    assert "['bag', 'sneaker', 'trouser']" in out
    assert {p.name.split("-")[-1] for p in (tmp_path / "runs").iterdir()} == {"cv", "train"}
