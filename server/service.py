"""The GRPCInferenceService servicer: each RPC decodes, asks the core, encodes.

Handlers raise domain errors (onnxserve.server.errors) and the ``_rpc``
decorator maps them to statuses in one place; anything unexpected becomes
INTERNAL with a generic message, its details only in the server log.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from onnxserve import __version__
from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.protocol import grpc_service_pb2_grpc as pb_grpc
from onnxserve.server.errors import ModelUnavailable, NotImplementedByServer, ServerError
from onnxserve.server.inference import decode_request, encode_response
from onnxserve.server.peers import PEER_TIMEOUT_S, PeerStatistics, is_local_only, merge_statistics
from onnxserve.server.registry import ModelRegistry

log = logging.getLogger(__name__)

SERVER_NAME = "onnxserve"
# Triton extension names this server fully provides.
EXTENSIONS = ("model_configuration", "statistics", "schedule_policy")

Request = TypeVar("Request")
Response = TypeVar("Response")
Handler = Callable[[Any, Request, grpc.aio.ServicerContext], Awaitable[Response]]


def _rpc(handler: Handler[Request, Response]) -> Handler[Request, Response]:
    @functools.wraps(handler)
    async def wrapper(self: Any, request: Request, context: grpc.aio.ServicerContext) -> Response:
        try:
            return await handler(self, request, context)
        except ServerError as exc:
            await context.abort(exc.code, exc.message)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:
            log.exception("unexpected error in %s", handler.__name__)
            await context.abort(
                grpc.StatusCode.INTERNAL, "internal server error; see the server log"
            )
        raise AssertionError("unreachable: abort raises")

    return wrapper


def deadline_of(context: grpc.aio.ServicerContext) -> int | None:
    """The caller's gRPC deadline as a time.monotonic_ns() instant, or None."""
    remaining = context.time_remaining()
    if remaining is None:
        return None
    return time.monotonic_ns() + int(remaining * 1e9)


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """Open Inference Protocol over gRPC, as Triton speaks it."""

    def __init__(self, registry: ModelRegistry, peers: PeerStatistics | None = None) -> None:
        self._registry = registry
        # The other --workers processes, whose counters statistics include.
        self._peers = peers
        self.draining = False

    async def _infer(
        self, request: pb.ModelInferRequest, deadline_ns: int | None
    ) -> pb.ModelInferResponse:
        if self.draining:
            raise ModelUnavailable("the server is shutting down; retry on another replica")
        state = self._registry.get(request.model_name, request.model_version)
        assert state.model is not None and state.scheduler is not None
        model = state.model
        decoded = decode_request(request, model.signature, model.version_label)
        outputs = await state.scheduler.infer(decoded, deadline_ns)
        return encode_response(decoded, outputs, model.signature)

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
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=__version__, extensions=list(EXTENSIONS)
        )

    @_rpc
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        state = self._registry.get(request.name, request.version)
        assert state.model is not None
        return state.model.metadata(self._registry.ready_version_labels(request.name))

    @_rpc
    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelConfigResponse:
        state = self._registry.get(request.name, request.version)
        assert state.model is not None
        return pb.ModelConfigResponse(config=state.model.config)

    @_rpc
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        names = [request.name] if request.name else self._registry.model_names()
        response = pb.ModelStatisticsResponse()
        for name in names:
            for model in self._registry.versions_of(name, request.version if request.name else ""):
                response.model_stats.append(model.statistics.to_proto(name, model.version_label))
        if self._peers is None or is_local_only(context.invocation_metadata()):
            return response
        remaining = context.time_remaining()
        timeout_s = PEER_TIMEOUT_S if remaining is None else min(PEER_TIMEOUT_S, remaining / 2)
        return merge_statistics(response, await self._peers.gather(request, timeout_s))

    @_rpc
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        return pb.RepositoryIndexResponse(models=self._registry.index(request.ready))

    @_rpc
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        return await self._infer(request, deadline_of(context))

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[pb.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests on a stream run concurrently; each answer is sent when it is ready.

        A failed request answers with ``error_message`` and the stream goes on,
        as Triton does, so one bad request does not end a client's stream.
        """
        deadline_ns = deadline_of(context)
        answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        pending: set[asyncio.Task[None]] = set()

        async def answer(request: pb.ModelInferRequest) -> None:
            try:
                response = await self._infer(request, deadline_ns)
                await answers.put(pb.ModelStreamInferResponse(infer_response=response))
            except ServerError as exc:
                failed = pb.ModelInferResponse(
                    model_name=request.model_name,
                    model_version=request.model_version,
                    id=request.id,
                )
                await answers.put(
                    pb.ModelStreamInferResponse(error_message=exc.message, infer_response=failed)
                )
            except Exception:
                log.exception("unexpected error in ModelStreamInfer")
                await answers.put(
                    pb.ModelStreamInferResponse(
                        error_message="internal server error; see the server log"
                    )
                )

        async def read_all() -> None:
            async for request in request_iterator:
                task = asyncio.create_task(answer(request))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*list(pending))
            await answers.put(None)

        reader = asyncio.create_task(read_all())
        try:
            while True:
                item = await answers.get()
                if item is None:
                    break
                yield item
            await reader
        finally:
            reader.cancel()
            for task in list(pending):
                task.cancel()


def _unimplemented(rpc: str, why: str) -> Handler[Any, Any]:
    async def handler(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise NotImplementedByServer(f"{rpc} is not implemented by {SERVER_NAME}: {why}")

    handler.__name__ = rpc
    return _rpc(handler)


_MODEL_CONTROL = "models are loaded from the repository at start-up (model control is off)"
_SHARED_MEMORY = "tensors travel in the request; shared-memory regions are not supported"
for _rpc_name, _why in (
    ("RepositoryModelLoad", _MODEL_CONTROL),
    ("RepositoryModelUnload", _MODEL_CONTROL),
    ("SystemSharedMemoryStatus", _SHARED_MEMORY),
    ("SystemSharedMemoryRegister", _SHARED_MEMORY),
    ("SystemSharedMemoryUnregister", _SHARED_MEMORY),
    ("CudaSharedMemoryStatus", _SHARED_MEMORY),
    ("CudaSharedMemoryRegister", _SHARED_MEMORY),
    ("CudaSharedMemoryUnregister", _SHARED_MEMORY),
    ("TraceSetting", "tracing is not supported"),
    ("LogSettings", "log settings are fixed at start-up (--log-level)"),
):
    setattr(InferenceService, _rpc_name, _unimplemented(_rpc_name, _why))
