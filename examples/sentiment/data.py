"""The labelled sentences: where they come from, checking them, and the fixed split.

The data is UCI's "Sentiment Labelled Sentences": 3,000 review sentences, 1,000
each from Amazon (cell phones), IMDb and Yelp, half positive and half negative,
created for D. Kotzias, M. Denil, N. de Freitas, P. Smyth, "From Group to
Individual Labels using Deep Features", KDD 2015 (cite it when you use it).
It is not part of this repository. :func:`find_dataset` looks for it, in order:

1. a folder given explicitly (``--data DIR``);
2. the folder named by ``ONNXSERVE_SENTIMENT_DATA`` (the Makefile and CI point
   it at a shared copy when one exists);
3. a copy downloaded earlier into ``build/data/sentiment-labelled-sentences``
   (of the checkout: :func:`onnxserve.examples.common.build_folder`);
4. a download of UCI's zip (unless downloads are off: ``--no-download`` or
   ``ONNXSERVE_SENTIMENT_DOWNLOAD=0``), every file checked against the SHA-256
   sums of UCI's release below before it is used;
5. a few dozen sentences written for onnxserve (``fallback_sentences.tsv``),
   with a loud warning: a model trained on them shows the pipeline working,
   not a useful classifier, and its accuracy means little.

No TensorFlow here: the client side and the tests import this module cheaply.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxserve.examples.common import build_folder

__all__ = [
    "CITATION",
    "DOWNLOAD_ENV",
    "ENVIRONMENT_VARIABLE",
    "FALLBACK_FILE",
    "SHA256SUMS",
    "SOURCES",
    "UCI_URL",
    "DataError",
    "Dataset",
    "Sentence",
    "Split",
    "download_cache",
    "find_dataset",
    "folder_fingerprint",
    "load_fallback",
    "load_uci_folder",
    "local_folder",
    "split_dataset",
]

ENVIRONMENT_VARIABLE = "ONNXSERVE_SENTIMENT_DATA"
DOWNLOAD_ENV = "ONNXSERVE_SENTIMENT_DOWNLOAD"
UCI_URL = "https://archive.ics.uci.edu/static/public/331/sentiment+labelled+sentences.zip"
UCI_PAGE = "https://archive.ics.uci.edu/dataset/331/sentiment+labelled+sentences"
CITATION = (
    'D. Kotzias, M. Denil, N. de Freitas, P. Smyth, "From Group to Individual Labels using '
    'Deep Features", KDD 2015. UCI Machine Learning Repository, "Sentiment Labelled Sentences".'
)
# The source of each file, in the order the split and the reports use.
SOURCES: dict[str, str] = {
    "amazon": "amazon_cells_labelled.txt",
    "imdb": "imdb_labelled.txt",
    "yelp": "yelp_labelled.txt",
}
# SHA-256 of UCI's files (the release in the zip at UCI_URL).
SHA256SUMS: dict[str, str] = {
    "amazon_cells_labelled.txt": "47003fc0a0d4840b00e96e715b6189bad09e7443a3da41c4cbe12ffc79f86ae3",
    "imdb_labelled.txt": "aef2e49e3da25714d61175e3a6e68eeef74a20a2f914318dc3be9947ea86512d",
    "yelp_labelled.txt": "c76468b7b5c6e56a0804d728345c5f84aa2142ddb214420f61cc9cfd4c00d2ea",
}
FALLBACK_FILE = Path(__file__).with_name("fallback_sentences.tsv")
FALLBACK_ORIGIN = "written for onnxserve"
DOWNLOAD_TIMEOUT_S = 30.0

Say = Callable[[str], None]


class DataError(RuntimeError):
    """The labelled sentences named by the user cannot be used (missing, malformed)."""


@dataclass(frozen=True)
class Sentence:
    """One labelled sentence: ``label`` 1 is positive, 0 negative."""

    text: str
    label: int
    source: str


@dataclass(frozen=True)
class Dataset:
    """The sentences and an honest account of where they came from.

    ``origin`` is "uci" or "fallback"; ``location`` the folder or file read;
    ``verified`` whether every file matched UCI's SHA-256 sums; ``notes``
    what the reports should repeat (warnings included); ``fingerprint`` the
    SHA-256 of the files' contents (:func:`folder_fingerprint`), which tells
    whether a model was trained on the data found now.
    """

    sentences: tuple[Sentence, ...]
    origin: str
    location: str
    verified: bool
    notes: tuple[str, ...] = ()
    fingerprint: str = ""

    @property
    def sources(self) -> list[str]:
        """The sources present, in first-seen order."""
        return list(dict.fromkeys(s.source for s in self.sentences))

    def describe(self) -> dict[str, object]:
        """What metrics.json records about the data."""
        counts = {
            source: sum(1 for s in self.sentences if s.source == source) for source in self.sources
        }
        name = (
            "UCI Sentiment Labelled Sentences"
            if self.origin == "uci"
            else f"fallback sentences {FALLBACK_ORIGIN}"
        )
        return {
            "name": name,
            "origin": self.origin,
            "location": self.location,
            "sha256_verified": self.verified,
            "sentences": len(self.sentences),
            "per_source": counts,
            "citation": CITATION if self.origin == "uci" else None,
            "notes": list(self.notes),
            "fingerprint": self.fingerprint,
        }


@dataclass(frozen=True)
class Split:
    """Train / validation / held-out test sentences (disjoint, fixed by the seed)."""

    train: tuple[Sentence, ...]
    validation: tuple[Sentence, ...]
    test: tuple[Sentence, ...]
    seed: int
    test_fraction: float
    validation_fraction: float

    def describe(self) -> dict[str, object]:
        return {
            "seed": self.seed,
            "stratified_by": ["source", "label"],
            "test_fraction": self.test_fraction,
            "validation_fraction": self.validation_fraction,
            "train": len(self.train),
            "validation": len(self.validation),
            "test": len(self.test),
        }


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fingerprint(sums: Sequence[str]) -> str:
    return _sha256(" ".join(sums).encode("ascii"))


def folder_fingerprint(folder: str | os.PathLike[str]) -> str | None:
    """The fingerprint of UCI's three files in ``folder`` (None: one is missing),
    without parsing them: the same value :func:`load_uci_folder` records."""
    try:
        return _fingerprint([_sha256((Path(folder) / n).read_bytes()) for n in SOURCES.values()])
    except OSError:
        return None


def _parse_lines(data: bytes, source: str, where: str) -> list[Sentence]:
    """``sentence<TAB>label`` lines. Split on LF only: imdb's file holds U+0085 (NEL)
    inside sentences, which ``str.splitlines`` would take for line breaks."""
    text = data.decode("utf-8")
    sentences = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        sentence, tab, label = line.rstrip("\r").rpartition("\t")
        label = label.strip()
        if not tab or label not in ("0", "1") or not sentence.strip():
            raise DataError(f"{where}:{number}: expected 'sentence<TAB>0|1', got {line[:60]!r}")
        sentences.append(Sentence(sentence.strip(), int(label), source))
    return sentences


def load_uci_folder(folder: str | os.PathLike[str]) -> Dataset:
    """Read the three files of UCI's release from ``folder``, checking their sums.

    A file that differs from UCI's release is still read (someone may have a
    corrected copy) but the dataset is marked unverified and a note says so.
    """
    folder = Path(folder)
    missing = [name for name in SOURCES.values() if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"{folder} does not hold the Sentiment Labelled Sentences: missing "
            + ", ".join(missing)
        )
    sentences: list[Sentence] = []
    notes: list[str] = []
    sums = []
    for source, name in SOURCES.items():
        data = (folder / name).read_bytes()
        sums.append(_sha256(data))
        if sums[-1] != SHA256SUMS[name]:
            notes.append(f"{name} differs from UCI's release (SHA-256 mismatch)")
        sentences.extend(_parse_lines(data, source, str(folder / name)))
    return Dataset(
        tuple(sentences),
        "uci",
        str(folder.resolve()),
        verified=not notes,
        notes=tuple(notes),
        fingerprint=_fingerprint(sums),
    )


def load_fallback() -> Dataset:
    """The sentences written for onnxserve (``source<TAB>sentence<TAB>label`` lines)."""
    sentences = []
    data = FALLBACK_FILE.read_bytes()
    for number, line in enumerate(data.decode("utf-8").split("\n"), 1):
        if not line.strip() or line.startswith("#"):
            continue
        source, sentence, label = line.split("\t")
        if label not in ("0", "1"):
            raise DataError(f"{FALLBACK_FILE}:{number}: label must be 0 or 1, got {label!r}")
        sentences.append(Sentence(sentence, int(label), source))
    note = (
        f"FALLBACK DATA: {len(sentences)} sentences {FALLBACK_ORIGIN}, not UCI's 3,000 review "
        "sentences; the model shows the pipeline working, its accuracy means little"
    )
    return Dataset(
        tuple(sentences),
        "fallback",
        str(FALLBACK_FILE),
        verified=False,
        notes=(note,),
        fingerprint=_fingerprint([_sha256(data)]),
    )


def _files_in_zip(archive: bytes, depth: int = 0) -> dict[str, bytes]:
    """The data files in a zip, by base name, looking into zips inside it too.

    UCI has served the set both as a plain folder in a zip and as a zip in a
    zip; macOS resource forks (``__MACOSX/``) are skipped.
    """
    found: dict[str, bytes] = {}
    with zipfile.ZipFile(io.BytesIO(archive)) as members:
        for info in members.infolist():
            if "__MACOSX" in info.filename or info.is_dir():
                continue
            name = info.filename.rsplit("/", 1)[-1]
            if name in SHA256SUMS:
                found[name] = members.read(info)
            elif name.lower().endswith(".zip") and depth < 2:
                found.update(_files_in_zip(members.read(info), depth + 1))
    return found


def download_cache() -> Path:
    """Where a downloaded copy is kept: build/data/ of the checkout the example runs from."""
    return build_folder() / "data" / "sentiment-labelled-sentences"


def download_uci(target: Path | None = None, *, url: str = UCI_URL) -> Path:
    """Download UCI's zip and keep its three files in ``target``, each checked first.

    Raises DataError when the download fails or a file's SHA-256 is not UCI's:
    a changed download is never used.
    """
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            archive = response.read()
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise DataError(f"downloading {url} failed: {exc}") from exc
    try:
        found = _files_in_zip(archive)
    except zipfile.BadZipFile as exc:
        raise DataError(f"{url} did not return a zip file") from exc
    for name, expected in SHA256SUMS.items():
        if name not in found:
            raise DataError(f"{url} lacks {name}")
        if _sha256(found[name]) != expected:
            raise DataError(f"{name} from {url} does not match UCI's SHA-256 sum; not used")
    target = target or download_cache()
    target.mkdir(parents=True, exist_ok=True)
    for name, data in found.items():
        partial = target / f".{name}.partial"
        partial.write_bytes(data)
        partial.replace(target / name)
    return target


def _downloads_allowed(download: bool | None) -> bool:
    if download is not None:
        return download
    return os.environ.get(DOWNLOAD_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _warn(text: str) -> None:
    bar = "!" * 78
    print(f"{bar}\n{text}\n{bar}", file=sys.stderr, flush=True)


def local_folder(
    data_dir: str | os.PathLike[str] | None = None, cache_dir: Path | None = None
) -> Path | None:
    """The folder :func:`find_dataset` reads without a download: the one given
    (argument, else the environment variable), else a complete earlier download;
    None when it would download or fall back."""
    explicit = str(data_dir) if data_dir else os.environ.get(ENVIRONMENT_VARIABLE, "").strip()
    if explicit:
        return Path(explicit)
    cache_dir = cache_dir or download_cache()
    if all((cache_dir / name).is_file() for name in SOURCES.values()):
        return cache_dir
    return None


def find_dataset(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool | None = None,
    cache_dir: Path | None = None,
    say: Say = print,
) -> Dataset:
    """The labelled sentences, looked for in the order of the module docstring.

    A folder given explicitly (argument or environment variable) must hold the
    data: pointing at the wrong place is an error, not a reason to fall back.
    """
    cache_dir = cache_dir or download_cache()
    folder = local_folder(data_dir, cache_dir)
    if folder is not None:
        dataset = load_uci_folder(folder)
    elif _downloads_allowed(download):
        say(f"downloading the Sentiment Labelled Sentences from {UCI_URL}")
        try:
            dataset = load_uci_folder(download_uci(cache_dir))
        except DataError as exc:
            say(f"download failed: {exc}")
            dataset = load_fallback()
    else:
        dataset = load_fallback()
    if dataset.origin == "uci":
        say(f"sentiment data: UCI Sentiment Labelled Sentences from {dataset.location}")
        say(f"  cite: {CITATION}")
    for note in dataset.notes:
        _warn(note) if dataset.origin == "fallback" or not dataset.verified else say(note)
    if dataset.origin == "fallback":
        _warn(
            f"The Sentiment Labelled Sentences were not found: pass --data DIR or set "
            f"{ENVIRONMENT_VARIABLE} to a folder holding {', '.join(SOURCES.values())} "
            f"(from {UCI_PAGE}), or allow the download."
        )
    return dataset


def split_dataset(
    dataset: Dataset | Sequence[Sentence],
    *,
    seed: int = 20150810,
    test_fraction: float = 0.2,
    validation_fraction: float = 0.1,
) -> Split:
    """Split each (source, label) group alike, so every source is held out in proportion.

    The same seed always gives the same split, at training time and when the
    held-out sentences are scored through the server later. Every group keeps
    at least one sentence for training and one for the test.
    """
    sentences = dataset.sentences if isinstance(dataset, Dataset) else tuple(dataset)
    rng = np.random.default_rng(seed)
    groups: dict[tuple[str, int], list[Sentence]] = {}
    for sentence in sentences:
        groups.setdefault((sentence.source, sentence.label), []).append(sentence)
    train: list[Sentence] = []
    validation: list[Sentence] = []
    test: list[Sentence] = []
    for key in sorted(groups):
        group = groups[key]
        order = rng.permutation(len(group))
        n_test = min(max(1, round(len(group) * test_fraction)), len(group) - 1)
        n_val = min(round(len(group) * validation_fraction), len(group) - 1 - n_test)
        test.extend(group[i] for i in order[:n_test])
        validation.extend(group[i] for i in order[n_test : n_test + n_val])
        train.extend(group[i] for i in order[n_test + n_val :])
    # Shuffle training order across groups (fit also shuffles, but batches of
    # one class would make the validation figures of early epochs misleading).
    train = [train[i] for i in rng.permutation(len(train))]
    return Split(
        tuple(train), tuple(validation), tuple(test), seed, test_fraction, validation_fraction
    )


def accuracy_by_source(
    sentences: Sequence[Sentence], scores: np.ndarray, threshold: float = 0.5
) -> dict[str, dict[str, float | int]]:
    """Held-out accuracy per source and overall, from the model's scores.

    A score above ``threshold`` predicts positive. Returned as plain numbers
    (``n``, ``correct``, ``accuracy``) for metrics.json.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(sentences):
        raise ValueError(f"{len(scores)} scores for {len(sentences)} sentences")
    predicted = (scores > threshold).astype(int)
    labels = np.array([s.label for s in sentences])
    result: dict[str, dict[str, float | int]] = {}
    sources = list(dict.fromkeys(s.source for s in sentences))
    for source in [*sources, "overall"]:
        mask = (
            np.ones(len(labels), bool)
            if source == "overall"
            else np.array([s.source == source for s in sentences])
        )
        correct = int((predicted[mask] == labels[mask]).sum())
        n = int(mask.sum())
        result[source] = {"n": n, "correct": correct, "accuracy": correct / n if n else 0.0}
    return result
