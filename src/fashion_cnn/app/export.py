"""Export to ONNX, so a model can be served with standard tools (onnxruntime, Triton, ...) without PyTorch.

The exported graph takes float32 images (N, 28, 28) in [0, 1], a light garment on a dark background as in
Fashion-MNIST (`predict.preprocess` returns exactly this), and returns class probabilities (N, classes):
softmax is part of the graph, so a plain onnxruntime caller needs no post-processing beyond argmax. The
batch dimension is dynamic. Class names and the source model's metadata travel in the file's
metadata_props (`InferenceSession.get_modelmeta().custom_metadata_map`).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fashion_cnn.data.fmnist import DataError, load_fashion_mnist
from fashion_cnn.data.images import to_float
from fashion_cnn.evaluation.calibration import from_metadata
from fashion_cnn.io import check_output_file, write_atomic
from fashion_cnn.models.files import load_model

INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
TOLERANCE = 1e-4  # largest allowed |p_onnx - p_torch|; float32 kernels differ in summation order only
N_CHECK = 1000


class Probabilities(nn.Module):
    """images (N, 28, 28) in [0, 1] -> probabilities (N, classes): the model plus its channel axis and its
    calibrated softmax, softmax(logits / temperature)."""

    def __init__(self, model: nn.Module, temperature: float = 1.0) -> None:
        super().__init__()
        self.model, self.temperature = model, temperature

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (self.model(images.unsqueeze(1)) / self.temperature).softmax(dim=1)


def default_check_images(n: int = N_CHECK) -> tuple[np.ndarray, str]:
    """The first n test images of the installed dataset; random images where none is installed."""
    try:
        images = load_fashion_mnist(download=False).test_images[:n]
        return to_float(images)[:, 0].numpy(), f"{len(images)} Fashion-MNIST test images"
    except DataError:
        rng = np.random.default_rng(0)
        return rng.random((n, 28, 28), dtype=np.float32), f"{n} random images (dataset not installed)"


def onnx_bytes(module: nn.Module, meta: dict) -> bytes:
    """The serialized ONNX model, traced by torch.export (the supported exporter) with a dynamic batch."""
    # The exporter logs a warning per torchvision op it cannot register; torchvision is not used here.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():  # torch.export's own deprecation notices, nothing a user can act on
        warnings.simplefilter("ignore", FutureWarning)
        program = torch.onnx.export(
            module, (torch.zeros(2, 28, 28),), dynamo=True, verbose=False, external_data=False,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},))
    proto = program.model_proto
    for key, value in (("class_names", json.dumps(meta["class_names"])),
                       ("input", "float32 (N, 28, 28) in [0, 1], light garment on dark background"),
                       ("output", f"float32 (N, {len(meta['class_names'])}) class probabilities, in the order "
                                  "of class_names (calibrated: softmax(logits / temperature))"),
                       ("fashion_cnn", json.dumps(meta))):
        proto.metadata_props.add(key=key, value=value)
    return proto.SerializeToString()


def compare_with_torch(data: bytes, module: nn.Module, images: np.ndarray) -> dict:
    """Run onnxruntime and PyTorch on the same images: largest probability difference, class agreement."""
    import onnxruntime as ort  # export's extra

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    onnx_probs = session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]
    with torch.no_grad():
        torch_probs = module(torch.from_numpy(images)).numpy()
    return {
        "max_abs_diff": float(np.abs(onnx_probs - torch_probs).max()),
        "same_classes": bool((onnx_probs.argmax(1) == torch_probs.argmax(1)).all()),
        "batch_size": len(images),
    }


def export_onnx(model_path: str | Path, out_path: str | Path, check_images: np.ndarray | None = None,
                tolerance: float = TOLERANCE, force: bool = False) -> dict:
    """Write model_path as ONNX to out_path, after checking it against PyTorch; returns the check's report.

    check_images: float32 (N, 28, 28) in [0, 1]; by default the first test images. The check runs on a
    batch of another size than the one traced, so it also proves the batch dimension dynamic. A model
    that fails the check raises ValueError and writes nothing. out_path is checked first
    (runs.check_output_file): never the model itself, a link, FIFO or device, nor an existing file
    unless force.
    """
    check_output_file(out_path, force, inputs=(model_path,))
    model, meta = load_model(model_path)
    temperature, _ = from_metadata(meta, model_path)
    module = Probabilities(model, temperature).eval()
    if check_images is None:
        check_images, source = default_check_images()
    else:
        check_images, source = np.asarray(check_images, dtype=np.float32), f"{len(check_images)} given images"
    data = onnx_bytes(module, meta)
    report = {"model": str(model_path), "out": str(out_path), "check_images": source,
              "tolerance": tolerance, **compare_with_torch(data, module, check_images)}
    if not report["same_classes"] or report["max_abs_diff"] > tolerance:
        raise ValueError(f"ONNX export disagrees with PyTorch: {report}")
    write_atomic(out_path, data)
    return report
