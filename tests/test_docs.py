"""The front door and the documentation site: the README stays short and its links resolve, its quickstart
runs as a user types it, the site builds with `mkdocs build --strict` (broken links, missing images and
undocumentable API names fail it), and the Python API page's examples run as written."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sample_images import render_photo, write_photo_folder

import fashion_cnn
from fashion_cnn.data.fmnist import CLASS_NAMES
from fashion_cnn.models.locate import packaged_model

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
API_PAGE = ROOT / "docs" / "api.md"


def test_the_readme_is_a_front_door_of_at_most_300_lines():
    assert len(README.read_text().splitlines()) <= 300


def test_the_readmes_links_resolve():
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README.read_text())
    local = [t for t in targets if not re.match(r"[a-z]+:", t)]
    assert local, "the README links into the documentation"
    assert [t for t in local if not (ROOT / t).is_file()] == []


def test_the_site_builds_strictly(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    site = tmp_path / "site"
    reference = (site / "reference.html").read_text()
    public = [name for name in fashion_cnn.__all__ if not name.startswith("_")]
    assert [name for name in public if f'id="fashion_cnn.{name}"' not in reference] == []
    # the benchmarks' plots, served from benchmarks/results/, and the README's quickstart in its page
    assert (site / "benchmarks" / "results" / "speed_vs_keras.png").stat().st_size > 10_000
    quickstart = re.sub(r"<[^>]+>", "", (site / "quickstart.html").read_text())  # code is highlighted in spans
    assert quickstart_script() in html.unescape(quickstart)


def quickstart_script() -> str:
    """The README quickstart's ```sh block."""
    section = README.read_text().split("[start:quickstart]", 1)[1].split("[end:quickstart]", 1)[0]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


@pytest.mark.skipif(packaged_model() is None, reason="the quickstart predicts with the packaged model")
def test_the_quickstart_runs_as_written(real_data, tmp_path):
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "activate").is_file():
        pytest.skip("the quickstart activates a virtual environment; this Python runs outside one")
    labels = real_data.test_labels.numpy()
    sneaker = int(np.flatnonzero(labels == CLASS_NAMES.index("Sneaker"))[0])
    (tmp_path / "shoe.jpg").write_bytes(render_photo(real_data.test_images[sneaker].numpy(),
                                                     np.random.default_rng(0)))
    script = quickstart_script()
    assert ".venv/bin/" in script
    # xdg-open stands for the viewer: it notes what the user would see
    viewer = 'xdg-open() { for f in "$@"; do echo "$f" >> opened.txt; done; }\n'
    done = subprocess.run(["bash", "-eo", "pipefail", "-c", viewer + script.replace(".venv/bin/", f"{bin_dir}/")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    [cv] = (tmp_path / "runs").glob("*-cv")
    [train] = (tmp_path / "runs").glob("*-train")
    opened = (tmp_path / "opened.txt").read_text().split()
    assert opened == [f"runs/{cv.name}/learning_curves.png", f"runs/{cv.name}/fold_accuracies.png",
                      f"runs/{train.name}/report.html"]
    for name in opened:
        assert (tmp_path / name).stat().st_size > 10_000
    assert (cv / "report.html").is_file() and (train / "model.safetensors").is_file()
    # the shipped model, then the small one just trained (--model latest)
    [shipped, latest] = [line for line in done.stdout.splitlines() if line.startswith("shoe.jpg: ")]
    assert shipped.startswith("shoe.jpg: Sneaker")
    assert f"runs/{train.name}/model.safetensors" in done.stdout


def python_block(containing: str) -> str:
    """The ```python block of the Python API page that holds `containing`."""
    return next(b for b in re.findall(r"```python\n(.*?)```", API_PAGE.read_text(), re.S) if containing in b)


def test_the_keras_like_session_runs_as_written(real_data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(python_block("data = load_dataset()"), str(API_PAGE), "exec"), {})
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
    exec(compile(python_block('data = load_dataset("photos/")'), str(API_PAGE), "exec"), {})
    out = capsys.readouterr().out
    assert "['bag', 'sneaker', 'trouser']" in out
    assert {p.name.split("-")[-1] for p in (tmp_path / "runs").iterdir()} == {"cv", "train"}
