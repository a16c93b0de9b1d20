"""Train the seed's sentiment classifier, measure it on held-out sentences, convert it.

The architecture is the article's, layer for layer, with the article's
tokenizer step moved into the model as its first layer::

    TextVectorization(max_words, output_sequence_length=50)
    -> Embedding(vocab_size, embedding_dim) -> LSTM(128, return_sequences=True)
    -> LSTM(128) -> Dense(1, activation="sigmoid")

compiled with binary cross-entropy and Adam. The model takes sentences (a
string Input named ``text``, one sentence per row) and names its Dense layer
``score``; the converter turns it whole into one ONNX model with a BYTES input
(onnxserve.converter.text), so any caller sends raw text. TextVectorization pads
at the end; the ids are rotated so that the padding comes first (``pad_in_front``,
plain keras.ops that convert), as the article's pad_sequences does: the LSTM's
last steps are then the sentence's own words. No ``mask_zero``: masking would
turn the ONNX LSTMs into a 3-5x slower Loop (see the converter's notes).

Training stops early on the validation split's loss (the held-out test
sentences are never looked at until the end), and the accuracy on the held-out
test sentences is reported per source, as measured: ``metrics.json`` next to
the model holds it. The entry written is::

    <repository>/sentiment/1/model.onnx, config.pbtxt   (the vocabulary is inside)
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

__all__ = [
    "INPUT_NAME",
    "MODEL_NAME",
    "OUTPUT_NAME",
    "SEQUENCE_LENGTH",
    "SentimentOptions",
    "build_model",
    "train_sentiment",
]

MODEL_NAME = "sentiment"
INPUT_NAME = "text"
OUTPUT_NAME = "score"
METRICS_FILE = "metrics.json"
#: Token ids per sentence: the first 50 words, padded in front.
SEQUENCE_LENGTH = 50


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


def build_model(train_texts: list[str], max_words: int = 5000, embedding_dim: int = 64) -> Any:
    """The article's model with its tokenizer as the first layer (adapted on ``train_texts``)."""
    keras = import_keras()
    vectorize = keras.layers.TextVectorization(
        max_tokens=max_words, output_sequence_length=SEQUENCE_LENGTH, name="tokenize"
    )
    vectorize.adapt(train_texts)
    text = keras.Input(shape=(1,), dtype="string", name=INPUT_NAME)
    x = pad_in_front(vectorize(text))
    x = keras.layers.Embedding(vectorize.vocabulary_size(), embedding_dim)(x)
    x = keras.layers.LSTM(128, return_sequences=True)(x)
    x = keras.layers.LSTM(128)(x)
    score = keras.layers.Dense(1, activation="sigmoid", name=OUTPUT_NAME)(x)
    return keras.Model(text, score, name=MODEL_NAME)


def pad_in_front(ids: Any) -> Any:
    """``[w1 .. wn 0 .. 0]`` -> ``[0 .. 0 w1 .. wn]``: each row rotated by its word count.

    Row b's id at position j is the id at ``(j + n_b) mod L``: the n words end
    the row. Id 0 is only ever padding (TextVectorization's mask token).
    """
    from keras import ops

    words = ops.cast(ops.count_nonzero(ids, axis=1), "int64")
    positions = ops.expand_dims(ops.arange(SEQUENCE_LENGTH, dtype="int64"), 0)
    return ops.take_along_axis(
        ids, ops.mod(positions + ops.expand_dims(words, 1), SEQUENCE_LENGTH), axis=1
    )


def _texts(sentences: Any) -> list[str]:
    return [s.text for s in sentences]


def _batches(
    sentences: Any, batch_size: int, labels: bool = True, shuffle_seed: int | None = None
) -> Any:
    """A tf.data pipeline of (sentences (n, 1), labels (n, 1)): Keras fits strings from one.

    ``shuffle_seed``: the sentences are reshuffled every epoch (fit does not shuffle a
    dataset), as fit shuffles arrays."""
    import tensorflow as tf

    text = np.asarray(_texts(sentences), dtype=object).reshape(-1, 1)
    if not labels:
        return tf.data.Dataset.from_tensor_slices(text).batch(batch_size)
    y = np.array([[s.label] for s in sentences], dtype=np.float32)
    data = tf.data.Dataset.from_tensor_slices((text, y))
    if shuffle_seed is not None:
        data = data.shuffle(len(text), seed=shuffle_seed, reshuffle_each_iteration=True)
    return data.batch(batch_size)


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
    model = build_model(_texts(split.train), options.max_words, options.embedding_dim)
    vocabulary_size = int(model.get_layer("tokenize").vocabulary_size())
    say(
        f"sentiment: {len(split.train)} training, {len(split.validation)} validation, "
        f"{len(split.test)} held-out sentences; vocabulary {vocabulary_size} ids"
    )
    model.compile(loss="binary_crossentropy", optimizer="adam", metrics=["accuracy"])
    batch = options.batch_size
    if options.quick:
        # Two batches, one epoch: the weights move, the pipeline runs, nothing is learnt.
        history = model.fit(
            _batches(split.train[: 2 * batch], batch), epochs=1, verbose=0, shuffle=False
        )
        epochs_run = 1
    else:
        stop = keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=options.patience, restore_best_weights=True
        )
        history = model.fit(
            _batches(split.train, batch, shuffle_seed=options.seed),
            validation_data=_batches(split.validation, 256),
            epochs=options.epochs,
            callbacks=[stop],
            verbose=2,
            shuffle=False,  # the dataset reshuffles itself every epoch
        )
        epochs_run = len(history.history["loss"])
    trained_s = time.monotonic() - started

    scores = model.predict(_batches(split.test, 256, labels=False), verbose=0).reshape(-1)
    held_out = accuracy_by_source(split.test, scores)
    validation = (
        accuracy_by_source(
            split.validation,
            model.predict(_batches(split.validation, 256, labels=False), verbose=0),
        )
        if len(split.validation)
        else {}
    )

    report = convert(
        model,
        repository,
        MODEL_NAME,
        version=1,
        max_batch_size=64,
        sentences=_texts(split.train),  # token ids and scores checked on every one
        progress=say,
    )
    entry = repository / MODEL_NAME
    if dataset.origin == "fallback":
        add_config_warning(entry / "config.pbtxt", fallback_warning(len(dataset.sentences)))
    metrics = {
        "model": MODEL_NAME,
        "task": "binary sentiment of English review sentences (score > 0.5: positive)",
        "architecture": f"TextVectorization({SEQUENCE_LENGTH} ids, padded in front) -> "
        "Embedding -> LSTM(128, return_sequences=True) -> LSTM(128) -> Dense(1, sigmoid)",
        "input": {"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1, 1]},
        "output": {"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, 1]},
        "tokenizer": "inside the model (Keras TextVectorization, lower_and_strip_punctuation, "
        "whitespace split)",
        "vocabulary_size": vocabulary_size,
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
            "max_abs_difference_vs_keras": max(
                report.max_abs_difference,
                report.text_check.max_abs if report.text_check else 0.0,
            ),
            "text_check_sentences": report.text_check.sentences if report.text_check else 0,
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
