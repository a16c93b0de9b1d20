"""Loading a large .keras file without holding its weights several times over.

``keras.saving.load_model`` (Keras 3.15) costs about five times the weights at
its peak, measured here on a 500 MB model (RSS growth 5.1x, 3.1x left after
the load): building the model runs each initializer (a random uniform table
leaves 3x behind in TensorFlow's allocator), the weights file is read whole
into memory when Keras thinks memory suffices, and each weight is read into
numpy, copied into a tensor and copied again into its variable. For a model
whose weights file is over :data:`LEAN_ABOVE_BYTES`, :func:`lean_loading`
changes four things for the duration of the load only:

- variables are created as zeros (the file overwrites every one of them; a
  variable the file lacks fails the load, as it does in Keras);
- the weights file is extracted beside the model file (or read from the zip
  where that folder is not writable) instead of read into memory;
- a weight over :data:`CHUNK_BYTES` is read from the HDF5 file lazily, and
- assigned into its variable in row chunks, in place.

Measured on the 500 MB model: the load's peak growth went from 6.1x to 1.5x the
weights (1.2x left after it), with the same outputs; README "Models over 2 GB"
has the figures of the 2.3 GB one. These are Keras internals
(``saving_lib.is_memory_sufficient``, ``H5IOStore.__getitem__``, the backend
Variable's ``_initialize_with_initializer`` and ``assign``); where one is
missing (another Keras), the load runs as Keras does it, only costlier.
"""

from __future__ import annotations

import contextlib
import logging
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

__all__ = ["LEAN_ABOVE_BYTES", "lean_loading", "weights_member_bytes"]

log = logging.getLogger(__name__)

#: Weights files above this size are loaded the lean way.
LEAN_ABOVE_BYTES = 256 << 20
#: Weights above this size are copied into their variable this many bytes at a time.
CHUNK_BYTES = 64 << 20
_WEIGHTS_MEMBER = "model.weights.h5"


def weights_member_bytes(path: Path) -> int:
    """The size of the weights file inside a .keras archive (0 for anything else)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return int(archive.getinfo(_WEIGHTS_MEMBER).file_size)
    except (OSError, KeyError, zipfile.BadZipFile):
        return 0


class _LazyWeight:
    """An HDF5 dataset standing in for its numpy array until it is assigned."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.shape = tuple(dataset.shape)
        self.dtype = np.dtype(dataset.dtype)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self.dataset[()], dtype=dtype)


@contextlib.contextmanager
def lean_loading() -> Iterator[None]:
    """Patch Keras for one load (see the module docstring); a no-op where it cannot."""
    try:
        from keras.src import backend, ops
        from keras.src.saving import saving_lib
    except ImportError:
        yield
        return
    variable = backend.Variable
    entry = getattr(saving_lib, "H5IOStore", None)
    needed = (
        hasattr(saving_lib, "is_memory_sufficient"),
        hasattr(variable, "_initialize_with_initializer"),
        entry is not None and hasattr(entry, "__getitem__"),
    )
    if not all(needed):
        log.info("this Keras lacks what the lean load of a large model patches: loading as is")
        yield
        return
    original_get = entry.__getitem__
    original_assign = variable.assign

    def zeros(self: Any, initializer: Any) -> None:
        # A callable: TensorFlow makes the zeros inside the variable, so no other
        # tensor shares its buffer (a shared one is copied on the first write).
        self._initialize(lambda: ops.zeros(self._shape, dtype=self._dtype))

    def get(self: Any, key: str) -> Any:
        dataset = saving_lib.safe_get_h5_dataset(self._h5_entry_group, key)
        shape = tuple(getattr(dataset, "shape", None) or ())
        attributes = getattr(dataset, "attrs", {})
        if (
            not shape
            or ("dtype" in attributes and attributes["dtype"] == "bfloat16")
            or int(np.prod(shape)) * np.dtype(dataset.dtype).itemsize <= CHUNK_BYTES
        ):
            return original_get(self, key)
        return _LazyWeight(dataset)

    def assign(self: Any, value: Any) -> Any:
        if not isinstance(value, _LazyWeight):
            return original_assign(self, value)
        if tuple(value.shape) != tuple(self.shape):
            raise ValueError(
                f"the weights file has shape {value.shape} for {self.path}, the model "
                f"{tuple(self.shape)}"
            )
        row = max(1, value.dtype.itemsize * int(np.prod(value.shape[1:])))
        step = max(1, CHUNK_BYTES // row)
        import tensorflow as tf

        handle = self.value.handle  # the backend's own variable (a tf.Variable)
        rank = len(value.shape)
        for start in range(0, value.shape[0], step):
            stop = min(start + step, value.shape[0])
            piece = np.asarray(value.dataset[start:stop], dtype=self.dtype)
            # Written in place: reading the variable first (variable[a:b].assign) would
            # share its buffer with the read and copy all of it on every chunk.
            tf.raw_ops.ResourceStridedSliceAssign(
                ref=handle,
                begin=[start] + [0] * (rank - 1),
                end=[stop, *value.shape[1:]],
                strides=[1] * rank,
                value=piece,
            )
        return self

    with (
        mock.patch.object(saving_lib, "is_memory_sufficient", return_value=False),
        mock.patch.object(variable, "_initialize_with_initializer", zeros),
        mock.patch.object(entry, "__getitem__", get),
        mock.patch.object(variable, "assign", assign),
    ):
        yield
