"""The package: `import fashion_cnn` is cheap, and every name it exports is what its docs say, whatever
was imported before."""

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import fashion_cnn

ROOT = Path(__file__).resolve().parents[1]  # the Makefile's folder

CHECK = """
import importlib, pkgutil, sys, types
import fashion_cnn
assert "torch" not in sys.modules, "import fashion_cnn loaded torch"
from fashion_cnn import Predictor
assert "fashion_cnn.training.loop" not in sys.modules and "sklearn" not in sys.modules, "prediction loaded training"
before = {name: getattr(fashion_cnn, name) for name in fashion_cnn.__all__}
for module in pkgutil.walk_packages(fashion_cnn.__path__, "fashion_cnn."):
    if module.name != "fashion_cnn.__main__":
        importlib.import_module(module.name)
for name, value in before.items():
    now = getattr(fashion_cnn, name)
    assert not isinstance(now, types.ModuleType), f"fashion_cnn.{name} is a module"
    assert now is value, f"fashion_cnn.{name} changed when the submodules were imported"
print("ok")
"""


def test_exports_are_cheap_and_never_shadowed_by_submodules():
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300)
    assert done.stdout == "ok\n", done.stderr[-2000:]


def test_every_export_is_documented():
    assert all(getattr(fashion_cnn, name).__doc__ for name in fashion_cnn.__all__ if name != "__version__"
               and not name.isupper())


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_cv_passes_cv_only_options_to_cv_alone(tmp_path):
    """`make cv ARGS=...` runs cv with ARGS, then train with those train takes (a fake CLI records them)."""
    calls = tmp_path / "calls"
    cli = tmp_path / "fashion-cnn"
    cli.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    cli.chmod(0o755)

    def make(*variables: str) -> list[str]:
        calls.unlink(missing_ok=True)
        # under `make test ARGS=...` the outer make's variables arrive in the environment: not this make's
        outer = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "ARGS", "TRAIN_ARGS")
        env = {k: v for k, v in os.environ.items() if k not in outer}
        subprocess.run(["make", "-s", "-o", "setup", "cv", f"CLI={cli}", *variables], cwd=ROOT, check=True,
                       capture_output=True, timeout=60, env=env)
        return calls.read_text().splitlines()

    assert make("ARGS=--folds 3 --epochs 5 --split-seed=4 --val-size 10 --early-stopping 2 --flip") == [
        "data", "cv --folds 3 --epochs 5 --split-seed=4 --val-size 10 --early-stopping 2 --flip",
        "train --epochs 5 --flip"]
    assert make("ARGS=--folds 3", "TRAIN_ARGS=--epochs 2") == ["data", "cv --folds 3", "train --epochs 2"]
    assert make() == ["data", "cv", "train"]


def test_pyproject_builds_without_setuptools_deprecation_warnings():
    """pip install printed setuptools' warning for the license table (three times) before it became an
    SPDX string: the configuration as setuptools reads it, with its warnings kept."""
    setuptools_config = pytest.importorskip("setuptools.config.pyprojecttoml")
    from setuptools.dist import Distribution
    from setuptools.warnings import SetuptoolsDeprecationWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        setuptools_config.apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert not [w for w in caught if issubclass(w.category, SetuptoolsDeprecationWarning)]
