"""Large models: weights beyond ONNX's 2 GiB protobuf limit, kept as ONNX external data.

An ONNX file is one protobuf message, limited to 2 GiB, and TensorFlow's
GraphDef has the same limit: freezing the variables of a model whose weights
exceed it fails inside tf2onnx ("Cannot create a tensor proto whose content is
larger than 2GB"). tf2onnx's own ``large_model=True`` path freezes the same
way (it only splits the ONNX file afterwards) and is broken on NumPy 2 in
tf2onnx 1.17.0 (see /work/shared/reference/converter.md), so it is not used.

Instead the big variables never enter the GraphDef. The traced call is traced
again with each of them as an extra graph input, fed through
``keras.StatelessScope`` (Keras 3's way of calling a model with given values
for its variables), so the frozen graph holds only the small weights;
tf2onnx converts that graph, and :func:`attach_external` turns each extra
input into an initializer whose data lives in ``model.onnx.data`` beside
``model.onnx``, written straight from the Keras variable in chunks, with
offsets aligned to 64 KiB so that onnxruntime memory-maps each tensor instead
of copying it (it maps page-aligned offsets on Linux, 64 KiB-aligned ones on
Windows). The SHA-256 of each file is computed while it is written, for the
version folder's ``sha256sums``.

Measured cost (500 MB table, resident growth over the step, in multiples of
the weights): tracing 0.0x, ``tf_loader.from_function`` 0.87x (with only a
Dense bias captured as a variable; the cause inside TensorFlow's freezing or
grappler was not found), writing the data file 0.06x.

Which variables: when the model's weights total more than the threshold,
every variable of at least :data:`EXTERNAL_MIN_BYTES` (onnx's own default for
external data); below the threshold the model stays one self-contained file.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxserve.converter.errors import ExportError
from onnxserve.layout import EXTERNAL_DATA_FILENAME, MODEL_FILENAME

__all__ = [
    "DEFAULT_THRESHOLD_BYTES",
    "EXTERNAL_MIN_BYTES",
    "ExternalWeight",
    "StagedModel",
    "attach_external",
    "plan_external",
    "stateless_function",
    "write_staged",
]

#: Weights above this total go to external data by default. Keras' own ONNX export
#: switches to tf2onnx's large-model path at 1.5 GB; 1 GiB leaves headroom below the
#: 2 GiB limit for the graph, the small weights and tf2onnx's own constants.
DEFAULT_THRESHOLD_BYTES = 1 << 30
#: Variables smaller than this stay inside model.onnx (onnx's size_threshold default).
EXTERNAL_MIN_BYTES = 1024
#: Offsets of tensors in the data file are multiples of this (onnxruntime maps them).
ALIGNMENT = 1 << 16
#: Bytes copied out of a variable at a time while writing it.
CHUNK_BYTES = 64 << 20
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.\-]")


@dataclass(frozen=True)
class ExternalWeight:
    """One Keras variable kept out of the graph: its graph input name, and the variable."""

    name: str
    variable: Any
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


@dataclass
class StagedModel:
    """A model written to a folder: model.onnx and its data file, with their digests.

    ``files`` maps each file name to its SHA-256 (hex); ``size_bytes`` is their total.
    """

    folder: Path
    files: dict[str, str] = field(default_factory=dict)
    size_bytes: int = 0

    @property
    def model_path(self) -> Path:
        return self.folder / MODEL_FILENAME


def _nbytes(variable: Any) -> int:
    shape = tuple(int(d) for d in variable.shape)
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(str(variable.dtype)).itemsize


def plan_external(variables: Sequence[Any], threshold_bytes: int) -> list[ExternalWeight]:
    """The variables to keep out of the graph (none when the weights fit under the threshold)."""
    unique = list({id(v): v for v in variables}.values())
    if sum(_nbytes(v) for v in unique) <= threshold_bytes:
        return []
    chosen: list[ExternalWeight] = []
    used: set[str] = set()
    for variable in unique:
        if _nbytes(variable) < EXTERNAL_MIN_BYTES:
            continue
        try:
            dtype = np.dtype(str(variable.dtype))
            onnx.helper.np_dtype_to_tensor_dtype(dtype)
        except (TypeError, KeyError, ValueError):
            raise ExportError(
                f"variable '{variable.path}' has dtype {variable.dtype}, which cannot be "
                "written as ONNX external data here"
            ) from None
        base = _NAME_CHARS.sub("_", str(getattr(variable, "path", "") or variable.name))
        name, n = base, 1
        while name in used:
            n += 1
            name = f"{base}_{n}"
        used.add(name)
        shape = tuple(int(d) for d in variable.shape)
        chosen.append(ExternalWeight(name, variable, shape, dtype))
    return chosen


def stateless_function(function: Any, signature: Sequence[Any], weights: Sequence[Any]) -> Any:
    """The traced call again, with each external weight as one more input (see the docstring).

    ``function`` is the tf.function :mod:`onnxserve.converter.trace` made; its
    Python function is traced anew, so the variables are read from the scope.
    """
    import keras
    import tensorflow as tf

    call = function.python_function
    count = len(signature)
    variables = [w.variable for w in weights]
    specs = [
        *signature,
        *(tf.TensorSpec(w.shape, tf.as_dtype(w.dtype), name=w.name) for w in weights),
    ]

    def with_weights(*values: Any) -> Any:
        mapping = list(zip(variables, values[count:], strict=True))
        with keras.StatelessScope(state_mapping=mapping):
            return call(*values[:count])

    return tf.function(with_weights, input_signature=specs, autograph=False)


def attach_external(
    model: onnx.ModelProto, weights: Sequence[ExternalWeight]
) -> list[ExternalWeight]:
    """Turn the weight inputs tf2onnx made into initializers stored in the data file.

    Returns the weights the graph uses (a variable the traced call never reads,
    such as a Dropout layer's seed, leaves no input behind and is not written).
    Offsets are planned here (aligned, in order); :func:`write_staged` writes
    the bytes at exactly those offsets.
    """
    present = {value.name: value for value in model.graph.input}
    used = [w for w in weights if w.name in present]
    for weight in used:
        model.graph.input.remove(present[weight.name])
    offset = 0
    for weight in used:
        tensor = model.graph.initializer.add()
        tensor.name = weight.name
        tensor.data_type = onnx.helper.np_dtype_to_tensor_dtype(weight.dtype)
        tensor.dims.extend(weight.shape)
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, text in (
            ("location", EXTERNAL_DATA_FILENAME),
            ("offset", str(offset)),
            ("length", str(weight.nbytes)),
        ):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, text
        offset = _aligned(offset + weight.nbytes)
    return used


def _aligned(offset: int) -> int:
    return -(-offset // ALIGNMENT) * ALIGNMENT


def _rows_per_chunk(weight: ExternalWeight) -> int:
    if len(weight.shape) == 0 or weight.shape[0] == 0:
        return 1
    row = max(1, weight.nbytes // weight.shape[0])
    return max(1, CHUNK_BYTES // row)


def _chunks(weight: ExternalWeight) -> Any:
    """The variable's bytes, little-endian, C order, in pieces of about CHUNK_BYTES.

    Rows are gathered from the variable's resource (``ResourceGather``): slicing
    the variable reads, and copies, all of it first, measured on a 500 MB table
    at 1.9x its size at the peak against 0.27x (one chunk) this way.
    """
    import tensorflow as tf

    value = weight.variable.value  # the backend variable (a tf.Variable)
    dtype = weight.dtype.newbyteorder("<")
    if not weight.shape:
        yield np.ascontiguousarray(np.asarray(tf.convert_to_tensor(value)), dtype=dtype)
        return
    step = _rows_per_chunk(weight)
    for start in range(0, weight.shape[0], step):
        stop = min(start + step, weight.shape[0])
        piece = tf.raw_ops.ResourceGather(
            resource=value.handle, indices=tf.range(start, stop), dtype=value.dtype
        )
        yield np.ascontiguousarray(piece.numpy(), dtype=dtype)


def _write_file(path: Path, data: bytes) -> str:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return hashlib.sha256(data).hexdigest()


def write_staged(
    model: onnx.ModelProto, weights: Sequence[ExternalWeight], folder: Path
) -> StagedModel:
    """Write model.onnx and model.onnx.data into ``folder`` (created), hashing as it goes."""
    folder.mkdir(parents=True, exist_ok=True)
    staged = StagedModel(folder=folder)
    offsets = _offsets(model, weights)
    digest = hashlib.sha256()
    position = 0
    with open(folder / EXTERNAL_DATA_FILENAME, "wb") as handle:
        for weight in weights:
            padding = offsets[weight.name] - position
            if padding:
                zeros = bytes(padding)
                handle.write(zeros)
                digest.update(zeros)
                position += padding
            for piece in _chunks(weight):
                view = memoryview(piece).cast("B")
                handle.write(view)
                digest.update(view)
                position += view.nbytes
        handle.flush()
        os.fsync(handle.fileno())
    staged.files[EXTERNAL_DATA_FILENAME] = digest.hexdigest()
    data = model.SerializeToString()
    staged.files[MODEL_FILENAME] = _write_file(folder / MODEL_FILENAME, data)
    staged.size_bytes = position + len(data)
    return staged


def _offsets(model: onnx.ModelProto, weights: Sequence[ExternalWeight]) -> dict[str, int]:
    names = {w.name for w in weights}
    offsets: dict[str, int] = {}
    for tensor in model.graph.initializer:
        if tensor.name in names:
            entries = {e.key: e.value for e in tensor.external_data}
            offsets[tensor.name] = int(entries["offset"])
    return offsets
