"""Prediction on new images: the Predictor (a model file, its calibration and its rule for "unknown"),
the sources it takes (files, folders, bytes, PIL images, arrays and batch arrays) and its output formats.

Each picture is turned into a Fashion-MNIST-like image by data.images (grayscale, background to 0, the
main object cropped and turned upright, 28x28). Where the crop turned the object, the model also sees it
as it stood, and answers from the view it is surer of.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterable, Literal

import numpy as np
import torch

from fashion_cnn.config import TOP_K
from fashion_cnn.data.fmnist import CLASS_NAMES
from fashion_cnn.data.images import (
    IMAGE_SUFFIXES,
    SIZE,
    ImageError,
    Source,
    object_pixels,
    png_bytes,
    preprocess_views,
)
from fashion_cnn.evaluation import calibration
from fashion_cnn.evaluation.inference import IMAGES, predict_logits
from fashion_cnn.io import check_output_file, write_atomic
from fashion_cnn.models.files import load_model
from fashion_cnn.models.locate import resolve_model_path
from fashion_cnn.text import printable

UNKNOWN = "unknown"  # the class_name of an image unlike anything the model was trained on


# --- inference -----------------------------------------------------------------------------------

@dataclass
class Prediction:
    """One input's answer. class_name is "unknown" (and class_index None) when the image is unlike the
    training images; top_k and probabilities still hold the model's best guesses."""

    source: str
    class_name: str | None = None
    class_index: int | None = None
    probabilities: list[float] = field(default_factory=list)  # calibrated, one per class, in the model's order
    top_k: list[tuple[str, float]] = field(default_factory=list)
    image: np.ndarray | None = None  # the 28x28 the model saw and answered from
    other_view: np.ndarray | None = None  # where the crop turned the object, the view it did not answer from
    error: str | None = None  # why this input could not be used; the other fields are then empty
    unknown: bool = False  # unlike the training images: by the model file's rule, or --min-confidence

    @property
    def probability(self) -> float | None:
        """The top class's calibrated probability (of the best guess, for an unknown image)."""
        return self.top_k[0][1] if self.top_k else None


Errors = Literal["raise", "report"]
ERRORS = ("raise", "report")  # what predict does with an input it cannot use: raise, or set its `error`


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def source_name(item: Source, index: int) -> str:
    return str(item) if isinstance(item, (str, Path)) else f"<{type(item).__name__} {index}>"


def batch_images(array: np.ndarray) -> list[np.ndarray] | None:
    """The images of a batch array, or None for an array of one image (H, W) or (H, W, 1|3|4). A batch
    is grayscale, in any of the layouts Fashion-MNIST arrays come in: (N, H, W), Keras's (N, H, W, 1)
    or PyTorch's (N, 1, H, W); anything else of 4 or more dimensions is an ImageError."""
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4)):
        return None
    if array.ndim == 3:
        return list(array)
    if array.ndim == 4 and array.shape[3] == 1:
        return list(array[..., 0])
    if array.ndim == 4 and array.shape[1] == 1:
        return list(array[:, 0])
    raise ImageError(f"array of shape {array.shape} is neither an image (H, W), (H, W, 3) or (H, W, 4) nor a "
                     "batch of grayscale images (N, H, W), (N, H, W, 1) or (N, 1, H, W)")


def array_sources(name: str, array: np.ndarray | torch.Tensor) -> list[tuple[str, Source | ImageError]]:
    """expand_sources for an array: itself, or a batch's images named name[0], name[1], ..."""
    try:
        batch = batch_images(np.asarray(array))
    except ImageError as e:
        return [(name, e)]
    return [(name, array)] if batch is None else [(f"{name}[{j}]", image) for j, image in enumerate(batch)]


def expand_sources(images: Source | Iterable[Source]) -> list[tuple[str, Source | ImageError]]:
    """(name, source) per image: one image or a list of them; folders become their image files, batch
    arrays (batch_images) their images, named `<ndarray 0>[i]`."""
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    expanded: list[tuple[str, Source | ImageError]] = []
    for i, item in enumerate(items):
        if isinstance(item, (np.ndarray, torch.Tensor)):
            expanded += array_sources(source_name(item, i), item)
        elif not (isinstance(item, (str, Path)) and Path(item).is_dir()):
            expanded.append((source_name(item, i), item))
        elif files := image_files(Path(item)):
            expanded += [(str(f), f) for f in files]
        else:
            no_images = ImageError(f"a folder with no image files ({', '.join(IMAGE_SUFFIXES)})")
            expanded.append((str(item), no_images))
    return expanded


def prepare(name: str, source: Source | ImageError, invert: bool | None, crop: bool,
            framed: bool = False) -> Prediction:
    try:
        if isinstance(source, ImageError):
            raise source
        image, *other = preprocess_views(source, invert, crop, framed)
        return Prediction(name, image=image, other_view=other[0] if other else None)
    except ImageError as e:
        return Prediction(name, error=e.reason)


class Predictor:
    """A loaded model, the class names it predicts, its temperature and its rule for "unknown"; `model` as
    resolve_model_path reads it (default: the model shipped with the package).

    min_confidence: call every image whose calibrated top probability is below this unknown, instead of
    the model file's own rule (0: never unknown). Model files without calibration have temperature 1 and
    no rule of their own.
    """

    def __init__(self, model: str | Path | None = None, device: str = "cpu",
                 min_confidence: float | None = None) -> None:
        self.path = resolve_model_path(model)
        self.model, self.meta = load_model(self.path, device)
        self.class_names = list(self.meta.get("class_names", CLASS_NAMES))
        self.temperature, self.unknown_rule = calibration.from_metadata(self.meta, self.path)
        if min_confidence is not None:
            self.unknown_rule = calibration.min_confidence_rule(min_confidence, self.temperature)

    def logits(self, x: np.ndarray) -> torch.Tensor:
        """Raw logits (N, classes) for float32 images (N, 28, 28) in [0, 1]."""
        return predict_logits(self.model, torch.from_numpy(np.asarray(x, np.float32)).unsqueeze(1))

    def predict_arrays(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """Calibrated probabilities (N, classes) for a batch of Fashion-MNIST-like images (N, 28, 28), numpy
        or torch: uint8 as `load_fashion_mnist` gives them (scaled as in training) or float in [0, 1].
        Other dtypes, float values outside [0, 1] (NaN too) and other shapes are a ValueError."""
        if not isinstance(x, torch.Tensor):
            x = np.asarray(x)
            if x.dtype.kind not in "uif":  # torch cannot even hold strings or objects
                raise ValueError(f"images of type {x.dtype}: expected {IMAGES}")
            x = torch.from_numpy(np.ascontiguousarray(x))
        if x.ndim != 3 or tuple(x.shape[1:]) != (SIZE, SIZE):
            raise ValueError(f"images of shape {tuple(x.shape)}: expected (N, {SIZE}, {SIZE})")
        return calibration.probabilities(predict_logits(self.model, x.detach().cpu()), self.temperature).numpy()

    def predict(self, images: Source | Iterable[Source], top_k: int = TOP_K, invert: bool | None = None,
                crop: bool = True, min_confidence: float | None = None, framed: bool = False,
                errors: Errors = "raise") -> list[Prediction]:
        """One Prediction per image: `images` is one image (a path, bytes, a PIL image or an array) or a
        list of them; folders stand for their image files, and batch arrays (N, H, W), (N, H, W, 1) or
        (N, 1, H, W), uint8 or float in [0, 1] as Keras and PyTorch hold Fashion-MNIST, for their N images.
        invert, crop and framed: as preprocess_views takes them.

        errors: "raise" (the default): an input that cannot be used is an ImageError (a ValueError) naming
        it, before the model runs; "report": its Prediction gets `error` set instead, and the others are
        still predicted (the CLI and the web API report bad files so).
        min_confidence overrides the predictor's rule for unknown images for this call (see Predictor).
        """
        if errors not in ERRORS:
            raise ValueError(f"errors must be one of {', '.join(ERRORS)}, not {errors!r}")
        predictions = [prepare(name, source, invert, crop, framed) for name, source in expand_sources(images)]
        if errors == "raise":
            raise_first_error(predictions)
        self.predict_prepared(predictions, top_k, min_confidence)
        if errors == "raise":
            raise_first_error(predictions)  # a model that gives no finite answer
        return predictions

    def predict_prepared(self, predictions: list[Prediction], top_k: int = TOP_K,
                         min_confidence: float | None = None) -> list[Prediction]:
        """Fill in the classes of predictions made by `prepare` (those with an `error` stay as they are)."""
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, not {top_k}")
        rule = self.unknown_rule if min_confidence is None else \
            calibration.min_confidence_rule(min_confidence, self.temperature)
        ok = [p for p in predictions if p.error is None]
        if ok:
            second = [i for i, p in enumerate(ok) if p.other_view is not None]
            views = self.logits(np.stack([p.image for p in ok] + [ok[i].other_view for i in second]))
            view_probabilities = calibration.probabilities(views, self.temperature)
            top = view_probabilities.amax(1)
            answer = list(range(len(ok)))  # the row of `views` each prediction answers from
            for j, i in enumerate(second, start=len(ok)):  # the view the model is surer of
                if top[j] > top[i]:
                    answer[i], ok[i].image, ok[i].other_view = j, ok[i].other_view, ok[i].image
            logits = views[answer]
            unknown = rule.unknown(logits).tolist() if rule else [False] * len(ok)
            if rule and not rule.never:
                # nothing stands out of the background (a wall, noise, a blank page): there is no object
                # to classify, whatever the model makes of a black square; some models give one a class
                # with conviction (the strong model shipped on 2026-12-07: 99.7% of blank pictures)
                unknown = [u or object_pixels(p.image) == 0 for u, p in zip(unknown, ok)]
            probabilities = view_probabilities[answer].numpy()
            for p, probs, is_unknown in zip(ok, probabilities, unknown):
                if not np.isfinite(probs).all():  # NaN is no answer, and not even valid JSON
                    p.error = "the model gave non-finite probabilities (a broken model file?)"
                    p.image = p.other_view = None
                    continue
                order = np.argsort(-probs, kind="stable")
                p.unknown = is_unknown
                p.class_index = None if p.unknown else int(order[0])
                p.class_name = UNKNOWN if p.unknown else self.class_names[order[0]]
                p.probabilities = probs.tolist()
                p.top_k = [(self.class_names[i], float(probs[i])) for i in order[:top_k]]
        return predictions

    def describe(self) -> str:
        """`model: PATH (architecture, test accuracy; calibration and the rule for unknown)`: the line every
        command that uses a model prints first."""
        accuracy = self.meta.get("test_accuracy")
        score = f", test accuracy {100 * accuracy:.2f}%" if accuracy is not None else ""
        calibrated = f"temperature {self.temperature:.3g}" if "calibration" in self.meta else "not calibrated"
        rule = self.unknown_rule.describe() if self.unknown_rule else "never unknown"
        return f"model: {self.path} ({self.meta['architecture']}{score}; {calibrated}, {rule})"


def raise_first_error(predictions: list[Prediction]) -> None:
    """The first prediction's error, if any has one, as an ImageError naming its input."""
    failed = next((p for p in predictions if p.error), None)
    if failed is not None:
        raise ImageError(failed.error, failed.source)


def predict(images: Source | Iterable[Source], model: str | Path | None = None, top_k: int = TOP_K,
            **options) -> list[Prediction]:
    """Predict with the shipped model, or the one `model` names (see resolve_model_path); see
    Predictor.predict."""
    return Predictor(model).predict(images, top_k=top_k, **options)


# --- output --------------------------------------------------------------------------------------

def format_line(p: Prediction) -> str:
    """`shoe.jpg: Sneaker (0.93)  [Sneaker 0.93, Sandal 0.05, Ankle boot 0.01]`, or for an unknown image
    `wall.jpg: unknown (best guess Bag 0.41)  [Bag 0.41, ...]`"""
    ranked = ", ".join(f"{name} {prob:.2f}" for name, prob in p.top_k)
    best = f"best guess {p.top_k[0][0]} {p.top_k[0][1]:.2f}" if p.unknown else f"{p.top_k[0][1]:.2f}"
    return f"{printable(p.source)}: {p.class_name} ({best})  [{ranked}]"


# The fields of a prediction's record: Prediction's attributes of the same names, so that the Python API, the
# CLI's --json and the web API's results (serve.FileResult) speak one vocabulary.
RECORD_FIELDS = ("source", "class_name", "class_index", "probability", "top_k", "probabilities", "unknown", "error")


def as_record(p: Prediction, class_names: list[str]) -> dict:
    """One prediction as JSON-ready fields (the CLI's --json and the web API's results): RECORD_FIELDS,
    with top_k as {class_name, probability} objects and probabilities by class name."""
    record = {name: getattr(p, name) for name in RECORD_FIELDS}
    record["top_k"] = [{"class_name": name, "probability": prob} for name, prob in p.top_k]
    record["probabilities"] = dict(zip(class_names, p.probabilities))
    return record


def as_json(predictions: list[Prediction], predictor: Predictor) -> dict:
    return {
        "model": {"path": str(predictor.path), "architecture": predictor.meta["architecture"],
                  "test_accuracy": predictor.meta.get("test_accuracy"),
                  # its 95% bootstrap interval over the test images, where the model file records one
                  "test_interval": (predictor.meta.get("test_interval") or {}).get("accuracy"),
                  "temperature": predictor.temperature,
                  "unknown_rule": predictor.unknown_rule.describe() if predictor.unknown_rule else None},
        "predictions": [as_record(p, predictor.class_names) for p in predictions],
    }


def write_csv(predictions: list[Prediction], class_names: list[str], out: IO[str]) -> None:
    """source, class_name, probability, one column per class, error."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["source", "class_name", "probability", *class_names, "error"])
    for p in predictions:
        best = f"{p.top_k[0][1]:.6f}" if p.top_k else ""
        probs = [f"{q:.6f}" for q in p.probabilities] or [""] * len(class_names)
        writer.writerow([p.source, p.class_name or "", best, *probs, p.error or ""])


def output_name(index: int, source: str) -> str:
    """<index>-<name>.png for the index-th input: unique, in input order, safe as a file name."""
    stem = re.sub(r"[^\w.-]+", "_", Path(source).stem).strip("_") or "image"
    return f"{index:04d}-{stem}.png"


def save_preprocessed(predictions: list[Prediction], out_dir: str | Path, force: bool = False) -> list[Path]:
    """The 28x28 images the model saw, as PNG: <index>-<name>.png in input order (the view it answered
    from), and where the crop turned the object, the other view beside it (<index>-<name>-other-view.png).
    Every file is checked before the first is written (runs.check_output_file): one already there is
    replaced only with force, an input image never."""
    views = []
    for i, p in enumerate(predictions):
        if p.image is None:
            continue
        path = Path(out_dir) / output_name(i, p.source)
        views.append((path, p.image))
        if p.other_view is not None:
            views.append((path.with_name(f"{path.stem}-other-view.png"), p.other_view))
    inputs = tuple(p.source for p in predictions)
    for path, _ in views:
        check_output_file(path, force, inputs)
    for path, image in views:
        write_atomic(path, png_bytes(image))
    return [path for path, _ in views]
