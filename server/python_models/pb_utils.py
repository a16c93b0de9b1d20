"""``triton_python_backend_utils``, as a Triton Python-backend model.py imports it.

The stub (:mod:`.stub`) makes this module importable under Triton's name, so
``import triton_python_backend_utils as pb_utils`` works unchanged. What is
here is Triton's API for the common case, with Triton's names and meanings:

- :class:`Tensor` (``Tensor(name, numpy_array)``, ``as_numpy()``, ``name()``,
  ``shape()``, ``is_cpu()``, ``from_dlpack``/``to_dlpack``); BYTES tensors are
  numpy object arrays of ``bytes``, as in Triton;
- :class:`InferenceRequest` (what ``execute`` receives, and what a model builds
  for a BLS call: ``exec()`` / ``async_exec()``) and :class:`InferenceResponse`;
- :class:`TritonError` (codes as in Triton) and :class:`TritonModelException`;
- the helpers ``get_input_tensor_by_name``, ``get_output_tensor_by_name``,
  ``get_input_config_by_name``, ``get_output_config_by_name``,
  ``triton_string_to_numpy``, ``numpy_to_triton_type``, ``triton_to_numpy_type``,
  ``serialize_byte_tensor``, ``deserialize_bytes_tensor``, and ``Logger``.

:class:`ModelConfig` is what ``auto_complete_config`` gets, so a model may
declare its own inputs and outputs. Not offered (raise saying so): decoupled
response senders and GPU tensors.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "TRITONSERVER_REQUEST_FLAG_SEQUENCE_END",
    "TRITONSERVER_REQUEST_FLAG_SEQUENCE_START",
    "TRITONSERVER_RESPONSE_COMPLETE_FINAL",
    "InferenceRequest",
    "InferenceResponse",
    "Logger",
    "ModelConfig",
    "Tensor",
    "TritonError",
    "TritonModelException",
    "deserialize_bytes_tensor",
    "get_input_config_by_name",
    "get_input_tensor_by_name",
    "get_output_config_by_name",
    "get_output_tensor_by_name",
    "numpy_to_triton_type",
    "serialize_byte_tensor",
    "triton_string_to_numpy",
    "triton_to_numpy_type",
]

TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1

# Triton's TYPE_* enum numbers (model_config.proto) and their numpy types.
_TRITON_TO_NUMPY: dict[int, Any] = {
    1: bool,
    2: np.uint8,
    3: np.uint16,
    4: np.uint32,
    5: np.uint64,
    6: np.int8,
    7: np.int16,
    8: np.int32,
    9: np.int64,
    10: np.float16,
    11: np.float32,
    12: np.float64,
    13: np.object_,
}
_STRING_TO_NUMPY: dict[str, Any] = {
    "TYPE_BOOL": bool,
    "TYPE_UINT8": np.uint8,
    "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64,
    "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}


class TritonModelException(Exception):
    """Raised by the API where Triton raises it (and free for a model to raise)."""


class TritonError:
    """An error a response carries (``InferenceResponse(error=TritonError(...))``)."""

    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7

    def __init__(self, message: str, code: int = INTERNAL) -> None:
        self._message = str(message)
        self._code = int(code)

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code

    def __repr__(self) -> str:
        return f"TritonError({self._message!r}, code={self._code})"


class Tensor:
    """A named tensor on the CPU (``Tensor(name, numpy_array)``)."""

    def __init__(self, name: str, array: Any) -> None:
        if not isinstance(name, str):
            raise TritonModelException("Tensor's name must be a str")
        value = np.asarray(array)
        if value.dtype.kind in ("U", "S"):
            value = value.astype(np.object_)
        self._name = name
        self._array = value

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def shape(self) -> list[int]:
        return list(self._array.shape)

    def is_cpu(self) -> bool:
        return True

    def to_dlpack(self) -> Any:
        return self._array.__dlpack__()

    @staticmethod
    def from_dlpack(name: str, capsule: Any) -> Tensor:
        return Tensor(name, np.from_dlpack(capsule))

    def __repr__(self) -> str:
        return f"Tensor({self._name!r}, shape={self.shape()}, dtype={self._array.dtype})"


# The stub installs the function that sends a BLS call to the server: given
# wait=True it returns the InferenceResponse, else a concurrent.futures.Future of it.
_bls_sender: Callable[[InferenceRequest, bool], Any] | None = None


class InferenceRequest:
    """A request: given to ``execute``, or built by a model to call another model (BLS)."""

    def __init__(
        self,
        model_name: str = "",
        inputs: Sequence[Tensor] = (),
        requested_output_names: Sequence[str] = (),
        model_version: int = -1,
        correlation_id: int | str = 0,
        request_id: str = "",
        flags: int = 0,
        timeout: int = 0,
        preferred_memory: Any = None,
        trace: Any = None,
        parameters: dict[str, Any] | str | None = None,
    ) -> None:
        self._model_name = model_name
        self._inputs = list(inputs)
        self._requested = list(requested_output_names)
        self._model_version = int(model_version)
        self._correlation_id = correlation_id
        self._request_id = request_id
        self._flags = flags
        self._timeout = int(timeout)
        if isinstance(parameters, str):
            parameters = json.loads(parameters)
        self._parameters = dict(parameters or {})

    def inputs(self) -> list[Tensor]:
        return list(self._inputs)

    def requested_output_names(self) -> list[str]:
        return list(self._requested)

    def model_name(self) -> str:
        return self._model_name

    def model_version(self) -> int:
        return self._model_version

    def request_id(self) -> str:
        return self._request_id

    def correlation_id(self) -> int | str:
        return self._correlation_id

    def flags(self) -> int:
        return self._flags

    def timeout(self) -> int:
        return self._timeout

    def parameters(self) -> str:
        return json.dumps(self._parameters)

    def is_cancelled(self) -> bool:
        return False

    def get_response_sender(self) -> Any:
        raise TritonModelException(
            "decoupled models (response senders) are not served by onnxserve; "
            "return one InferenceResponse per request from execute"
        )

    def _send(self, decoupled: bool, wait: bool) -> Any:
        if decoupled:
            raise TritonModelException("decoupled BLS calls are not served by onnxserve")
        if _bls_sender is None:
            raise TritonModelException("BLS calls can only be made while the model runs")
        return _bls_sender(self, wait)

    def exec(self, decoupled: bool = False) -> InferenceResponse:
        """Call ``model_name`` through the server's scheduler and wait for its answer."""
        response: InferenceResponse = self._send(decoupled, True)
        return response

    def async_exec(self, decoupled: bool = False) -> Any:
        """The same, as an awaitable (for ``async def execute``)."""
        import asyncio

        return asyncio.wrap_future(self._send(decoupled, False))


class InferenceResponse:
    """One request's answer: its output tensors, or an error."""

    def __init__(
        self,
        output_tensors: Sequence[Tensor] = (),
        error: TritonError | None = None,
        parameters: dict[str, Any] | str | None = None,
    ) -> None:
        self._outputs = list(output_tensors)
        self._error = error
        if isinstance(parameters, str):
            parameters = json.loads(parameters)
        self._parameters = dict(parameters or {})

    def output_tensors(self) -> list[Tensor]:
        return list(self._outputs)

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def parameters(self) -> str:
        return json.dumps(self._parameters)


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    for tensor in request.inputs():
        if tensor.name() == name:
            return tensor
    return None


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    for tensor in response.output_tensors():
        if tensor.name() == name:
            return tensor
    return None


def _config_by_name(model_config: dict[str, Any], kind: str, name: str) -> dict[str, Any] | None:
    for tensor in model_config.get(kind, []):
        if tensor.get("name") == name:
            return dict(tensor)
    return None


def get_input_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    return _config_by_name(model_config, "input", name)


def get_output_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    return _config_by_name(model_config, "output", name)


def triton_to_numpy_type(data_type: int) -> Any:
    return _TRITON_TO_NUMPY.get(data_type)


def numpy_to_triton_type(data_type: Any) -> int | None:
    for number, numpy_type in _TRITON_TO_NUMPY.items():
        if numpy_type == data_type:
            return number
    if data_type == np.bytes_:
        return 13
    return None


def triton_string_to_numpy(triton_type_string: str) -> Any:
    return _STRING_TO_NUMPY.get(triton_type_string)


def serialize_byte_tensor(input_tensor: np.ndarray) -> np.ndarray | None:
    """Elements framed as 4-byte little-endian lengths and bytes, in a uint8 array."""
    if input_tensor.size == 0:
        return None
    chunks = []
    for element in np.asarray(input_tensor, dtype=object).reshape(-1, order="C"):
        data = element if isinstance(element, bytes) else str(element).encode("utf-8")
        chunks.append(struct.pack("<I", len(data)) + data)
    return np.frombuffer(b"".join(chunks), dtype=np.uint8)


def deserialize_bytes_tensor(encoded_tensor: bytes) -> np.ndarray:
    elements = []
    offset = 0
    while offset < len(encoded_tensor):
        (length,) = struct.unpack_from("<I", encoded_tensor, offset)
        offset += 4
        elements.append(bytes(encoded_tensor[offset : offset + length]))
        offset += length
    return np.array(elements, dtype=np.object_)


class ModelConfig:
    """What ``TritonPythonModel.auto_complete_config(config)`` receives and returns.

    Built from the config as JSON; a model may set ``max_batch_size`` and dynamic
    batching and add the inputs and outputs config.pbtxt leaves out, with
    Triton's rules: a tensor config.pbtxt declares must agree with the one the
    model adds (its data_type and dims fill in what the declaration left out).
    The server checks the result as it checks any config.
    """

    def __init__(self, model_config: str | dict[str, Any]) -> None:
        if isinstance(model_config, str):
            model_config = json.loads(model_config)
        self._model_config: dict[str, Any] = dict(model_config)
        self._model_config.setdefault("input", [])
        self._model_config.setdefault("output", [])
        self._model_config.setdefault("max_batch_size", 0)
        self._name = str(self._model_config.get("name", ""))

    def as_dict(self) -> dict[str, Any]:
        return self._model_config

    def set_max_batch_size(self, max_batch_size: int) -> None:
        if self._model_config["max_batch_size"] > max_batch_size:
            raise ValueError(
                f"configuration specified max_batch_size {self._model_config['max_batch_size']}, "
                f"but auto_complete_config of model '{self._name}' specified {max_batch_size}"
            )
        self._model_config["max_batch_size"] = max_batch_size

    def set_dynamic_batching(self) -> None:
        for other in ("sequence_batching", "ensemble_scheduling"):
            if self._model_config.get(other):
                raise ValueError(
                    f"configuration of model '{self._name}' sets {other}; auto_complete_config "
                    "cannot set dynamic_batching"
                )
        self._model_config.setdefault("dynamic_batching", {})

    def _add(self, kind: str, tensor: dict[str, Any]) -> None:
        extra = set(tensor) - {"name", "data_type", "dims", "optional"}
        if extra:
            raise ValueError(
                f"{kind} '{tensor.get('name')}' of auto_complete_config of model '{self._name}' "
                f"has properties other than name, data_type, dims and optional: {sorted(extra)}"
            )
        for needed in ("name", "data_type", "dims"):
            if needed not in tensor:
                raise ValueError(
                    f"{kind} '{tensor.get('name', '')}' of auto_complete_config of model "
                    f"'{self._name}' is missing '{needed}'"
                )
        for current in self._model_config[kind]:
            if current.get("name") != tensor["name"]:
                continue
            declared_type = current.get("data_type", "TYPE_INVALID")
            if declared_type not in ("TYPE_INVALID", tensor["data_type"]):
                raise ValueError(
                    f"model '{self._name}': config.pbtxt declares {kind} '{tensor['name']}' as "
                    f"{declared_type}, the model provides {tensor['data_type']}"
                )
            declared_dims = [int(d) for d in current.get("dims", [])]
            if declared_dims and declared_dims != [int(d) for d in tensor["dims"]]:
                raise ValueError(
                    f"model '{self._name}': config.pbtxt declares {kind} '{tensor['name']}' with "
                    f"dims {declared_dims}, the model provides {list(tensor['dims'])}"
                )
            current["data_type"] = tensor["data_type"]
            current["dims"] = list(tensor["dims"])
            return
        self._model_config[kind].append(dict(tensor))

    def add_input(self, input: dict[str, Any]) -> None:
        self._add("input", input)

    def add_output(self, output: dict[str, Any]) -> None:
        self._add("output", output)

    def set_model_transaction_policy(self, transaction_policy_dict: dict[str, Any]) -> None:
        if transaction_policy_dict.get("decoupled"):
            raise ValueError("decoupled models (several responses per request) are not served")


class Logger:
    """Triton's ``pb_utils.Logger``: lines go to the server's log, under the model's name."""

    _log = logging.getLogger("onnxserve.python_model")

    @classmethod
    def log(cls, message: str, level: int = logging.INFO) -> None:
        cls._log.log(level, "%s", message)

    @classmethod
    def log_info(cls, message: str) -> None:
        cls._log.info("%s", message)

    @classmethod
    def log_warn(cls, message: str) -> None:
        cls._log.warning("%s", message)

    @classmethod
    def log_error(cls, message: str) -> None:
        cls._log.error("%s", message)

    @classmethod
    def log_verbose(cls, message: str) -> None:
        cls._log.debug("%s", message)
