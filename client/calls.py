"""Request building and response decoding, shared by :class:`Client` and :class:`AsyncClient`.

Each public call of the SDK is described here once, as a :class:`Call`: which
RPC, the request message, how to turn the response into the friendly result,
and whether the call may be retried. The sync and async clients differ only in
how they send a ``Call`` (one blocking, one awaited), so a fix to encoding or
decoding lands in both. Everything in this module is a pure function of its
arguments: no channels, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
import numpy as np
import numpy.typing as npt

from onnxserve.client.casting import sentences_as_rows
from onnxserve.client.errors import (
    InferenceServerError,
    InvalidInputError,
    InvalidResponseError,
    error_for_code,
)
from onnxserve.client.types import (
    BatchStatistics,
    Duration,
    InferRequest,
    InferResult,
    InferStatistics,
    ModelMetadata,
    ModelStatistics,
    ParameterValue,
    RepositoryModel,
    ServerMetadata,
    TensorMetadata,
)
from onnxserve.protocol import codec
from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.protocol import model_config_pb2 as mc
from onnxserve.protocol.parameters import stream_status_of

__all__ = [
    "Call",
    "build_infer_request",
    "decode_infer_response",
    "decode_parameters",
    "encode_parameters",
    "failed_result",
    "infer",
    "infer_result",
    "load_model",
    "model_config",
    "model_metadata",
    "model_ready",
    "repository_index",
    "request_from",
    "server_live",
    "server_metadata",
    "server_ready",
    "statistics",
    "stream_call",
    "stream_result",
    "unload_model",
]

T = TypeVar("T")

_INT64_MAX = 2**63 - 1
_INT64_MIN = -(2**63)
_UINT64_MAX = 2**64 - 1


@dataclass(frozen=True)
class Call(Generic[T]):
    """One unary RPC to make: method name, request, result parser, retry safety.

    ``not_found`` is the result to return when the server answers NOT_FOUND
    instead of raising: KServe's server answers ModelReady for an unknown model
    with NOT_FOUND where Triton and onnxserve say "not ready", and callers of
    ``is_model_ready`` should not have to know which server they talk to.
    """

    method: str
    request: Any
    parse: Callable[[Any], T]
    idempotent: bool
    not_found: Callable[[], T] | None = None

    def result_for(self, error: InferenceServerError) -> T:
        """The result an error stands for, or the error raised."""
        if self.not_found is not None and error.code == grpc.StatusCode.NOT_FOUND:
            return self.not_found()
        raise error from None  # the grpc error is translated, not a second failure


def _version(version: str | int | None) -> str:
    return "" if version is None else str(version)


# -- parameters ---------------------------------------------------------------


def encode_parameters(
    parameters: Mapping[str, ParameterValue] | None,
    target: Any,
) -> None:
    """Fill a protobuf ``map<string, InferParameter>`` from Python values.

    bool -> bool_param, int -> int64_param (uint64_param above INT64_MAX),
    float -> double_param, str -> string_param; anything else is refused
    rather than guessed.
    """
    if not parameters:
        return
    for key, value in parameters.items():
        param = target[key]
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, (int, np.integer)):
            number = int(value)
            if _INT64_MIN <= number <= _INT64_MAX:
                param.int64_param = number
            elif 0 <= number <= _UINT64_MAX:
                param.uint64_param = number
            else:
                raise InvalidInputError(f"parameter '{key}': {number} does not fit in 64 bits")
        elif isinstance(value, (float, np.floating)):
            param.double_param = float(value)
        elif isinstance(value, str):
            param.string_param = value
        else:
            raise InvalidInputError(
                f"parameter '{key}': {type(value).__name__} is not a bool, int, float or str"
            )


def decode_parameters(parameters: Any) -> dict[str, ParameterValue]:
    """A protobuf ``map<string, InferParameter>`` as a plain dict."""
    result: dict[str, ParameterValue] = {}
    for key, param in parameters.items():
        choice = param.WhichOneof("parameter_choice")
        if choice is not None:
            result[key] = getattr(param, choice)
    return result


# -- inference ----------------------------------------------------------------


def build_infer_request(
    model_name: str,
    inputs: Mapping[str, npt.ArrayLike],
    *,
    outputs: Sequence[str] | None = None,
    version: str | int | None = None,
    request_id: str | None = None,
    parameters: Mapping[str, ParameterValue] | None = None,
) -> pb.ModelInferRequest:
    """A ModelInferRequest with every input sent raw (the protocol's fast path).

    Raises :class:`InvalidInputError` for an input the protocol cannot carry
    (complex numbers, say), before anything is sent.
    """
    if not model_name:
        raise InvalidInputError("model name is empty")
    if isinstance(outputs, str):
        raise InvalidInputError("outputs must be a sequence of names, not one string")
    request = pb.ModelInferRequest(
        model_name=model_name, model_version=_version(version), id=request_id or ""
    )
    encode_parameters(parameters, request.parameters)
    tensors = []
    raws = []
    for name, value in inputs.items():
        try:
            tensor, raw = codec.encode_input(name, sentences_as_rows(value))
        except codec.CodecError as exc:
            message = str(exc)
            if not message.startswith(f"input '{name}'"):
                message = f"input '{name}': {message}"
            raise InvalidInputError(message) from None
        tensors.append(tensor)
        raws.append(raw)
    request.inputs.extend(tensors)
    request.raw_input_contents.extend(raws)
    for name in outputs or ():
        request.outputs.add(name=name)
    return request


def request_from(item: InferRequest) -> pb.ModelInferRequest:
    """The ModelInferRequest for one request of a stream."""
    return build_infer_request(
        item.model_name,
        item.inputs,
        outputs=item.outputs,
        version=item.model_version,
        request_id=item.request_id,
        parameters=item.parameters,
    )


def decode_infer_response(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """The outputs of a ModelInferResponse by name.

    Raw outputs are decoded as read-only numpy views of the response's bytes
    (no copy); the repeated bytes field is read once, since each read of a
    protobuf bytes field makes a new Python object.
    """
    raw_contents = list(response.raw_output_contents)
    tensors = response.outputs
    if raw_contents and len(raw_contents) != len(tensors):
        raise InvalidResponseError(
            f"response has {len(tensors)} outputs but {len(raw_contents)} raw contents"
        )
    result: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(tensors):
        raw = raw_contents[index] if raw_contents else None
        try:
            result[tensor.name] = codec.decode_output(tensor, raw)
        except codec.CodecError as exc:
            raise InvalidResponseError(str(exc)) from None
    return result


def infer_result(response: pb.ModelInferResponse) -> InferResult:
    """A ModelInferResponse with its identity: model, version, id, parameters, outputs."""
    return InferResult(
        model_name=response.model_name,
        model_version=response.model_version,
        id=response.id,
        outputs=decode_infer_response(response),
        parameters=decode_parameters(response.parameters),
    )


def stream_result(response: pb.ModelStreamInferResponse) -> InferResult:
    """One answer of ModelStreamInfer: a result, or an error carried in the stream.

    The protocol's error_message is text only; onnxserve also sends the status
    code a unary call would get (``onnxserve.protocol.parameters``), so the
    error has the class a unary call raises (InvalidInputError,
    ModelNotFoundError, ...). Other servers' errors get the base class with
    code UNKNOWN.
    """
    if response.error_message:
        inner = response.infer_response
        code = stream_status_of(inner) or grpc.StatusCode.UNKNOWN
        return InferResult(
            model_name=inner.model_name,
            model_version=inner.model_version,
            id=inner.id,
            outputs={},
            error=error_for_code(code, response.error_message),
        )
    return infer_result(response.infer_response)


def stream_call(item: InferRequest) -> Call[InferResult]:
    """One request of a stream as a unary ModelInfer whose result keeps its identity.

    What ``stream_infer`` sends over REST, which has no stream.
    """
    return Call("ModelInfer", request_from(item), infer_result, idempotent=False)


def failed_result(item: InferRequest, error: InferenceServerError) -> InferResult:
    """The stream's answer for a request the server refused: ``error`` set, no outputs."""
    version = item.model_version
    return InferResult(
        model_name=item.model_name,
        model_version="" if version is None else str(version),
        id=item.request_id or "",
        outputs={},
        error=error,
    )


def infer(
    model_name: str,
    inputs: Mapping[str, npt.ArrayLike],
    *,
    outputs: Sequence[str] | None = None,
    version: str | int | None = None,
    request_id: str | None = None,
    parameters: Mapping[str, ParameterValue] | None = None,
) -> Call[dict[str, np.ndarray]]:
    """ModelInfer; not idempotent (retried only when the policy says retry_infer)."""
    request = build_infer_request(
        model_name,
        inputs,
        outputs=outputs,
        version=version,
        request_id=request_id,
        parameters=parameters,
    )
    return Call("ModelInfer", request, decode_infer_response, idempotent=False)


# -- health and metadata ------------------------------------------------------


def server_live() -> Call[bool]:
    return Call("ServerLive", pb.ServerLiveRequest(), lambda r: bool(r.live), idempotent=True)


def server_ready() -> Call[bool]:
    return Call("ServerReady", pb.ServerReadyRequest(), lambda r: bool(r.ready), idempotent=True)


def model_ready(name: str, version: str | int | None = None) -> Call[bool]:
    request = pb.ModelReadyRequest(name=name, version=_version(version))
    return Call(
        "ModelReady", request, lambda r: bool(r.ready), idempotent=True, not_found=lambda: False
    )


def _server_metadata(response: pb.ServerMetadataResponse) -> ServerMetadata:
    return ServerMetadata(
        name=response.name, version=response.version, extensions=tuple(response.extensions)
    )


def server_metadata() -> Call[ServerMetadata]:
    return Call("ServerMetadata", pb.ServerMetadataRequest(), _server_metadata, idempotent=True)


def _tensor_metadata(tensor: Any) -> TensorMetadata:
    return TensorMetadata(
        name=tensor.name, datatype=tensor.datatype, shape=tuple(int(d) for d in tensor.shape)
    )


def _model_metadata(response: pb.ModelMetadataResponse) -> ModelMetadata:
    return ModelMetadata(
        name=response.name,
        versions=tuple(response.versions),
        platform=response.platform,
        inputs=tuple(_tensor_metadata(t) for t in response.inputs),
        outputs=tuple(_tensor_metadata(t) for t in response.outputs),
    )


def model_metadata(name: str, version: str | int | None = None) -> Call[ModelMetadata]:
    request = pb.ModelMetadataRequest(name=name, version=_version(version))
    return Call("ModelMetadata", request, _model_metadata, idempotent=True)


def model_config(name: str, version: str | int | None = None) -> Call[mc.ModelConfig]:
    request = pb.ModelConfigRequest(name=name, version=_version(version))
    return Call("ModelConfig", request, lambda r: r.config, idempotent=True)


# -- statistics and repository ------------------------------------------------


def _duration(message: Any) -> Duration:
    return Duration(count=int(message.count), ns=int(message.ns))


def _model_statistics(stats: Any) -> ModelStatistics:
    infer_stats = stats.inference_stats
    return ModelStatistics(
        name=stats.name,
        version=stats.version,
        last_inference_ms=int(stats.last_inference),
        inference_count=int(stats.inference_count),
        execution_count=int(stats.execution_count),
        inference_stats=InferStatistics(
            success=_duration(infer_stats.success),
            fail=_duration(infer_stats.fail),
            queue=_duration(infer_stats.queue),
            compute_input=_duration(infer_stats.compute_input),
            compute_infer=_duration(infer_stats.compute_infer),
            compute_output=_duration(infer_stats.compute_output),
            cache_hit=_duration(infer_stats.cache_hit),
            cache_miss=_duration(infer_stats.cache_miss),
        ),
        batch_stats=tuple(
            BatchStatistics(
                batch_size=int(b.batch_size),
                compute_input=_duration(b.compute_input),
                compute_infer=_duration(b.compute_infer),
                compute_output=_duration(b.compute_output),
            )
            for b in stats.batch_stats
        ),
    )


def statistics(
    name: str | None = None, version: str | int | None = None
) -> Call[list[ModelStatistics]]:
    """ModelStatistics; no name asks for every model."""
    request = pb.ModelStatisticsRequest(name=name or "", version=_version(version))
    return Call(
        "ModelStatistics",
        request,
        lambda r: [_model_statistics(s) for s in r.model_stats],
        idempotent=True,
    )


def repository_index(ready_only: bool = False) -> Call[list[RepositoryModel]]:
    request = pb.RepositoryIndexRequest(ready=ready_only)
    return Call(
        "RepositoryIndex",
        request,
        lambda r: [
            RepositoryModel(name=m.name, version=m.version, state=m.state, reason=m.reason)
            for m in r.models
        ],
        idempotent=True,
    )


def _repository_parameters(
    parameters: Mapping[str, bool | int | str | bytes] | None, target: Any
) -> None:
    for key, value in (parameters or {}).items():
        param = target[key]
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            param.int64_param = value
        elif isinstance(value, str):
            param.string_param = value
        elif isinstance(value, bytes):
            param.bytes_param = value
        else:
            raise InvalidInputError(
                f"parameter '{key}': {type(value).__name__} is not a bool, int, str or bytes"
            )


def load_model(
    name: str, parameters: Mapping[str, bool | int | str | bytes] | None = None
) -> Call[None]:
    """RepositoryModelLoad; not retried (a load may be slow and is not free)."""
    request = pb.RepositoryModelLoadRequest(model_name=name)
    _repository_parameters(parameters, request.parameters)
    return Call("RepositoryModelLoad", request, lambda r: None, idempotent=False)


def unload_model(name: str) -> Call[None]:
    """RepositoryModelUnload; not retried."""
    request = pb.RepositoryModelUnloadRequest(model_name=name)
    return Call("RepositoryModelUnload", request, lambda r: None, idempotent=False)
