"""The Python side of the native front end, the server's only one: the seam with Rust.

Rust (``native/``, built into ``onnxserve._native`` by ``make install`` and
into the wheel) owns the gRPC and HTTP/REST ports: TLS, bearer tokens and
``--max-concurrent-rpcs`` checked from the headers before a body is read,
deadlines, decoding, and for every model served natively the whole
per-request path: the fast path's check, the
batching queue, splitting the outputs and answering each call. Python owns
the models. The seam is three narrow calls, each made once per batch or per
rare call, never per request of the hot path:

- **publish**: each natively served model version gets a queue
  (:class:`NativeBatcher`, the model's scheduler), opened with its signature
  and queue rules; :meth:`NativeFrontEnd.refresh_routes` tells Rust which
  queue answers (name, version) after every change in the repository;
- **batches**: each model instance's thread blocks in ``next_batch`` (the GIL
  released while it waits), gets the batch's inputs merged along the batch
  dimension, runs onnxruntime once and hands the outputs back in one
  ``complete`` call. When onnxruntime fails on a merged batch, the batch's
  requests are re-run apart (batch isolation, ``BatchExecutor``) and each
  answered on its own;
- **delegated calls**: everything else (metadata, config, statistics,
  repository and model control, and inference requests the fast path does not
  take: classification, Python models, ensembles,
  anything invalid) reaches the existing servicer as the request's bytes
  through one pump thread, and its answer goes back as bytes or a status. The
  rules and messages are written once, in Python.

A model version is served natively when its scheduler would be the dynamic
batcher with one priority level, the REJECT timeout action, no
``preserve_ordering`` and no padding to ``allowed_batch_sizes``
(:func:`native_refusal` says why not otherwise; BYTES inputs are checked in
Rust, framing and UTF-8, and decoded per batch by ``raw_text_tensor``); the
others run as before, through the delegated path. Requests to a natively
served model that the fast path declines run on that model's Python batcher.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from google.protobuf import descriptor_pb2

from onnxserve.protocol import codec
from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.server.batching.executor import BatchExecutor, ExecutedBatch
from onnxserve.server.config_batching import BatchingConfig
from onnxserve.server.errors import (
    ModelExecutionError,
    QueueFull,
    RequestCancelled,
    RequestTimeout,
    ServerError,
    status_of,
)
from onnxserve.server.guard import token_refusal
from onnxserve.server.inference import DecodedRequest
from onnxserve.server.model import ModelVersion
from onnxserve.server.scheduler import Scheduler
from onnxserve.server.text_tensors import raw_text_tensor

if TYPE_CHECKING:
    from onnxserve.server.registry import ModelRegistry
    from onnxserve.server.service import InferenceService
    from onnxserve.server.settings import ServerSettings

log = logging.getLogger(__name__)
#: One line per REST call, at DEBUG only (the native front end keeps none otherwise).
access_log = logging.getLogger("onnxserve.server.access")

_MODULE = "onnxserve._native"
_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
#: How long a waiting thread sleeps in Rust before it looks at Python again.
_WAIT_S = 0.25
#: Failures Rust counted (queue full, timed out, cancelled), as the errors Python counts.
_FAILURES: dict[str, Callable[[], ServerError]] = {
    "queue_full": lambda: QueueFull("queue full"),
    "timeout": lambda: RequestTimeout("timed out"),
    "cancelled": lambda: RequestCancelled("cancelled"),
}


def native_available() -> bool:
    """Whether the extension module is built (``make install`` builds it with cargo)."""
    return importlib.util.find_spec(_MODULE) is not None


def _native() -> ModuleType:
    import onnxserve._native as module  # type: ignore[import-not-found]

    return module


def _code(status: grpc.StatusCode) -> int:
    return int(status.value[0])


def native_refusal(model: ModelVersion) -> str | None:
    """Why a model version is not served natively (None: it is)."""
    config = model.config
    if not config.HasField("dynamic_batching") or config.max_batch_size <= 0:
        return "no dynamic batching"
    if getattr(model, "create_executor", None) is not None:
        return "a Python model"
    batching = BatchingConfig.from_model_config(config)
    if batching.priority_levels > 1:
        return "priority levels"
    if batching.preserve_ordering:
        return "preserve_ordering"
    if batching.allowed_batch_sizes:
        return "allowed_batch_sizes"
    if any(policy.delay_on_timeout for policy in batching.policies):
        return "the DELAY timeout action"
    return None


class _Aborted(grpc.aio.AbortError):
    """What a delegated call's ``context.abort`` raises: the status to answer with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _CallContext:
    """The part of ``grpc.aio.ServicerContext`` the servicer uses, for a delegated call."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def time_remaining(self) -> float | None:
        remaining: float | None = self._call.time_remaining()
        return remaining

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise _Aborted(code, details)


class NativeBatcher:
    """The scheduler of a natively served model version: its queue lives in Rust.

    Its instance threads take batches from the Rust queue; requests that reach
    it from Python (the delegated path) run on ``fallback``, the model's own
    Python scheduler. ``close`` stops the queue's intake, serves what it holds,
    and ends the threads.
    """

    def __init__(self, model: ModelVersion, frontend: Any, fallback: Scheduler) -> None:
        self._model = model
        self._fallback = fallback
        config = BatchingConfig.from_model_config(model.config)
        policy = config.policies[0]
        signature = model.signature
        names = list(signature.inputs)
        # Numeric inputs by their numpy dtype; BYTES ones (None) as the text onnxruntime takes.
        self._dtypes = {
            n: None if s.datatype == "BYTES" else codec.numpy_dtype(s.datatype)
            for n, s in signature.inputs.items()
        }
        self._output_types = {n: s.datatype for n, s in signature.outputs.items()}
        self._executor = BatchExecutor(model)
        self.queue = frontend.open_queue(
            name=model.name,
            version=model.version_label,
            inputs=[(s.name, s.datatype, list(s.dims)) for s in signature.inputs.values()],
            outputs=[(s.name, s.datatype, list(s.dims)) for s in signature.outputs.values()],
            max_batch_size=signature.max_batch_size,
            ranges=[
                (names.index(name), low, high)
                for name, (low, high) in signature.input_ranges.items()
                if name in signature.inputs
            ],
            target_rows=config.target_rows,
            max_rows=config.max_rows,
            max_queue_delay_us=config.max_queue_delay_ns // 1000,
            max_queue_size=policy.max_queue_size,
            default_timeout_us=policy.timeout_ns // 1000,
            allow_timeout_override=policy.allow_timeout_override,
        )
        self._threads = [
            threading.Thread(target=self._serve, name=f"ort-{model.name}-{index}", daemon=True)
            for index in range(model.instance_count)
        ]
        for thread in self._threads:
            thread.start()

    async def infer(
        self, request: DecodedRequest, deadline_ns: int | None
    ) -> dict[str, np.ndarray]:
        return await self._fallback.infer(request, deadline_ns)

    def native_pending(self) -> int:
        """Requests the Rust queue holds or runs (for the pending-request gauge)."""
        count: int = self.queue.in_flight()
        return count

    async def close(self) -> None:
        self.queue.close()
        loop = asyncio.get_running_loop()
        for thread in self._threads:
            await loop.run_in_executor(None, thread.join)
        await self._fallback.close()

    # -- the instance threads -------------------------------------------------------------

    def record_native_failures(self) -> None:
        """Count what Rust refused or timed out since the instance threads last asked
        (statistics call this before they are read: the threads may be busy running)."""
        self._record(self.queue.take_failures())

    def _record(self, failures: list[tuple[str, int]]) -> None:
        statistics = self._model.statistics
        for kind, ns in failures:
            statistics.record_failure(ns, _FAILURES[kind]())

    def _serve(self) -> None:
        while True:
            batch, closed, failures = self.queue.next_batch(_WAIT_S)
            self._record(failures)
            if closed:
                return
            if batch is not None:
                try:
                    self._run(batch)
                except Exception:  # never leave a batch unanswered, never end the thread
                    log.exception("model '%s': a native batch failed", self._model.name)
                    code, message = status_of(
                        ModelExecutionError(
                            f"model '{self._model.name}' failed to run the request; "
                            "see the server log"
                        ),
                        "native batch",
                    )
                    batch.fail(_code(code), message)

    def _run(self, batch: Any) -> None:
        model = self._model
        rows: list[int] = batch.rows
        names = tuple(batch.output_names)
        inputs = {name: self._array(name, data, shape) for name, data, shape in batch.inputs()}
        dispatched_ns = time.monotonic_ns()
        whole = DecodedRequest(
            model_name=model.name,
            model_version=model.version_label,
            id="",
            inputs=inputs,
            output_names=names,
            batch_size=sum(rows),
            raw_output=True,
        )
        statistics = model.statistics
        queue_ns: list[int] = batch.queue_ns
        try:
            outputs, timing = self._executor.execute_whole(whole)
        except Exception as exc:
            if len(rows) > 1 and not isinstance(exc, ServerError):
                self._isolate(batch, inputs, names, dispatched_ns, exc)
                return
            error = exc if isinstance(exc, ServerError) else self._executor.failure(exc)
            code, message = status_of(error, "native batch")
            batch.fail(_code(code), message)
            elapsed = time.monotonic_ns() - dispatched_ns
            for waited in queue_ns:
                statistics.record_failure(waited + elapsed, error)
            return
        batch.complete([self._wire(name, outputs[name]) for name in names])
        statistics.record_execution(timing)
        elapsed = time.monotonic_ns() - dispatched_ns
        for count, waited in zip(rows, queue_ns, strict=True):
            statistics.record_success(
                rows=count, queue_ns=waited, timing=timing, total_ns=waited + elapsed
            )

    def _isolate(
        self,
        batch: Any,
        inputs: dict[str, np.ndarray],
        names: tuple[str, ...],
        dispatched_ns: int,
        error: Exception,
    ) -> None:
        """Re-run the batch's requests apart (BatchExecutor's halves) and answer each."""
        model = self._model
        requests = []
        start = 0
        now = time.monotonic_ns()
        for count, waited in zip(batch.rows, batch.queue_ns, strict=True):
            requests.append(
                DecodedRequest(
                    model_name=model.name,
                    model_version=model.version_label,
                    id="",
                    inputs={name: array[start : start + count] for name, array in inputs.items()},
                    output_names=names,
                    batch_size=count,
                    raw_output=True,
                    arrival_ns=now - waited,
                )
            )
            start += count
        executed: ExecutedBatch = self._executor.isolate(requests, error)
        answers: list[Any] = []
        for outcome in executed.outcomes:
            if isinstance(outcome, ServerError):
                code, message = status_of(outcome, "native batch")
                answers.append((_code(code), message))
            else:
                answers.append([self._wire(name, outcome[name]) for name in names])
        batch.complete_each(answers)
        self._executor.record(requests, executed, dispatched_ns)

    def _array(self, name: str, data: bytes, shape: list[int]) -> np.ndarray:
        """A merged input as onnxruntime takes it (Rust checked its size, framing, UTF-8)."""
        dtype = self._dtypes[name]
        if dtype is None:
            return raw_text_tensor(data, shape, codec.element_count(shape), name)
        return np.frombuffer(data, dtype=dtype).reshape(shape)

    def _wire(self, name: str, array: np.ndarray) -> tuple[str, list[int], Any]:
        """An output as Rust takes it: (name, shape, a buffer of its raw wire bytes)."""
        datatype = self._output_types[name]
        if datatype == "BYTES":
            return name, list(array.shape), codec.array_to_raw(array, datatype)
        wire = np.ascontiguousarray(array, dtype=codec.numpy_dtype(datatype))
        return name, list(wire.shape), memoryview(wire.reshape(-1).view(np.uint8))


def file_descriptor_set() -> bytes:
    """The protocol's files and grpc.health.v1, for server reflection (v1alpha)."""
    from grpc_health.v1 import health_pb2

    from onnxserve.protocol import model_config_pb2 as mc

    files = descriptor_pb2.FileDescriptorSet()
    for file in (mc.DESCRIPTOR, pb.DESCRIPTOR, health_pb2.DESCRIPTOR):
        files.file.add().MergeFromString(file.serialized_pb)
    return files.SerializeToString()


class NativeFrontEnd:
    """The Rust front end of one server process, and the pump of its delegated calls."""

    def __init__(
        self,
        settings: ServerSettings,
        service: InferenceService,
        token_digests: Callable[[], list[bytes]] | None,
        busy_message: str,
    ) -> None:
        self._service = service
        self._token_digests = token_digests
        read = lambda path: path.read_bytes() if path is not None else None  # noqa: E731
        # REST's access log: kept (by Rust) and written only at DEBUG.
        self._logs_access = access_log.isEnabledFor(logging.DEBUG)
        self.frontend = _native().Frontend(
            host=settings.host,
            port=settings.grpc_port,
            health_port=settings.health_port,
            http_port=settings.http_port or None,
            reuse_port=settings.workers > 1,
            max_message_bytes=settings.max_message_bytes,
            max_concurrent_rpcs=settings.max_concurrent_rpcs,
            stream_window=settings.max_stream_requests_in_flight,
            max_connection_age_s=settings.max_connection_age_s,
            max_connection_age_grace_s=settings.max_connection_age_grace_s,
            descriptors=file_descriptor_set(),
            busy_message=busy_message,
            token_required_message=token_refusal(missing=True),
            token_invalid_message=token_refusal(missing=False),
            token_digests=token_digests() if token_digests is not None else None,
            tls_cert=read(settings.tls_cert),
            tls_key=read(settings.tls_key),
            tls_client_ca=read(settings.tls_client_ca),
            access_log=self._logs_access,
        )
        self._access: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pump: threading.Thread | None = None
        self._stopping = threading.Event()
        # Delegated calls in progress, by the id Rust gave them.
        self._tasks: dict[int, asyncio.Task[None]] = {}

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> tuple[int, int | None]:
        """Open the ports (OSError when one cannot be) and start the pump; the gRPC and
        REST ports bound (REST: None when off)."""
        self._loop = asyncio.get_running_loop()
        ports: tuple[int, int | None] = self.frontend.start()
        self._pump = threading.Thread(
            target=self._pump_calls, name="onnxserve-native-pump", daemon=True
        )
        self._pump.start()
        if self._logs_access:
            self._access = threading.Thread(
                target=self._log_access, name="onnxserve-native-access", daemon=True
            )
            self._access.start()
        return ports

    def set_serving(self, serving: bool) -> None:
        self.frontend.set_serving(serving)

    def reload_tokens(self) -> None:
        if self._token_digests is not None:
            self.frontend.set_tokens(self._token_digests())

    def drain(self, message: str) -> None:
        self.frontend.drain(message)

    def in_flight(self) -> int:
        count: int = self.frontend.in_flight()
        return count

    def idle_s(self) -> float:
        idle: float = self.frontend.idle_s()
        return idle

    async def stop(self, grace_s: float) -> None:
        self._stopping.set()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.frontend.stop, grace_s)
        if self._pump is not None:
            await loop.run_in_executor(None, self._pump.join)
        if self._access is not None:
            await loop.run_in_executor(None, self._access.join)

    # -- models ---------------------------------------------------------------------------

    def scheduler_for(self, model: ModelVersion, fallback: Scheduler) -> Scheduler:
        """The model's scheduler: a NativeBatcher where it can be, else ``fallback``."""
        why = native_refusal(model)
        if why is not None:
            log.info(
                "model '%s' version %s runs on the Python path (%s)",
                model.name,
                model.version_label,
                why,
            )
            return fallback
        return NativeBatcher(model, self.frontend, fallback)

    def refresh_routes(self, registry: ModelRegistry) -> None:
        """Tell Rust which queue answers each (name, version) now; the rest go to Python."""
        routes = []
        for name in registry.model_names():
            try:
                versions = registry.serving_versions(name)
            except ServerError:
                continue
            for serving in versions:
                scheduler = serving.scheduler
                if isinstance(scheduler, NativeBatcher) and serving.accepting:
                    routes.append((name, serving.label, scheduler.queue))
            try:
                default = registry.get(name, "")
            except ServerError:
                continue
            scheduler = default.scheduler
            if isinstance(scheduler, NativeBatcher) and default.accepting:
                routes.append((name, "", scheduler.queue))
        self.frontend.set_routes(routes)

    # -- delegated calls ------------------------------------------------------------------

    def _log_access(self) -> None:
        """Log what Rust recorded of each REST call: method, path, status, time taken."""
        reported = 0
        while not self._stopping.is_set():
            lines, dropped = self.frontend.access_lines(_WAIT_S)
            for method, path, status, seconds in lines:
                access_log.debug("%s %s %d %.2f ms", method, path, status, seconds * 1e3)
            if dropped > reported:
                access_log.debug("%d access log lines dropped (the log fell behind)", dropped)
                reported = dropped

    def _pump_calls(self) -> None:
        loop = self._loop
        assert loop is not None, "started on the event loop"
        while not self._stopping.is_set():
            item = self.frontend.next_call(_WAIT_S)
            if item is None:
                continue
            try:
                if isinstance(item, int):  # its caller went away (cancelled, deadline)
                    loop.call_soon_threadsafe(self._cancel, item)
                else:
                    loop.call_soon_threadsafe(self._spawn, item)
            except RuntimeError:  # the loop is closed: the server is stopping
                if not isinstance(item, int):
                    item.fail(_code(grpc.StatusCode.UNAVAILABLE), "the server is stopping")
                return

    def _spawn(self, call: Any) -> None:
        """Run a delegated call as a task, cancelled if its caller goes away (as grpc.aio
        cancels a handler): a cancelled call never reaches the model if still queued."""
        task = asyncio.ensure_future(self._answer(call))
        identity: int = call.id
        self._tasks[identity] = task
        task.add_done_callback(lambda _: self._tasks.pop(identity, None))

    def _cancel(self, identity: int) -> None:
        task = self._tasks.get(identity)
        if task is not None:
            task.cancel()

    async def _answer(self, call: Any) -> None:
        method: str = call.method
        context = _CallContext(call)
        service = self._service
        try:
            if method == "ModelInfer":
                call.answer(await service.ModelInferBytes(call.body, context))  # type: ignore[arg-type]
            elif method == "ModelStreamInfer":
                request = pb.ModelInferRequest.FromString(call.body)
                deadline = context.time_remaining()
                deadline_ns = (
                    None if deadline is None else time.monotonic_ns() + int(deadline * 1e9)
                )
                answer = await service.stream_answer(request, deadline_ns)
                call.answer(answer.SerializeToString())
            else:
                descriptor = _SERVICE.methods_by_name.get(method)
                if descriptor is None or descriptor.server_streaming or descriptor.client_streaming:
                    call.fail(_code(grpc.StatusCode.UNIMPLEMENTED), f"unknown method {method}")
                    return
                request_type = getattr(pb, descriptor.input_type.name)
                handler = getattr(service, method)
                response = await handler(request_type.FromString(call.body), context)
                call.answer(response.SerializeToString())
        except _Aborted as aborted:
            call.fail(_code(aborted.code), aborted.message)
        except Exception as exc:  # a bug or an undecodable request: never a silent hang
            code, message = status_of(exc, method)
            call.fail(_code(code), message)
