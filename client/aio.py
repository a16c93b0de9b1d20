"""The asyncio client: :class:`AsyncClient`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
import grpc.aio
import numpy as np
import numpy.typing as npt

from onnxserve.client import calls, casting, splitting
from onnxserve.client._base import MAX_PARTS_IN_FLIGHT, ClientBase, Deadline, _once
from onnxserve.client.errors import (
    DeadlineExceededError,
    InferenceServerError,
    InvalidInputError,
    UnimplementedError,
    from_rpc_error,
)
from onnxserve.client.transport import async_transports
from onnxserve.client.types import (
    InferRequest,
    InferResult,
    ModelMetadata,
    ModelStatistics,
    ParameterValue,
    RepositoryModel,
    ServerMetadata,
)
from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.protocol import model_config_pb2 as mc

__all__ = ["AsyncClient"]

T = TypeVar("T")


class AsyncClient(ClientBase):
    """The asyncio twin of :class:`Client`: same arguments, same calls, awaited.

    Requests are built and answers decoded by the same functions as the
    blocking client's (:mod:`onnxserve.client.calls`). Channels open on first
    use inside the running event loop, so the client may be constructed
    anywhere but must then be used from one loop. Thousands of calls may be in
    flight at once; gRPC multiplexes them over the channels.

    Example::

        import asyncio
        import numpy as np
        from onnxserve.client import AsyncClient

        async def main() -> None:
            async with AsyncClient("localhost:8001", channels_per_url=2) as client:
                image = np.zeros((1, 8, 8), np.float32)
                outs = await asyncio.gather(
                    *(client.infer("digits", {"image": image}) for _ in range(100))
                )
                print(outs[0]["probabilities"])

        asyncio.run(main())
    """

    def _open(self) -> None:
        self._transports: list[Any] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # -- plumbing ---------------------------------------------------------

    def _transport(self) -> Any:
        if self._closed:
            raise RuntimeError("the client is closed")
        loop = asyncio.get_running_loop()
        if self._loop is not None and loop is not self._loop:
            # grpc.aio channels belong to the loop they were opened in; using
            # one from another loop hangs or fails obscurely.
            raise RuntimeError(
                "this AsyncClient was first used in another event loop; "
                "make one client per event loop"
            )
        if not self._transports:
            self._loop = loop
            self._transports = async_transports(self.connection, self._compression)
        return self._transports[self._next_index()]

    async def _invoke(self, call: calls.Call[T], timeout: float | None) -> T:
        """Send one unary call, retrying as the policy allows within one deadline."""
        deadline = self._deadline(timeout)
        attempts = 0
        while True:
            transport = self._transport()
            attempts += 1
            try:
                response = await transport.unary(call, max(deadline.remaining(), 0.0))
            except InferenceServerError as error:
                delay = self.retry.next_delay(
                    error.code, attempts, call.idempotent, deadline.remaining()
                )
                if delay is None:
                    return call.result_for(error)
                await asyncio.sleep(delay)
                continue
            return call.parse(response)

    async def close(self) -> None:
        """Close every channel; calls in flight are cancelled."""
        self._closed = True
        transports, self._transports = self._transports, []
        for transport in {id(t): t for t in transports}.values():
            await transport.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- health and metadata ----------------------------------------------

    async def is_live(self, *, timeout: float | None = None) -> bool:
        """Whether the server process is up (ServerLive)."""
        return await self._invoke(calls.server_live(), timeout)

    async def is_ready(self, *, timeout: float | None = None) -> bool:
        """Whether the server accepts inferences (ServerReady)."""
        return await self._invoke(calls.server_ready(), timeout)

    async def is_model_ready(
        self, name: str, version: str | int | None = None, *, timeout: float | None = None
    ) -> bool:
        """Whether a model (a version, or its default versions) can serve now."""
        return await self._invoke(calls.model_ready(name, version), timeout)

    async def wait_until_ready(
        self, model: str | None = None, *, timeout: float = 30.0, interval: float = 0.1
    ) -> None:
        """Wait until the server (and ``model``) is ready; see :meth:`Client.wait_until_ready`."""
        deadline = self._deadline(timeout)
        last: InferenceServerError | None = None
        while deadline.remaining() > 0:
            try:
                per_call = min(max(deadline.remaining(), 0.01), 5.0)
                ready = (
                    await self.is_model_ready(model, timeout=per_call)
                    if model
                    else await self.is_ready(timeout=per_call)
                )
                if ready:
                    return
            except InferenceServerError as exc:
                last = exc
            await asyncio.sleep(min(interval, max(deadline.remaining(), 0)))
        what = f"model '{model}'" if model else "server"
        detail = f" (last error: {last})" if last else ""
        raise DeadlineExceededError(f"{what} not ready after {timeout}s{detail}")

    async def server_metadata(self, *, timeout: float | None = None) -> ServerMetadata:
        """Server name, version and supported extensions."""
        return await self._invoke(calls.server_metadata(), timeout)

    async def model_metadata(
        self, name: str, version: str | int | None = None, *, timeout: float | None = None
    ) -> ModelMetadata:
        """A model's versions, platform, and input/output names, datatypes and shapes."""
        return await self._invoke(calls.model_metadata(name, version), timeout)

    async def model_config(
        self, name: str, version: str | int | None = None, *, timeout: float | None = None
    ) -> mc.ModelConfig:
        """The model's configuration as the ``inference.ModelConfig`` protobuf message."""
        return await self._invoke(calls.model_config(name, version), timeout)

    async def statistics(
        self,
        name: str | None = None,
        version: str | int | None = None,
        *,
        timeout: float | None = None,
    ) -> list[ModelStatistics]:
        """Inference statistics of one model, or of every model when ``name`` is None."""
        return await self._invoke(calls.statistics(name, version), timeout)

    async def repository_index(
        self, *, ready_only: bool = False, timeout: float | None = None
    ) -> list[RepositoryModel]:
        """The models in the server's repository and their states."""
        return await self._invoke(calls.repository_index(ready_only), timeout)

    async def load_model(
        self,
        name: str,
        parameters: Mapping[str, bool | int | str | bytes] | None = None,
        *,
        timeout: float | None = None,
    ) -> None:
        """Ask the server to load (or reload) a model from its repository."""
        await self._invoke(calls.load_model(name, parameters), timeout)

    async def unload_model(self, name: str, *, timeout: float | None = None) -> None:
        """Ask the server to unload a model."""
        await self._invoke(calls.unload_model(name), timeout)

    # -- inference ----------------------------------------------------------

    async def infer(
        self,
        name: str,
        inputs: Mapping[str, npt.ArrayLike],
        *,
        outputs: Sequence[str] | None = None,
        version: str | int | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
        parameters: Mapping[str, ParameterValue] | None = None,
        cast: bool = True,
        split_batches: bool = False,
    ) -> dict[str, np.ndarray]:
        """Run a model once; see :meth:`Client.infer` (``cast``, ``split_batches`` alike).

        Example::

            out = await client.infer("digits", {"image": images}, split_batches=True)
        """
        key = self._model_key(name, version)
        if cast:
            declared = await self._declared_types(name, version, timeout)
            inputs = casting.cast_inputs(inputs, declared)
        parts = [inputs]
        if split_batches:
            limit = await self._max_batch_size(name, version, timeout)
            parts = splitting.split_rows(inputs, limit)
        described = self._infer_calls(name, parts, outputs, version, request_id, parameters)
        try:
            if len(described) == 1:
                return await self._invoke(described[0], timeout)
            deadline = self._deadline(timeout)
            in_flight = asyncio.Semaphore(MAX_PARTS_IN_FLIGHT)

            async def send(call: calls.Call[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
                async with in_flight:
                    return await self._invoke(call, max(deadline.remaining(), 1e-3))

            answers = await asyncio.gather(*(send(call) for call in described))
            return splitting.join_outputs(answers)
        except InvalidInputError:
            if cast or split_batches:
                self._forget_model(key)
            raise

    async def _declared_types(
        self, name: str, version: str | int | None, timeout: float | None
    ) -> dict[str, str]:
        key = self._model_key(name, version)
        declared = self._declared.get(key)
        if declared is None:
            try:
                metadata = await self._invoke(_once(calls.model_metadata(name, version)), timeout)
                declared = {t.name: t.datatype for t in metadata.inputs}
            except UnimplementedError:
                declared = {}  # a server without ModelMetadata: numpy's dtypes are sent
            self._declared[key] = declared
        return declared

    async def _max_batch_size(
        self, name: str, version: str | int | None, timeout: float | None
    ) -> int:
        key = self._model_key(name, version)
        limit = self._max_batch_sizes.get(key)
        if limit is None:
            try:
                config = await self._invoke(_once(calls.model_config(name, version)), timeout)
                limit = int(config.max_batch_size)
            except UnimplementedError:
                limit = 0  # a server without ModelConfig: nothing to split by
            self._max_batch_sizes[key] = limit
        return limit

    async def stream_infer(
        self,
        requests: AsyncIterable[InferRequest] | Iterable[InferRequest],
        *,
        timeout: float | None = None,
    ) -> AsyncIterator[InferResult]:
        """Send requests over one ModelStreamInfer stream; yield answers as they come.

        ``requests`` may be a plain or an async iterable, consumed lazily. See
        :meth:`Client.stream_infer` for how errors are reported.

        Example::

            async for result in client.stream_infer(requests):
                print(result.id, result.raise_for_error().outputs)
        """
        deadline = self._deadline(timeout)
        transport = self._transport()
        if transport.protocol == "http":
            async for result in self._stream_over_rest(requests, deadline):
                yield result
            return
        failure: list[Exception] = []

        async def encoded() -> AsyncIterator[pb.ModelInferRequest]:
            try:
                if isinstance(requests, AsyncIterable):
                    async for item in requests:
                        yield calls.request_from(item)
                else:
                    for item in requests:
                        yield calls.request_from(item)
            except Exception as exc:  # not GeneratorExit: gRPC closes us when the call ends
                failure.append(exc)
                raise

        call = transport.stub.ModelStreamInfer(
            encoded(), timeout=deadline.remaining(), metadata=self.metadata
        )
        try:
            async for response in call:
                yield calls.stream_result(response)
        except grpc.RpcError as exc:
            if failure:
                raise failure[0] from None
            raise from_rpc_error(exc) from None
        except asyncio.CancelledError:
            # grpc.aio cancels the call locally when the request iterator
            # fails; that failure is the error to report. A cancellation of
            # the caller's own task propagates as it is.
            if failure:
                raise failure[0] from None
            raise
        finally:
            call.cancel()
        if failure:
            raise failure[0]

    async def _stream_over_rest(
        self,
        requests: AsyncIterable[InferRequest] | Iterable[InferRequest],
        deadline: Deadline,
    ) -> AsyncIterator[InferResult]:
        """REST has no stream: each request is one unary call, answered in order."""

        async def items() -> AsyncIterator[InferRequest]:
            if isinstance(requests, AsyncIterable):
                async for item in requests:
                    yield item
            else:
                for item in requests:
                    yield item

        async for item in items():
            call = calls.stream_call(item)
            try:
                result = await self._transport().unary(call, max(deadline.remaining(), 0.0))
            except InferenceServerError as error:
                if error.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise
                yield calls.failed_result(item, error)
                continue
            yield call.parse(result)
