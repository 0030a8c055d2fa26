"""The package: `import fashion_cnn` is cheap, and every name it exports is what its docs say, whatever
was imported before."""

import subprocess
import sys

import fashion_cnn

CHECK = """
import importlib, pkgutil, sys, types
import fashion_cnn
assert "torch" not in sys.modules, "import fashion_cnn loaded torch"
from fashion_cnn import Predictor
assert "fashion_cnn.train" not in sys.modules and "sklearn" not in sys.modules, "prediction loaded training"
before = {name: getattr(fashion_cnn, name) for name in fashion_cnn.__all__}
for module in pkgutil.iter_modules(fashion_cnn.__path__):
    if module.name != "__main__":
        importlib.import_module("fashion_cnn." + module.name)
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
