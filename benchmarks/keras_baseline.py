"""The reference side of the speed benchmark: the Keras tutorial's CNN, trained and timed in Keras 3 + TF.

Runs under .venv-keras's python (`make .venv-keras/.installed`), standalone: no torch, no fashion_cnn. It
reads the IDX files itself and takes the train/validation indices from the .npz that speed_vs_keras.py
writes, so both sides train on exactly the same images. Prints one JSON object to stdout.

    .venv-keras/bin/python benchmarks/keras_baseline.py --split split.npz --epochs 3

With --orders it trains on given per-epoch orders instead of its own shuffle, and --save-init writes its
initial weights: same_steps_as_keras.py uses both to put fashion-cnn through exactly the same steps.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import struct
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's start-up chatter out of the logs

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def read_idx(path: Path) -> np.ndarray:
    """A gzipped IDX file as a uint8 array: magic (ndim in its last byte), big-endian dims, data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def prep_pixels(images: np.ndarray) -> np.ndarray:
    """The tutorial's preprocessing: (N, 28, 28, 1) float32 in [0, 1]."""
    return images.reshape(-1, 28, 28, 1).astype("float32") / 255.0


FILES = {"train_x": "train-images-idx3-ubyte.gz", "train_y": "train-labels-idx1-ubyte.gz",
         "test_x": "t10k-images-idx3-ubyte.gz", "test_y": "t10k-labels-idx1-ubyte.gz"}


def load_split(data_dir: Path, split_npz: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(images, one-hot labels) for train, val and test, prepared as the tutorial prepares them."""
    raw = {key: read_idx(data_dir / name) for key, name in FILES.items()}
    split = np.load(split_npz)
    prep = lambda x, y: (prep_pixels(x), keras.utils.to_categorical(y, 10))
    return {
        "train": prep(raw["train_x"][split["train_idx"]], raw["train_y"][split["train_idx"]]),
        "val": prep(raw["train_x"][split["val_idx"]], raw["train_y"][split["val_idx"]]),
        "test": prep(raw["test_x"], raw["test_y"]),
    }


def define_model() -> keras.Model:
    """The tutorial's model and optimiser, layer for layer."""
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(32, (3, 3), activation="relu", kernel_initializer="he_uniform"),
        keras.layers.MaxPooling2D((2, 2)),
        keras.layers.Flatten(),
        keras.layers.Dense(100, activation="relu", kernel_initializer="he_uniform"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01, momentum=0.9),
                  loss="categorical_crossentropy", metrics=["accuracy"])
    return model


class EpochTimer(keras.callbacks.Callback):
    """Per epoch: seconds of training alone (epoch start to validation start) and of the whole epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.train_seconds: list[float] = []
        self.epoch_seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_test_begin(self, logs=None):
        self.train_seconds.append(time.perf_counter() - self.start)

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_seconds.append(time.perf_counter() - self.start)


# speed_vs_keras.py has its own median_seconds: the two sides run in different virtualenvs.
def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def predict_seconds(model: keras.Model, x: np.ndarray, batch_size: int) -> dict[str, float]:
    """Median seconds to predict all of x, both ways Keras offers, each warmed up (traced) once first."""
    ways = {
        "model.predict": lambda: model.predict(x, batch_size=batch_size, verbose=0),
        "model(x, training=False)": lambda: [model(x[i:i + batch_size], training=False).numpy()
                                             for i in range(0, len(x), batch_size)],
    }
    for fn in ways.values():
        fn()
    return {name: median_seconds(fn, 5) for name, fn in ways.items()}


def latency_ms(model: keras.Model, x1: np.ndarray, calls: int = 200) -> dict[str, float]:
    """Median in-process latency of one image, after a warm-up, each way Keras offers: the eager call,
    predict_on_batch, and the call compiled once as a tf.function (Keras's fastest way is the opponent)."""
    compiled = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    ways = {
        "model(x, training=False)": lambda: model(x1, training=False).numpy(),
        "model.predict_on_batch(x)": lambda: model.predict_on_batch(x1),
        "tf.function(model)(x)": lambda: compiled(x1).numpy(),
    }
    for fn in ways.values():
        for _ in range(10):
            fn()
    return {name: 1000 * median_seconds(fn, calls) for name, fn in ways.items()}


# fashion-cnn validates at its evaluation batch (1000); Keras by default at the training batch (32), which
# costs it time for nothing: the opponent validates at fashion-cnn's batch.
VALIDATION_BATCH = 1000


def fit_in_order(model: keras.Model, train: tuple, val: tuple, orders: np.ndarray, batch_size: int,
                 callbacks: list) -> dict[str, list[float]]:
    """model.fit's history, one fit call per epoch, each on the training data in that epoch's given order."""
    (x, y), history = train, {}
    for order in orders:
        epoch = model.fit(x[order], y[order], batch_size=batch_size, shuffle=False, validation_data=val,
                          validation_batch_size=VALIDATION_BATCH, callbacks=callbacks, verbose=0).history
        for key, values in epoch.items():
            history.setdefault(key, []).extend(values)
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", type=Path, required=True, help=".npz with train_idx and val_idx")
    parser.add_argument("--data-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, help="TF's intra- and inter-op threads (default: TF's choice)")
    parser.add_argument("--orders", type=Path, help=".npy of per-epoch training orders (epochs x images) to "
                        "train in, instead of fit's shuffle; replaces --epochs")
    parser.add_argument("--save-init", type=Path, help="write the initial weights here (.npz, Keras layouts)")
    args = parser.parse_args()

    if args.threads:  # before any op runs: TF fixes its thread pools at start-up
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    keras.utils.set_random_seed(args.seed)  # the initial weights
    # ...but not TF's global seed: with it set, fit's tf.random.shuffle restarts from the same state every epoch
    # and Keras trains on one fixed order, which cost it ~0.6 points after 10 epochs (10 seeds a side). The
    # tutorial seeds nothing, so its shuffle differs every epoch, as fashion-cnn's does.
    tf.random.set_seed(None)
    data = load_split(args.data_dir, args.split)
    model = define_model()
    if args.save_init:
        np.savez(args.save_init, *model.get_weights())
    timer = EpochTimer()
    if args.orders:
        history = fit_in_order(model, data["train"], data["val"], np.load(args.orders), args.batch_size, [timer])
    else:  # the tutorial's call (shuffled each epoch), validated at fashion-cnn's batch
        history = model.fit(*data["train"], epochs=args.epochs, batch_size=args.batch_size,
                            validation_data=data["val"], validation_batch_size=VALIDATION_BATCH, callbacks=[timer],
                            verbose=0).history
    epochs = len(history["loss"])
    test_x = data["test"][0]
    predict = predict_seconds(model, test_x, 1000)
    fastest = min(predict, key=predict.get)
    latency = latency_ms(model, test_x[:1])
    print(json.dumps({
        "framework": f"Keras {keras.__version__} + TensorFlow {tf.__version__} ({keras.backend.backend()})",
        "train_seconds": timer.train_seconds,
        "epoch_seconds": timer.epoch_seconds,
        "history": [{k: float(v[e]) for k, v in history.items()} for e in range(epochs)],
        "val_accuracy": float(history["val_accuracy"][-1]),
        "predict_seconds": predict[fastest],
        "predict_method": fastest,
        "predict_seconds_all": predict,
        "latency_ms": min(latency.values()),
        "latency_method": min(latency, key=latency.get) + " on a 1-image float batch",
        "latency_ms_all": latency,
        "validation_batch_size": VALIDATION_BATCH,
    }))


if __name__ == "__main__":
    main()
