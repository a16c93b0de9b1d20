"""Datatype names across the three vocabularies the server meets.

config.pbtxt speaks ``TYPE_*`` (``inference.DataType``), the wire speaks the
protocol's names (FP32, BYTES...), and onnxruntime speaks ``tensor(float)``.
"""

from __future__ import annotations

from onnxserve.protocol import model_config_pb2 as mc

# Protocol datatype <-> config enum. TYPE_STRING is BYTES on the wire.
_CONFIG_TO_PROTOCOL: dict[int, str] = {
    mc.TYPE_BOOL: "BOOL",
    mc.TYPE_UINT8: "UINT8",
    mc.TYPE_UINT16: "UINT16",
    mc.TYPE_UINT32: "UINT32",
    mc.TYPE_UINT64: "UINT64",
    mc.TYPE_INT8: "INT8",
    mc.TYPE_INT16: "INT16",
    mc.TYPE_INT32: "INT32",
    mc.TYPE_INT64: "INT64",
    mc.TYPE_FP16: "FP16",
    mc.TYPE_FP32: "FP32",
    mc.TYPE_FP64: "FP64",
    mc.TYPE_STRING: "BYTES",
    mc.TYPE_BF16: "BF16",
}
_PROTOCOL_TO_CONFIG = {v: k for k, v in _CONFIG_TO_PROTOCOL.items()}

_ORT_TO_PROTOCOL: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
    "tensor(bfloat16)": "BF16",
}


def config_to_protocol(data_type: int) -> str | None:
    """``TYPE_FP32`` -> ``FP32``; None for TYPE_INVALID or an unknown value."""
    return _CONFIG_TO_PROTOCOL.get(data_type)


def protocol_to_config(datatype: str) -> int:
    return _PROTOCOL_TO_CONFIG[datatype]


def ort_to_protocol(ort_type: str) -> str | None:
    """``tensor(float)`` -> ``FP32``; None for types the protocol cannot carry (maps, sequences)."""
    return _ORT_TO_PROTOCOL.get(ort_type)


def config_type_name(data_type: int) -> str:
    return mc.DataType.Name(data_type) if data_type in _CONFIG_TO_PROTOCOL else str(data_type)
