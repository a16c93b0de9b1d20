"""What an explanation is about: one input row split into features, and rows with some removed.

A *feature* is the unit an attribution is given to: a word of a sentence (a
text-in model's BYTES input), a token of a token-id input, a pixel or a square
patch of pixels of an image, a column of a tabular row. Every method works on
masks over the features (1 keeps a feature, 0 removes it) and asks
:meth:`FeatureSpace.rows` for the model inputs that those masks stand for, so
that what "removed" means is decided here, once per kind:

- words: left out of the sentence, which is rejoined with single spaces;
- tokens: left out of the sequence, which is padded again on the side it was
  padded on (so the model sees the sentence without that word, exactly as the
  tokenizer would have encoded it);
- pixels and patches: set to ``baseline`` (0: black, or a grey level you give);
- columns: set to ``baseline`` (a number, or one per column).

Labels are free of whitespace (the text-based estimators split on it) and
never contain :data:`MASK_MARK`, the placeholder those estimators leave where
a feature was removed.

Pure numpy: no onnxruntime, shap or lime.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

__all__ = [
    "MASK_MARK",
    "FeatureKind",
    "FeatureSpace",
    "TokenCodec",
    "masks_of_texts",
]

FeatureKind = Literal["text", "tokens", "image", "tabular"]
#: Stands for a removed feature in the strings the text estimators build (U+2400, SYMBOL FOR NULL).
MASK_MARK = "\u2400"
_PIECE = re.compile(rf"{MASK_MARK}|[^\s{MASK_MARK}]+")


class TokenCodec(Protocol):
    """What explanations need of a token-id model's tokenizer (for Keras' TextVectorization,
    a few lines around its call and ``get_vocabulary()``).

    ``encode`` turns sentences into one row of ids each; ``decode`` gives the
    words behind ids, dropping padding.
    """

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...

    def decode(self, ids: Iterable[int]) -> list[str]: ...


def _label(text: str) -> str:
    """A label without whitespace or the mask mark (the text estimators split on whitespace)."""
    return re.sub(r"\s+", "_", text).replace(MASK_MARK, "?") or "_"


@dataclass(frozen=True)
class FeatureSpace:
    """One input row, its features, and how to build rows with features removed.

    ``row`` is the explained input without its batch dimension. ``positions``
    say where each feature sits in the row (word or token index; top-left
    pixel of a patch; column). ``segments`` maps each pixel of an image to its
    feature (None for other kinds).
    """

    kind: FeatureKind
    row: np.ndarray
    labels: tuple[str, ...]
    positions: tuple[tuple[int, ...], ...]
    values: tuple[str | float, ...]
    baseline: np.ndarray | float = 0.0
    pad_id: int = 0
    padding: Literal["pre", "post"] = "pre"
    segments: np.ndarray | None = field(default=None, repr=False)

    @property
    def size(self) -> int:
        """The number of features."""
        return len(self.labels)

    @property
    def text(self) -> str:
        """The features' labels joined by spaces: what the text estimators perturb."""
        return " ".join(self.labels)

    def rows(self, masks: np.ndarray) -> np.ndarray:
        """Model input rows, one per mask (``(m, size)``, true keeps): ``(m, *row.shape)``."""
        masks = np.asarray(masks).astype(bool).reshape(-1, self.size)
        if self.kind == "text":
            return self._text_rows(masks)
        if self.kind == "tokens":
            return self._token_rows(masks)
        if self.kind == "image":
            assert self.segments is not None
            keep = masks[:, self.segments]  # (m, H, W)
            while keep.ndim < self.row.ndim + 1:  # channels follow the pixel
                keep = keep[..., np.newaxis]
            return np.where(keep, self.row, np.asarray(self.baseline, self.row.dtype))
        return np.where(masks, self.row, np.asarray(self.baseline, self.row.dtype))

    def _text_rows(self, masks: np.ndarray) -> np.ndarray:
        words = np.array(self.labels, dtype=object)
        out = np.empty((len(masks), *self.row.shape), dtype=object)
        flat = out.reshape(len(masks), -1)
        for i, mask in enumerate(masks):
            flat[i, 0] = " ".join(words[mask]).encode("utf-8")
        return out

    def _token_rows(self, masks: np.ndarray) -> np.ndarray:
        length = self.row.shape[-1]
        ids = np.array([self.row[p[0]] for p in self.positions], dtype=self.row.dtype)
        out = np.full((len(masks), length), self.pad_id, dtype=self.row.dtype)
        for i, mask in enumerate(masks):
            kept = ids[mask]
            if not len(kept):
                continue
            if self.padding == "pre":
                out[i, length - len(kept) :] = kept
            else:
                out[i, : len(kept)] = kept
        return out

    # -- constructors, one per kind ---------------------------------------------------

    @classmethod
    def of_text(cls, row: np.ndarray) -> FeatureSpace:
        """A BYTES row holding one sentence: its whitespace-separated words."""
        if row.size != 1:
            raise ValueError(
                f"a text input is explained one sentence at a time; this row holds {row.size}"
            )
        value = row.reshape(-1)[0]
        sentence = value.decode("utf-8") if isinstance(value, bytes) else str(value)
        if MASK_MARK in sentence:
            raise ValueError(f"the sentence contains {MASK_MARK!r}, which marks removed words")
        words = tuple(sentence.split())
        if not words:
            raise ValueError("the sentence has no words to explain")
        return cls(
            kind="text",
            row=np.asarray(row, dtype=object),
            labels=words,
            positions=tuple((i,) for i in range(len(words))),
            values=words,
        )

    @classmethod
    def of_tokens(
        cls,
        row: np.ndarray,
        *,
        tokenizer: TokenCodec | None = None,
        pad_id: int = 0,
        padding: Literal["pre", "post"] | None = None,
    ) -> FeatureSpace:
        """A row of token ids: every id but padding is a feature, labelled with its word."""
        if row.ndim != 1:
            raise ValueError(f"token ids are one row of ids; this row has shape {list(row.shape)}")
        where = [int(i) for i in np.flatnonzero(row != pad_id)]
        if not where:
            raise ValueError("the token row is all padding: nothing to explain")
        if padding is None:
            padding = "post" if row[0] != pad_id and row[-1] == pad_id else "pre"
        labels = []
        for i in where:
            words = tokenizer.decode([int(row[i])]) if tokenizer is not None else []
            labels.append(_label(words[0]) if words else f"#{int(row[i])}")
        return cls(
            kind="tokens",
            row=row,
            labels=tuple(labels),
            positions=tuple((i,) for i in where),
            values=tuple(int(row[i]) for i in where),
            pad_id=pad_id,
            padding=padding,
        )

    @classmethod
    def of_image(cls, row: np.ndarray, *, patch: int = 1, baseline: float = 0.0) -> FeatureSpace:
        """An image (H, W) or (H, W, C): square patches of ``patch`` pixels a side."""
        if row.ndim not in (2, 3):
            raise ValueError(f"an image row is (H, W) or (H, W, C); this one is {list(row.shape)}")
        if patch < 1:
            raise ValueError("patch must be 1 or more pixels")
        height, width = row.shape[:2]
        across = -(-width // patch)
        r, c = np.indices((height, width))
        segments = (r // patch) * across + c // patch
        labels, positions, values = [], [], []
        for index in range(int(segments.max()) + 1):
            rows, cols = np.nonzero(segments == index)
            top, left = int(rows.min()), int(cols.min())
            bottom, right = int(rows.max()) + 1, int(cols.max()) + 1
            labels.append(
                f"({top},{left})" if patch == 1 else f"rows{top}:{bottom},cols{left}:{right}"
            )
            positions.append((top, left))
            values.append(float(np.mean(row[top:bottom, left:right])))
        return cls(
            kind="image",
            row=row,
            labels=tuple(labels),
            positions=tuple(positions),
            values=tuple(values),
            baseline=float(baseline),
            segments=segments,
        )

    @classmethod
    def of_columns(
        cls,
        row: np.ndarray,
        *,
        baseline: float | Sequence[float] = 0.0,
        names: Sequence[str] | None = None,
    ) -> FeatureSpace:
        """A tabular row: each column a feature, removed by setting it to ``baseline``."""
        if row.ndim != 1:
            raise ValueError(f"a tabular row is one row of columns; this one is {list(row.shape)}")
        if names is not None and len(names) != row.shape[0]:
            raise ValueError(f"{len(names)} column names for {row.shape[0]} columns")
        base = np.asarray(baseline, dtype=np.float64)
        if base.ndim and base.shape != row.shape:
            raise ValueError(f"{base.size} baseline values for {row.shape[0]} columns")
        labels = (
            tuple(_label(n) for n in names)
            if names
            else tuple(f"[{i}]" for i in range(row.shape[0]))
        )
        return cls(
            kind="tabular",
            row=row,
            labels=labels,
            positions=tuple((i,) for i in range(row.shape[0])),
            values=tuple(float(v) for v in row),
            baseline=base if base.ndim else float(base),
        )


def masks_of_texts(texts: Iterable[object], size: int) -> np.ndarray:
    """Masks back from the strings a text estimator built from :attr:`FeatureSpace.text`.

    Each removed feature is one :data:`MASK_MARK`, each kept one its label, in
    order; anything else is an error (it would misplace attributions).
    """
    rows = []
    for text in texts:
        pieces = _PIECE.findall(str(text))
        if len(pieces) != size:
            raise RuntimeError(
                f"the estimator built a text of {len(pieces)} pieces for {size} features"
            )
        rows.append([piece != MASK_MARK for piece in pieces])
    return np.array(rows, dtype=bool).reshape(-1, size)
