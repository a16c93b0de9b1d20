"""Classify held-out digit images through the server and measure the accuracy.

    python -m onnxserve.examples.digits.predict --url 127.0.0.1:8001

The held-out images are those of the training split (same seed), which the
model never saw. They are sent as scikit-learn gives them (float32, grey
levels 0..16, shape ``(n, 8, 8)``): the model scales them itself. The reported
accuracy is computed here, from the server's answers and the true labels.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from onnxserve.client import Client
from onnxserve.examples.digits.data import held_out_split

__all__ = ["Classified", "classify", "classify_held_out", "label", "main"]

MODEL_NAME = "digits"
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
MAX_BATCH = 64  # the model's max_batch_size


@dataclass(frozen=True)
class Classified:
    """The server's answers for some images, and how they compare with the labels."""

    probabilities: np.ndarray  # (n, 10)
    predicted: np.ndarray  # (n,) int64, argmax of the probabilities
    labels: np.ndarray  # (n,) the true digits

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.predicted == self.labels)) if len(self.labels) else 0.0

    @property
    def correct(self) -> int:
        return int(np.sum(self.predicted == self.labels))


def classify(client: Client, images: np.ndarray, *, model: str = MODEL_NAME) -> np.ndarray:
    """Digit probabilities ``(n, 10)`` for ``(n, 8, 8)`` images, in requests of at most 64."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 2:
        images = images[None]
    parts = [
        np.asarray(client.infer(model, {INPUT_NAME: images[i : i + MAX_BATCH]})[OUTPUT_NAME])
        for i in range(0, len(images), MAX_BATCH)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 10), np.float32)


def label(
    client: Client, images: np.ndarray, *, model: str = "digits_labelled"
) -> tuple[list[str], np.ndarray]:
    """Each image's label and its probability, from the ensemble (model, then post-processing)."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 2:
        images = images[None]
    names: list[str] = []
    chosen = []
    for i in range(0, len(images), MAX_BATCH):
        answer = client.infer(model, {INPUT_NAME: images[i : i + MAX_BATCH]})
        names.extend(element.decode() for element in answer["label"].reshape(-1))
        chosen.append(np.asarray(answer["probability"]).reshape(-1))
    return names, np.concatenate(chosen) if chosen else np.zeros(0, np.float32)


def classify_held_out(client: Client, *, model: str = MODEL_NAME) -> Classified:
    """Classify every held-out image through the server."""
    split = held_out_split()
    probabilities = classify(client, split.test_images, model=model)
    return Classified(probabilities, probabilities.argmax(axis=1), split.test_labels)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m onnxserve.examples.digits.predict",
        description="Classify the held-out digit images with the served model.",
    )
    parser.add_argument("--url", default="127.0.0.1:8001", help="the server's gRPC address")
    parser.add_argument("--model", default=MODEL_NAME)
    parser.add_argument("--show", type=int, default=10, help="images to list one by one")
    args = parser.parse_args(argv)
    with Client(args.url, timeout=30) as client:
        result = classify_held_out(client, model=args.model)
    for i in range(min(args.show, len(result.labels))):
        mark = "" if result.predicted[i] == result.labels[i] else "  <- wrong"
        print(
            f"image {i:3d}: label {result.labels[i]}, predicted {result.predicted[i]} "
            f"(p={result.probabilities[i, result.predicted[i]]:.3f}){mark}"
        )
    print(
        f"held-out accuracy of the served model: {result.accuracy:.3f} "
        f"({result.correct}/{len(result.labels)} images)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
