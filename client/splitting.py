"""A batch larger than the model's max_batch_size, as several requests and one answer.

Keras' ``predict`` splits a large input into batches by itself; a server
refuses a request of more rows than the model's ``max_batch_size``
(INVALID_ARGUMENT). ``infer(..., split_batches=True)`` cuts such a request
into parts of at most ``max_batch_size`` rows along the first dimension, sends
them at once (the server's batcher runs them side by side) and joins the
parts' outputs in order. Opt-in, because the parts are separate requests: they
are not atomic (one may fail after others ran; the call then raises the first
part's error), each counts in the server's statistics, and each carries the
call's request id and parameters. Pure functions; the clients send the parts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from onnxserve.client.errors import InvalidInputError

__all__ = ["join_outputs", "split_rows"]


def split_rows(
    inputs: Mapping[str, npt.ArrayLike], max_rows: int
) -> list[dict[str, npt.ArrayLike]]:
    """``inputs`` cut into parts of at most ``max_rows`` rows (one part if it fits).

    ``max_rows`` 0 or less (a model that does not batch) leaves the request
    whole. Every input must have the same number of rows, as the server
    requires of a batch.
    """
    if max_rows <= 0 or not inputs:
        return [dict(inputs)]
    arrays = {name: np.asarray(value) for name, value in inputs.items()}
    rows = {name: (array.shape[0] if array.ndim else None) for name, array in arrays.items()}
    counts = set(rows.values())
    if None in counts or len(counts) != 1:
        listed = ", ".join(f"'{n}' {r if r is not None else 'none'}" for n, r in rows.items())
        raise InvalidInputError(
            f"split_batches needs every input to have the same number of rows (the first "
            f"dimension); they have {listed}"
        )
    (total,) = counts
    assert total is not None
    if total <= max_rows:
        return [dict(inputs)]
    return [
        {name: array[start : start + max_rows] for name, array in arrays.items()}
        for start in range(0, total, max_rows)
    ]


def join_outputs(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The parts' outputs joined along the first dimension, in the parts' order."""
    if len(parts) == 1:
        return dict(parts[0])
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
