"""The word-level tokenizer that ships with the sentiment model.

The ONNX model takes token ids, not text (string preprocessing such as Keras'
TextVectorization cannot be converted), so the text -> ids step lives here and
its vocabulary is written next to the model, in
``<repository>/sentiment/vocabulary.json``: the server ignores files that are
not version folders, and whoever calls the model reads the vocabulary from the
same entry. Training and serving use this one function (:meth:`Tokenizer.encode`),
so the ids the model was trained on are the ids it is sent.

Rules: NFKC-normalise and lowercase; curly apostrophes become straight ones;
words are runs of letters or digits, keeping an inner apostrophe ("don't");
id 0 pads, id 1 is any word not in the vocabulary, words get ids from 2 in
order of frequency in the training sentences (ties alphabetically). Sequences
are cut to their first ``sequence_length`` words and padded with 0 in front,
so the LSTM's last steps are always the sentence's own words.

Pure Python and numpy: a client needs neither TensorFlow nor Keras.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FORMAT", "OOV_ID", "PAD_ID", "SEQUENCE_LENGTH", "Tokenizer", "words_of"]

FORMAT = "onnxserve.examples.word-ids/1"
SEQUENCE_LENGTH = 50
PAD_ID = 0
OOV_ID = 1
FIRST_WORD_ID = 2
PATTERN = r"[^\W_]+(?:'[^\W_]+)*"
_WORD = re.compile(PATTERN)
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'", "\u00b4": "'"})


def words_of(text: str) -> list[str]:
    """The words of ``text`` under the module's rules (lowercased, normalised)."""
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).lower()
    return _WORD.findall(text)


class Tokenizer:
    """Sentences -> fixed-length int32 token ids, with a vocabulary fitted on training text."""

    def __init__(self, words: Sequence[str], sequence_length: int = SEQUENCE_LENGTH) -> None:
        if sequence_length < 1:
            raise ValueError("sequence_length must be 1 or more")
        if len(set(words)) != len(words):
            raise ValueError("the vocabulary repeats words")
        self.words: tuple[str, ...] = tuple(words)
        self.sequence_length = sequence_length
        self._ids = {word: i for i, word in enumerate(self.words, FIRST_WORD_ID)}

    @classmethod
    def fit(
        cls,
        texts: Iterable[str],
        *,
        max_words: int = 5000,
        min_count: int = 1,
        sequence_length: int = SEQUENCE_LENGTH,
    ) -> Tokenizer:
        """Build the vocabulary from training text only (held-out words stay unknown)."""
        counts = Counter(word for text in texts for word in words_of(text))
        ranked = sorted(
            (word for word, n in counts.items() if n >= min_count),
            key=lambda word: (-counts[word], word),
        )
        return cls(ranked[: max(0, max_words - FIRST_WORD_ID)], sequence_length)

    @property
    def vocabulary_size(self) -> int:
        """The Embedding's ``input_dim``: padding, unknown and every word."""
        return len(self.words) + FIRST_WORD_ID

    def ids(self, text: str) -> list[int]:
        """Token ids of one sentence, neither cut nor padded."""
        return [self._ids.get(word, OOV_ID) for word in words_of(text)]

    def encode(self, texts: Iterable[str]) -> np.ndarray:
        """``(len(texts), sequence_length)`` int32 ids: the model's ``tokens`` input."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = np.full((len(texts), self.sequence_length), PAD_ID, dtype=np.int32)
        for row, text in enumerate(texts):
            ids = self.ids(text)[: self.sequence_length]
            if ids:
                out[row, -len(ids) :] = ids
        return out

    def decode(self, ids: Iterable[int]) -> list[str]:
        """The words behind ids (padding dropped, unknown words as ``<unk>``): for debugging."""
        words = []
        for i in ids:
            i = int(i)
            if i == PAD_ID:
                continue
            words.append(self.words[i - FIRST_WORD_ID] if i >= FIRST_WORD_ID else "<unk>")
        return words

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "normalization": "NFKC, lowercase, curly apostrophes to '",
            "pattern": PATTERN,
            "sequence_length": self.sequence_length,
            "padding": "pre",
            "truncation": "keep the first sequence_length words",
            "pad_id": PAD_ID,
            "oov_id": OOV_ID,
            "first_word_id": FIRST_WORD_ID,
            "words": list(self.words),
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_json(), ensure_ascii=False, indent=0) + "\n", "utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Read a vocabulary file, refusing one written under other rules.

        The rules are code, not data: a file whose recorded rules differ from
        this module's would give ids the model was not trained on.
        """
        data = json.loads(Path(path).read_text("utf-8"))
        expected = cls([], int(data.get("sequence_length", SEQUENCE_LENGTH))).to_json()
        for key in ("format", "pattern", "padding", "pad_id", "oov_id", "first_word_id"):
            if data.get(key) != expected[key]:
                raise ValueError(
                    f"{path}: {key} is {data.get(key)!r}, this tokenizer uses {expected[key]!r}"
                )
        return cls(data["words"], int(data["sequence_length"]))
