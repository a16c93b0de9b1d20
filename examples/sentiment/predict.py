"""Sentences in, sentiment scores out: the client side of the sentiment example.

    python -m onnxserve.examples.sentiment.predict "I love it" "terrible service"
    python -m onnxserve.examples.sentiment.predict --held-out     # accuracy of the served model

Sentences are sent as they are, UTF-8 text in the model's BYTES input
``text`` (one sentence per row): the model tokenizes them itself, with the
vocabulary it was trained with. The ``score`` output is the probability that a
sentence is positive. ``--held-out`` scores the held-out test sentences of the
training split through the server and reports accuracy per source, so the
served model's accuracy can be compared with the one measured in Keras.
Needs only onnxserve's client and numpy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from onnxserve.client import Client
from onnxserve.examples.common import example_repository
from onnxserve.examples.sentiment.data import (
    ENVIRONMENT_VARIABLE,
    DataError,
    Dataset,
    accuracy_by_source,
    download_cache,
    load_fallback,
    load_uci_folder,
    split_dataset,
)

__all__ = [
    "held_out_accuracy",
    "main",
    "score_sentences",
    "training_dataset",
]

MODEL_NAME = "sentiment"
INPUT_NAME = "text"
OUTPUT_NAME = "score"
MAX_BATCH = 64  # the model's max_batch_size: larger requests are refused


def score_sentences(
    client: Client,
    sentences: Sequence[str],
    *,
    model: str = MODEL_NAME,
) -> np.ndarray:
    """The probability that each sentence is positive, one float per sentence.

    Sent in requests of at most 64 sentences (the model's max_batch_size).
    """
    scores = [
        client.infer(model, {INPUT_NAME: list(sentences[start : start + MAX_BATCH])})[OUTPUT_NAME]
        for start in range(0, len(sentences), MAX_BATCH)
    ]
    if not scores:
        return np.zeros(0, np.float32)
    return np.concatenate(scores).reshape(-1)


def held_out_accuracy(
    client: Client, dataset: Dataset, *, model: str = MODEL_NAME
) -> tuple[dict[str, dict[str, float | int]], np.ndarray]:
    """Accuracy of the served model on the held-out split, per source; and its scores.

    The split is recomputed with the seed used at training time, so these are
    the sentences the model never saw (given the same data).
    """
    test = split_dataset(dataset).test
    scores = score_sentences(client, [s.text for s in test], model=model)
    return accuracy_by_source(test, scores), scores


def training_dataset(entry: Path, data: str | Path | None = None) -> Dataset:
    """The sentences the model in ``entry`` was trained on, as its metrics.json records.

    The held-out split is only held out for the data the model was trained
    on: scoring another set's "test" sentences would mix in training ones, or
    measure something else. ``data`` (a folder) overrides where UCI's files
    are looked for; their per-source counts must match the record.
    """
    recorded = json.loads((entry / "metrics.json").read_text("utf-8"))["data"]
    if recorded["origin"] == "fallback":
        dataset = load_fallback()
    else:
        candidates = [data, os.environ.get(ENVIRONMENT_VARIABLE, "").strip(), recorded["location"]]
        candidates.append(download_cache())
        folder = next((Path(c) for c in candidates if c and Path(c).is_dir()), None)
        if folder is None:
            raise DataError(
                "the model was trained on UCI's Sentiment Labelled Sentences; pass --data DIR "
                f"or set {ENVIRONMENT_VARIABLE} to score its held-out sentences"
            )
        dataset = load_uci_folder(folder)
    counts = dataset.describe()["per_source"]
    if counts != recorded["per_source"]:
        raise DataError(
            f"{dataset.location} holds {counts} sentences per source, the model was trained "
            f"on {recorded['per_source']}: not the same data, so not the same held-out split"
        )
    return dataset


def _label(score: float) -> str:
    return "positive" if score > 0.5 else "negative"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m onnxserve.examples.sentiment.predict",
        description="Score sentences with the served sentiment model.",
    )
    parser.add_argument("sentences", nargs="*", help="sentences to score")
    parser.add_argument("--url", default="127.0.0.1:8001", help="the server's gRPC address")
    parser.add_argument(
        "--repository",
        type=Path,
        default=example_repository(),
        help="the model repository the server serves; --held-out reads what the model was "
        "trained on from REPOSITORY/sentiment/metrics.json (default: %(default)s)",
    )
    parser.add_argument("--model", default=MODEL_NAME)
    parser.add_argument(
        "--held-out",
        action="store_true",
        help="score the held-out test sentences and report accuracy per source",
    )
    parser.add_argument(
        "--data",
        help="folder with UCI's labelled sentences (for --held-out; default: "
        f"${ENVIRONMENT_VARIABLE}, else where the model was trained from)",
    )
    args = parser.parse_args(argv)
    if not args.sentences and not args.held_out:
        parser.error("give sentences to score, or --held-out")

    entry = args.repository / args.model
    with Client(args.url, timeout=30) as client:
        if args.sentences:
            scores = score_sentences(client, args.sentences, model=args.model)
            for sentence, score in zip(args.sentences, scores, strict=True):
                print(f"{score:.3f}  {_label(float(score)):<8}  {sentence}")
        if args.held_out:
            try:
                dataset = training_dataset(entry, args.data)
            except DataError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            accuracy, _ = held_out_accuracy(client, dataset, model=args.model)
            measured = json.loads((entry / "metrics.json").read_text("utf-8"))
            print(
                f"held-out accuracy of the served model ({dataset.describe()['name']}), "
                "and as measured in Keras at training time:"
            )
            for source, figures in accuracy.items():
                keras_figures = measured["held_out_accuracy"].get(source, {})
                print(
                    f"  {source:<12} {figures['accuracy']:.3f} "
                    f"({figures['correct']}/{figures['n']})   Keras "
                    f"{keras_figures.get('accuracy', float('nan')):.3f}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
