"""Build the example model repository that ``make serve`` serves: sentiment and digits.

    python -m onnxserve.examples.build_repository [--repository DIR] [--quick]

Trains the seed's sentiment LSTM and the digits CNN, converts both with
onnxserve's converter into ``--repository`` (default: the checkout's
``build/model_repository``) and prints their held-out accuracies. The digits
model gets its post-processing too (examples/digits/labelled.py): labels for
the classification extension, the Python model ``digits_label`` and the
ensemble ``digits_labelled`` that answers a label and its probability.

The marker file ``.complete`` is written last, once both entries are complete,
and records what the build was made from: a fingerprint of the training code
(:data:`TRAINING_SOURCES`), ``--quick``, and the fingerprint of the sentiment
data. A later run compares: when nothing changed the repository is left as it
is (``make serve`` starts at once); when the code, ``--quick`` or the data
found now (``--data`` or ``$ONNXSERVE_SENTIMENT_DATA``, or a downloaded copy)
differ, it says why and builds again. A repository without the marker is an
interrupted build whose example entries are removed and built again.
``--force`` rebuilds anyway. ``--quick`` trains each model for one epoch of
two batches: for tests, which need the files and the wiring, not accuracy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from onnxserve.examples.common import Say, example_repository, write_json

__all__ = ["MARKER", "TRAINING_SOURCES", "build_repository", "main", "stale_reason"]

MARKER = ".complete"
ENTRIES = ("sentiment", "digits", "digits_label", "digits_labelled")
# What the models are made from, relative to this package: a change rebuilds them.
TRAINING_SOURCES = (
    "build_repository.py",
    "common.py",
    "sentiment/data.py",
    "sentiment/train.py",
    "sentiment/fallback_sentences.tsv",
    "digits/data.py",
    "digits/train.py",
    "digits/labelled.py",
    "digits/label_model.py",
)


def sources_fingerprint() -> str:
    """SHA-256 over the training sources, in :data:`TRAINING_SOURCES` order."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for name in TRAINING_SOURCES:
        digest.update(name.encode() + b"\0" + (package / name).read_bytes() + b"\0")
    return digest.hexdigest()


def stale_reason(
    repository: Path, *, quick: bool, data: str | None = None, cache_dir: Path | None = None
) -> str | None:
    """Why the complete repository must be built again (None: it is up to date).

    The sentiment data is compared only where a build would read a folder
    without downloading (``data``, ``$ONNXSERVE_SENTIMENT_DATA``, a downloaded
    copy): with none, the data the repository was built on is kept.
    """
    from onnxserve.examples.sentiment.data import folder_fingerprint, local_folder

    try:
        record = json.loads((repository / MARKER).read_text("utf-8"))
        built_from = record["sentiment_data"]
        built_code, built_quick = record["sources"], record["quick"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{repository / MARKER} is from an older version of the examples"
    if built_code != sources_fingerprint():
        return "the examples' training code changed"
    if built_quick != quick:
        return "it was built " + ("with" if built_quick else "without") + " --quick"
    folder = local_folder(data, cache_dir)
    if folder is not None and folder_fingerprint(folder) != built_from["fingerprint"]:
        return (
            f"the sentiment data changed: it was built on {built_from['name']} from "
            f"{built_from['location']}, and the data is now {folder}"
        )
    return None


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
    from onnxserve.examples.digits.labelled import write_labelled_entries
    from onnxserve.examples.digits.train import DigitsOptions, train_digits
    from onnxserve.examples.sentiment.data import ENVIRONMENT_VARIABLE, find_dataset
    from onnxserve.examples.sentiment.train import SentimentOptions, train_sentiment

    repository = Path(repository)
    marker = repository / MARKER
    if marker.is_file() and not force:
        reason = stale_reason(repository, quick=quick, data=data)
        if reason is None:
            say(f"{repository} is complete and up to date (--force rebuilds it)")
            for line in _summary_lines(repository):
                say(line)
            if json.loads(marker.read_text("utf-8"))["sentiment_data"]["origin"] == "fallback":
                say(
                    "the sentiment model was trained on the fallback sentences: set "
                    f"{ENVIRONMENT_VARIABLE}=DIR (or pass --data DIR) and run this again to "
                    "rebuild it on UCI's data, or pass --force to try the download again"
                )
            return {"built": False, **_read_metrics(repository)}
        say(f"rebuilding {repository}: {reason}")
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
    write_labelled_entries(repository)
    seconds = time.monotonic() - started
    described = dataset.describe()
    write_json(
        marker,
        {
            "entries": list(ENTRIES),
            "quick": quick,
            "seconds": round(seconds, 1),
            "sources": sources_fingerprint(),
            "sentiment_data": {
                key: described[key] for key in ("name", "origin", "location", "fingerprint")
            },
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
        prog="python -m onnxserve.examples.build_repository",
        description="Train the sentiment and digits examples and convert them into a "
        "model repository.",
    )
    parser.add_argument(
        "--repository",
        type=Path,
        default=example_repository(),
        help="where to build it (default: %(default)s)",
    )
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
    parser.add_argument(
        "--force", action="store_true", help="rebuild even a complete, up-to-date repository"
    )
    parser.add_argument("--threads", type=int, help="TensorFlow threads (default: all cores)")
    args = parser.parse_args(argv)
    from onnxserve.examples.sentiment.data import DataError

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
