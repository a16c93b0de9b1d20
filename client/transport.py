"""The seam between the clients and the wire: send one :class:`Call`, get its response.

:class:`~onnxserve.client.Client` and :class:`~onnxserve.client.AsyncClient`
hold one transport per target and call ``unary(call, timeout_s)``, which
returns the response message the call's parser reads or raises the SDK's
:class:`InferenceServerError` (retries, deadlines and parsing stay in the
clients). gRPC transports wrap a generated stub; the REST transport
(:mod:`onnxserve.client.rest`) maps the same calls to HTTP routes. The async
REST transport runs the blocking one in a thread pool: REST calls are
HTTP/1.1 requests, one connection each while in flight.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import grpc.aio

from onnxserve.client.calls import Call
from onnxserve.client.connection import Connection
from onnxserve.client.errors import from_rpc_error
from onnxserve.client.rest import HttpTransport, transports_for
from onnxserve.protocol import grpc_service_pb2_grpc as pb_grpc

__all__ = [
    "AsyncGrpcTransport",
    "AsyncHttpTransport",
    "GrpcTransport",
    "HttpTransport",
    "async_transports",
    "sync_transports",
]

#: Threads (and so connections) an AsyncClient's REST calls use at once, per client.
ASYNC_HTTP_THREADS = 32


class GrpcTransport:
    """Unary calls over one blocking gRPC channel."""

    protocol = "grpc"

    def __init__(self, connection: Connection, target: str, compression: Any = None) -> None:
        self.channel = connection.sync_channel(target, compression=compression)
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.metadata = connection.metadata

    def unary(self, call: Call[Any], timeout_s: float) -> Any:
        method = getattr(self.stub, call.method)
        try:
            return method(call.request, timeout=max(timeout_s, 0.0), metadata=self.metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def close(self) -> None:
        self.channel.close()


class AsyncGrpcTransport:
    """Unary calls over one grpc.aio channel (opened in the running event loop)."""

    protocol = "grpc"

    def __init__(self, connection: Connection, target: str, compression: Any = None) -> None:
        self.channel = connection.aio_channel(target, compression=compression)
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.metadata = connection.metadata

    async def unary(self, call: Call[Any], timeout_s: float) -> Any:
        method = getattr(self.stub, call.method)
        try:
            return await method(call.request, timeout=max(timeout_s, 0.0), metadata=self.metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    async def close(self) -> None:
        await self.channel.close()


class AsyncHttpTransport:
    """The blocking REST transport, awaited: each call runs in the client's thread pool."""

    protocol = "http"

    def __init__(self, transport: HttpTransport, pool: ThreadPoolExecutor) -> None:
        self.transport = transport
        self.pool = pool

    async def unary(self, call: Call[Any], timeout_s: float) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, self.transport.unary, call, timeout_s)

    async def close(self) -> None:
        self.transport.close()
        self.pool.shutdown(wait=False)


def sync_transports(connection: Connection, compression: Any = None) -> list[Any]:
    """One blocking transport per target of the plan."""
    if connection.protocol == "http":
        return list(transports_for(connection, compression))
    return [GrpcTransport(connection, t, compression) for t in connection.targets]


def async_transports(connection: Connection, compression: Any = None) -> list[Any]:
    """One async transport per target (REST ones share a thread pool, closed with the last)."""
    if connection.protocol == "http":
        pool = ThreadPoolExecutor(ASYNC_HTTP_THREADS, thread_name_prefix="onnxserve-http")
        return [AsyncHttpTransport(t, pool) for t in transports_for(connection, compression)]
    return [AsyncGrpcTransport(connection, t, compression) for t in connection.targets]
