"""The README's Python API example runs as written, in a folder holding the `photos/` it reads."""

import re
from pathlib import Path

import numpy as np
import pytest

from fashion_cnn.data import CLASS_NAMES
from fashion_cnn.predict import packaged_model
from sample_images import write_photo_folder

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks(section: str) -> list[str]:
    """The ```python blocks of one `## section` of the README, in order."""
    text = README.read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, re.S)


@pytest.mark.skipif(packaged_model() is None, reason="the example fine-tunes the packaged model")
def test_python_api_example_runs_as_written(real_data, tmp_path, monkeypatch, capsys):
    [example] = python_blocks("Python API")
    labels = real_data.test_labels.numpy()
    folders = {"Bag": "bag", "Sneaker": "sneaker", "Trouser": "trouser"}  # photos/<class>/<item>.jpg
    items = np.concatenate([np.flatnonzero(labels == CLASS_NAMES.index(c))[:15] for c in folders])
    write_photo_folder(tmp_path / "photos", real_data.test_images.numpy(), labels,
                       [folders.get(c) for c in CLASS_NAMES], np.sort(items))
    monkeypatch.chdir(tmp_path)
    exec(compile(example, str(README), "exec"), {})
    out = capsys.readouterr().out
    assert "['bag', 'sneaker', 'trouser']" in out
    assert {p.name.split("-")[-1] for p in (tmp_path / "runs").iterdir()} == {"cv", "train"}
