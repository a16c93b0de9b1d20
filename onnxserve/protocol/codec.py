"""Tensor codec of the Open Inference Protocol: numpy arrays <-> wire tensors.

Both the client and the server use this module, which is why it lives in the
light client package. Numeric tensors travel as raw little-endian bytes and are
decoded as zero-copy numpy views (``np.frombuffer``); BYTES tensors use the
protocol's framing, a 4-byte little-endian length before each element. Every
decoding failure raises :class:`CodecError` with a message that names what was
expected, so the server can answer INVALID_ARGUMENT with it as it stands.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Sequence
from typing import Any

import ml_dtypes
import numpy as np
import numpy.typing as npt

from onnxserve.protocol import grpc_service_pb2 as pb

__all__ = [
    "DATATYPES",
    "CodecError",
    "array_to_contents",
    "array_to_raw",
    "bytes_tensor_frames",
    "contents_to_array",
    "datatype_of",
    "decode_output",
    "deserialize_bytes_tensor",
    "element_count",
    "encode_input",
    "item_size",
    "numpy_dtype",
    "raw_to_array",
    "serialize_bytes_tensor",
]


class CodecError(ValueError):
    """A tensor could not be encoded or decoded; the message says why."""


# Protocol datatype -> numpy dtype as it travels on the wire (little-endian).
_WIRE_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "BYTES": np.dtype(np.object_),
}

DATATYPES: tuple[str, ...] = tuple(_WIRE_DTYPES)

# Which InferTensorContents field carries each datatype when a request is not
# raw. FP16 and BF16 have none: they can only travel raw.
_CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

_BYTES_KINDS = frozenset("OSU")  # object, bytes_, str_
_LENGTH = struct.Struct("<I")


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    """The numpy dtype that holds a protocol datatype (object for BYTES)."""
    try:
        return _WIRE_DTYPES[datatype]
    except KeyError:
        raise CodecError(
            f"unknown datatype '{datatype}'; expected one of {', '.join(DATATYPES)}"
        ) from None


def item_size(datatype: str) -> int:
    """Bytes per element on the wire; 0 for BYTES, whose elements vary."""
    return 0 if datatype == "BYTES" else numpy_dtype(datatype).itemsize


def datatype_of(array: npt.ArrayLike) -> str:
    """The protocol datatype for a numpy array (str, bytes and object arrays are BYTES)."""
    dtype = np.asarray(array).dtype
    if dtype.kind in _BYTES_KINDS:
        return "BYTES"
    if dtype == ml_dtypes.bfloat16:
        return "BF16"
    for name, wire in _WIRE_DTYPES.items():
        if name != "BYTES" and wire == dtype.newbyteorder("<"):
            return name
    raise CodecError(f"numpy dtype {dtype} has no Open Inference Protocol datatype")


def element_count(shape: Sequence[int]) -> int:
    """Number of elements of a shape; raises on negative dimensions."""
    count = 1
    for dim in shape:
        if dim < 0:
            raise CodecError(f"shape {list(shape)} has a negative dimension")
        count *= int(dim)
    return count


def serialize_bytes_tensor(array: npt.ArrayLike) -> bytes:
    """Frame each element as a 4-byte little-endian length and its bytes (row-major)."""
    flat = np.asarray(array, dtype=object).reshape(-1)
    parts: list[bytes] = []
    for element in flat:
        if isinstance(element, str):
            data = element.encode("utf-8")
        elif isinstance(element, (bytes, bytearray, memoryview)):
            data = bytes(element)
        else:
            data = str(element).encode("utf-8")
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def bytes_tensor_frames(
    buffer: bytes | memoryview, count: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths): where each framed BYTES element's bytes lie in ``buffer`` (int64).

    With ``count`` given, the buffer must hold exactly that many elements, and
    parsing stops as soon as it cannot. Elements that all have one length (16M
    empty strings, fixed-width ids) are found with numpy alone; otherwise a
    loop reads the lengths and keeps only integers (no object per element).
    """
    total = len(buffer)
    if total >= 4:
        (first,) = _LENGTH.unpack_from(buffer, 0)
        stride = 4 + first
        elements = total // stride
        if total % stride == 0 and (count is None or elements == count):
            prefixes = np.ndarray((elements,), "<u4", buffer, 0, (stride,))
            if bool((prefixes == first).all()):
                starts = np.arange(elements, dtype=np.int64) * stride + 4
                return starts, np.full(elements, first, dtype=np.int64)
    found = array("q")
    append = found.append
    unpack = _LENGTH.unpack_from
    limit = total + 1 if count is None else count
    offset = 0
    while offset < total:
        if len(found) == limit:
            raise CodecError(f"BYTES tensor holds more elements than the {count} its shape needs")
        if offset + 4 > total:
            raise CodecError(
                f"malformed BYTES tensor: element {len(found)} has a truncated "
                f"4-byte length prefix at byte {offset}"
            )
        (length,) = unpack(buffer, offset)
        offset += 4
        if offset + length > total:
            raise CodecError(
                f"malformed BYTES tensor: element {len(found)} declares {length} bytes "
                f"but only {total - offset} remain"
            )
        append(offset)
        offset += length
    if count is not None and len(found) != count:
        raise CodecError(f"BYTES tensor holds {len(found)} elements but its shape needs {count}")
    starts = np.frombuffer(found, dtype=np.int64) if found else np.zeros(0, dtype=np.int64)
    lengths = np.empty_like(starts)
    if len(starts):
        lengths[:-1] = starts[1:] - 4 - starts[:-1]
        lengths[-1] = total - starts[-1]
    return starts, lengths


def deserialize_bytes_tensor(buffer: bytes | memoryview, count: int | None = None) -> np.ndarray:
    """Parse framed BYTES elements into a 1-D object array of ``bytes``.

    With ``count`` given, the buffer must hold exactly that many elements.
    """
    starts, lengths = bytes_tensor_frames(buffer, count)
    view = memoryview(buffer)
    result = np.empty(len(starts), dtype=object)
    result[:] = [
        view[start : start + length].tobytes()
        for start, length in zip(starts.tolist(), lengths.tolist(), strict=True)
    ]
    return result


def raw_to_array(raw: bytes, datatype: str, shape: Sequence[int]) -> np.ndarray:
    """Decode raw tensor bytes; numeric tensors become a read-only zero-copy view."""
    count = element_count(shape)
    if datatype == "BYTES":
        return deserialize_bytes_tensor(raw, count).reshape(tuple(shape))
    dtype = numpy_dtype(datatype)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise CodecError(
            f"raw content holds {len(raw)} bytes but shape {list(shape)} of {datatype} "
            f"needs {expected} ({count} x {dtype.itemsize})"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(tuple(shape))


def array_to_raw(array: np.ndarray, datatype: str | None = None) -> bytes:
    """Encode an array as raw little-endian bytes (BYTES with length framing)."""
    datatype = datatype or datatype_of(array)
    if datatype == "BYTES":
        return serialize_bytes_tensor(array)
    wire = numpy_dtype(datatype)
    arr = np.asarray(array)
    if arr.dtype != wire:
        arr = arr.astype(wire)
    return arr.tobytes(order="C")


def contents_to_array(
    contents: pb.InferTensorContents, datatype: str, shape: Sequence[int]
) -> np.ndarray:
    """Decode typed (non-raw) contents, checking the element count against the shape."""
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        if datatype in _WIRE_DTYPES:
            raise CodecError(f"{datatype} tensors can only be sent as raw contents")
        numpy_dtype(datatype)  # raises the unknown-datatype error
    assert field is not None
    values = getattr(contents, field)
    count = element_count(shape)
    if len(values) != count:
        raise CodecError(
            f"{field} holds {len(values)} elements but shape {list(shape)} needs {count}"
        )
    if datatype == "BYTES":
        result = np.empty(count, dtype=object)
        result[:] = list(values)
        return result.reshape(tuple(shape))
    dtype = numpy_dtype(datatype)
    try:
        array = np.fromiter(values, dtype=dtype, count=count)
    except OverflowError:
        raise CodecError(f"{field} holds a value out of range for {datatype}") from None
    return array.reshape(tuple(shape))


def array_to_contents(array: np.ndarray, datatype: str, contents: pb.InferTensorContents) -> None:
    """Fill typed contents from an array (the form clients that avoid raw bytes read)."""
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        raise CodecError(f"{datatype} tensors can only be sent as raw contents")
    flat = np.asarray(array).reshape(-1)
    target = getattr(contents, field)
    if datatype == "BYTES":
        target.extend(e.encode("utf-8") if isinstance(e, str) else bytes(e) for e in flat.tolist())
    else:
        target.extend(flat.tolist())


def encode_input(
    name: str, value: npt.ArrayLike, datatype: str | None = None
) -> tuple[pb.ModelInferRequest.InferInputTensor, bytes]:
    """An input tensor's description and its raw bytes, ready for a raw request.

    ``datatype`` defaults to :func:`datatype_of` the array (str, bytes and
    object arrays are BYTES); given, the array is cast to it first, which lets
    a caller send a Python list of floats as FP32. The array itself is not
    copied beyond the one serialisation into bytes that protobuf requires.
    """
    array = np.asarray(value)
    if datatype is None:
        datatype = datatype_of(array)
    else:
        numpy_dtype(datatype)  # raises the unknown-datatype error
        if datatype != "BYTES" and array.dtype.kind in _BYTES_KINDS:
            raise CodecError(f"input '{name}': a {array.dtype} array cannot be sent as {datatype}")
    tensor = pb.ModelInferRequest.InferInputTensor(
        name=name, datatype=datatype, shape=[int(d) for d in array.shape]
    )
    return tensor, array_to_raw(array, datatype)


def decode_output(tensor: pb.ModelInferResponse.InferOutputTensor, raw: bytes | None) -> np.ndarray:
    """One output tensor as an array: from its raw bytes when given, else its typed contents.

    Numeric raw outputs are read-only zero-copy views of ``raw``; BYTES outputs
    are object arrays of ``bytes``.
    """
    shape = tuple(int(d) for d in tensor.shape)
    try:
        if raw is not None:
            return raw_to_array(raw, tensor.datatype, shape)
        return contents_to_array(tensor.contents, tensor.datatype, shape)
    except CodecError as exc:
        raise CodecError(f"output '{tensor.name}': {exc}") from None
