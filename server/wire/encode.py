"""Write a ModelInferResponse as wire bytes, without the generated classes.

A raw answer (the request came raw, or an output is FP16/BF16) is laid out as
protobuf itself serialises ``inference.ModelInferResponse``, fields in number
order: ``model_name`` 1, ``model_version`` 2, ``id`` 3, then each output's
InferOutputTensor (``outputs`` 5: name 1, datatype 2, packed shape 3), then each
output's bytes (``raw_output_contents`` 6); empty strings and shapes are left
out, as proto3 does. The parts that are the same for every answer of a model
(its name and version, each output's name and datatype, the shapes seen) are
built once and cached; per answer only the id, the lengths and the tensors'
bytes are written. A typed answer (the request sent typed contents) is built
with the generated class, as before.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np

from onnxserve.protocol import codec
from onnxserve.server.inference import (
    DecodedRequest,
    ModelSignature,
    encode_response,
    wants_raw_output,
)

__all__ = ["encode_infer_response"]

_SMALL = [bytes((n,)) for n in range(0x80)]
_UINT64_MASK = (1 << 64) - 1
# Tags (field number << 3 | wire type 2) of the length-delimited fields written here.
_NAME = b"\x0a"  # model_name, and InferOutputTensor.name
_VERSION = b"\x12"  # model_version, and InferOutputTensor.datatype
_ID = b"\x1a"  # id, and InferOutputTensor.shape
_OUTPUT = b"\x2a"
_RAW = b"\x32"


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _SMALL[value]
    value &= _UINT64_MASK
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    return tag + _varint(len(payload)) + payload


@functools.lru_cache(maxsize=1024)
def _header(model_name: str, model_version: str) -> bytes:
    """Fields 1 and 2, the same for every answer of one model version."""
    head = b""
    if model_name:
        head += _field(_NAME, model_name.encode())
    if model_version:
        head += _field(_VERSION, model_version.encode())
    return head


@functools.lru_cache(maxsize=4096)
def _output_tensor(name: str, datatype: str, shape: tuple[int, ...]) -> bytes:
    """One ``outputs`` field (tag, length and InferOutputTensor) for one shape."""
    tensor = _field(_NAME, name.encode()) if name else b""
    if datatype:
        tensor += _field(_VERSION, datatype.encode())
    if shape:
        tensor += _field(_ID, b"".join(_varint(dim) for dim in shape))
    return _field(_OUTPUT, tensor)


def encode_infer_response(
    request: DecodedRequest, outputs: Mapping[str, np.ndarray], model: ModelSignature
) -> bytes:
    """The serialised ModelInferResponse for ``request``'s ``outputs``."""
    if not wants_raw_output(request, model):
        return encode_response(request, outputs, model).SerializeToString()
    parts = [_header(request.model_name, request.model_version)]
    if request.id:
        parts.append(_field(_ID, request.id.encode()))
    raws = []
    specs = model.outputs
    for name in request.output_names:
        array = outputs[name]
        datatype = specs[name].datatype
        parts.append(_output_tensor(name, datatype, array.shape))
        raw = codec.array_to_raw(array, datatype)
        raws.append(_RAW + _varint(len(raw)))
        raws.append(raw)
    parts += raws
    return b"".join(parts)
