import gzip
import hashlib
import http.server
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import idx_bytes, make_dataset_dir, tiny_arrays, write_idx_gz

from fashion_cnn.data import fmnist as data
from fashion_cnn.data.fmnist import DataError, IdxFile, read_idx

# --- the IDX reader ---------------------------------------------------------------------------

def test_reads_good_files(tmp_path):
    images, labels = tiny_arrays(5)
    x = read_idx(write_idx_gz(tmp_path / "x.gz", images), 0x0803, 5)
    y = read_idx(write_idx_gz(tmp_path / "y.gz", labels), 0x0801, 5)
    assert x.shape == (5, 28, 28) and np.array_equal(x, images)
    assert y.shape == (5,) and np.array_equal(y, labels)


def test_truncated_data_names_the_file(tmp_path):
    path = tmp_path / "short.gz"
    path.write_bytes(gzip.compress(idx_bytes(tiny_arrays(5)[0])[:-100]))
    with pytest.raises(DataError, match=r"short\.gz.*truncated"):
        read_idx(path, 0x0803, 5)


def test_wrong_magic(tmp_path):
    path = write_idx_gz(tmp_path / "labels.gz", tiny_arrays(5)[1])
    with pytest.raises(DataError, match=r"labels\.gz: wrong magic number 0x00000801"):
        read_idx(path, 0x0803)


def test_count_mismatch(tmp_path):
    path = write_idx_gz(tmp_path / "x.gz", tiny_arrays(5)[0])
    with pytest.raises(DataError, match="holds 5 items, expected 60000"):
        read_idx(path, 0x0803, 60000)


def test_wrong_image_size(tmp_path):
    path = write_idx_gz(tmp_path / "x.gz", np.zeros((3, 32, 32), np.uint8))
    with pytest.raises(DataError, match="32x32, expected 28x28"):
        read_idx(path, 0x0803)


@pytest.mark.parametrize("damage", ["cut", "garbage"])
def test_corrupt_gzip(tmp_path, damage):
    blob = gzip.compress(idx_bytes(tiny_arrays(5)[0]))
    path = tmp_path / "bad.gz"
    path.write_bytes(blob[: len(blob) // 2] if damage == "cut" else b"not gzip at all" * 10)
    with pytest.raises(DataError, match=r"bad\.gz: corrupt or truncated gzip"):
        read_idx(path, 0x0803)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_idx(tmp_path / "nope.gz", 0x0803)


def test_load_generated_dataset(tiny_data_dir):
    ds = data.load_fashion_mnist(tiny_data_dir, download=False, check=False)
    assert ds.train_images.shape == (200, 28, 28) and ds.train_images.dtype == torch.uint8
    assert ds.test_labels.shape == (100,) and ds.test_labels.dtype == torch.int64
    assert ds.source == str(tiny_data_dir)


def test_checksums_reject_other_content(tiny_data_dir):
    with pytest.raises(DataError, match="SHA-256"):
        data.load_fashion_mnist(tiny_data_dir, download=False)


def test_real_data_counts_and_checksums(real_data):
    assert real_data.train_images.shape == (60000, 28, 28)
    assert real_data.test_images.shape == (10000, 28, 28)
    assert data.class_counts(real_data.train_labels) == [6000] * 10
    assert data.class_counts(real_data.test_labels) == [1000] * 10
    assert real_data.checksums == {spec.name: spec.sha256 for spec in data.FILES.values()}


def test_checksums_verified_on_first_use_only(real_data, monkeypatch):
    calls = []
    original = data.verify
    monkeypatch.setattr(data, "verify", lambda path, spec, label=None: calls.append(path) or original(path, spec))
    data.load_fashion_mnist(real_data.source)
    assert len(calls) == 4
    data.load_fashion_mnist(real_data.source)
    assert len(calls) == 4


# --- where the data comes from ----------------------------------------------------------------

@pytest.fixture
def sources(tmp_path, monkeypatch):
    """Four candidate places, each with a complete dataset, and no Debian copy unless asked."""
    dirs = {name: make_dataset_dir(tmp_path / name, 20, 10) for name in ("explicit", "env", "debian")}
    monkeypatch.setattr(data, "DEBIAN_DIR", dirs["debian"])
    return dirs


def test_source_order(sources, monkeypatch, tmp_path):
    monkeypatch.setenv("FASHION_CNN_DATA", str(sources["env"]))
    assert data.find_data_dir(sources["explicit"], download=False) == sources["explicit"]
    assert data.find_data_dir(None, download=False) == sources["env"]
    monkeypatch.delenv("FASHION_CNN_DATA")
    assert data.find_data_dir(None, download=False) == sources["debian"]
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "absent")
    make_dataset_dir(data.cache_dir(), 20, 10)
    assert data.find_data_dir(None, download=False) == data.cache_dir()


def test_explicit_dir_without_files_is_an_error(sources, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="from --data-dir.*lacks train-images-idx3-ubyte.gz"):
        data.find_data_dir(tmp_path / "empty")


def test_nothing_found_without_download(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "absent")
    with pytest.raises(DataError, match="not found"):
        data.find_data_dir(None, download=False)


# --- downloads, against a server on 127.0.0.1 --------------------------------------------------

class FileServer(http.server.ThreadingHTTPServer):
    """Serves `files` (name -> bytes); names in `cut` promise their full length but send half."""

    def __init__(self, files: dict[str, bytes], cut: set[str] = frozenset()):
        self.files, self.cut, self.requests = files, set(cut), []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(handler):
                name = handler.path.rsplit("/", 1)[-1]
                self.requests.append(name)
                if name not in self.files:
                    handler.send_error(404)
                    return
                body = self.files[name]
                handler.send_response(200)
                handler.send_header("Content-Length", str(len(body)))
                handler.end_headers()
                handler.wfile.write(body[: len(body) // 2] if name in self.cut else body)

            def log_message(handler, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}/"

    def __enter__(self):
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """Tiny dataset files plus a FILES table whose checksums and counts match them."""
    source = make_dataset_dir(tmp_path / "mirror", 20, 10)
    files, specs = {}, {}
    for key, spec in data.FILES.items():
        blob = (source / spec.name).read_bytes()
        files[spec.name] = blob
        count = 20 if key.startswith("train") else 10
        specs[key] = IdxFile(spec.name, spec.magic, count, hashlib.sha256(gzip.decompress(blob)).hexdigest())
    monkeypatch.setattr(data, "FILES", specs)
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "absent")
    return files


def no_partial_files(directory: Path) -> bool:
    return not any(p.name.endswith((".part", ".tmp")) for p in directory.glob(".*"))


def test_download_good_files(mirror):
    with FileServer(mirror) as server:
        ds = data.load_fashion_mnist(url=server.url)
    assert ds.source == str(data.cache_dir())
    assert len(ds.train_images) == 20 and len(ds.test_images) == 10
    assert sorted(server.requests) == sorted(mirror)
    with FileServer(mirror) as server:  # second load: found in the cache, nothing fetched
        data.load_fashion_mnist(url=server.url)
        assert server.requests == []


def test_download_rejects_corrupted_file(mirror):
    name = data.FILES["train_images"].name
    other = gzip.compress(idx_bytes(np.zeros((20, 28, 28), np.uint8)))  # valid IDX, wrong content
    with FileServer(mirror | {name: other}) as server, pytest.raises(DataError, match="SHA-256"):
        data.load_fashion_mnist(url=server.url)
    assert not (data.cache_dir() / name).exists()
    assert no_partial_files(data.cache_dir())


def test_interrupted_download_leaves_no_partial_file(mirror):
    name = data.FILES["test_images"].name
    with FileServer(mirror, cut={name}) as server, pytest.raises(DataError, match=name):
        data.load_fashion_mnist(url=server.url)
    assert not (data.cache_dir() / name).exists()
    assert no_partial_files(data.cache_dir())
    with FileServer(mirror) as server:  # a later attempt completes the set
        assert len(data.load_fashion_mnist(url=server.url).test_images) == 10


# --- hostile files ---------------------------------------------------------------------------------

def gzip_bomb(head: bytes, mib: int) -> bytes:
    """A valid gzip file: head, then mib MiB of zeros from about 1 KB per MiB (concatenated members)."""
    return gzip.compress(head) + gzip.compress(bytes(2**20), compresslevel=9) * mib


def peak_bytes(job) -> tuple[int, str]:
    """The most memory Python allocated while job() ran, and the DataError it must raise."""
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as raised:
            job()
        return tracemalloc.get_traced_memory()[1], str(raised.value)
    finally:
        tracemalloc.stop()


def test_a_gzip_bomb_stops_inflating_at_the_expected_size(tmp_path):
    """A 4.2 MB .gz inflating to 4 GiB was read whole (34 s, 8.7 GB) before the checksum rejected it."""
    spec = data.FILES["train_labels"]
    path = tmp_path / spec.name
    path.write_bytes(gzip_bomb(idx_bytes(np.zeros(60_000, np.uint8)), 256))  # 256 MiB from 260 KB
    assert path.stat().st_size < 300_000
    peak, message = peak_bytes(lambda: data.verify(path, spec))
    assert message == f"{path}: inflates past the 60,008 bytes expected (a gzip bomb?)"
    assert peak < 2_000_000
    # Files of your own (no checksum, any count): the IDX header's dimensions set the limit.
    own = write_idx_gz(tmp_path / "own.gz", np.zeros(5, np.uint8))
    own.write_bytes(gzip_bomb(idx_bytes(np.zeros(5, np.uint8)), 256))
    peak, message = peak_bytes(lambda: read_idx(own, 0x0801))
    assert message == f"{own}: inflates past the 13 bytes expected (a gzip bomb?)" and peak < 2_000_000


def test_the_mirror_is_https():
    assert data.MIRROR_URL.startswith("https://")


def test_a_download_larger_than_the_file_can_be_is_stopped(mirror):
    name = data.FILES["train_labels"].name
    with FileServer(mirror | {name: bytes(100_000)}) as server, pytest.raises(DataError, match="more than the file"):
        data.load_fashion_mnist(url=server.url)
    assert not (data.cache_dir() / name).exists() and no_partial_files(data.cache_dir())
