"""Build the example model repository that ``make serve`` serves: sentiment and digits.

    python -m examples.build_repository --repository build/model_repository [--quick]

Trains the seed's sentiment LSTM and the digits CNN, converts both with
onnxserve's converter into ``--repository`` and prints their held-out
accuracies. The marker file ``.complete`` is written last, once both entries
are complete; a repository with the marker is left as it is (the build runs
once, ``make serve`` afterwards starts at once), and one without it is an
interrupted build whose example entries are removed and built again.
``--force`` rebuilds anyway. ``--quick`` trains each model for one epoch of
two batches: for tests, which need the files and the wiring, not accuracy.

Full training takes about a minute on two cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from examples.common import Say, write_json

__all__ = ["MARKER", "build_repository", "main"]

MARKER = ".complete"
ENTRIES = ("sentiment", "digits")


def _summary_lines(repository: Path) -> list[str]:
    """The held-out accuracies recorded in the entries' metrics.json files."""
    lines = []
    sentiment = repository / "sentiment" / "metrics.json"
    if sentiment.is_file():
        metrics = json.loads(sentiment.read_text("utf-8"))
        figures = ", ".join(
            f"{source} {v['accuracy']:.3f}" for source, v in metrics["held_out_accuracy"].items()
        )
        data = metrics["data"]["name"]
        quick = " [--quick: barely trained]" if metrics["training"]["quick"] else ""
        lines.append(f"sentiment held-out accuracy ({data}): {figures}{quick}")
    digits = repository / "digits" / "metrics.json"
    if digits.is_file():
        metrics = json.loads(digits.read_text("utf-8"))
        overall = metrics["held_out_accuracy"]["overall"]
        quick = " [--quick: barely trained]" if metrics["training"]["quick"] else ""
        lines.append(
            f"digits held-out accuracy: {overall['accuracy']:.3f} "
            f"({overall['correct']}/{overall['n']} images){quick}"
        )
    return lines


def build_repository(
    repository: str | Path,
    *,
    quick: bool = False,
    data: str | None = None,
    download: bool | None = None,
    force: bool = False,
    threads: int | None = None,
    say: Say = print,
) -> dict[str, Any]:
    """Train and convert both examples into ``repository`` unless it is complete already.

    Returns ``{"built": bool, "sentiment": metrics, "digits": metrics}``
    (metrics read back from the entries when nothing was built).
    """
    from examples.digits.train import DigitsOptions, train_digits
    from examples.sentiment.data import find_dataset
    from examples.sentiment.train import SentimentOptions, train_sentiment

    repository = Path(repository)
    marker = repository / MARKER
    if marker.is_file() and not force:
        say(f"{repository} is complete (remove {marker} or pass --force to rebuild)")
        for line in _summary_lines(repository):
            say(line)
        return {"built": False, **_read_metrics(repository)}
    marker.unlink(missing_ok=True)
    for name in ENTRIES:
        if (repository / name).exists():
            say(f"removing {repository / name} left by an earlier, unfinished build")
            shutil.rmtree(repository / name)
    repository.mkdir(parents=True, exist_ok=True)

    started = time.monotonic()
    dataset = find_dataset(data, download=download, say=say)
    sentiment = train_sentiment(
        repository, dataset, SentimentOptions(quick=quick, threads=threads), say=say
    )
    digits = train_digits(repository, DigitsOptions(quick=quick, threads=threads), say=say)
    seconds = time.monotonic() - started
    write_json(
        marker,
        {
            "entries": list(ENTRIES),
            "quick": quick,
            "seconds": round(seconds, 1),
            "sentiment_data": dataset.describe()["name"],
        },
    )
    say(f"built {repository} in {seconds:.0f}s")
    for line in _summary_lines(repository):
        say(line)
    return {"built": True, "sentiment": sentiment, "digits": digits}


def _read_metrics(repository: Path) -> dict[str, Any]:
    return {
        name: json.loads((repository / name / "metrics.json").read_text("utf-8"))
        for name in ENTRIES
        if (repository / name / "metrics.json").is_file()
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.build_repository",
        description="Train the sentiment and digits examples and convert them into a "
        "model repository.",
    )
    parser.add_argument("--repository", type=Path, default=Path("build/model_repository"))
    parser.add_argument(
        "--quick", action="store_true", help="train one epoch of two batches (for tests)"
    )
    parser.add_argument(
        "--data",
        help="folder holding UCI's Sentiment Labelled Sentences "
        "(default: $ONNXSERVE_SENTIMENT_DATA, else a download, else the fallback sentences)",
    )
    parser.add_argument(
        "--no-download",
        dest="download",
        action="store_false",
        default=None,
        help="never download the sentiment data",
    )
    parser.add_argument("--force", action="store_true", help="rebuild a complete repository")
    parser.add_argument("--threads", type=int, help="TensorFlow threads (default: all cores)")
    args = parser.parse_args(argv)
    from examples.sentiment.data import DataError

    try:
        build_repository(
            args.repository,
            quick=args.quick,
            data=args.data,
            download=args.download,
            force=args.force,
            threads=args.threads,
        )
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
