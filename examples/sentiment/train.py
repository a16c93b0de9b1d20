"""Train the seed's sentiment classifier, measure it on held-out sentences, convert it.

The architecture is the article's, layer for layer::

    Embedding(vocab_size, embedding_dim) -> LSTM(128, return_sequences=True)
    -> LSTM(128) -> Dense(1, activation="sigmoid")

compiled with binary cross-entropy and Adam. Two things differ from the
article's snippet, both forced by Keras 3 or serving: ``input_length=`` is
gone (Keras 3 ignores it), and the model starts with a named int32 Input
(``tokens``, 50 ids) and names its Dense layer ``score``, so the served model
has the input and output names a client uses. No ``mask_zero``: masking would
turn the ONNX LSTMs into a 3-5x slower Loop (see the converter's notes), and
padding in front already keeps the last steps on the sentence's words.

Training stops early on the validation split's loss (the held-out test
sentences are never looked at until the end), and the accuracy on the held-out
test sentences is reported per source, as measured: ``metrics.json`` next to
the model holds it. The entry written is::

    <repository>/sentiment/1/model.onnx, config.pbtxt
    <repository>/sentiment/vocabulary.json   (the tokenizer)
    <repository>/sentiment/metrics.json      (held-out accuracy, data, training)
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxserve.examples.common import Say, add_config_warning, import_keras, write_json
from onnxserve.examples.sentiment.data import Dataset, Split, accuracy_by_source, split_dataset
from onnxserve.examples.sentiment.tokenizer import SEQUENCE_LENGTH, Tokenizer

__all__ = [
    "INPUT_NAME",
    "MODEL_NAME",
    "OUTPUT_NAME",
    "SentimentOptions",
    "build_model",
    "train_sentiment",
]

MODEL_NAME = "sentiment"
INPUT_NAME = "tokens"
OUTPUT_NAME = "score"
VOCABULARY_FILE = "vocabulary.json"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class SentimentOptions:
    """Training settings. ``quick`` trains one epoch on two batches (for tests)."""

    epochs: int = 12
    batch_size: int = 32
    embedding_dim: int = 64
    max_words: int = 5000
    patience: int = 3
    seed: int = 7
    threads: int | None = None
    quick: bool = False


def build_model(vocabulary_size: int, embedding_dim: int = 64) -> Any:
    """The article's model, with the named input and output a served model needs."""
    keras = import_keras()
    return keras.Sequential(
        [
            keras.Input(shape=(SEQUENCE_LENGTH,), dtype="int32", name=INPUT_NAME),
            keras.layers.Embedding(vocabulary_size, embedding_dim),
            keras.layers.LSTM(128, return_sequences=True),
            keras.layers.LSTM(128),
            keras.layers.Dense(1, activation="sigmoid", name=OUTPUT_NAME),
        ],
        name=MODEL_NAME,
    )


def _arrays(tokenizer: Tokenizer, sentences: Any) -> tuple[np.ndarray, np.ndarray]:
    x = tokenizer.encode(s.text for s in sentences)
    y = np.array([[s.label] for s in sentences], dtype=np.float32)
    return x, y


def train_sentiment(
    repository: str | Path,
    dataset: Dataset,
    options: SentimentOptions | None = None,
    say: Say = print,
) -> dict[str, Any]:
    """Train, evaluate on the held-out split, convert into ``repository``; return the metrics."""
    options = options or SentimentOptions()
    from onnxserve.converter import convert

    keras = import_keras(options.threads, options.seed)
    repository = Path(repository)
    started = time.monotonic()
    split: Split = split_dataset(dataset)
    tokenizer = Tokenizer.fit((s.text for s in split.train), max_words=options.max_words)
    x_train, y_train = _arrays(tokenizer, split.train)
    x_val, y_val = _arrays(tokenizer, split.validation)
    x_test, _ = _arrays(tokenizer, split.test)
    say(
        f"sentiment: {len(split.train)} training, {len(split.validation)} validation, "
        f"{len(split.test)} held-out sentences; vocabulary {tokenizer.vocabulary_size} ids"
    )

    model = build_model(tokenizer.vocabulary_size, options.embedding_dim)
    model.compile(loss="binary_crossentropy", optimizer="adam", metrics=["accuracy"])
    if options.quick:
        # Two batches, one epoch: the weights move, the pipeline runs, nothing is learnt.
        n = 2 * options.batch_size
        history = model.fit(
            x_train[:n], y_train[:n], epochs=1, batch_size=options.batch_size, verbose=0
        )
        epochs_run = 1
    else:
        stop = keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=options.patience, restore_best_weights=True
        )
        history = model.fit(
            x_train,
            y_train,
            validation_data=(x_val, y_val),
            epochs=options.epochs,
            batch_size=options.batch_size,
            callbacks=[stop],
            verbose=2,
        )
        epochs_run = len(history.history["loss"])
    trained_s = time.monotonic() - started

    scores = model.predict(x_test, batch_size=256, verbose=0).reshape(-1)
    held_out = accuracy_by_source(split.test, scores)
    validation = (
        accuracy_by_source(split.validation, model.predict(x_val, batch_size=256, verbose=0))
        if len(split.validation)
        else {}
    )

    report = convert(
        model,
        repository,
        MODEL_NAME,
        version=1,
        max_batch_size=64,
        dynamic_sequence=False,  # the tokenizer always sends 50 ids
        progress=say,
    )
    entry = repository / MODEL_NAME
    tokenizer.save(entry / VOCABULARY_FILE)
    if dataset.origin == "fallback":
        add_config_warning(entry / "config.pbtxt", fallback_warning(len(dataset.sentences)))
    metrics = {
        "model": MODEL_NAME,
        "task": "binary sentiment of English review sentences (score > 0.5: positive)",
        "architecture": "Embedding -> LSTM(128, return_sequences=True) -> LSTM(128) -> "
        "Dense(1, sigmoid)",
        "input": {"name": INPUT_NAME, "datatype": "INT32", "shape": [-1, SEQUENCE_LENGTH]},
        "output": {"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, 1]},
        "tokenizer": VOCABULARY_FILE,
        "vocabulary_size": tokenizer.vocabulary_size,
        "data": dataset.describe(),
        "split": split.describe(),
        "training": {
            **asdict(options),
            "epochs_run": epochs_run,
            "best_epoch_restored": None if options.quick else _best_epoch(history.history),
            "seconds": round(trained_s, 1),
        },
        "validation_accuracy": validation,
        "held_out_accuracy": held_out,
        "held_out_measured_with": "Keras, before conversion; the ONNX model's scores "
        f"differ by at most {report.max_abs_difference:.2g} on the converter's checks",
        "conversion": {
            "model_path": str(report.model_path.relative_to(repository)),
            "max_abs_difference_vs_keras": report.max_abs_difference,
            "warnings": report.warnings,
        },
    }
    write_json(entry / METRICS_FILE, metrics)
    say(format_accuracy("sentiment held-out accuracy", held_out))
    return metrics


def fallback_warning(sentences: int) -> str:
    """What the config of a model trained on the fallback sentences says (and `serve` logs)."""
    return (
        f"trained on the {sentences} fallback sentences, not on UCI's Sentiment Labelled "
        "Sentences: it has learnt next to nothing and scores most sentences about 0.5; "
        "rebuild it on the real data (ONNXSERVE_SENTIMENT_DATA=DIR make serve)"
    )


def _best_epoch(history: dict[str, list[float]]) -> int:
    losses = history.get("val_loss") or history["loss"]
    return int(np.argmin(losses)) + 1


def format_accuracy(title: str, accuracy: dict[str, dict[str, float | int]]) -> str:
    """One line per source: ``amazon  0.800 (160/200)``."""
    lines = [f"{title}:"]
    for source, figures in accuracy.items():
        lines.append(
            f"  {source:<12} {figures['accuracy']:.3f} ({figures['correct']}/{figures['n']})"
        )
    return "\n".join(lines)
