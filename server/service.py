"""The GRPCInferenceService servicer: each RPC decodes, asks the core, encodes.

Handlers raise domain errors (onnxserve.server.errors) and one function,
``errors.status_of``, turns any exception into the (code, message) a caller
sees: the ``_rpc`` decorator aborts unary calls with it, and ModelStreamInfer
puts it in the failed request's ``error_message``. Anything unexpected becomes
INTERNAL with a generic message, its details only in the server log. RPCs
onnxserve does not offer are declared below as methods that say why.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from onnxserve import __version__
from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.protocol import grpc_service_pb2_grpc as pb_grpc
from onnxserve.protocol.parameters import with_stream_status
from onnxserve.server.classification import classify
from onnxserve.server.control import ModelControl
from onnxserve.server.errors import (
    InvalidInput,
    ModelUnavailable,
    NotImplementedByServer,
    quoted,
    status_of,
)
from onnxserve.server.inference import (
    DecodedRequest,
    ModelSignature,
    ParsedRequest,
    decode_parsed,
    encode_response,
    parse_message,
)
from onnxserve.server.peers import PEER_TIMEOUT_S, PeerClient, VersionReport, merge_reports
from onnxserve.server.registry import ModelRegistry
from onnxserve.server.wire import decode as wire_decode
from onnxserve.server.wire.encode import encode_infer_response

log = logging.getLogger(__name__)

SERVER_NAME = "onnxserve"
# Triton extension names this server fully provides (model_repository: explicit mode only).
EXTENSIONS = ("classification", "model_configuration", "statistics", "schedule_policy")

Request = TypeVar("Request")
Response = TypeVar("Response")
Handler = Callable[[Any, Request, grpc.aio.ServicerContext], Awaitable[Response]]

#: What inference calls get (UNAVAILABLE) once a drain began; clients retry elsewhere.
DRAINING_MESSAGE = "the server is shutting down; retry on another replica"
_SHARED_MEMORY = "tensors travel in the request; shared-memory regions are not supported"


def _rpc(handler: Handler[Request, Response]) -> Handler[Request, Response]:
    @functools.wraps(handler)
    async def wrapper(
        self: InferenceService, request: Request, context: grpc.aio.ServicerContext
    ) -> Response:
        self.last_call = time.monotonic()
        try:
            return await handler(self, request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            code, message = status_of(exc, handler.__name__)
            await context.abort(code, message)
        raise AssertionError("unreachable: abort raises")

    return wrapper


def _not_offered(why: str) -> Callable[[Handler[Any, Any]], Handler[Any, Any]]:
    """Declare an RPC onnxserve does not offer: it answers UNIMPLEMENTED saying why."""

    def declare(handler: Handler[Any, Any]) -> Handler[Any, Any]:
        @functools.wraps(handler)
        async def refuse(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            raise NotImplementedByServer(
                f"{handler.__name__} is not implemented by {SERVER_NAME}: {why}"
            )

        return _rpc(refuse)

    return declare


#: A request whose BYTES inputs hold more than this many bytes (raw) or elements
#: (typed) is decoded on a thread: the general framing loop costs ~0.3 us per
#: element, and 16M elements on the event loop stalled health probes for 19 s.
SLOW_DECODE_BYTES = 1 << 20
SLOW_DECODE_ELEMENTS = 1 << 16
#: Threads that decode such requests (they hold the GIL in turns with the loop).
DECODE_THREADS = 2


def _decodes_slowly(request: ParsedRequest) -> bool:
    """Whether a request's BYTES inputs are large enough to decode off the event loop."""
    raw = request.raw_input_contents
    for index, tensor in enumerate(request.inputs):
        if tensor.datatype != "BYTES":
            continue
        contents = tensor.contents
        if contents is not None and len(contents.bytes_contents) > SLOW_DECODE_ELEMENTS:
            return True
        if index < len(raw) and len(raw[index]) > SLOW_DECODE_BYTES:
            return True
    return False


def stream_failure(request: pb.ModelInferRequest, error: Exception) -> pb.ModelStreamInferResponse:
    """A failed stream request's answer: the stream goes on, as Triton's does."""
    code, message = status_of(error, "ModelStreamInfer")
    failed = pb.ModelInferResponse(
        model_name=quoted(request.model_name),
        model_version=quoted(request.model_version),
        id=quoted(request.id),
    )
    with_stream_status(failed, code)
    return pb.ModelStreamInferResponse(error_message=message, infer_response=failed)


def deadline_of(context: grpc.aio.ServicerContext) -> int | None:
    """The caller's gRPC deadline as a time.monotonic_ns() instant, or None."""
    remaining = context.time_remaining()
    if remaining is None:
        return None
    return time.monotonic_ns() + int(remaining * 1e9)


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """Open Inference Protocol over gRPC, as Triton speaks it."""

    def __init__(
        self,
        registry: ModelRegistry,
        control: ModelControl,
        peers: PeerClient | None = None,
    ) -> None:
        self._registry = registry
        # Large BYTES inputs are decoded here, off the event loop (see _decodes_slowly).
        self._decoder = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="onnxserve-decode")
        self._control = control
        # The other --workers processes, whose counters statistics include.
        self._peers = peers
        # Set on SIGTERM: inference calls get UNAVAILABLE (which clients retry elsewhere).
        self.draining = False
        # time.monotonic() of the latest call, for the drain to tell when calls stopped.
        self.last_call = time.monotonic()

    async def _run(
        self, request: ParsedRequest, deadline_ns: int | None
    ) -> tuple[DecodedRequest, dict[str, np.ndarray], ModelSignature]:
        """Validate and run one request: (the request, its outputs, the model's signature)."""
        if self.draining:
            raise ModelUnavailable(DRAINING_MESSAGE)
        serving = self._registry.get(request.model_name, request.model_version)
        model = serving.model
        serving.enter()
        try:
            started = time.monotonic_ns()
            try:
                if _decodes_slowly(request):
                    decoded = await asyncio.get_running_loop().run_in_executor(
                        self._decoder, decode_parsed, request, model.signature, model.version_label
                    )
                else:
                    decoded = decode_parsed(request, model.signature, model.version_label)
            except Exception as exc:
                # Counted as a failure whatever it is (a bug shows as reason "internal").
                serving.statistics.record_failure(time.monotonic_ns() - started, exc)
                raise
            # The scheduler records the request's success or failure from here on.
            outputs = await serving.scheduler.infer(decoded, deadline_ns)
            if decoded.classification:
                return decoded, *classify(decoded, outputs, model.signature, serving.labels)
            return decoded, outputs, model.signature
        finally:
            serving.leave()

    async def _infer(
        self, request: pb.ModelInferRequest, deadline_ns: int | None
    ) -> pb.ModelInferResponse:
        return encode_response(*await self._run(parse_message(request), deadline_ns))

    async def stream_answer(
        self, request: pb.ModelInferRequest, deadline_ns: int | None
    ) -> pb.ModelStreamInferResponse:
        """One request of a stream, answered: its response, or its failure as a stream
        answer (``error_message`` and the status code as a parameter)."""
        try:
            response = await self._infer(request, deadline_ns)
        except Exception as exc:
            return stream_failure(request, exc)
        return pb.ModelStreamInferResponse(infer_response=response)

    async def reports(self, timeout_s: float = PEER_TIMEOUT_S) -> list[VersionReport]:
        """Every model version's numbers, over all --workers processes (for statistics).

        ``timeout_s``: how long to wait for the other workers at most.
        """
        own = self._registry.reports()
        if self._peers is None:
            return own
        return merge_reports(own, await self._peers.gather(timeout_s))

    @_rpc
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @_rpc
    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=not self.draining and self._registry.is_ready())

    @_rpc
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        ready = not self.draining and self._registry.model_ready(request.name, request.version)
        return pb.ModelReadyResponse(ready=ready)

    @_rpc
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        extensions = [*EXTENSIONS, *(("model_repository",) if self._control.explicit else ())]
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=__version__, extensions=extensions
        )

    @_rpc
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        serving = self._registry.get(request.name, request.version)
        return serving.model.metadata(self._registry.ready_version_labels(request.name))

    @_rpc
    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelConfigResponse:
        serving = self._registry.get(request.name, request.version)
        return pb.ModelConfigResponse(config=serving.model.config)

    @_rpc
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        version = request.version if request.name else ""
        if request.name:
            self._registry.serving_versions(request.name, version)  # NOT_FOUND, UNAVAILABLE
        remaining = context.time_remaining()
        timeout_s = PEER_TIMEOUT_S if remaining is None else min(PEER_TIMEOUT_S, remaining / 2)
        response = pb.ModelStatisticsResponse()
        for report in await self.reports(timeout_s):
            if request.name and report.model != request.name:
                continue
            if version and report.version != version:
                continue
            response.model_stats.append(report.statistics.to_proto(report.model, report.version))
        return response

    @_rpc
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        return pb.RepositoryIndexResponse(models=self._registry.index(request.ready))

    @_rpc
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        await self._control.load(request)
        return pb.RepositoryModelLoadResponse()

    @_rpc
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        await self._control.unload(request)
        return pb.RepositoryModelUnloadResponse()

    @_rpc
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        return await self._infer(request, deadline_of(context))

    @_rpc
    async def ModelInferBytes(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """ModelInfer on the wire bytes (how the server registers it: onnxserve.server.wire).

        The usual raw request is parsed from its bytes and the answer written
        as bytes; anything else goes through the generated class first.
        """
        request = wire_decode.parse_infer_request(data)
        if request is None:
            try:
                request = parse_message(pb.ModelInferRequest.FromString(data))
            except DecodeError as exc:
                raise InvalidInput(f"the request is not a valid ModelInferRequest: {exc}") from None
        return encode_infer_response(*await self._run(request, deadline_of(context)))

    @_not_offered(_SHARED_MEMORY)
    async def SystemSharedMemoryStatus(self, request: Any, context: Any) -> Any: ...

    @_not_offered(_SHARED_MEMORY)
    async def SystemSharedMemoryRegister(self, request: Any, context: Any) -> Any: ...

    @_not_offered(_SHARED_MEMORY)
    async def SystemSharedMemoryUnregister(self, request: Any, context: Any) -> Any: ...

    @_not_offered(_SHARED_MEMORY)
    async def CudaSharedMemoryStatus(self, request: Any, context: Any) -> Any: ...

    @_not_offered(_SHARED_MEMORY)
    async def CudaSharedMemoryRegister(self, request: Any, context: Any) -> Any: ...

    @_not_offered(_SHARED_MEMORY)
    async def CudaSharedMemoryUnregister(self, request: Any, context: Any) -> Any: ...

    @_not_offered("tracing is not supported")
    async def TraceSetting(self, request: Any, context: Any) -> Any: ...

    @_not_offered("log settings are fixed at start-up (--log-level, --log-format)")
    async def LogSettings(self, request: Any, context: Any) -> Any: ...
