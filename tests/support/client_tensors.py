"""Test tensors for the client's datatype round trips, shared by its test modules."""

from __future__ import annotations

import ml_dtypes
import numpy as np


def identity_input(datatype: str) -> np.ndarray:
    """A [3, 4] input for identity_<datatype> with values that show width, sign and precision."""
    if datatype == "BYTES":
        return np.array(
            [["", "a", "é€", "x" * 300], [b"\x7f\x01", b"nul\x00in", "日本", "z"], list("abcd")],
            dtype=object,
        )
    if datatype == "BOOL":
        return (np.arange(12).reshape(3, 4) % 3) == 0
    dtype = {"BF16": np.dtype(ml_dtypes.bfloat16)}.get(datatype) or np.dtype(
        {"FP16": "f2", "FP32": "f4", "FP64": "f8"}.get(datatype) or datatype.lower()
    )
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = [info.min, info.max, 0, 1, *range(8)]
        return np.array(values, dtype=dtype).reshape(3, 4)
    return (np.arange(12, dtype=np.float64).reshape(3, 4) * 0.5 - 2.25).astype(dtype)


def expected_bytes(array: np.ndarray) -> list[bytes]:
    return [e.encode() if isinstance(e, str) else bytes(e) for e in array.reshape(-1)]
