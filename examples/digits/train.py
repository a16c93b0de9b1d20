"""Train a small CNN on the 8x8 digits, measure it on held-out images, convert it.

The model (38k weights)::

    image (8, 8), grey levels 0..16 -> Rescaling(1/16) -> Reshape(8, 8, 1)
    -> Conv2D(16, 3, same, relu) -> Conv2D(32, 3, same, relu) -> MaxPooling2D
    -> Flatten -> Dropout(0.25) -> Dense(64, relu) -> Dense(10, softmax)

The scaling and the channel axis are inside the model so that the served
model takes scikit-learn's images unchanged: preprocessing a client must
repeat is preprocessing a client gets wrong. Training stops early on the
validation images; the test images are only used for the reported accuracy.
The entry written is::

    <repository>/digits/1/model.onnx, config.pbtxt
    <repository>/digits/metrics.json   (held-out accuracy, split, training)
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxserve.examples.common import Say, import_keras, write_json
from onnxserve.examples.digits.data import held_out_split

__all__ = [
    "INPUT_NAME",
    "MODEL_NAME",
    "OUTPUT_NAME",
    "DigitsOptions",
    "build_model",
    "train_digits",
]

MODEL_NAME = "digits"
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class DigitsOptions:
    """Training settings. ``quick`` trains one epoch on two batches (for tests)."""

    epochs: int = 40
    batch_size: int = 32
    patience: int = 6
    seed: int = 7
    threads: int | None = None
    quick: bool = False


def build_model() -> Any:
    """The CNN of the module docstring, with a named input and output for serving."""
    keras = import_keras()
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input(shape=(8, 8), dtype="float32", name=INPUT_NAME),
            layers.Rescaling(1.0 / 16.0),
            layers.Reshape((8, 8, 1)),
            layers.Conv2D(16, 3, padding="same", activation="relu"),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dropout(0.25),
            layers.Dense(64, activation="relu"),
            layers.Dense(10, activation="softmax", name=OUTPUT_NAME),
        ],
        name=MODEL_NAME,
    )


def accuracy_by_digit(labels: np.ndarray, predicted: np.ndarray) -> dict[str, dict[str, Any]]:
    """Held-out accuracy per digit and overall (``n``, ``correct``, ``accuracy``)."""
    labels = np.asarray(labels).reshape(-1)
    predicted = np.asarray(predicted).reshape(-1)
    result: dict[str, dict[str, Any]] = {}
    for key in [*(str(d) for d in range(10)), "overall"]:
        mask = np.ones(len(labels), bool) if key == "overall" else labels == int(key)
        correct = int((predicted[mask] == labels[mask]).sum())
        n = int(mask.sum())
        result[key] = {"n": n, "correct": correct, "accuracy": correct / n if n else 0.0}
    return result


def train_digits(
    repository: str | Path, options: DigitsOptions | None = None, say: Say = print
) -> dict[str, Any]:
    """Train, evaluate on the held-out images, convert into ``repository``; return the metrics."""
    from onnxserve.converter import convert

    options = options or DigitsOptions()
    keras = import_keras(options.threads, options.seed)
    repository = Path(repository)
    started = time.monotonic()
    split = held_out_split()
    say(
        f"digits: {len(split.train_labels)} training, {len(split.validation_labels)} "
        f"validation, {len(split.test_labels)} held-out images"
    )
    model = build_model()
    model.compile(loss="sparse_categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    if options.quick:
        n = 2 * options.batch_size
        model.fit(
            split.train_images[:n],
            split.train_labels[:n],
            epochs=1,
            batch_size=options.batch_size,
            verbose=0,
        )
        epochs_run, best_epoch = 1, None
    else:
        stop = keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=options.patience, restore_best_weights=True
        )
        history = model.fit(
            split.train_images,
            split.train_labels,
            validation_data=(split.validation_images, split.validation_labels),
            epochs=options.epochs,
            batch_size=options.batch_size,
            callbacks=[stop],
            verbose=0,
        )
        epochs_run = len(history.history["loss"])
        best_epoch = int(np.argmin(history.history["val_loss"])) + 1
    trained_s = time.monotonic() - started

    probabilities = model.predict(split.test_images, batch_size=256, verbose=0)
    held_out = accuracy_by_digit(split.test_labels, probabilities.argmax(axis=1))

    report = convert(model, repository, MODEL_NAME, version=1, max_batch_size=64, progress=say)
    metrics = {
        "model": MODEL_NAME,
        "task": "classify 8x8 images of handwritten digits (argmax of the probabilities)",
        "architecture": "Rescaling(1/16) -> Reshape(8, 8, 1) -> Conv2D(16, 3) -> Conv2D(32, 3) "
        "-> MaxPooling2D -> Flatten -> Dropout(0.25) -> Dense(64) -> Dense(10, softmax)",
        "input": {"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, 8, 8], "range": "0..16"},
        "output": {"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, 10]},
        "data": {
            "name": "scikit-learn digits (sklearn.datasets.load_digits)",
            "origin": "UCI Optical Recognition of Handwritten Digits (test set), bundled with "
            "scikit-learn",
            "images": int(
                len(split.train_labels) + len(split.validation_labels) + len(split.test_labels)
            ),
        },
        "split": split.describe(),
        "training": {
            **asdict(options),
            "epochs_run": epochs_run,
            "best_epoch_restored": best_epoch,
            "seconds": round(trained_s, 1),
        },
        "held_out_accuracy": held_out,
        "held_out_measured_with": "Keras, before conversion; the ONNX model's probabilities "
        f"differ by at most {report.max_abs_difference:.2g} on the converter's checks",
        "conversion": {
            "model_path": str(report.model_path.relative_to(repository)),
            "max_abs_difference_vs_keras": report.max_abs_difference,
            "warnings": report.warnings,
        },
    }
    write_json(repository / MODEL_NAME / METRICS_FILE, metrics)
    overall = held_out["overall"]
    say(
        f"digits held-out accuracy: {overall['accuracy']:.3f} ({overall['correct']}/{overall['n']})"
    )
    return metrics
