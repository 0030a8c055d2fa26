"""fashion-cnn: train, evaluate and use convolutional image classifiers on Fashion-MNIST.

    from fashion_cnn import TrainConfig, train_final, Predictor

The names below load their module on first use, so `import fashion_cnn` (and the command line's start)
stays cheap: prediction never imports the training stack, nor serving the metrics library.
"""

from __future__ import annotations

import importlib

from .version import __version__

_EXPORTS = {
    "crossval": ("CVConfig", "CVResult", "cross_validate", "kfold_splits"),
    "data": ("CLASS_NAMES", "DataError", "Dataset", "FashionMNIST", "load_fashion_mnist"),
    "datasets": ("load_dataset",),
    "evaluate": ("evaluate_model",),
    "inference": ("predict_logits",),
    "models": ("count_parameters", "create_model", "list_models"),
    "plots": ("confusion_matrix_figure", "fold_boxplot", "learning_curves", "save_figure"),
    # (not predict.predict: `fashion_cnn.predict` is the module, which Python's import sets on the package)
    "predict": ("ImageError", "Prediction", "Predictor"),
    "runs": ("ModelFileError", "load_model", "save_model"),
    "train": ("TrainConfig", "TrainResult", "TrainState", "fit", "train_final"),
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
