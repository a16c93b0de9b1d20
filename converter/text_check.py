"""The text check: a converted text model must tokenize and answer as Keras does.

The token ids of the ONNX preprocessing (:func:`onnxserve.converter.text.front_model`)
must equal the TextVectorization layer's on the user's sentences and on
:data:`~onnxserve.converter.text.HARD_SENTENCES`, and the whole model's outputs
must match Keras on them, every hard case alone and everything in mixed-length
batches; otherwise VerificationError names the sentence and nothing is written.
onnxruntime runs in a child process without TensorFlow
(:mod:`onnxserve.converter.isolated`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxserve.converter.errors import VerificationError
from onnxserve.converter.text import HARD_SENTENCES, TOKEN_IDS, TextFront, front_model

__all__ = ["TextCheck", "check_text"]


@dataclass(frozen=True)
class TextCheck:
    """What the text check compared: sentences, batch sizes, the largest difference."""

    sentences: int
    hard_cases: int
    batch_sizes: tuple[int, ...]
    max_abs: float

    def format(self) -> str:
        sizes = ", ".join(str(b) for b in self.batch_sizes)
        return (
            f"  text check vs Keras: token ids identical on {self.sentences} sentences "
            f"({self.hard_cases} hard cases), outputs max abs {self.max_abs:.3g} "
            f"at batch sizes {sizes}"
        )


def _show(sentence: str) -> str:
    text = repr(sentence)
    return text if len(text) <= 80 else text[:77] + "...'"


def _chunks(count: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, count)) for start in range(0, count, size)]


def check_text(
    model: Any,
    front: TextFront,
    reference: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]],
    text_name: str,
    other_inputs: Callable[[int], dict[str, np.ndarray]],
    sentences: Sequence[str],
    *,
    opset: int,
    max_batch_size: int,
    rtol: float,
    atol: float,
    progress: Callable[[str], None] | None = None,
) -> TextCheck:
    """Compare token ids and outputs with Keras; VerificationError naming the sentence.

    ``sentences`` are the user's (the training sentences, say); the hard cases
    are added. Token ids must be identical; outputs within ``atol + rtol *
    |reference|``, for every sentence alone and in mixed-length batches of up
    to ``max_batch_size``.
    """
    from onnxserve.converter.isolated import IsolatedRunError, run_isolated

    user = list(dict.fromkeys(str(s) for s in sentences))
    hard = [s for s in HARD_SENTENCES if s not in user]
    every = hard + user
    shape = (-1, *front.input_shape)

    def batch(part: Sequence[str]) -> np.ndarray:
        return np.asarray(list(part), dtype=object).reshape(shape)

    size = max(1, max_batch_size)
    id_parts = _chunks(len(every), size)
    # Every hard case alone, then everything in mixed-length batches of up to ``size``.
    parts = [slice(i, i + 1) for i in range(len(hard))] + id_parts
    # Keras once over every sentence (with a fixed length a row's answer does not depend
    # on its batch), in slices of the same rows for the ONNX runs.
    whole = {text_name: batch(every), **other_inputs(len(every))}
    feeds = [{name: value[p] for name, value in whole.items()} for p in parts]
    expected_ids = _keras_ids(front, every)
    try:
        id_runs, runs = run_isolated(
            [
                (
                    front_model(front, text_name, opset).SerializeToString(),
                    [{text_name: batch(every[p])} for p in id_parts],
                ),
                (model.SerializeToString(), feeds),
            ]
        )
    except IsolatedRunError as exc:
        raise VerificationError(f"onnxruntime cannot run the text model: {exc}") from exc
    for part, run in zip(id_parts, id_runs, strict=True):
        got = run[TOKEN_IDS]
        wrong = np.flatnonzero((got != expected_ids[part]).any(axis=1))
        if wrong.size:
            row = int(wrong[0])
            raise VerificationError(
                f"the ONNX text preprocessing tokenizes {_show(every[part][row])} as "
                f"{got[row].tolist()}, Keras' {front.layer.name} as "
                f"{expected_ids[part][row].tolist()} ({wrong.size} of {len(every[part])} "
                "sentences in that batch differ); nothing was written"
            )
    worst = 0.0
    reference_all = {
        name: np.concatenate(values)
        for name, values in _in_slices(reference, whole, len(every)).items()
    }
    for part, got in zip(parts, runs, strict=True):
        chosen = every[part]
        expected = {name: value[part] for name, value in reference_all.items()}
        for output, want in expected.items():
            have = np.asarray(got[output], dtype=np.float64).reshape(len(chosen), -1)
            want_f = np.asarray(want, dtype=np.float64).reshape(len(chosen), -1)
            error = np.abs(have - want_f)
            worst = max(worst, float(error.max(initial=0.0)))
            bad = np.flatnonzero((error > atol + rtol * np.abs(want_f)).any(axis=1))
            if bad.size:
                row = int(bad[0])
                raise VerificationError(
                    f"the ONNX model answers {_show(chosen[row])} (in a batch of "
                    f"{len(chosen)}) with output {output!r} {float(error[row].max()):.3g} away "
                    f"from Keras (rtol={rtol}, atol={atol}); nothing was written"
                )
    used_sizes = {len(every[p]) for p in parts}
    check = TextCheck(
        sentences=len(every),
        hard_cases=len(hard),
        batch_sizes=tuple(sorted(used_sizes)),
        max_abs=worst,
    )
    if progress is not None:
        progress(check.format().strip())
    return check


def _in_slices(
    reference: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]],
    feeds: Mapping[str, np.ndarray],
    count: int,
    size: int = 512,
) -> dict[str, list[np.ndarray]]:
    """The reference's outputs over ``count`` rows, computed ``size`` rows at a time."""
    outputs: dict[str, list[np.ndarray]] = {}
    for part in _chunks(count, size):
        for name, value in reference({k: v[part] for k, v in feeds.items()}).items():
            outputs.setdefault(name, []).append(np.asarray(value))
    return outputs


def _keras_ids(front: TextFront, sentences: Sequence[str]) -> np.ndarray:
    import tensorflow as tf

    values = tf.constant(np.asarray(list(sentences), dtype=object).reshape(-1, 1))
    return np.asarray(front.layer(values), dtype=np.int64)
