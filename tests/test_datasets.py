import dataclasses
import gzip
import hashlib
import importlib
import json
import os
import re
import shutil
import struct
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import idx_bytes, make_dataset_dir, tiny_arrays, write_idx_gz
from PIL import Image
from safetensors import safe_open
from sample_images import digits, png_bytes, render_photo, write_digits_folder

from fashion_cnn.app.cli import main
from fashion_cnn.data import folders as datasets
from fashion_cnn.data.fmnist import CLASS_NAMES, DataError, load_fashion_mnist
from fashion_cnn.data.folders import describe, load_dataset
from fashion_cnn.data.images import preprocess, to_float, to_uint8
from fashion_cnn.evaluation.metrics import format_scores
from fashion_cnn.io import load_tensors, save_tensors


@pytest.fixture
def digits_dir(tmp_path) -> Path:
    """200 real handwritten digits, 20 per class, as DIR/<digit>/<index>.png."""
    write_digits_folder(tmp_path / "digits", per_class=20)
    return tmp_path / "digits"


@pytest.fixture
def decodes(monkeypatch) -> list[int]:
    """Counts the images the import decodes."""
    calls = []
    real = datasets.decode_image

    def counting(data, *options):
        calls.append(1)
        return real(data, *options)

    monkeypatch.setattr(datasets, "decode_image", counting)
    return calls


def sides(ds) -> dict[str, str]:
    return {**{f: "train" for f in ds.train_files}, **{f: "test" for f in ds.test_files}}


def content_hashes(root: Path) -> set[str]:
    return {hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.png")}


# --- image folders ---------------------------------------------------------------------------------

def test_image_folder_import(digits_dir):
    ds = load_dataset(str(digits_dir))
    assert ds.class_names == [str(d) for d in range(10)]
    assert ds.train_images.dtype == torch.uint8 and ds.train_images.shape[1:] == (28, 28)
    assert ds.train_labels.dtype == torch.int64 and len(ds.train_labels) == len(ds.train_images)
    assert len(ds.train_images) + len(ds.test_images) == 200
    for files, labels in ((ds.train_files, ds.train_labels), (ds.test_files, ds.test_labels)):
        assert [Path(f).parts[0] for f in files] == [ds.class_names[k] for k in labels]
    train_counts = torch.bincount(ds.train_labels, minlength=10)
    test_counts = torch.bincount(ds.test_labels, minlength=10)
    assert (train_counts + test_counts).tolist() == [20] * 10
    assert test_counts.min() >= 1 and train_counts.min() >= 1  # every class on both sides
    assert 0.1 < len(ds.test_images) / 200 < 0.3  # about the 20% asked for
    assert "image folder, 10 classes" in ds.source and "20% of each class drawn with seed 1" in ds.source
    assert not ds.skipped and not ds.duplicates and set(ds.checksums) == {"train", "test"}
    # The order is a stable shuffle (so --limit takes a sample of every class), not class after class.
    assert len(set(ds.train_labels[:40].tolist())) > 5


def test_split_is_stable(digits_dir, tmp_path):
    first = sides(load_dataset(digits_dir))
    assert sides(load_dataset(digits_dir)) == first  # from the cache
    moved = tmp_path / "elsewhere"
    shutil.copytree(digits_dir, moved)
    assert sides(load_dataset(moved)) == first  # another folder, no cache: the same split

    # Adding files moves no existing file between train and test, and renaming one keeps its side.
    write_digits_folder(digits_dir, per_class=10, first=20)
    name = next(f for f, side in first.items() if side == "test")
    os.rename(digits_dir / name, digits_dir / Path(name).parent / "renamed.png")
    grown = sides(load_dataset(digits_dir))
    assert len(grown) == 300 and grown[str(Path(name).parent / "renamed.png")] == "test"
    assert all(grown[f] == side for f, side in first.items() if f != name)

    assert sides(load_dataset(moved, seed=2)) != first
    half = load_dataset(moved, test_fraction=0.5)
    assert 0.4 < len(half.test_images) / 200 < 0.6
    with pytest.raises(ValueError, match="between 0 and 1"):
        load_dataset(moved, test_fraction=1)


def test_presplit_folders(tmp_path):
    root = tmp_path / "presplit"
    write_digits_folder(root / "train", per_class=12)
    write_digits_folder(root / "test", per_class=3, first=12)
    shutil.rmtree(root / "test" / "9")
    ds = load_dataset(root)
    assert ds.class_names == [str(d) for d in range(10)]
    assert torch.bincount(ds.train_labels).tolist() == [12] * 10
    assert torch.bincount(ds.test_labels, minlength=10).tolist() == [3] * 9 + [0]
    assert all(f.startswith("train/") for f in ds.train_files) and all(f.startswith("test/") for f in ds.test_files)
    assert "split into train/ and test/" in ds.source and "class 9 has no test images" in ds.notes

    write_digits_folder(root / "test" / "extra", per_class=1)  # classes test/extra/<digit>: not in train/
    shutil.move(root / "test" / "extra" / "0", root / "test" / "ten")
    shutil.rmtree(root / "test" / "extra")
    with pytest.raises(DataError, match="classes with no folder in train/: ten"):
        load_dataset(root)
    (root / "val").mkdir()
    with pytest.raises(DataError, match=r"train/ and test/ beside other folders \(val\)"):
        load_dataset(root)


def test_classes_select_and_order_image_folders(digits_dir):
    ds = load_dataset(digits_dir, classes="7, 1")
    assert ds.class_names == ["7", "1"]
    assert [Path(f).parts[0] for f in ds.train_files] == [ds.class_names[k] for k in ds.train_labels]
    assert len(ds.train_images) + len(ds.test_images) == 40
    with pytest.raises(DataError, match="no folder for class x"):
        load_dataset(digits_dir, classes=["1", "x"])
    with pytest.raises(ValueError, match="given twice: 1"):
        load_dataset(digits_dir, classes="1,2,1")
    with pytest.raises(DataError, match="1 class folder; a classifier needs at least 2"):
        load_dataset(digits_dir, classes="1")


def test_import_equals_predict_preprocessing(tmp_path, digits_dir):
    """Each imported image is exactly what `fashion-cnn predict` gives the model for that file."""
    root = tmp_path / "mixed"
    shutil.copytree(digits_dir / "3", root / "digit")
    rng = np.random.default_rng(0)
    items, _ = tiny_arrays(6)
    (root / "photo").mkdir()
    for i, item in enumerate(items):
        (root / "photo" / f"{i}.jpg").write_bytes(render_photo(item, rng))
    rgba = np.dstack([rng.integers(0, 255, (40, 30, 3)), np.full((40, 30), 128)]).astype(np.uint8)
    rgba[10:30, 8:22] = (20, 20, 20, 255)  # an opaque object: noise alone is no picture, and an empty import stops
    Image.fromarray(rgba).save(root / "photo" / "rgba.png")
    (root / "photo" / "light28.png").write_bytes(png_bytes(255 - items[0]))  # 28x28, light border: inverted
    ds = load_dataset(root)
    for files, images in ((ds.train_files, ds.train_images), (ds.test_files, ds.test_images)):
        for f, image in zip(files, images):
            seen = preprocess(root / f)
            assert np.array_equal(image.numpy(), to_uint8(seen)), f
            if f != "photo/light28.png":  # preprocess inverts 28x28 images in float: 1 - k/255, 1 ulp off
                assert np.array_equal(to_float(image[None])[0, 0].numpy(), seen), f
    assert len(ds.train_files) + len(ds.test_files) == 20 + 8


def test_photos_of_fashion_mnist_test_items(real_data, tmp_path):
    """Dark garments on light, noisy JPEG canvases come back as the light-on-dark test items they show."""
    rng = np.random.default_rng(1)
    originals = {}
    for c in (1, 7):  # Trouser, Sneaker
        for i in torch.nonzero(real_data.test_labels == c).flatten()[:5].tolist():
            path = tmp_path / "photos" / CLASS_NAMES[c] / f"{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(render_photo(real_data.test_images[i].numpy(), rng))
            originals[f"{CLASS_NAMES[c]}/{i}.jpg"] = real_data.test_images[i].float().flatten()
    ds = load_dataset(tmp_path / "photos")
    assert ds.class_names == ["Sneaker", "Trouser"]
    for files, images in ((ds.train_files, ds.train_images), (ds.test_files, ds.test_images)):
        for f, image in zip(files, images):
            assert torch.corrcoef(torch.stack([image.float().flatten(), originals[f]]))[0, 1] > 0.8, f


# --- the cache -------------------------------------------------------------------------------------

def test_second_import_decodes_only_new_or_changed_files(digits_dir, decodes):
    first = load_dataset(digits_dir)
    assert len(decodes) == len(content_hashes(digits_dir)) > 190
    [cache_file] = (datasets.cache_dir() / "datasets").iterdir()
    with safe_open(str(cache_file), framework="pt") as f:  # safetensors, nothing to unpickle
        assert f.get_tensor("images").shape[1:] == (28, 28)

    decodes.clear()
    again = load_dataset(digits_dir)
    assert decodes == [] and torch.equal(again.train_images, first.train_images)

    files = sorted(digits_dir.rglob("*.png"))
    files[0].write_bytes(png_bytes(np.eye(12, dtype=np.uint8) * 255))  # changed
    (digits_dir / "4" / "new.png").write_bytes(png_bytes(np.fliplr(np.eye(12, dtype=np.uint8)) * 200))  # new
    os.rename(files[1], files[1].with_name("renamed.png"))  # same content: no decode
    os.utime(files[2], ns=(1, 1))  # touched: read and hashed again, not decoded
    files[3].unlink()
    ds = load_dataset(digits_dir)
    assert len(decodes) == 2
    assert len(ds.train_images) + len(ds.test_images) == 200

    decodes.clear()
    cache_file.write_bytes(b"garbage")  # a broken cache is rebuilt, not fatal
    assert torch.equal(load_dataset(digits_dir).train_images, ds.train_images)
    assert len(decodes) == len(content_hashes(digits_dir))


def edit_cache(edit) -> None:
    """Rewrite the one import cache with edit(tensors, meta) applied, keeping it a valid safetensors file."""
    [cache_file] = (datasets.cache_dir() / "datasets").iterdir()
    tensors, meta = load_tensors(cache_file)
    edit(tensors, meta)
    save_tensors(cache_file, tensors, meta)


@pytest.mark.parametrize("edit, rebuilt", [
    (lambda t, m: t["images"][0].zero_(), 1),  # one entry damaged: that one decoded again
    (lambda t, m: t.update(images=t["images"][:, :14].clone()), "all"),  # another shape: all decoded again
    (lambda t, m: t.update(images=t["images"].to(torch.int16)), "all"),  # another type
    (lambda t, m: (t["images"][0].zero_(), t["checks"].zero_()), "all but bad.png"),  # no image's check matches
    (lambda t, m: m.update(images_check="0"), 0),  # each image checked on its own: all fine
    (lambda t, m: m["bad"].update({h: ["fine", c] for h, (_, c) in m["bad"].items()}), 1),  # a reason edited
])
def test_a_damaged_cache_entry_is_decoded_again_not_used(digits_dir, decodes, edit, rebuilt):
    (digits_dir / "2" / "bad.png").write_bytes(b"not an image")
    first = load_dataset(digits_dir)
    decodes.clear()
    edit_cache(edit)
    again = load_dataset(digits_dir)
    n = len(content_hashes(digits_dir))
    assert len(decodes) == {"all": n, "all but bad.png": n - 1}.get(rebuilt, rebuilt)
    assert torch.equal(again.train_images, first.train_images) and torch.equal(again.test_images, first.test_images)
    assert again.skipped == first.skipped


def same_size_png(image: np.ndarray, size: int) -> bytes:
    """A PNG of image padded after its end to size bytes (which decoders ignore)."""
    data = png_bytes(image)
    assert len(data) <= size
    return data + b"\0" * (size - len(data))


def test_a_file_rewritten_with_its_size_and_mtime_is_read_again(digits_dir, monkeypatch):
    monkeypatch.setattr(datasets, "SETTLE_NS", 0)  # no wait for the clock to move on (see the next test)
    path = sorted((digits_dir / "7").iterdir())[0]
    size, before = path.stat().st_size, path.stat().st_mtime_ns
    path.write_bytes(same_size_png(np.eye(12, dtype=np.uint8) * 255, size + 100))
    os.utime(path, ns=(before, before))
    first = load_dataset(digits_dir)
    path.write_bytes(same_size_png(np.fliplr(np.eye(12, dtype=np.uint8)) * 255, size + 100))  # other content
    os.utime(path, ns=(before, before))  # the same size and mtime: only the ctime tells
    fresh = to_uint8(preprocess(path))
    ds = load_dataset(digits_dir)
    images = dict(zip(ds.train_files + ds.test_files, torch.cat([ds.train_images, ds.test_images])))
    assert np.array_equal(images[f"7/{path.name}"].numpy(), fresh)
    assert not torch.equal(images[f"7/{path.name}"], dict(zip(first.train_files + first.test_files, torch.cat(
        [first.train_images, first.test_images])))[f"7/{path.name}"])


def test_a_file_changed_within_the_clock_tick_of_its_read_is_read_again(digits_dir, monkeypatch):
    reads, real_read, real_scan = [], datasets.read_limited, datasets.scan
    monkeypatch.setattr(datasets, "read_limited", lambda path: reads.append(path) or real_read(path))
    monkeypatch.setattr(datasets, "SETTLE_NS", 60 * 10**9)  # a clock that ticks every minute: however slow the
    ctime = [time.time_ns()]  # import, every file it reads could still change within the tick it was read in

    def scan_one_tick(*args):  # every stamp as that clock gives it
        found, notes = real_scan(*args)
        return [dataclasses.replace(f, stamp=(*f.stamp[:2], ctime[0])) for f in found], notes

    monkeypatch.setattr(datasets, "scan", scan_one_tick)
    load_dataset(digits_dir)
    path = sorted((digits_dir / "7").iterdir())[0]
    size = path.stat().st_size
    path.write_bytes(same_size_png(np.eye(12, dtype=np.uint8) * 255, size))
    reads.clear()
    ds = load_dataset(digits_dir)  # the stamps were too fresh to trust: every file read again
    assert len(reads) == 200 and f"7/{path.name}" in sides(ds)
    images = dict(zip(ds.train_files + ds.test_files, torch.cat([ds.train_images, ds.test_images])))
    assert np.array_equal(images[f"7/{path.name}"].numpy(), to_uint8(preprocess(path)))

    ctime[0] -= 120 * 10**9  # stamps two ticks old, settled: the next import reads them once, then never again
    load_dataset(digits_dir)
    reads.clear()
    load_dataset(digits_dir)
    assert reads == []


# --- bad files, duplicates, untrusted folders ------------------------------------------------------

def test_bad_files_are_reported_and_skipped(digits_dir, decodes, monkeypatch):
    good = (digits_dir / "2").iterdir().__next__().read_bytes()
    (digits_dir / "2" / "empty.png").write_bytes(b"")
    noise = png_bytes(np.random.default_rng(0).integers(0, 256, (30, 30), dtype=np.uint8))
    (digits_dir / "2" / "truncated.png").write_bytes(noise[:len(noise) // 2])
    (digits_dir / "5" / "text.jpg").write_text("not an image")
    (digits_dir / "5" / "big.png").write_bytes(good + b"\0" * 2000)
    monkeypatch.setattr(importlib.import_module("fashion_cnn.data.images"), "MAX_BYTES", 1500)
    ds = load_dataset(digits_dir)
    reasons = dict(ds.skipped)
    assert reasons.keys() == {"2/empty.png", "2/truncated.png", "5/text.jpg", "5/big.png"}
    assert reasons["2/empty.png"] == "empty file (0 bytes)"
    assert reasons["2/truncated.png"].startswith("truncated or corrupt image")
    assert reasons["5/text.jpg"].startswith("not a PNG/JPEG")
    assert reasons["5/big.png"] == "over the 1,500-byte limit"
    assert len(ds.train_images) + len(ds.test_images) == 200
    lines = describe(ds)
    assert "skipped 4 files:" in lines and "  2/empty.png: empty file (0 bytes)" in lines

    decodes.clear()
    assert dict(load_dataset(digits_dir).skipped) == reasons and len(decodes) == 0  # bad files cached too


def test_class_with_only_bad_files_is_an_error(digits_dir):
    for path in (digits_dir / "6").iterdir():
        path.write_bytes(b"broken")
    with pytest.raises(DataError, match=r"no usable image for class 6 \(20 files skipped\)"):
        load_dataset(digits_dir)


def test_duplicates_across_classes_and_splits(tmp_path, digits_dir):
    shutil.copy(digits_dir / "3" / sorted(os.listdir(digits_dir / "3"))[0], digits_dir / "5" / "copy.png")
    ds = load_dataset(digits_dir)
    original = f"3/{sorted(os.listdir(digits_dir / '3'))[0]}"
    assert ds.duplicates == [(original, "5/copy.png")]
    assert "  " + original + ", 5/copy.png" in describe(ds)

    root = tmp_path / "presplit"
    write_digits_folder(root / "train", per_class=3)
    write_digits_folder(root / "test", per_class=2, first=3)
    shutil.copy(root / "train" / "1" / sorted(os.listdir(root / "train" / "1"))[0], root / "test" / "1" / "x.png")
    dup = load_dataset(root).duplicates
    assert len(dup) == 1 and dup[0][0] == "test/1/x.png" and dup[0][1].startswith("train/1/")


def test_untrusted_folders(tmp_path, digits_dir, monkeypatch):
    outside = tmp_path / "outside.png"
    outside.write_bytes((digits_dir / "1" / os.listdir(digits_dir / "1")[0]).read_bytes())
    (digits_dir / "1" / "link.png").symlink_to(outside)
    (digits_dir / "1" / "inside.png").symlink_to(next((digits_dir / "2").iterdir()))
    (digits_dir / "1" / "folder").symlink_to(digits_dir / "2")
    (digits_dir / "1" / ".hidden.png").write_bytes(b"")
    (digits_dir / "1" / ".git").mkdir()
    (digits_dir / "1" / ".git" / "x.png").write_bytes(b"")
    (digits_dir / "1" / "notes.txt").write_text("hi")
    (digits_dir / "1" / "sub").mkdir()
    (digits_dir / "1" / "sub" / "nested.png").write_bytes(next((digits_dir / "3").iterdir()).read_bytes())
    (digits_dir / "stray.png").write_bytes(b"")
    (tmp_path / "other").mkdir()
    write_digits_folder(tmp_path / "other", per_class=1)
    (digits_dir / "linked").symlink_to(tmp_path / "other" / "4")  # a class folder elsewhere
    evil = "ev\nil\x1b[31m"
    shutil.copytree(digits_dir / "9", digits_dir / evil)
    ds = load_dataset(digits_dir)
    assert dict(ds.skipped) == {"1/link.png": "a link to outside the folder, not followed",
                                "1/folder": "a link to a folder, not followed",
                                "linked": "a link to a folder, not followed"}
    assert "linked" not in ds.class_names and len(ds.class_names) == 11
    assert "1/inside.png" in sides(ds) and "1/sub/nested.png" in sides(ds)
    assert len(sides(ds)) == 200 + 20 + 2
    assert any("ignored 1 files not named as images (.txt 1)" in note for note in ds.notes)
    assert "ignored 1 images in ./, outside the class folders" in ds.notes
    assert "ev\\nil\\x1b[31m" in ds.class_names
    assert all(c.isprintable() for line in describe(ds) for c in line)

    monkeypatch.setattr(datasets, "MAX_FILES", 100)
    with pytest.raises(DataError, match="more than 100 image files"):
        load_dataset(digits_dir)


def test_link_loops_and_dangling_links_are_skipped(digits_dir):
    (digits_dir / "1" / "l1.png").symlink_to("l2.png")
    (digits_dir / "1" / "l2.png").symlink_to("l1.png")
    (digits_dir / "2" / "gone.png").symlink_to("nothing.png")
    ds = load_dataset(digits_dir)
    assert dict(ds.skipped) == {"1/l1.png": "a link that loops, not followed",
                                "1/l2.png": "a link that loops, not followed",
                                "2/gone.png": "a link to nothing (No such file or directory)"}
    assert len(sides(ds)) == 200


def test_a_file_replaced_by_a_folder_during_the_import_is_skipped(digits_dir, monkeypatch):
    real_scan = datasets.scan

    def scan_then_swap(*args):  # the race: the file is checked by the scan, then a folder takes its place
        found = real_scan(*args)
        victim = digits_dir / "3" / sorted(os.listdir(digits_dir / "3"))[0]
        victim.unlink()
        victim.mkdir()
        return found

    monkeypatch.setattr(datasets, "scan", scan_then_swap)
    ds = load_dataset(digits_dir)
    assert ds.skipped == [(f"3/{sorted(os.listdir(digits_dir / '3'))[0]}", "a folder, not an image file")]
    assert len(sides(ds)) == 199


# --- IDX folders and Fashion-MNIST ---------------------------------------------------------------

def test_idx_folder_with_class_names(tmp_path):
    root = make_dataset_dir(tmp_path / "idx", n_train=50, n_test=20)
    names = [f"letter {c}" for c in "ABCDEFGHIJ"]
    (root / "classes.txt").write_text("\n".join(names) + "\n\n")
    ds = load_dataset(root)
    expected = load_fashion_mnist(root, download=False, check=False)
    assert torch.equal(ds.train_images, expected.train_images) and torch.equal(ds.test_labels, expected.test_labels)
    assert ds.class_names == names and ds.source == f"{root} (IDX files)"
    raw = gzip.decompress((root / "train-images-idx3-ubyte.gz").read_bytes())
    assert ds.checksums["train-images-idx3-ubyte.gz"] == hashlib.sha256(raw).hexdigest()
    assert load_dataset(root, classes=",".join("abcdefghij")).class_names == list("abcdefghij")
    assert load_dataset(root, classes=list("abcdefghiJ")).class_names[-1] == "J"
    with pytest.raises(DataError, match="label 9 found, but only 3 class names"):
        load_dataset(root, classes="a,b,c")
    (root / "classes.txt").unlink()
    assert load_dataset(root).class_names == [str(k) for k in range(10)]


def test_idx_folder_emnist_names_and_plain_files(tmp_path):
    root = tmp_path / "emnist"
    root.mkdir()
    x, y = tiny_arrays(30)
    for part, (images, labels) in (("train", (x, y % 3)), ("test", (x[:9], y[:9] % 3))):
        write_idx_gz(root / f"emnist-abc-{part}-images-idx3-ubyte.gz", images)
        (root / f"emnist-abc-{part}-labels-idx1-ubyte").write_bytes(idx_bytes(labels))  # not gzipped
    ds = load_dataset(root)
    assert ds.class_names == ["0", "1", "2"] and len(ds.train_images) == 30 and len(ds.test_images) == 9
    write_idx_gz(root / "emnist-xyz-train-images-idx3-ubyte.gz", x)
    with pytest.raises(DataError, match="2 .* train images files; an IDX folder holds one data set"):
        load_dataset(root)


def test_idx_gzip_inflating_past_its_header_is_refused_reading_no_more(tmp_path, capsys):
    root = make_dataset_dir(tmp_path / "idx", n_train=10, n_test=10)
    header = struct.pack(">4I", 0x0803, 10, 28, 28)  # says 10 images; the stream holds 10,000 (7.8 MB)
    (root / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + bytes(10_000 * 28 * 28)))
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="inflates past the 7,856 bytes expected"):
            load_dataset(root)
        assert tracemalloc.get_traced_memory()[1] < 1_000_000  # peak: nothing near the 7.8 MB inflated
    finally:
        tracemalloc.stop()
    assert main(["data", "--data", str(root)]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1

    header = struct.pack(">4I", 0x0803, 2**32 - 1, 28, 28)  # declares 3.4 TB: refused before inflating
    (root / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + bytes(28 * 28)))
    with pytest.raises(DataError, match="its header declares 3,367,254,359,296 bytes, over the 2,147,483,648-byte"):
        load_dataset(root)


def test_fashion_mnist_is_the_default(real_data):
    ds = load_dataset(data_dir=real_data.source)
    assert ds.class_names == list(CLASS_NAMES) and ds.source == real_data.source
    assert ds.checksums == real_data.checksums and torch.equal(ds.train_images, real_data.train_images)
    assert load_dataset("fashion-mnist", data_dir=real_data.source).source == real_data.source
    as_folder = load_dataset(real_data.source)  # the same files as an IDX folder: recognised by checksum
    assert as_folder.class_names == list(CLASS_NAMES) and "IDX files of Fashion-MNIST" in as_folder.source
    assert torch.equal(as_folder.test_labels, real_data.test_labels)


def test_source_errors(tmp_path, digits_dir):
    with pytest.raises(ValueError, match="unknown data set .*'nope'; known: fashion-mnist"):
        load_dataset("nope")
    with pytest.raises(ValueError, match="--classes is for IDX files and image folders"):
        load_dataset("fashion-mnist", classes="a,b")
    with pytest.raises(ValueError, match="give either --data-dir or --data PATH"):
        load_dataset(digits_dir, data_dir=digits_dir)
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="not a folder"):
        load_dataset(tmp_path / "file")


def test_load_fashion_mnist_has_class_names(tiny_data_dir):
    assert load_fashion_mnist(tiny_data_dir, download=False, check=False).class_names == list(CLASS_NAMES)


# --- your images added to Fashion-MNIST --------------------------------------------------------------

def small_dataset(class_names, n_train, n_test, seed=0) -> "datasets.Dataset":
    g = torch.Generator().manual_seed(seed)
    k = len(class_names)
    return datasets.Dataset(
        train_images=torch.randint(0, 256, (n_train, 28, 28), generator=g, dtype=torch.uint8),
        train_labels=torch.arange(n_train) % k, test_images=torch.randint(0, 256, (n_test, 28, 28), generator=g,
                                                                          dtype=torch.uint8),
        test_labels=torch.arange(n_test) % k, source=f"source {seed}", checksums={"train": "t"},
        class_names=list(class_names))


def test_class_names_match_by_their_letters_and_digits():
    assert datasets.class_key("T-shirt/top") == datasets.class_key("tshirt_top") == datasets.class_key("T-Shirt Top")
    assert datasets.class_key("Ankle boot") == datasets.class_key("ankle-boot") != datasets.class_key("boot")
    assert datasets.class_mapping(["bag", "T-shirt-top"], CLASS_NAMES) == [8, 0]
    assert datasets.class_mapping(["bag", "hat"], CLASS_NAMES) is None
    assert datasets.class_mapping(["bag", "BAG"], CLASS_NAMES) is None  # two folders for one class


def test_added_to_relabels_by_name_shuffles_the_training_images_and_keeps_the_test_parts_apart():
    base = small_dataset(CLASS_NAMES, 50, 30)
    own = small_dataset(["Sneaker", "tshirt-top"], 6, 4, seed=1)
    both = datasets.added_to(base, own, "photos")
    assert both.class_names == list(CLASS_NAMES) and both.test_parts == [("Fashion-MNIST", 30), ("photos", 4)]
    assert torch.equal(both.test_images[30:], own.test_images)
    assert both.test_labels[30:].tolist() == [7 if k == 0 else 0 for k in own.test_labels.tolist()]
    assert len(both.train_images) == 56 and not torch.equal(both.train_images[:50], base.train_images)
    for image, label in zip(own.train_images, own.train_labels):  # each photo is there, under its new label
        [row] = [i for i in range(56) if torch.equal(both.train_images[i], image)]
        assert both.train_labels[row] == (7 if label == 0 else 0)
    assert "source 0 + source 1" == both.source and "photos/train" in both.checksums
    with pytest.raises(DataError, match="class folders hat do not each name one class"):
        datasets.added_to(base, small_dataset(["bag", "hat"], 4, 2), "photos")


def test_add_to_needs_a_folder_of_your_own(tmp_path):
    with pytest.raises(ValueError, match="--add-to fashion-mnist adds images of your own to it"):
        load_dataset(None, add_to="fashion-mnist")
    with pytest.raises(ValueError, match="unknown data set to add to 'mnist'"):
        load_dataset(tmp_path, add_to="mnist")


# --- the command -----------------------------------------------------------------------------------

def test_data_command_on_a_folder(digits_dir, tmp_path, capsys):
    (digits_dir / "0" / "bad.png").write_bytes(b"")
    samples = tmp_path / "grid.png"
    assert main(["data", "--data", str(digits_dir), "--classes", "0,8", "--samples", str(samples)]) == 0
    out = capsys.readouterr().out.splitlines()
    ds = load_dataset(digits_dir, classes="0,8")
    n0, n8 = (int(sum(ds.train_labels == k)) for k in (0, 1))
    assert out[0] == f"source: {digits_dir} (image folder, 2 classes; test: 20% of each class drawn with seed 1)"
    assert out[3].split() == ["0", str(n0), str(20 - n0)] and out[4].split() == ["8", str(n8), str(20 - n8)]
    assert "  0/bad.png: empty file (0 bytes)" in out
    assert Image.open(samples).size[1] > 100
    assert main(["data", "--data", str(tmp_path / "missing")]) == 1
    assert "unknown data set" in capsys.readouterr().err


def test_a_split_without_test_images_is_a_warning_in_data_and_refused_by_the_jobs(tmp_path, capsys):
    root, runs = tmp_path / "ones", tmp_path / "runs"
    write_digits_folder(root, per_class=1)  # a class of one image: it trains, none is left to test
    assert main(["data", "--data", str(root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "class 0 has no test images (a class needs 2 different images or more for one to be drawn for the test " \
           "set)" in out
    assert out[-1].startswith("warning: no test images, so a model trained on it could not be tested: give each "
                              "class 2 different images or more")
    for job in ("train", "cv"):
        assert main([job, "--data", str(root), "--epochs", "1", "--out", str(runs), "--device", "cpu"]) == 1
        [line] = capsys.readouterr().err.splitlines()
        assert line.startswith(f"fashion-cnn: error: {root} (image folder, 10 classes; ") and "no test images" in line
    assert not runs.exists()


def test_data_and_evaluate_take_the_jobs_data_options(digits_dir, tmp_path, capsys):
    """--test-fraction reaches the split; evaluate reads its data like the jobs (the same function)."""
    assert main(["data", "--data", str(digits_dir), "--test-fraction", "0.5"]) == 0
    assert "test: 50% of each class drawn with seed 1" in capsys.readouterr().out
    assert main(["train", "--data", str(digits_dir), "--classes", "0,8", "--test-fraction", "0.5", "--epochs", "1",
                 "--out", str(tmp_path / "runs"), "--device", "cpu"]) == 0
    [run] = (tmp_path / "runs").iterdir()
    report = json.loads((run / "test_report.json").read_text())
    assert [row["class"] for row in report["per_class"]] == ["0", "8"]
    capsys.readouterr()
    assert main(["evaluate", "--model", str(run), "--data", str(digits_dir), "--classes", "0,8",
                 "--test-fraction", "0.5"]) == 0
    assert f"test accuracy: {format_scores(report)}" in capsys.readouterr().out  # the same test set, the same line
    assert main(["evaluate", "--model", str(run), "--data", str(digits_dir)]) == 1  # ten classes, not two
    assert "predicts other classes (0, 8)" in capsys.readouterr().err


# --- what preprocessing did: counted, and a blanking import refused -----------------------------------

def test_data_counts_what_preprocessing_did(tmp_path, capsys):
    images, labels = digits(margin=0)  # bare 8x8 digits: most touch the frame
    for k in range(60):
        path = tmp_path / "bare" / str(labels[k]) / f"{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes(images[k] if k % 2 else 255 - images[k]))  # half dark on light
    assert main(["data", "--data", str(tmp_path / "bare")]) == 0
    out = capsys.readouterr().out
    counts = {line.split(":")[0].strip(): int(line.split()[-1]) for line in out.splitlines()
              if line.startswith("  ") and line.split()[-1].isdigit()}
    assert counts["empty"] == counts[f"nearly empty (under {datasets.NEARLY_EMPTY} object pixels)"] == 0
    assert counts["inverted (dark on light)"] == 30 and counts["with the object touching the frame"] > 30


def test_an_import_that_comes_out_empty_is_refused_and_names_the_option_that_keeps_it(digits_dir, capsys, tmp_path,
                                                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    flat = png_bytes(np.zeros((12, 12), np.uint8))  # black: empty however imported
    for k in range(2):  # 2 of 202: 1%, allowed and listed
        (digits_dir / "3" / f"flat{k}.png").write_bytes(flat + bytes([k]))  # distinct files: both count
    assert main(["data", "--data", str(digits_dir)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^  empty: +2$", out, re.M) and "    3/flat0.png, 3/flat1.png" in out
    (digits_dir / "3" / "flat2.png").write_bytes(flat + b"2")  # 3 of 203: refused, however imported
    for command in (["data"], ["cv", "--epochs", "1", "--threads", "1"], ["train", "--epochs", "1", "--threads", "1"]):
        assert main([*command, "--data", str(digits_dir)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "3 of 203 images came out empty" in err and "--framed keeps them" in err
    assert not Path("runs").exists()  # cv and train stopped before making a run directory
    assert main(["data", "--data", str(digits_dir), "--framed"]) == 1  # flat pictures are empty however framed
    assert "remove those that show nothing" in capsys.readouterr().err


def test_framed_imports_keep_each_picture_whole_and_cache_apart(tmp_path, decodes):
    images, labels = digits(per_class=5, margin=0)
    for k, (image, label) in enumerate(zip(images, labels)):
        path = tmp_path / "bare" / str(label) / f"{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes(image))
    framed = load_dataset(tmp_path / "bare", framed=True)
    found = framed.findings["0/0.png"]
    assert found.background == "none" and not found.inverted and found.pixels > 20
    assert load_dataset(tmp_path / "bare").findings["0/0.png"].background != "none"
    assert len(decodes) == 2 * len(images)  # each way decoded once...
    load_dataset(tmp_path / "bare", framed=True), load_dataset(tmp_path / "bare")
    assert len(decodes) == 2 * len(images)  # ...and cached apart
    with pytest.raises(ValueError, match="--framed is for folders of images"):
        load_dataset("fashion-mnist", framed=True)
