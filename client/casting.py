"""Values to the datatype a model declares, without changing any: the SDK's and the CLI's casts.

Keras users pass Python lists and float64 arrays to ``predict`` all day, and
Keras casts them to the model's dtype; a server that checks datatypes (Triton,
onnxserve) refuses FP64 for an FP32 input instead. :meth:`Client.infer`
therefore casts each input to the datatype the model declares (asked once
with ModelMetadata and kept), and ``onnxserve infer`` does the same with
values from JSON and ``.npy`` files, both through :func:`to_declared`, so that
one rule holds for both:

- to an integer or BOOL datatype, only exactly: 1.0 becomes INT32 1, but 1.7,
  300 for INT8, NaN or infinity are refused (naming the input, the value, its
  index and what it would become);
- to a float datatype from integers, only exactly (2**24 + 1 does not fit FP32);
- to a narrower float from a wider float (float64 to FP32 or FP16), Keras'
  convention: rounding to the nearest value of the narrower type, as Keras and
  numpy do, while a finite value that would overflow to infinity is refused;
- BYTES takes str, bytes and object arrays as they are (and nothing numeric).

Everything here is a pure function of its arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from onnxserve.client.errors import InvalidInputError
from onnxserve.protocol import codec

__all__ = ["cast_inputs", "sentences_as_rows", "to_declared"]


def sentences_as_rows(value: Any) -> Any:
    """A str is one sentence and a list or tuple of str a batch of them: a BYTES tensor
    of shape (n, 1), one sentence per row, as text models take them (the converter's
    ``keras.Input(shape=(1,), dtype="string")``). Anything else is returned as it is."""
    if isinstance(value, str):
        return np.asarray([[value]], dtype=object)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return np.asarray(value, dtype=object).reshape(-1, 1)
    return value


def _is_float(dtype: np.dtype[Any]) -> bool:
    return dtype.kind == "f" or dtype.name == "bfloat16"


def _first_changed(
    name: str, array: np.ndarray, cast: np.ndarray, changed: np.ndarray, datatype: str
) -> str:
    index = tuple(int(i) for i in np.argwhere(changed)[0])
    where = f" at {list(index)}" if array.ndim else ""
    return (
        f"input '{name}': the model takes {datatype}, and the value {array[index].item()!r}"
        f"{where} would become {cast[index].item()!r}; give {datatype} values"
    )


def to_declared(name: str, array: np.ndarray, datatype: str | None) -> np.ndarray:
    """``array`` as the model's ``datatype`` (None: unknown, left as it is).

    Raises :class:`InvalidInputError` (before anything is sent) for a cast
    that would change a value; see the module docstring for the rule.
    """
    if datatype is None:
        return array
    if datatype == "BYTES":
        if array.dtype.kind in "OUS":
            return array
        raise InvalidInputError(f"input '{name}': the model takes BYTES (text), not {array.dtype}")
    try:
        target = codec.numpy_dtype(datatype)
    except (KeyError, ValueError, codec.CodecError):
        return array  # a datatype this client does not know: the server judges
    if array.dtype == target:
        return array
    if not (array.dtype.kind in "biu" or _is_float(array.dtype)):
        raise InvalidInputError(
            f"input '{name}': the model takes {datatype}, not {array.dtype} values"
        )
    with np.errstate(all="ignore"):
        cast = array.astype(target)
        if _is_float(target) and _is_float(array.dtype):
            wide = array.astype(np.float64)
            changed = np.isfinite(wide) & ~np.isfinite(cast.astype(np.float64))
        else:
            back = cast.astype(array.dtype)
            changed = ~((back == array) | (np.isnan(array) & np.isnan(back)))
            if target.kind in "biu":  # NaN and infinity have no integer value
                changed |= ~np.isfinite(array.astype(np.float64))
    if changed.any():
        raise InvalidInputError(_first_changed(name, array, cast, changed, datatype))
    return cast


def cast_inputs(
    inputs: Mapping[str, npt.ArrayLike], declared: Mapping[str, str]
) -> dict[str, npt.ArrayLike]:
    """Each input as its declared datatype (``declared``: input name -> datatype).

    Inputs the model does not declare are passed as they are (the server
    names them in its answer). For a BYTES input a str or a list of str is a
    batch of sentences, one per row (:func:`sentences_as_rows`); other lists of
    strings become an object array of their own shape.
    """
    cast: dict[str, npt.ArrayLike] = {}
    for name, value in inputs.items():
        datatype = declared.get(name)
        if datatype is None:
            cast[name] = value
            continue
        try:
            if datatype == "BYTES":
                value = sentences_as_rows(value)
            array = np.asarray(value, dtype=object if datatype == "BYTES" else None)
        except (TypeError, ValueError, OverflowError):
            raise InvalidInputError(
                f"input '{name}': the model takes {datatype}; give an array, or nested lists "
                "of numbers of one shape (not a ragged or mixed list)"
            ) from None
        if datatype == "BYTES" and array.dtype == object:
            other = next((e for e in array.flat if not isinstance(e, (str, bytes))), None)
            if other is not None:
                raise InvalidInputError(
                    f"input '{name}': the model takes BYTES (text), not {type(other).__name__} "
                    f"values such as {other!r}"
                )
        if array.dtype == object and datatype != "BYTES":
            raise InvalidInputError(
                f"input '{name}': the model takes {datatype}; give an array, or nested lists "
                "of numbers of one shape (not a ragged or mixed list)"
            )
        cast[name] = to_declared(name, array, datatype)
    return cast
