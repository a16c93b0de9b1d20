"""The blocking client: :class:`Client`."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
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
from onnxserve.client.transport import sync_transports
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

__all__ = ["Client"]

T = TypeVar("T")


class Client(ClientBase):
    """A blocking client for any Open Inference Protocol (KServe v2 / Triton) gRPC server.

    Numpy in, numpy out: ``infer`` takes arrays (or anything ``np.asarray``
    accepts) by input name and returns arrays by output name. Every call has a
    deadline (``timeout`` seconds, 60 by default, overridable per call) and
    read-only calls are retried on UNAVAILABLE with exponential backoff
    (``retry``). Failures raise :class:`InferenceServerError` subclasses.
    The client is thread-safe; share one per process.

    Args:
        url: ``host:port``, ``grpc://host:port`` or ``grpcs://host:port`` (TLS),
            or a list of them to spread calls over, round robin.
        tls: True for TLS with the system's roots, or a :class:`TLSConfig`
            (custom roots, client certificate for mTLS, server name override).
        token: Sent as ``authorization: Bearer <token>`` on every call; refused
            over plaintext unless ``allow_insecure_token``.
        headers: Extra metadata sent with every call.
        timeout: Default deadline of each call, in seconds (retries included).
        retry: Retry policy; ``RetryPolicy(retry_infer=True)`` also retries infer.
        keepalive: HTTP/2 keepalive pings (off unless given).
        max_message_bytes: Largest message sent or received.
        channels_per_url: Channels (TCP connections) opened to each URL; calls go
            round them, which spreads load over server processes sharing a port.
        compression: gRPC compression for requests.
        channel_args: Extra gRPC channel arguments.

    Example::

        import numpy as np
        from onnxserve.client import Client

        with Client("localhost:8001") as client:
            image = np.zeros((1, 8, 8), np.float32)
            print(client.infer("digits", {"image": image})["probabilities"])
    """

    def _open(self) -> None:
        self._transports = sync_transports(self.connection, self._compression)
        self._closed = False

    # -- plumbing ---------------------------------------------------------

    def _transport(self) -> Any:
        if self._closed:
            raise RuntimeError("the client is closed")
        return self._transports[self._next_index()]

    def _invoke(self, call: calls.Call[T], timeout: float | None) -> T:
        """Send one unary call, retrying as the policy allows within one deadline."""
        deadline = self._deadline(timeout)
        attempts = 0
        while True:
            transport = self._transport()
            attempts += 1
            try:
                response = transport.unary(call, max(deadline.remaining(), 0.0))
            except InferenceServerError as error:
                delay = self.retry.next_delay(
                    error.code, attempts, call.idempotent, deadline.remaining()
                )
                if delay is None:
                    return call.result_for(error)
                time.sleep(delay)
                continue
            return call.parse(response)

    def close(self) -> None:
        """Close every channel; calls in flight are cancelled."""
        self._closed = True
        for transport in {id(t): t for t in self._transports}.values():
            transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- health and metadata ----------------------------------------------

    def is_live(self, *, timeout: float | None = None) -> bool:
        """Whether the server process is up (ServerLive)."""
        return self._invoke(calls.server_live(), timeout)

    def is_ready(self, *, timeout: float | None = None) -> bool:
        """Whether the server accepts inferences (ServerReady)."""
        return self._invoke(calls.server_ready(), timeout)

    def is_model_ready(
        self, name: str, version: str | int | None = None, *, timeout: float | None = None
    ) -> bool:
        """Whether a model (a version, or its default versions) can serve now."""
        return self._invoke(calls.model_ready(name, version), timeout)

    def wait_until_ready(
        self, model: str | None = None, *, timeout: float = 30.0, interval: float = 0.1
    ) -> None:
        """Block until the server (and ``model``, if named) is ready.

        Raises :class:`DeadlineExceededError` if that does not happen within
        ``timeout`` seconds; connection failures in between are waited out.
        """
        deadline = self._deadline(timeout)
        last: InferenceServerError | None = None
        while deadline.remaining() > 0:
            try:
                per_call = min(max(deadline.remaining(), 0.01), 5.0)
                ready = (
                    self.is_model_ready(model, timeout=per_call)
                    if model
                    else self.is_ready(timeout=per_call)
                )
                if ready:
                    return
            except InferenceServerError as exc:
                last = exc
            time.sleep(min(interval, max(deadline.remaining(), 0)))
        what = f"model '{model}'" if model else "server"
        detail = f" (last error: {last})" if last else ""
        raise DeadlineExceededError(f"{what} not ready after {timeout}s{detail}")

    def server_metadata(self, *, timeout: float | None = None) -> ServerMetadata:
        """Server name, version and supported extensions."""
        return self._invoke(calls.server_metadata(), timeout)

    def model_metadata(
        self, name: str, version: str | int | None = None, *, timeout: float | None = None
    ) -> ModelMetadata:
        """A model's versions, platform, and input/output names, datatypes and shapes."""
        return self._invoke(calls.model_metadata(name, version), timeout)

    def model_config(
        self, name: str, version: str | int | None = None, *, timeout: float | None = None
    ) -> mc.ModelConfig:
        """The model's configuration as the ``inference.ModelConfig`` protobuf message."""
        return self._invoke(calls.model_config(name, version), timeout)

    def statistics(
        self,
        name: str | None = None,
        version: str | int | None = None,
        *,
        timeout: float | None = None,
    ) -> list[ModelStatistics]:
        """Inference statistics of one model, or of every model when ``name`` is None."""
        return self._invoke(calls.statistics(name, version), timeout)

    def repository_index(
        self, *, ready_only: bool = False, timeout: float | None = None
    ) -> list[RepositoryModel]:
        """The models in the server's repository and their states."""
        return self._invoke(calls.repository_index(ready_only), timeout)

    def load_model(
        self,
        name: str,
        parameters: Mapping[str, bool | int | str | bytes] | None = None,
        *,
        timeout: float | None = None,
    ) -> None:
        """Ask the server to load (or reload) a model from its repository."""
        self._invoke(calls.load_model(name, parameters), timeout)

    def unload_model(self, name: str, *, timeout: float | None = None) -> None:
        """Ask the server to unload a model."""
        self._invoke(calls.unload_model(name), timeout)

    # -- inference ----------------------------------------------------------

    def infer(
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
        """Run a model once: arrays by input name in, arrays by output name out.

        Inputs go raw. With ``cast`` (the default) each takes the datatype the
        model declares (ModelMetadata, asked once per model and kept) when no
        value changes: a list or a float64 array for an FP32 input is sent as
        FP32, ``[1, 2]`` for INT32 as INT32, and a cast that would change a value
        (1.7 to INT32) raises :class:`InvalidInputError` before anything is
        sent (:mod:`onnxserve.client.casting` has the rule). ``cast=False``
        sends each array as its dtype (str/bytes/object arrays are BYTES,
        ``ml_dtypes.bfloat16`` is BF16). ``split_batches=True`` sends a batch of
        more rows than the model's max_batch_size as parts sent at once, and
        joins their outputs (:mod:`onnxserve.client.splitting`). ``outputs``
        limits the answer to those names. Numeric outputs are read-only views
        of the response (``.copy()`` to modify); BYTES outputs are object
        arrays of ``bytes``.

        Example::

            out = client.infer("digits", {"image": images}, outputs=["probabilities"])
        """
        key = self._model_key(name, version)
        if cast:
            inputs = casting.cast_inputs(inputs, self._declared_types(name, version, timeout))
        parts = [inputs]
        if split_batches:
            parts = splitting.split_rows(inputs, self._max_batch_size(name, version, timeout))
        described = self._infer_calls(name, parts, outputs, version, request_id, parameters)
        try:
            if len(described) == 1:
                return self._invoke(described[0], timeout)
            deadline = self._deadline(timeout)
            workers = min(len(described), MAX_PARTS_IN_FLIGHT)
            with ThreadPoolExecutor(workers, thread_name_prefix="onnxserve-split") as pool:
                futures = [
                    pool.submit(self._invoke, call, max(deadline.remaining(), 1e-3))
                    for call in described
                ]
                answers = [future.result() for future in futures]
            return splitting.join_outputs(answers)
        except InvalidInputError:
            if cast or split_batches:
                self._forget_model(key)
            raise

    def _declared_types(
        self, name: str, version: str | int | None, timeout: float | None
    ) -> dict[str, str]:
        key = self._model_key(name, version)
        declared = self._declared.get(key)
        if declared is None:
            try:
                metadata = self._invoke(_once(calls.model_metadata(name, version)), timeout)
                declared = {t.name: t.datatype for t in metadata.inputs}
            except UnimplementedError:
                declared = {}  # a server without ModelMetadata: numpy's dtypes are sent
            self._declared[key] = declared
        return declared

    def _max_batch_size(self, name: str, version: str | int | None, timeout: float | None) -> int:
        key = self._model_key(name, version)
        limit = self._max_batch_sizes.get(key)
        if limit is None:
            try:
                config = self._invoke(_once(calls.model_config(name, version)), timeout)
                limit = int(config.max_batch_size)
            except UnimplementedError:
                limit = 0  # a server without ModelConfig: nothing to split by
            self._max_batch_sizes[key] = limit
        return limit

    def stream_infer(
        self, requests: Iterable[InferRequest], *, timeout: float | None = None
    ) -> Iterator[InferResult]:
        """Send requests over one ModelStreamInfer stream and yield the answers as they come.

        ``requests`` is consumed lazily, so it may be a generator that produces
        requests as answers arrive. A request the server rejects yields an
        :class:`InferResult` whose ``error`` is set; the stream goes on. A
        failure of the stream itself raises. ``timeout`` bounds the whole
        stream. Streams are not retried.

        Example::

            reqs = (InferRequest("digits", {"image": image}, request_id=str(i))
                    for i, image in enumerate(images))
            for result in client.stream_infer(reqs):
                print(result.id, result.raise_for_error().outputs["probabilities"])
        """
        deadline = self._deadline(timeout)
        transport = self._transport()
        if transport.protocol == "http":
            yield from self._stream_over_rest(requests, deadline)
            return
        failure: list[Exception] = []

        def encoded() -> Iterator[pb.ModelInferRequest]:
            # gRPC consumes this in its own thread and would hide an exception
            # behind "Exception iterating requests!": keep it to raise here.
            try:
                for item in requests:
                    yield calls.request_from(item)
            except Exception as exc:  # not GeneratorExit: gRPC closes us when the call ends
                failure.append(exc)
                raise

        responses = transport.stub.ModelStreamInfer(
            encoded(), timeout=deadline.remaining(), metadata=self.metadata
        )
        try:
            for response in responses:
                yield calls.stream_result(response)
        except grpc.RpcError as exc:
            if failure:
                raise failure[0] from None
            raise from_rpc_error(exc) from None
        finally:
            responses.cancel()
        if failure:
            raise failure[0]

    def _stream_over_rest(
        self, requests: Iterable[InferRequest], deadline: Deadline
    ) -> Iterator[InferResult]:
        """REST has no stream: each request is one unary call, answered in order."""
        for item in requests:
            call = calls.stream_call(item)
            try:
                result = self._transport().unary(call, max(deadline.remaining(), 0.0))
            except InferenceServerError as error:
                if error.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise
                yield calls.failed_result(item, error)
                continue
            yield call.parse(result)
