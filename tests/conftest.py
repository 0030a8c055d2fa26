"""Shared fixtures: small IDX files written by the tests, and the real data where it is installed."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from fashion_cnn.data.fmnist import DEBIAN_DIR, FILES, has_all_files


def machine_line() -> str:
    """Which CPU ran the suite, the kernels torch chose for it, and whether the C kernel built: exactness
    is tested per machine."""
    import os

    import torch

    from fashion_cnn.machine import cpu_model
    from fashion_cnn.models.fastpath import native_library

    kernel = "in use" if native_library() else "not in use (torch ops)"
    return (f"machine: {cpu_model()}, {os.cpu_count()} CPUs, torch kernels {torch.backends.cpu.get_cpu_capability()};"
            f" C kernel {kernel}")


def pytest_report_header(config) -> str:
    return machine_line()


def pytest_terminal_summary(terminalreporter) -> None:
    terminalreporter.write_line(machine_line())


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: magic 0x08 0x(ndim), big-endian dimensions, data."""
    magic = 0x0800 | array.ndim
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_idx_gz(path: Path, array: np.ndarray) -> Path:
    path.write_bytes(gzip.compress(idx_bytes(array)))
    return path


def tiny_arrays(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n images whose class is visible (a bright bar at a class-specific row), so models can learn it."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
    for i, c in enumerate(labels):
        images[i, 2 + 2 * c: 4 + 2 * c, 4:24] = 255
    return images, labels


def make_dataset_dir(directory: Path, n_train: int = 200, n_test: int = 100) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    train_x, train_y = tiny_arrays(n_train, 0)
    test_x, test_y = tiny_arrays(n_test, 1)
    for key, array in (("train_images", train_x), ("train_labels", train_y),
                       ("test_images", test_x), ("test_labels", test_y)):
        write_idx_gz(directory / FILES[key].name, array)
    return directory


def run_killed_at(monkeypatch, module, name: str, call: int, job) -> None:
    """Run job() with module.name raising KeyboardInterrupt at its call-th call, as a kill there would:
    for save_checkpoint, the epoch in progress is lost."""
    real, calls = getattr(module, name), []

    def killed(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, killed)
    with pytest.raises(KeyboardInterrupt):
        job()
    monkeypatch.setattr(module, name, real)


@pytest.fixture
def tiny_data_dir(tmp_path) -> Path:
    return make_dataset_dir(tmp_path / "tiny")


@pytest.fixture(scope="session")
def real_data():
    """The real Fashion-MNIST (Debian's copy, which `make test` installs)."""
    if not has_all_files(DEBIAN_DIR):
        pytest.skip("real Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    from fashion_cnn.data.fmnist import load_fashion_mnist

    return load_fashion_mnist(DEBIAN_DIR)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Keep tests away from the user's cache and $FASHION_CNN_DATA."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("FASHION_CNN_DATA", raising=False)


@pytest.fixture(scope="session")
def model_file(tmp_path_factory) -> Path:
    """An untrained baseline saved as a model file: made in milliseconds, and deterministic."""
    import torch

    from fashion_cnn.data.fmnist import CLASS_NAMES
    from fashion_cnn.models.files import save_model
    from fashion_cnn.models.registry import create_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    save_model(path, create_model("baseline"), {"architecture": "baseline", "class_names": list(CLASS_NAMES)})
    return path


def with_calibration(model: Path, out: Path, calibration: dict) -> Path:
    """A copy of a model file whose metadata holds `calibration` (what `fashion-cnn calibrate` adds)."""
    from fashion_cnn.io import load_tensors, save_tensors

    tensors, meta = load_tensors(model)
    save_tensors(out, tensors, {**meta, "calibration": calibration})
    return out


@pytest.fixture(params=["native", "torch"])
def stage(request, monkeypatch) -> str:
    """Run a test with the C kernel for the first stage (conv_pool.c), and again with the torch ops
    that stand in for it where no C compiler is available; on the CPU, which these paths are for, also
    where there is a GPU (--device auto would take it)."""
    from fashion_cnn.models import fastpath
    from fashion_cnn.training import loop as train

    real_resolve = train.resolve_device
    monkeypatch.setattr(train, "resolve_device", lambda name: real_resolve("cpu" if name == "auto" else name))
    if request.param == "torch":
        monkeypatch.setattr(fastpath, "native_library", lambda: None)
    else:  # `make test` installs gcc: here the kernel must build, not silently fall back
        assert fastpath.native_library() is not None, "conv_pool.c did not build: is a C compiler (cc) installed?"
    return request.param


@pytest.fixture
def threads():
    """Sets torch's thread count for a test; restores it after."""
    import torch

    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)
