"""Sentences in, sentiment scores out: the client side of the sentiment example.

    python -m examples.sentiment.predict --url 127.0.0.1:8001 "I love it" "terrible service"
    python -m examples.sentiment.predict --held-out     # accuracy of the served model

Sentences are turned into token ids here, with the vocabulary the model was
trained with (``<repository>/sentiment/vocabulary.json``), and sent to the
server as the ``tokens`` input; the ``score`` output is the probability that a
sentence is positive. ``--held-out`` scores the held-out test sentences of the
training split through the server and reports accuracy per source, so the
served model's accuracy can be compared with the one measured in Keras.
Needs only onnxserve's client and numpy.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from examples.sentiment.data import Dataset, accuracy_by_source, find_dataset, split_dataset
from examples.sentiment.tokenizer import Tokenizer
from onnxserve.client import Client

__all__ = ["DEFAULT_REPOSITORY", "held_out_accuracy", "main", "score_sentences"]

DEFAULT_REPOSITORY = Path("build/model_repository")
MODEL_NAME = "sentiment"
INPUT_NAME = "tokens"
OUTPUT_NAME = "score"
MAX_BATCH = 64  # the model's max_batch_size: larger requests are refused


def score_sentences(
    client: Client,
    sentences: Sequence[str],
    tokenizer: Tokenizer,
    *,
    model: str = MODEL_NAME,
) -> np.ndarray:
    """The probability that each sentence is positive, one float per sentence.

    Sent in requests of at most 64 sentences (the model's max_batch_size).
    """
    tokens = tokenizer.encode(sentences)
    scores = [
        client.infer(model, {INPUT_NAME: tokens[start : start + MAX_BATCH]})[OUTPUT_NAME]
        for start in range(0, len(tokens), MAX_BATCH)
    ]
    if not scores:
        return np.zeros(0, np.float32)
    return np.concatenate(scores).reshape(-1)


def held_out_accuracy(
    client: Client, dataset: Dataset, tokenizer: Tokenizer, *, model: str = MODEL_NAME
) -> tuple[dict[str, dict[str, float | int]], np.ndarray]:
    """Accuracy of the served model on the held-out split, per source; and its scores.

    The split is recomputed with the seed used at training time, so these are
    the sentences the model never saw (given the same data).
    """
    test = split_dataset(dataset).test
    scores = score_sentences(client, [s.text for s in test], tokenizer, model=model)
    return accuracy_by_source(test, scores), scores


def _label(score: float) -> str:
    return "positive" if score > 0.5 else "negative"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.sentiment.predict",
        description="Score sentences with the served sentiment model.",
    )
    parser.add_argument("sentences", nargs="*", help="sentences to score")
    parser.add_argument("--url", default="127.0.0.1:8001", help="the server's gRPC address")
    parser.add_argument(
        "--repository",
        type=Path,
        default=DEFAULT_REPOSITORY,
        help="the model repository the server serves; the vocabulary is read from "
        "REPOSITORY/sentiment/vocabulary.json (default: %(default)s)",
    )
    parser.add_argument("--model", default=MODEL_NAME)
    parser.add_argument(
        "--held-out",
        action="store_true",
        help="score the held-out test sentences and report accuracy per source",
    )
    parser.add_argument("--data", help="folder with the labelled sentences (for --held-out)")
    args = parser.parse_args(argv)
    if not args.sentences and not args.held_out:
        parser.error("give sentences to score, or --held-out")

    entry = args.repository / args.model
    tokenizer = Tokenizer.load(entry / "vocabulary.json")
    with Client(args.url, timeout=30) as client:
        if args.sentences:
            scores = score_sentences(client, args.sentences, tokenizer, model=args.model)
            for sentence, score in zip(args.sentences, scores, strict=True):
                print(f"{score:.3f}  {_label(float(score)):<8}  {sentence}")
        if args.held_out:
            dataset = find_dataset(args.data, download=False, say=lambda _: None)
            accuracy, _ = held_out_accuracy(client, dataset, tokenizer, model=args.model)
            print(f"held-out accuracy of the served model ({dataset.describe()['name']}):")
            for source, figures in accuracy.items():
                print(
                    f"  {source:<12} {figures['accuracy']:.3f} "
                    f"({figures['correct']}/{figures['n']})"
                )
            metrics = entry / "metrics.json"
            if metrics.is_file():
                measured = json.loads(metrics.read_text("utf-8"))["held_out_accuracy"]["overall"]
                print(f"  (measured in Keras at training time: {measured['accuracy']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
