"""fashion-cnn: train, evaluate and use convolutional classifiers on Fashion-MNIST."""

__version__ = "0.1.0"

from .crossval import CVConfig, cross_validate, kfold_splits  # noqa: E402
from .data import CLASS_NAMES, DataError, FashionMNIST, load_fashion_mnist  # noqa: E402
from .evaluate import evaluate_model, predict_logits  # noqa: E402
from .models import count_parameters, create_model  # noqa: E402
from .predict import ImageError, Prediction, Predictor, predict  # noqa: E402
from .runs import ModelFileError, load_model, save_model  # noqa: E402
from .train import TrainConfig, fit, train_final  # noqa: E402

__all__ = [
    "CLASS_NAMES", "CVConfig", "DataError", "FashionMNIST", "ImageError", "ModelFileError", "Prediction",
    "Predictor", "TrainConfig",
    "count_parameters", "create_model", "cross_validate", "evaluate_model", "fit", "kfold_splits",
    "load_fashion_mnist", "load_model", "predict", "predict_logits", "save_model", "train_final",
]
