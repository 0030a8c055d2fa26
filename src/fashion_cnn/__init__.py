"""fashion-cnn: train, evaluate and use convolutional image classifiers on Fashion-MNIST.

    from fashion_cnn import TrainConfig, train_final, Predictor

The names below load their module on first use, so `import fashion_cnn` (and the command line's start)
stays cheap: prediction never imports the training stack, nor serving the metrics library.
"""

from __future__ import annotations

import importlib

from fashion_cnn.version import __version__

_EXPORTS = {
    "config": ("CVConfig", "TrainConfig",),
    "data.fmnist": ("CLASS_NAMES", "DataError", "Dataset", "FashionMNIST", "load_fashion_mnist",),
    "data.folders": ("load_dataset",),
    "data.images": ("ImageError",),
    "evaluation.inference": ("predict_logits",),
    "evaluation.metrics": ("evaluate_model",),
    "evaluation.predict": ("Prediction", "Predictor",),
    "io": ("ModelFileError",),
    "jobs.crossval": ("CVResult", "cross_validate", "kfold_splits",),
    "jobs.final": ("TrainResult", "train_final",),
    "models.files": ("load_model", "save_model",),
    "models.registry": ("count_parameters", "create_model",),
    "models.specs": ("list_models",),
    "reporting.plots": ("confusion_matrix_figure", "fold_boxplot", "learning_curves", "save_figure",),
    "training.loop": ("TrainState", "fit",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF) + ["__version__"]


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'fashion_cnn' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
