"""Prediction on image files: decoding every format, preprocessing, consistency with the test set,
bad inputs and bad models, model resolution, CLI output formats and the Python API.

Images are generated here. Format and consistency tests use the untrained `model_file`; behaviour that
needs a real classifier uses a model trained for a few seconds on the real data.
"""

import csv
import importlib
import io
import json
import os
import pickle
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from sample_images import digits, framings, lighting, resized, texture
from scipy import ndimage

from fashion_cnn.app.cli import main
from fashion_cnn.data.fmnist import CLASS_NAMES
from fashion_cnn.data.folders import NEARLY_EMPTY
from fashion_cnn.data.images import (
    ImageError,
    load_image,
    pad_and_resize,
    preprocess,
    preprocess_picture,
    preprocess_views,
)
from fashion_cnn.evaluation.inference import predict_logits
from fashion_cnn.evaluation.predict import Predictor, predict
from fashion_cnn.io import ModelFileError
from fashion_cnn.models.files import load_model, save_model
from fashion_cnn.models.locate import resolve_model_path
from fashion_cnn.models.registry import create_model

predict_module = importlib.import_module("fashion_cnn.evaluation.predict")  # the package's `predict` is the function
images_module = importlib.import_module("fashion_cnn.data.images")  # decoding's limits
locate_module = importlib.import_module("fashion_cnn.models.locate")  # where the shipped model is found


def garment(width: int = 120, height: int = 160) -> Image.Image:
    """A dark, asymmetric shape (a long sleeve on the left only) off-centre on white: any rotation,
    mirroring or inversion changes its 28x28 rendering."""
    pixels = np.full((height, width, 3), 255, np.uint8)
    pixels[30:140, 40:90] = (40, 60, 90)
    pixels[30:50, 10:40] = (40, 60, 90)
    return Image.fromarray(pixels)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def probabilities(model_path: Path, images_uint8: np.ndarray) -> np.ndarray:
    """The model's probabilities computed straight from the arrays, as evaluation does."""
    model, _ = load_model(model_path)
    return torch.softmax(predict_logits(model, torch.from_numpy(images_uint8)), 1).numpy()


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["predict", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return preprocess(encode(garment(), "PNG"))


@pytest.fixture(scope="module")
def trained_model(real_data, tmp_path_factory) -> Path:
    """A baseline trained for a few seconds: good enough (~80% test accuracy) to check behaviour."""
    from fashion_cnn.config import TrainConfig
    from fashion_cnn.jobs.final import train_final

    out = tmp_path_factory.mktemp("runs")
    return train_final(TrainConfig(limit=4000, epochs=2, out=str(out), device="cpu"), data=real_data).model_path


# --- decoding every format -------------------------------------------------------------------------

def as_16bit(image: Image.Image) -> Image.Image:
    return Image.fromarray(np.asarray(image.convert("L")).astype(np.uint16) * 257)


def transparent(image: Image.Image) -> Image.Image:
    """The garment on a transparent background whose hidden colour is black: only compositing onto
    white gives back the white-background picture."""
    rgba = image.convert("RGBA")
    pixels = np.asarray(rgba).copy()
    background = (pixels[..., :3] == 255).all(2)
    pixels[background] = (0, 0, 0, 0)
    return Image.fromarray(pixels)


def gif_first_frame_is_used(image: Image.Image) -> bytes:
    return encode(image, "GIF", save_all=True, append_images=[Image.new("RGB", image.size, "black")])


def exif_rotated(image: Image.Image) -> bytes:
    """Stored turned a quarter left, with EXIF orientation 6 ("rotate 90 clockwise to display")."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image.transpose(Image.Transpose.ROTATE_90), "PNG", exif=exif)


LOSSLESS = {
    "png": lambda im: encode(im, "PNG"),
    "bmp": lambda im: encode(im, "BMP"),
    "tiff": lambda im: encode(im, "TIFF"),
    "webp-lossless": lambda im: encode(im, "WEBP", lossless=True),
    "gif-first-frame": gif_first_frame_is_used,
    "png-16-bit": lambda im: encode(as_16bit(im), "PNG"),
    "tiff-16-bit": lambda im: encode(as_16bit(im), "TIFF"),
    "png-palette": lambda im: encode(im.quantize(4), "PNG"),
    "tiff-cmyk": lambda im: encode(im.convert("CMYK"), "TIFF"),
    "png-rgba-transparent": lambda im: encode(transparent(im), "PNG"),
    "png-palette-transparent": lambda im: encode(transparent(im).quantize(4), "PNG"),
    "png-gray-alpha": lambda im: encode(transparent(im).convert("LA"), "PNG"),
    "png-exif-orientation": exif_rotated,
}
LOSSY = {
    "jpeg": lambda im: encode(im, "JPEG", quality=90),
    "jpeg-cmyk": lambda im: encode(im.convert("CMYK"), "JPEG", quality=90),
    "webp": lambda im: encode(im, "WEBP", quality=90),
}


@pytest.mark.parametrize("fmt", LOSSLESS)
def test_lossless_formats_give_the_same_28x28(fmt, reference, tmp_path):
    path = write(tmp_path / f"garment.{fmt}", LOSSLESS[fmt](garment()))
    assert np.abs(preprocess(path) - reference).max() <= 1 / 255


@pytest.mark.parametrize("fmt", LOSSY)
def test_lossy_formats_give_nearly_the_same_28x28(fmt, reference, tmp_path):
    path = write(tmp_path / f"garment.{fmt}", LOSSY[fmt](garment()))
    assert np.abs(preprocess(path) - reference).mean() < 0.03  # ringing at sharp edges


def test_the_reference_is_a_light_garment_on_black(reference):
    assert reference.shape == (28, 28) and reference.dtype == np.float32
    assert reference[:, 0].max() == 0 and reference.max() == 1  # crop: the sleeve touches the left edge
    assert reference[0].max() == 1 and reference[-1].max() == 1  # the long side spans all 28 pixels
    assert not np.array_equal(reference, reference[:, ::-1])  # asymmetric: orientation tests mean something


# --- preprocessing steps ---------------------------------------------------------------------------

def bar(width: int, height: int, light_object: bool) -> np.ndarray:
    """A 200x50 bar off-centre on a 400x300 canvas; light on black, or dark on white."""
    pixels = np.zeros((height, width), np.uint8)
    pixels[40:90, 180:380] = 255
    return pixels if light_object else 255 - pixels


def bbox(x: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(x > 0.5)
    return rows.min(), rows.max(), cols.min(), cols.max()


def test_dark_on_white_is_inverted_automatically_and_light_on_black_is_not():
    dark_on_white = preprocess(bar(400, 300, light_object=False))
    assert np.array_equal(dark_on_white, preprocess(bar(400, 300, light_object=True)))
    assert dark_on_white.max() == 1 and dark_on_white[0].max() == dark_on_white[-1].max() == 0
    assert preprocess(bar(400, 300, light_object=False), invert=False).max() == 0  # --no-invert: no object


def test_crop_centres_the_object_on_a_square_keeping_its_aspect_ratio():
    top, bottom, left, right = bbox(preprocess(bar(400, 300, light_object=True)))
    assert (left, right) == (0, 27)  # the long side spans the image
    assert 6 <= bottom - top + 1 <= 8  # 50/200 of 28 is 7
    assert abs((top + bottom) / 2 - 13.5) <= 0.5


def test_no_crop_keeps_the_whole_picture():
    top, bottom, left, right = bbox(preprocess(bar(400, 300, light_object=True), crop=False))
    assert 13 <= right - left + 1 <= 15  # 200/400 of 28 is 14
    assert right >= 26  # still on the right, where it was


def test_uneven_lighting_and_tint_do_not_leak_into_the_background():
    x = np.linspace(180, 250, 400)[None, :, None] * np.ones((300, 1, 3))
    x[40:200, 180:300] = (60, 30, 20)
    result = preprocess(x.astype(np.uint8), crop=False)
    assert result.max() == 1
    assert max(result[0].max(), result[-1].max(), result[:, 0].max(), result[:, -1].max()) == 0


def test_28x28_fashion_mnist_images_pass_through_unchanged():
    rng = np.random.default_rng(0)
    item = np.zeros((28, 28), np.uint8)
    item[:, 6:22] = rng.integers(60, 256, (28, 16))  # spans the height: dark left and right borders
    assert np.array_equal(preprocess(item), item.astype(np.float32) / np.float32(255))
    floats = item.astype(np.float32) / 255
    assert np.array_equal(preprocess(floats), floats)
    assert np.allclose(preprocess(255 - item), item / 255, atol=1e-6)  # only inverted


def test_preprocess_is_idempotent_on_its_own_output(reference):
    assert np.array_equal(preprocess(reference), reference)


# --- the main object: not what lies beside it, not its shadow, upright ----------------------------------

def on_sheet(garment_pixels: np.ndarray) -> np.ndarray:
    """A 160x120 RGB picture on a larger white sheet (bottom right), leaving room for other things."""
    sheet = np.full((400, 300, 3), 255, np.uint8)
    sheet[200:360, 150:270] = garment_pixels
    return sheet


def disc(centre: tuple[int, int], radius: float, shape=(400, 300)) -> np.ndarray:
    rows, cols = np.ogrid[:shape[0], :shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2


def coin(sheet: np.ndarray) -> None:
    sheet[disc((60, 60), 15)] = (90, 80, 60)


def button(sheet: np.ndarray) -> None:
    sheet[disc((150, 40), 8)] = (20, 20, 20)
    sheet[disc((150, 37), 2) | disc((150, 43), 2)] = 255


def tag(sheet: np.ndarray) -> None:
    sheet[330:348, 30:70] = (30, 30, 30)  # level with the garment, to its left


@pytest.mark.parametrize("add", [coin, button, tag])
def test_a_small_object_beside_the_garment_is_left_out(add, reference):
    sheet = on_sheet(np.asarray(garment()))
    add(sheet)
    assert np.abs(preprocess(sheet) - reference).max() < 0.05  # only the soft edge's last pixels differ


def runs(profile: np.ndarray) -> int:
    """How many separate stretches of True."""
    return int(np.sum(np.diff(np.concatenate([[0], profile.astype(int)])) == 1))


def test_a_garment_in_separate_parts_stays_whole():
    legs = np.full((400, 300), 255, np.uint8)
    legs[100:300, 100:140] = legs[100:300, 152:192] = 40  # two legs 12 px (6% of their length) apart
    result = preprocess(legs) > 0.5
    assert runs(result[14]) == 2 and result.any(0).sum() >= 9  # one leg alone: 40/200 of 28 is 5.6
    sandal = np.full((400, 300), 255, np.uint8)
    sandal[280:294, 60:240] = 40  # a sole, and two straps 10 px (5.6%) above it
    sandal[255:270, 80:120] = sandal[255:270, 170:215] = 40
    result = preprocess(sandal) > 0.5
    top, bottom, _, _ = bbox(result)
    assert runs(result[:, 7]) == 2 and bottom - top + 1 >= 5  # the sole alone: 14/180 of 28 is 2.2


def test_fashion_mnist_items_in_several_parts_keep_them_all(real_data):
    """Test items that fall apart into parts as photos (a sandal's straps, a sneaker's sole), parts less than
    6% of the item's size apart: each part is still in the 28x28, where the item has it."""
    checked = 0
    for item in real_data.test_images.numpy():
        big = np.asarray(Image.fromarray(item).resize((112, 112), Image.Resampling.BICUBIC), np.float32)
        mask = big > 0.05 * big.max()
        parts, n = ndimage.label(mask, np.ones((3, 3)))
        mass = ndimage.sum(big, parts, np.arange(1, n + 1))
        large = 1 + np.flatnonzero(mass > 0.05 * mass.sum())
        size = max(np.ptp(np.nonzero(mask)[0]), np.ptp(np.nonzero(mask)[1]))
        if len(large) < 2 or any(ndimage.distance_transform_edt(~np.isin(parts, large[large != part]))[
                parts == part].min() > 0.06 * size for part in large):
            continue
        photo = np.full((160, 160), 255, np.uint8)  # dark on white, 4x, with a margin
        photo[24:136, 24:136] = np.round(255 - big.clip(0, 255))
        result = preprocess(photo)
        small = np.asarray(Image.fromarray(parts.astype(np.uint8)).resize((28, 28), Image.Resampling.NEAREST))
        for part in large:
            assert result[small == part].mean() > 0.5 * item[small == part].mean() / 255
        checked += 1
        if checked == 5:
            break
    assert checked == 5


def test_a_soft_shadow_is_left_out(reference):
    silhouette = np.zeros((400, 300))
    silhouette[200:360, 150:270] = np.asarray(garment().convert("L")) < 128
    shadow = ndimage.shift(ndimage.gaussian_filter(silhouette, 6), (10, 12))  # down and right, soft
    sheet = np.full((400, 300, 3), 255.0) * (1 - 0.25 * shadow[..., None])
    sheet[silhouette > 0] = np.asarray(garment())[0 < silhouette[200:360, 150:270]]
    result = preprocess(sheet.astype(np.uint8))
    assert np.abs(np.array(bbox(result)) - bbox(reference)).max() <= 1  # same place and size
    assert result[reference == 0].max() < 0.3


@pytest.mark.parametrize("degrees", [-20, -12, 7, 15])
def test_a_turned_garment_is_set_upright(degrees, reference):
    turned = garment().rotate(degrees, Image.Resampling.BILINEAR, expand=True, fillcolor="white")
    assert np.abs(preprocess(turned) - reference).mean() < 0.03  # about 0.2 left turned


def test_a_turned_garment_is_also_seen_as_it_stands_and_the_surer_view_answers(reference, model_file, monkeypatch):
    turned = garment().rotate(12, Image.Resampling.BILINEAR, expand=True, fillcolor="white")
    upright, as_it_stands = preprocess_views(turned)
    assert np.array_equal(upright, preprocess(turned))
    assert np.abs(as_it_stands - reference).mean() > 2 * np.abs(upright - reference).mean()
    predictor = Predictor(model_file)
    views = predictor.predict_arrays(np.stack([upright, as_it_stands]))
    surer = int(views[1].max() > views[0].max())
    [p] = predictor.predict(turned)
    assert np.array_equal(p.image, (upright, as_it_stands)[surer])
    assert np.array_equal(p.other_view, (upright, as_it_stands)[1 - surer])
    assert np.allclose(p.probabilities, views[surer], atol=1e-6)
    # the views the other way round: the same view answers
    monkeypatch.setattr(predict_module, "preprocess_views", lambda *args, **kwargs: [as_it_stands, upright])
    [q] = predictor.predict(turned)
    assert np.array_equal(q.image, p.image) and np.allclose(q.probabilities, p.probabilities, atol=1e-6)
    monkeypatch.undo()
    # upright already, and 28x28 inputs: one view, the image itself
    assert len(preprocess_views(garment())) == len(preprocess_views(reference)) == 1
    assert predictor.predict(garment())[0].other_view is None


# --- consistency with the test set -----------------------------------------------------------------

def test_test_set_images_saved_as_png_predict_like_the_arrays(real_data, model_file, tmp_path):
    items = real_data.test_images[:50].numpy()
    paths = [write(tmp_path / f"{i}.png", encode(Image.fromarray(item), "PNG")) for i, item in enumerate(items)]
    expected = probabilities(model_file, items)
    got = Predictor(model_file).predict(paths)
    assert np.abs(np.array([p.probabilities for p in got]) - expected).max() < 1e-5
    assert [p.class_index for p in got] == expected.argmax(1).tolist()


def test_a_test_item_photographed_dark_on_white_keeps_its_class(real_data, trained_model):
    """The robustness benchmark in miniature: 40 items as 5x-enlarged, off-centre JPEG photos."""
    items = real_data.test_images[:40].numpy()
    photos = []
    for item in items:
        canvas = np.full((220, 180), 235, np.uint8)
        canvas[60:200, 30:170] = 235 - np.asarray(Image.fromarray(item).resize((140, 140))) * 0.8
        photos.append(encode(Image.fromarray(canvas).convert("RGB"), "JPEG", quality=85))
    direct = probabilities(trained_model, items).argmax(1)
    predictor = Predictor(trained_model)
    agree = np.mean([p.class_index for p in predictor.predict(photos)] == direct)
    assert agree >= 0.85
    not_inverted = np.mean([p.class_index for p in predictor.predict(photos, invert=False)] == direct)
    assert not_inverted < agree


# --- the Python API --------------------------------------------------------------------------------

def test_paths_pil_images_bytes_and_arrays_give_the_same_prediction(model_file, tmp_path):
    image = garment()
    path = write(tmp_path / "garment.png", encode(image, "PNG"))
    results = predict([path, str(path), image, encode(image, "PNG"), np.asarray(image)], model=model_file,
                      top_k=4)
    assert [r.source for r in results[:2]] == [str(path)] * 2 and results[2].source == "<Image 2>"
    for r in results:
        assert r.error is None and r.class_name == CLASS_NAMES[r.class_index]
        assert r.probabilities == pytest.approx(results[0].probabilities, abs=1e-6)
        assert len(r.top_k) == 4 and r.top_k[0] == (r.class_name, max(r.probabilities))
        assert r.probability == max(r.probabilities)  # as the CLI's JSON and the web API name it
        assert sum(r.probabilities) == pytest.approx(1, abs=1e-5) and r.image.shape == (28, 28)


def test_predict_arrays_takes_a_batch(model_file):
    x = np.random.default_rng(0).random((5, 28, 28), dtype=np.float32)
    probs = Predictor(model_file).predict_arrays(x)
    assert probs.shape == (5, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_predict_arrays_scales_uint8_as_training_does(real_data, model_file):
    """uint8, as load_fashion_mnist gives it, is scaled like training data (it once went in as 0-255)."""
    items = real_data.test_images[:20]
    predictor = Predictor(model_file)
    expected = probabilities(model_file, items.numpy())
    scaled = items.numpy().astype(np.float32) / np.float32(255)
    for x in (items.numpy(), items, scaled, torch.from_numpy(scaled), scaled.astype(np.float64)):
        assert np.allclose(predictor.predict_arrays(x), expected, atol=1e-6)


@pytest.mark.parametrize("x, reason", [
    (np.full((2, 28, 28), 255.0, np.float32), "values from 255 to 255"),
    (np.full((2, 28, 28), -0.5), "values from -0.5"),
    (np.full((2, 28, 28), np.nan, np.float32), "NaN"),
    (torch.full((2, 28, 28), float("inf")), "values from inf"),
    (np.zeros((2, 28, 28), np.int64), "int64"),
    (np.zeros((2, 28, 28), np.uint16), "uint16"),
    (np.zeros((2, 28, 28), bool), "bool"),
    (np.full((2, 28, 28), "x"), "<U1"),
    (np.zeros((28, 28), np.uint8), r"shape \(28, 28\): expected \(N, 28, 28\)"),
    (np.zeros((2, 28, 28, 1), np.uint8), r"shape \(2, 28, 28, 1\)"),
    (np.zeros((2, 32, 32), np.float32), r"shape \(2, 32, 32\)"),
])
def test_predict_arrays_refuses_what_the_model_was_not_trained_on(model_file, x, reason):
    with pytest.raises(ValueError, match=reason):
        Predictor(model_file).predict_arrays(x)


def test_predict_takes_arrays_and_tensors_by_the_same_dtype_rule(real_data, model_file):
    item = real_data.test_images[0]
    scaled = item.numpy() / 255.0
    results = predict([item.numpy(), item, scaled, torch.from_numpy(scaled), item.numpy() * 1.0],
                      model=model_file, errors="report")
    assert [r.error for r in results[:4]] == [None] * 4
    for r in results[1:4]:
        assert r.probabilities == pytest.approx(results[0].probabilities, abs=1e-6)
    assert "[0, 1]" in results[4].error  # floats 0-255 are not taken as pixel values


def test_predict_takes_a_batch_array_in_every_layout_and_dtype(real_data, model_file):
    """A Keras user's x_test[:8]: eight predictions, as the eight images one by one give them."""
    predictor = Predictor(model_file)
    x = real_data.test_images[:8].numpy()
    one_by_one = [predictor.predict(image)[0] for image in x]
    scaled = x / np.float32(255)
    for batch in (x, x[..., None], x[:, None], scaled, scaled[..., None], scaled[:, None].astype(np.float64),
                  torch.from_numpy(x)):
        results = predictor.predict(batch)
        assert [r.source for r in results] == [f"<{type(batch).__name__} 0>[{i}]" for i in range(8)]
        assert [r.class_index for r in results] == [r.class_index for r in one_by_one]
        for r, alone in zip(results, one_by_one):
            assert r.probabilities == pytest.approx(alone.probabilities, abs=1e-6)


def test_an_unusable_input_raises_unless_errors_are_reported(real_data, model_file, tmp_path):
    predictor = Predictor(model_file)
    bad = np.zeros((8, 5, 5, 3), np.uint8)
    with pytest.raises(ValueError, match=r"^<ndarray 0>: array of shape \(8, 5, 5, 3\) is neither an image"):
        predictor.predict(bad)
    with pytest.raises(ValueError, match=f"^{tmp_path / 'missing.png'}: no such file$"):
        predictor.predict([real_data.test_images[0].numpy(), tmp_path / "missing.png"])
    with pytest.raises(ValueError, match="errors must be one of raise, report"):
        predictor.predict(bad, errors="ignore")
    good, failed, missing = predictor.predict([real_data.test_images[0].numpy(), bad, tmp_path / "missing.png"],
                                              errors="report")
    assert good.error is None and good.class_name is not None
    assert "(8, 5, 5, 3)" in failed.error and failed.class_name is None and failed.probability is None
    assert missing.error == "no such file"


def test_bad_arrays_are_rejected_clearly():
    for array, reason in ((np.zeros((5, 28, 28)), "shape"), (np.full((28, 28), 2.0), "[0, 1]"),
                          (np.zeros((28, 28), np.int64), "int64")):
        with pytest.raises(ImageError, match=reason):
            load_image(array)


# --- bad input -------------------------------------------------------------------------------------

def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's header)."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


BAD_FILES = {
    "missing.png": (None, "no such file"),
    "notes.png": (b"just some text, not an image\n", "not a PNG/JPEG"),
    "truncated.png": (encode(garment(), "PNG")[:300], "truncated or corrupt"),
    "empty.jpg": (b"", "empty file"),
    "bomb.png": (png_claiming_size(10_000, 5_000), "over the 40,000,000-pixel limit"),
    "huge-bomb.png": (png_claiming_size(60_000, 60_000), "over the 40,000,000-pixel limit"),
}


def write_bad_files(folder: Path) -> list[Path]:
    """BAD_FILES in folder (all but the missing one), then a folder without images: their paths, in order."""
    for name, (data, _) in BAD_FILES.items():
        if data is not None:
            write(folder / name, data)
    (folder / "no-images").mkdir()
    (folder / "no-images" / "readme.txt").write_text("nothing to see")
    return [folder / name for name in BAD_FILES] + [folder / "no-images"]


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")  # as predict.py sets; pytest resets it
def test_each_bad_file_gets_one_error_line_and_the_others_are_still_predicted(model_file, tmp_path, capsys):
    good = write(tmp_path / "good.png", encode(garment(), "PNG"))
    inputs = write_bad_files(tmp_path) + [good]
    code, out, err = run_cli(capsys, *inputs, "--model", model_file)
    assert code == 1
    assert f"{good}: " in out and out.count("\n") == 2  # the model line and one prediction
    lines = err.splitlines()
    assert len(lines) == len(inputs) - 1
    for line, (name, (_, reason)) in zip(lines, BAD_FILES.items()):
        assert line.startswith(f"fashion-cnn: error: {tmp_path / name}: ") and reason in line
    assert lines[-1].startswith(f"fashion-cnn: error: {tmp_path / 'no-images'}: a folder with no image files")


def test_the_pixel_limit_is_an_error_not_a_warning(tmp_path):
    bomb = write(tmp_path / "bomb.png", png_claiming_size(8_000, 6_000))  # 48 MP: Pillow would only warn
    check = ("from fashion_cnn.data.images import ImageError, load_image\n"
             "try:\n    load_image(__import__('sys').argv[1])\nexcept ImageError as e:\n    print(e)")
    # a fresh interpreter: pytest's own warning capture would mask what users see
    done = subprocess.run([sys.executable, "-c", check, str(bomb)], capture_output=True, text=True)
    assert done.stdout.strip() == f"{bomb}: over the 40,000,000-pixel limit (decompression bomb?)"
    assert done.stderr == ""
    with pytest.raises(ImageError, match="120x160 pixels, over the 1,000-pixel limit"):
        load_image(encode(garment(), "PNG"), max_pixels=1000)


def test_files_over_the_size_limit_are_refused_unread(monkeypatch, tmp_path):
    monkeypatch.setattr(images_module, "MAX_BYTES", 1000)
    noise = np.random.default_rng(0).integers(0, 256, (100, 100), dtype=np.uint8)
    path = write(tmp_path / "big.png", encode(Image.fromarray(noise), "PNG"))
    with pytest.raises(ImageError, match=f"^{path}: over the 1,000-byte limit$"):
        load_image(path)


def test_folders_expand_to_their_images_sorted(model_file, tmp_path, capsys):
    for name in ("b.png", "a.jpg", "c.txt"):
        write(tmp_path / name, encode(garment(), "JPEG" if name.endswith("jpg") else "PNG"))
    code, out, _ = run_cli(capsys, tmp_path, "--model", model_file)
    assert code == 0
    assert [line.split(":")[0] for line in out.splitlines()[1:]] == [str(tmp_path / "a.jpg"),
                                                                    str(tmp_path / "b.png")]


# --- bad models ------------------------------------------------------------------------------------

class WritesAFile:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ["MARKER"]),))


def bad_model_files(directory: Path) -> dict[str, tuple[Path, str]]:
    corrupt = write(directory / "corrupt.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    not_ours = directory / "not-ours.safetensors"
    save_file({"weight": torch.zeros(3)}, str(not_ours))
    unknown = directory / "unknown.safetensors"
    save_model(unknown, create_model("baseline"), {"architecture": "resnet9000", "class_names": list(CLASS_NAMES)})
    pickled = write(directory / "pickled.safetensors", pickle.dumps(WritesAFile()))
    return {"missing": (directory / "missing.safetensors", "no such file"),
            "corrupt": (corrupt, "not a readable safetensors file"),
            "not ours": (not_ours, "not a fashion-cnn file"),
            "unknown architecture": (unknown, "unknown architecture 'resnet9000'"),
            "a pickle": (pickled, "not a readable safetensors file")}


def test_bad_model_files_are_refused_clearly_and_never_run_code(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MARKER", str(tmp_path / "code-ran"))
    image = write(tmp_path / "garment.png", encode(garment(), "PNG"))
    for path, reason in bad_model_files(tmp_path).values():
        with pytest.raises(ModelFileError, match=reason):
            Predictor(path)
        code, out, err = run_cli(capsys, image, "--model", path)
        assert code == 1 and out == ""
        assert err.startswith(f"fashion-cnn: error: {path}: ") and reason in err and err.count("\n") == 1
    assert not (tmp_path / "code-ran").exists()


# --- which model -----------------------------------------------------------------------------------

def copy_run(run_dir: str, model_file: Path, age: float = 0, **meta) -> Path:
    """runs/<name>/model.safetensors: model_file's weights, `age` seconds old, with metadata changed."""
    path = Path(run_dir, "model.safetensors")
    model, saved = load_model(model_file)
    save_model(path, model, {**saved, **meta})
    os.utime(path, (1e9 - age, 1e9 - age))
    return path


@pytest.fixture
def shipped(model_file, tmp_path, monkeypatch) -> Path:
    """A stand-in for the model shipped with the package, with its own name."""
    path = tmp_path / "shipped" / "default.safetensors"
    path.parent.mkdir()
    path.write_bytes(model_file.read_bytes())
    monkeypatch.setattr(locate_module, "packaged_model", lambda: path)
    return path


def test_a_new_run_never_replaces_the_shipped_model(model_file, shipped, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    old, new = copy_run("runs/old-train", model_file, age=100), copy_run("runs/new-train", model_file)
    assert resolve_model_path() == shipped
    assert resolve_model_path("latest") == Path("runs/new-train/model.safetensors") == new
    assert resolve_model_path("runs/old-train") == old and resolve_model_path(old) == old
    write(tmp_path / "garment.png", encode(garment(), "PNG"))
    code, out, _ = run_cli(capsys, "garment.png")
    assert code == 0 and out.startswith(f"model: {shipped} (baseline")
    code, out, _ = run_cli(capsys, "garment.png", "--model", "latest")
    assert code == 0 and out.startswith("model: runs/new-train/model.safetensors (baseline")


def test_latest_looks_only_under_the_runs_root(model_file, shipped, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    copy_run("elsewhere/x-train", model_file)
    with pytest.raises(ModelFileError, match="--model latest: no trained model under runs/"):
        resolve_model_path("latest")
    assert resolve_model_path("latest", runs_root="elsewhere") == Path("elsewhere/x-train/model.safetensors")


def test_a_run_of_an_unregistered_architecture_leaves_plain_predict_working(model_file, shipped, tmp_path,
                                                                          monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    copy_run("runs/mine-train", model_file, architecture="my-own-net")
    write(tmp_path / "garment.png", encode(garment(), "PNG"))
    code, out, _ = run_cli(capsys, "garment.png")
    assert code == 0 and out.startswith(f"model: {shipped}")
    code, _, err = run_cli(capsys, "garment.png", "--model", "latest")
    assert code == 1 and "runs/mine-train/model.safetensors: unknown architecture 'my-own-net'" in err


def test_a_missing_shipped_model_is_explained(monkeypatch):
    monkeypatch.setattr(locate_module, "packaged_model", lambda: None)
    with pytest.raises(ModelFileError, match="shipped with the package is missing.*--model"):
        resolve_model_path()


def test_the_package_ships_its_model():
    packaged = locate_module.packaged_model()
    assert packaged is not None and packaged.name == "default.safetensors"
    assert resolve_model_path() == packaged


def test_every_model_option_states_the_rule(capsys):
    for command in ("predict", "serve", "evaluate", "export"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        help_text = " ".join(capsys.readouterr().out.split())
        assert "--model PATH|RUN_DIR|latest" in help_text and "newest model under ./runs/" in help_text
        assert "default: the model shipped with the package" in help_text


# --- output ----------------------------------------------------------------------------------------

def test_json_output_is_one_document_with_errors_inline(model_file, tmp_path, capsys):
    good = write(tmp_path / "good.png", encode(garment(), "PNG"))
    code, out, err = run_cli(capsys, good, tmp_path / "missing.png", "--model", model_file, "--json",
                             "--top-k", "2")
    doc = json.loads(out)
    assert code == 1 and "missing.png: no such file" in err
    assert doc["model"]["path"] == str(model_file) and doc["model"]["architecture"] == "baseline"
    ok, bad = doc["predictions"]
    assert ok["source"] == str(good) and ok["error"] is None and ok["class_name"] in CLASS_NAMES
    assert [t["class_name"] for t in ok["top_k"]][0] == ok["class_name"] and len(ok["top_k"]) == 2
    assert list(ok["probabilities"]) == list(CLASS_NAMES) and sum(ok["probabilities"].values()) == pytest.approx(1)
    assert bad["error"] == "no such file" and bad["class_name"] is None


def test_csv_output_has_a_row_per_image_and_a_column_per_class(model_file, tmp_path, capsys):
    good = write(tmp_path / "good.png", encode(garment(), "PNG"))
    code, out, _ = run_cli(capsys, good, tmp_path / "missing.png", "--model", model_file, "--csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 1 and len(rows) == 2
    assert rows[0]["source"] == str(good) and rows[0]["class_name"] in CLASS_NAMES and rows[0]["error"] == ""
    assert sum(float(rows[0][name]) for name in CLASS_NAMES) == pytest.approx(1, abs=1e-4)
    assert rows[1]["error"] == "no such file" and rows[1]["class_name"] == ""


def test_text_output_and_save_preprocessed(model_file, tmp_path, capsys):
    good = write(tmp_path / "shoe.jpg", encode(garment(), "JPEG"))
    saved = tmp_path / "seen"
    code, out, _ = run_cli(capsys, good, "--model", model_file, "--save-preprocessed", saved)
    [result] = Predictor(model_file).predict(good)
    assert code == 0
    ranked = ", ".join(f"{name} {p:.2f}" for name, p in result.top_k)
    assert out.splitlines()[1] == f"{good}: {result.class_name} ({result.top_k[0][1]:.2f})  [{ranked}]"
    [png] = saved.iterdir()
    assert png.name == "0000-shoe.png"
    seen = np.asarray(Image.open(png))
    assert seen.shape == (28, 28) and np.array_equal(seen, np.round(result.image * 255))
    [again] = Predictor(model_file).predict(png)  # the saved image is exactly what the model saw
    assert again.probabilities == pytest.approx(result.probabilities, abs=1e-6)

    turned = write(tmp_path / "turned.png", encode(garment().rotate(12, expand=True, fillcolor="white"), "PNG"))
    run_cli(capsys, turned, "--model", model_file, "--save-preprocessed", tmp_path / "both")
    [p] = Predictor(model_file).predict(turned)
    assert sorted(f.name for f in (tmp_path / "both").iterdir()) == ["0000-turned-other-view.png", "0000-turned.png"]
    for name, view in (("0000-turned.png", p.image), ("0000-turned-other-view.png", p.other_view)):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "both" / name)), np.round(view * 255))


def test_save_preprocessed_replaces_earlier_files_only_with_force(model_file, tmp_path, capsys):
    """A second `--save-preprocessed` into the same folder overwrote the first one's pictures in silence."""
    turned = write(tmp_path / "turned.png", encode(garment().rotate(12, expand=True, fillcolor="white"), "PNG"))
    saved = tmp_path / "seen"
    saved.mkdir()
    (saved / "0000-turned-other-view.png").write_bytes(b"keep me")
    code, out, err = run_cli(capsys, turned, "--model", model_file, "--save-preprocessed", saved)
    assert code == 1 and out == "" and err.count("\n") == 1, err  # refused before any answer is printed
    assert err == f"fashion-cnn: error: {saved / '0000-turned-other-view.png'}: already exists; --force replaces it\n"
    assert [p.name for p in saved.iterdir()] == ["0000-turned-other-view.png"]  # none written, none replaced
    assert (saved / "0000-turned-other-view.png").read_bytes() == b"keep me"

    code, out, err = run_cli(capsys, turned, "--model", model_file, "--save-preprocessed", saved, "--force")
    assert code == 0 and "2 preprocessed images saved" in err
    assert Image.open(saved / "0000-turned-other-view.png").size == (28, 28)
    own = write(saved / "0001-b.png", turned.read_bytes())  # the second input's picture would replace the first
    other = write(tmp_path / "b.png", turned.read_bytes())
    code, out, err = run_cli(capsys, own, other, "--model", model_file, "--save-preprocessed", saved, "--force")
    assert code == 1 and f"{own}: is the input {own}" in err and own.read_bytes() == turned.read_bytes()


def test_no_invert_no_crop_and_framed_reach_the_preprocessing(model_file, tmp_path, capsys):
    path = write(tmp_path / "bar.png", encode(Image.fromarray(bar(400, 300, light_object=False)), "PNG"))
    for flags, expected in (((), preprocess(path)), (("--no-invert",), preprocess(path, invert=False)),
                            (("--no-crop",), preprocess(path, crop=False)),
                            (("--framed",), preprocess_views(path, framed=True)[0])):
        saved = tmp_path / "-".join(flags or ("default",))
        run_cli(capsys, path, "--model", model_file, "--save-preprocessed", saved, *flags)
        assert np.array_equal(np.asarray(Image.open(next(saved.iterdir()))), np.round(expected * 255))


# --- hostile input -----------------------------------------------------------------------------------

def float_tiff(pixels: np.ndarray, compression: str = "tiff_adobe_deflate") -> bytes:
    return encode(Image.fromarray(pixels.astype(np.float32)), "TIFF", compression=compression)


def run_with_memory_cap(code: str, *args: str, cap_mb: int = 700) -> subprocess.CompletedProcess:
    """code in a fresh interpreter whose address space may grow by only cap_mb after its imports: an
    allocation past that is a MemoryError there, not gigabytes taken from this machine."""
    capped = ("import resource, sys\nfrom fashion_cnn.data.images import ImageError, preprocess\n"
              "size = int(open('/proc/self/status').read().split('VmSize:')[1].split()[0]) * 1024\n"
              f"resource.setrlimit(resource.RLIMIT_AS, (size + {cap_mb} * 2**20, resource.RLIM_INFINITY))\n"
              + code)
    return subprocess.run([sys.executable, "-c", capped, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmSize from /proc")
def test_float_and_16_bit_images_are_shrunk_before_anything_large_is_allocated(tmp_path):
    """A 186 KB float TIFF of 40000x1000 pixels took ~7 GB (no early shrink for float images; the square
    pad allocated side x side floats); every mode now shrinks first."""
    wide = np.zeros((1000, 40_000), np.float32)
    wide[100:900, 20_000:22_000] = 0.8
    tall16 = (wide.T * 65535).astype(np.uint16)
    files = {"float.tif": float_tiff(wide), "16-bit.png": encode(Image.fromarray(tall16), "PNG"),
             "16-bit.tif": encode(Image.fromarray(tall16), "TIFF", compression="tiff_adobe_deflate")}
    for name, data in files.items():
        assert len(data) < 400_000
        write(tmp_path / name, data)
    done = run_with_memory_cap("for path in sys.argv[1:]:\n    for crop in (True, False):\n"
                               "        x = preprocess(path, crop=crop)\n        print(x.shape, x.max() > 0)",
                               *(str(tmp_path / n) for n in files))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["(28, 28) True"] * 2 * len(files)


def test_sizes_are_checked_before_decoding(tmp_path):
    """A 3 KB float TIFF 131,100 pixels wide asked for a 64 GiB array; a 1x3000 PNG shrank to 0 pixels."""
    strip = float_tiff(np.zeros((28, 131_100), np.float32))
    assert len(strip) < 20_000
    for data, size in ((strip, "131100x28"), (encode(Image.new("L", (1, 3000), 255), "PNG"), "1x3000")):
        with pytest.raises(ImageError, match=f"^{size} pixels: one side over 50 times the other"):
            preprocess(data)
    assert preprocess(encode(Image.new("L", (50, 1), 255), "PNG")).shape == (28, 28)  # at the limit
    assert preprocess(np.full((1, 1), 200, np.uint8)).shape == (28, 28)


def test_float_tiffs_in_0_255_are_scaled_and_others_refused(reference):
    gray = np.asarray(garment().convert("L")).astype(np.float32)
    assert np.abs(preprocess(float_tiff(gray)) - reference).max() <= 1 / 255
    assert np.abs(preprocess(float_tiff(gray / 255)) - reference).max() <= 1 / 255
    item = np.zeros((28, 28), np.float32)
    item[4:24, 8:20] = 200  # a Fashion-MNIST-like item saved as float 0..255 passes through, scaled
    assert np.array_equal(preprocess(float_tiff(item)), item / np.float32(255))
    with pytest.raises(ImageError, match="float pixels from -3 to 1000: expected"):
        preprocess(float_tiff(np.where(gray > 100, 1000, -3)))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_pixels_are_refused_and_json_never_holds_nan(value, model_file, tmp_path, capsys):
    gray = np.asarray(garment().convert("L")).astype(np.float32) / 255
    gray[50, 60] = value
    bad, good = write(tmp_path / "nan.tif", float_tiff(gray)), write(tmp_path / "good.png", encode(garment(), "PNG"))
    code, out, err = run_cli(capsys, bad, good, "--model", model_file, "--json")
    assert code == 1 and err.endswith(f"\nfashion-cnn: error: {bad}: float pixels that are NaN or infinite\n")
    doc = json.loads(out, parse_constant=lambda name: pytest.fail(f"{name} in the JSON output"))
    assert doc["predictions"][1]["error"] is None and doc["predictions"][1]["class_name"]


def test_non_finite_probabilities_are_an_error_not_a_result(model_file, tmp_path, monkeypatch, capsys):
    """A broken model (NaN weights) gave NaN probabilities, and `--json` printed NaN, which is not JSON."""
    good = write(tmp_path / "good.png", encode(garment(), "PNG"))
    monkeypatch.setattr(predict_module, "predict_logits", lambda model, x: torch.full((len(x), 10), torch.nan))
    with pytest.raises(ValueError, match=f"^{good}: the model gave non-finite probabilities"):
        Predictor(model_file).predict(good)
    [p] = Predictor(model_file).predict(good, errors="report")
    assert p.error == "the model gave non-finite probabilities (a broken model file?)" and p.class_name is None
    code, out, err = run_cli(capsys, good, "--model", model_file, "--json")
    doc = json.loads(out, parse_constant=lambda name: pytest.fail(f"{name} in the JSON output"))
    assert code == 1 and doc["predictions"][0]["probabilities"] == {} and "non-finite" in err


def test_a_fifo_is_refused_not_waited_for(model_file, tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    good = write(tmp_path / "good.png", encode(garment(), "PNG"))
    done = subprocess.run([sys.executable, "-m", "fashion_cnn", "predict", str(fifo), str(good),
                           "--model", str(model_file)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and f"{good}: " in done.stdout
    assert done.stderr == f"fashion-cnn: error: {fifo}: not a regular file (a FIFO, device or socket)\n"


def test_control_characters_in_file_names_cannot_forge_output_lines(model_file, tmp_path, capsys):
    forged = write(tmp_path / "x.png\nshirt.png: Trouser (0.99)  [Trouser 0.99].png", encode(garment(), "PNG"))
    missing = tmp_path / "gone\n\x1b[2Jfashion-cnn: all good.png"
    code, out, err = run_cli(capsys, forged, missing, "--model", model_file)
    assert code == 1 and len(out.splitlines()) == 2 and len(err.splitlines()) == 1
    assert out.splitlines()[1].startswith(f"{tmp_path}/x.png\\nshirt.png: Trouser (0.99)  [Trouser 0.99].png: ")
    assert err == f"fashion-cnn: error: {tmp_path}/gone\\n\\x1b[2Jfashion-cnn: all good.png: no such file\n"


def test_a_closed_pipe_ends_predict_quietly(model_file, tmp_path):
    """`predict ... | head -1` ended in a BrokenPipeError traceback."""
    images = [str(write(tmp_path / f"{i}.png", encode(garment(), "PNG"))) for i in range(3)]
    reader, writer = os.pipe()
    os.close(reader)  # the reader is gone before anything is written, as `head` may be
    done = subprocess.run([sys.executable, "-m", "fashion_cnn", "predict", *images, "--model", str(model_file)],
                          stdout=writer, stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(writer)
    assert done.stderr == "" and done.returncode == 141  # as the shell reports a tool killed by SIGPIPE


# --- pictures that fill their frame: never blanked -------------------------------------------------

def object_pixels(image) -> int:
    _, found = preprocess_picture(image)
    return found.pixels


@pytest.mark.parametrize("side", [8, 16, 28, 48, 96])
def test_digits_that_fill_their_frame_are_never_blanked(side):
    images, labels = digits(margin=0)
    touching = np.maximum(images[:, [0, -1]].max((1, 2)), images[:, :, [0, -1]].max((1, 2))) > 0
    chosen = np.concatenate([np.flatnonzero(touching & (labels == d))[:4] for d in range(10)])
    for margin in (0, 2):
        for image in images[chosen]:
            framed = resized(np.pad(image, margin), side + 2 * margin * side // 8)
            # as many object pixels as a Fashion-MNIST item has at least, light on dark and dark on light
            assert object_pixels(framed) >= NEARLY_EMPTY and object_pixels(255 - framed) >= NEARLY_EMPTY


def test_a_digit_touching_the_frame_comes_out_as_with_a_margin():
    images, _ = digits(per_class=4, margin=0)  # their strokes on one edge would tilt a background plane
    for image in images:
        assert np.array_equal(preprocess(image), preprocess(np.pad(image, 2)))


def test_fashion_mnist_items_framed_in_every_way_are_never_blanked(real_data):
    items = real_data.train_images[:100].numpy()  # training items: the test set chooses nothing
    for kind, images in zip(framings(items[0]), zip(*(framings(item).values() for item in items))):
        fewest = min(object_pixels(image) for image in images)
        assert fewest >= NEARLY_EMPTY, kind


def test_a_picture_with_nothing_in_it_stays_empty():
    rng = np.random.default_rng(0)
    flat = [np.full(shape, level, np.uint8) for shape in ((8, 8), (28, 40), (300, 400)) for level in (0, 128, 255)]
    walls = [wall_photo(seed) for seed in range(3)]
    for seed in range(3):  # textured and unevenly lit, as benchmarks/predict_clutter.py renders backgrounds
        wall = rng.uniform(150, 250) + rng.normal(0, 3, (300, 400))
        wall = wall + texture(rng, wall.shape) if seed % 2 else wall * lighting(rng, wall.shape)
        walls.append(encode(Image.fromarray(np.clip(wall, 0, 255).astype(np.uint8)), "JPEG"))
    for picture in flat + walls:
        views, found = preprocess_picture(picture)
        assert views[0].max() == 0 and found.pixels == 0


def test_framed_pictures_are_only_inverted_and_resized():
    images, _ = digits(per_class=1, margin=0)
    for image in images:  # bare 8x8 digits: light on black, the digit touching the frame
        expected = pad_and_resize(image.astype(np.float32) / 255)
        assert np.array_equal(preprocess_views(image, framed=True), [expected])
        assert np.array_equal(preprocess_views(255 - image, framed=True), [expected])  # dark on light: inverted


# --- calibrated probabilities and "unknown" ---------------------------------------------------------

def noise_photo(seed: int) -> bytes:
    return encode(Image.fromarray(np.random.default_rng(seed).integers(0, 256, (300, 400, 3), np.uint8)), "JPEG")


def wall_photo(seed: int) -> bytes:
    """A plain light wall, unevenly lit, with sensor noise."""
    rng = np.random.default_rng(seed)
    wall = rng.uniform(150, 250) * np.linspace(0.93, 1.07, 400)[None, :] + rng.normal(0, 3, (300, 400))
    return encode(Image.fromarray(np.clip(wall, 0, 255).astype(np.uint8)), "JPEG")


@pytest.fixture(scope="module")
def shipped_predictor() -> Predictor:
    path = locate_module.packaged_model()
    if path is None:
        pytest.skip("no shipped model")
    return Predictor(path)


def test_the_shipped_model_says_unknown_for_noise_and_walls_but_not_for_test_images(shipped_predictor, real_data):
    assert shipped_predictor.unknown_rule is not None and shipped_predictor.temperature != 1.0
    junk = shipped_predictor.predict([noise_photo(i) for i in range(5)] + [wall_photo(i) for i in range(5)])
    assert all(p.unknown and p.class_name == "unknown" and p.class_index is None for p in junk)
    assert all(p.top_k and len(p.probabilities) == 10 for p in junk)  # the best guesses are still there
    # held-out test images: the threshold was fitted on the first 5,000, calling ~1% of them unknown
    items = shipped_predictor.predict(list(real_data.test_images[5000:5200].numpy()))
    assert sum(p.unknown for p in items) <= 8
    right = [p.class_index == label for p, label in zip(items, real_data.test_labels[5000:5200].tolist())]
    assert np.mean(right) > 0.9


def test_a_picture_with_nothing_in_it_is_unknown_whatever_the_model_makes_of_it(model_file):
    """The model's own rule cannot be trusted on a black square (a strong model once gave 99.7% of blank
    pictures a class); preprocessing knows the picture is empty."""
    pictures = [wall_photo(0), noise_photo(0), encode(Image.new("L", (400, 300), 180), "PNG")]
    calm = Predictor(model_file, min_confidence=1e-9)  # a rule in force that the model itself never meets
    assert all(p.unknown and p.class_index is None and p.top_k for p in calm.predict(pictures))
    assert not any(p.unknown for p in calm.predict([encode(garment(), "PNG")]))  # an object is answered
    assert not any(p.unknown for p in Predictor(model_file).predict(pictures))  # no calibration: never unknown
    assert not any(p.unknown for p in Predictor(model_file, min_confidence=0).predict(pictures))  # asked: never


def test_min_confidence_overrides_the_model_rule(shipped_predictor, model_file):
    noise = noise_photo(0)
    [answered] = shipped_predictor.predict(noise, min_confidence=0)  # 0: never unknown
    assert not answered.unknown and answered.class_name == answered.top_k[0][0]
    [p] = Predictor(model_file).predict(noise)  # no rule of its own: never unknown...
    [q] = Predictor(model_file, min_confidence=0.5).predict(noise)  # ...unless asked
    assert not p.unknown and q.unknown and q.probabilities == p.probabilities and max(p.probabilities) < 0.5
    with pytest.raises(ValueError, match="--min-confidence must be a probability"):
        Predictor(model_file, min_confidence=2)


def test_unknown_in_text_json_and_csv_output(model_file, tmp_path, capsys):
    image = write(tmp_path / "noise.jpg", noise_photo(0))
    code, out, _ = run_cli(capsys, image, "--model", model_file, "--min-confidence", "0.5")
    [p] = Predictor(model_file).predict(image)
    guess, prob = p.top_k[0]
    assert code == 0 and "unknown below probability 0.5" in out.splitlines()[0]
    assert out.splitlines()[1].startswith(f"{image}: unknown (best guess {guess} {prob:.2f})  [{guess} {prob:.2f}, ")
    _, out, _ = run_cli(capsys, image, "--model", model_file, "--min-confidence", "0.5", "--json")
    [record] = json.loads(out)["predictions"]
    assert record["unknown"] is True and record["class_name"] == "unknown" and record["class_index"] is None
    assert record["top_k"][0] == {"class_name": guess, "probability": pytest.approx(prob)}
    _, out, _ = run_cli(capsys, image, "--model", model_file, "--min-confidence", "0.5", "--csv")
    assert next(csv.DictReader(io.StringIO(out)))["class_name"] == "unknown"
    code, _, err = run_cli(capsys, image, "--model", model_file, "--min-confidence", "1.5")
    assert code == 1 and err.startswith("fashion-cnn: error: --min-confidence must be a probability")


@pytest.mark.skipif(locate_module.packaged_model() is None, reason="needs the shipped model")
def test_the_json_output_gives_the_models_test_accuracy_with_its_interval(tmp_path, capsys):
    image = write(tmp_path / "shirt.png", encode(garment(), "PNG"))
    code, out, _ = run_cli(capsys, image, "--json")
    model = json.loads(out)["model"]
    low, high = model["test_interval"]
    assert code == 0 and low < model["test_accuracy"] < high and high - low < 0.02
