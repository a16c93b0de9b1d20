"""Load generators: grpc.aio in this process (here), or h2load in its own (``bench.h2load``).

Both send the same pre-encoded ModelInfer requests and report what a client
saw: how many requests, how long, the latency of each. They differ in cost:
the python driver spends tens of microseconds of this process's CPU per call,
which on a machine shared with the server is taken from the server; h2load
(nghttp2's HTTP/2 load tester, written in C) spends a few. h2load sees HTTP
status only, and gRPC answers errors with HTTP 200 and a ``grpc-status``
trailer, so its gRPC failures are counted by the runner from the server's
statistics.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np

from onnxserve.bench.workload import INFER_METHOD, RestRequest
from onnxserve.client.connection import Connection, plan_connection

__all__ = ["CHANNEL_OPTIONS", "DriverRun", "PythonDriver", "RestPythonDriver", "phase_fraction"]

# Requests and answers may be large (image batches); gRPC's 4 MiB default is not.
CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
)

# progress(fraction of the phase, detail text)
ProgressFn = Callable[[float, str], None]


@dataclass
class DriverRun:
    """What the client saw during one measured phase.

    ``successes`` is None when the driver cannot tell gRPC errors apart (h2load);
    ``latencies_ns`` then holds every answered request.
    """

    requests: int
    successes: int | None
    failure_codes: dict[str, int]
    latencies_ns: np.ndarray
    seconds: float
    late_sends: int = 0
    # CPU seconds the load generator spent (this process, or h2load's).
    client_cpu_s: float | None = None
    notes: list[str] = field(default_factory=list)


def phase_fraction(started: float, seconds: float, done: int, total: int) -> float:
    if total:
        return done / total
    return (time.perf_counter() - started) / seconds if seconds > 0 else 0.0


class PythonDriver:
    """grpc.aio on ``connections`` channels (one HTTP/2 connection each), bytes in and out.

    The answers are not parsed: a call that returns without an error status is
    a success, which is what the server's statistics count too.
    """

    name = "python"

    def __init__(
        self,
        target: str,
        payloads: Sequence[bytes],
        timeout: float,
        connections: int = 1,
        connection: Connection | None = None,
    ) -> None:
        """``connection``: TLS and the token as the SDK plans them (default: plaintext)."""
        if not payloads:
            raise ValueError("no request to send")
        if connections < 1:
            raise ValueError("connections must be at least 1")
        self.target = target
        self.connection = connection or plan_connection(target)
        self.payloads = list(payloads)
        self.timeout = timeout
        self.connections = connections
        self._channels: list[grpc.aio.Channel] = []
        self._calls: list[grpc.aio.UnaryUnaryMultiCallable] = []

    async def __aenter__(self) -> PythonDriver:
        # A local subchannel pool per channel: otherwise gRPC shares one
        # connection between channels to the same target.
        options = [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
        self._channels = [
            self.connection.aio_channel(self.target, options) for _ in range(self.connections)
        ]
        # No serializers: the pre-encoded bytes go out as they are.
        self._calls = [channel.unary_unary(INFER_METHOD) for channel in self._channels]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for channel in self._channels:
            await channel.close()
        self._channels, self._calls = [], []

    async def warmup(self, concurrency: int, rate: float | None, seconds: float) -> None:
        if seconds > 0:
            await self.run(concurrency, rate, seconds=seconds, requests=0)

    async def run(
        self,
        concurrency: int,
        rate: float | None,
        *,
        seconds: float,
        requests: int,
        progress: ProgressFn | None = None,
    ) -> DriverRun:
        """Closed loop at ``concurrency``, or open loop at ``rate`` requests/s.

        The phase ends when ``requests`` were sent (if non-zero) or ``seconds``
        passed, and every call in flight has finished, so the server's
        statistics read after it hold exactly these requests.
        """
        assert self._calls, "use PythonDriver as an async context manager"
        calls = self._calls
        payloads = self.payloads
        timeout = self.timeout
        metadata = self.connection.metadata or None
        latencies: list[int] = []
        codes: collections.Counter[str] = collections.Counter()

        async def one(payload: bytes, connection: int) -> None:
            call = calls[connection % len(calls)]
            t0 = time.perf_counter_ns()
            try:
                await call(payload, timeout=timeout, metadata=metadata)
            except grpc.aio.AioRpcError as exc:
                codes[exc.code().name] += 1
                return
            latencies.append(time.perf_counter_ns() - t0)

        return await _closed_or_open_loop(
            one, payloads, latencies, codes, concurrency, rate, seconds, requests, progress
        )


async def _closed_or_open_loop(
    one: Callable[[bytes, int], Awaitable[None]],
    payloads: Sequence[bytes],
    latencies: list[int],
    codes: collections.Counter[str],
    concurrency: int,
    rate: float | None,
    seconds: float,
    requests: int,
    progress: ProgressFn | None,
) -> DriverRun:
    """Closed loop at ``concurrency`` (worker ``i`` always on connection ``i``), or open
    loop at ``rate``; ``one(payload, connection)`` makes one call and records it."""
    sent = 0
    late = 0

    cpu_started = time.process_time()
    started = time.perf_counter()
    stop_at = started + seconds

    async def worker(first: int) -> None:
        nonlocal sent
        index = first
        while (sent < requests) if requests else (time.perf_counter() < stop_at):
            sent += 1
            await one(payloads[index % len(payloads)], first)
            index += concurrency

    async def scheduler() -> None:
        nonlocal sent, late
        assert rate is not None
        total = requests or max(1, round(rate * seconds))
        slots = asyncio.Semaphore(concurrency)
        tasks: set[asyncio.Task[None]] = set()

        async def guarded(payload: bytes, connection: int) -> None:
            try:
                await one(payload, connection)
            finally:
                slots.release()

        for k in range(total):
            delay = started + k / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if slots.locked():
                late += 1
            await slots.acquire()
            sent += 1
            task = asyncio.create_task(guarded(payloads[k % len(payloads)], k))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)

    if rate is None:
        jobs = [asyncio.create_task(worker(i)) for i in range(concurrency)]
    else:
        jobs = [asyncio.create_task(scheduler())]
    try:
        pending: set[asyncio.Task[None]] = set(jobs)
        while pending:
            _, pending = await asyncio.wait(pending, timeout=0.2)
            if progress is not None:
                done = len(latencies) + sum(codes.values())
                elapsed = time.perf_counter() - started
                progress(
                    phase_fraction(started, seconds, done, requests),
                    f"{done:,} done, {sum(codes.values())} failed, "
                    f"{done / max(elapsed, 1e-9):,.0f}/s",
                )
        for job in jobs:
            job.result()  # a bug in the loop surfaces here, not as a silent stop
    finally:
        for job in jobs:
            job.cancel()
    elapsed = time.perf_counter() - started
    finished = len(latencies) + sum(codes.values())
    notes = []
    if late:
        notes.append(f"{late} sends were late: {concurrency} requests were already in flight")
    return DriverRun(
        requests=finished,
        successes=len(latencies),
        failure_codes=dict(codes),
        latencies_ns=np.asarray(latencies, dtype=np.int64),
        seconds=elapsed,
        late_sends=late,
        client_cpu_s=time.process_time() - cpu_started,
        notes=notes,
    )


class RestPythonDriver:
    """REST inference calls over HTTP/1.1 from asyncio in this process: one keep-alive
    connection per request in flight, each request's bytes (line, headers, body)
    encoded once before the clock starts.

    A call answered 200 is a success; any other status counts as ``HTTP <status>``.
    """

    name = "python"

    def __init__(
        self,
        target: str,
        requests: Sequence[RestRequest],
        timeout: float,
        connection: Connection | None = None,
    ) -> None:
        if not requests:
            raise ValueError("no request to send")
        self.target = target
        self.connection = connection or plan_connection(target, protocol="http")
        self.timeout = timeout
        self.payloads = [self._encode(r) for r in requests]
        host, _, port = target.rpartition(":")
        self._host = host.strip("[]") or target
        self._port = int(port) if port.isdigit() else (443 if self.connection.tls else 80)
        self._streams: dict[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}

    def _encode(self, request: RestRequest) -> bytes:
        headers = [
            ("Host", self.target),
            ("Content-Length", str(len(request.body))),
            *request.headers,
            *self.connection.metadata,
        ]
        head = f"POST {request.path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
        return head.encode("latin-1") + b"\r\n" + request.body

    async def __aenter__(self) -> RestPythonDriver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for _, writer in self._streams.values():
            writer.close()
        self._streams = {}

    async def _stream(self, slot: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        stream = self._streams.get(slot)
        if stream is None:
            context = self.connection.ssl_context
            stream = await asyncio.open_connection(
                self._host,
                self._port,
                ssl=context,
                server_hostname=(self.connection.server_name or self._host) if context else None,
            )
            self._streams[slot] = stream
        return stream

    async def _call(self, payload: bytes, slot: int) -> int:
        """Send one request on connection ``slot``; its HTTP status."""
        reader, writer = await self._stream(slot)
        try:
            writer.write(payload)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            fields = {
                k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])
            }
            length = fields.get("content-length")
            if length is None:
                raise ConnectionError("an answer without Content-Length")
            await reader.readexactly(int(length))
            if fields.get("connection", "").lower() == "close":
                raise ConnectionResetError("the server closed the connection")
            return status
        except BaseException:
            writer.close()
            self._streams.pop(slot, None)
            raise

    async def warmup(self, concurrency: int, rate: float | None, seconds: float) -> None:
        if seconds > 0:
            await self.run(concurrency, rate, seconds=seconds, requests=0)

    async def run(
        self,
        concurrency: int,
        rate: float | None,
        *,
        seconds: float,
        requests: int,
        progress: ProgressFn | None = None,
    ) -> DriverRun:
        """As :meth:`PythonDriver.run`, over REST."""
        latencies: list[int] = []
        codes: collections.Counter[str] = collections.Counter()
        timeout = self.timeout
        in_use: set[int] = set()

        async def one(payload: bytes, connection: int) -> None:
            # A connection carries one request at a time (HTTP/1.1, no pipelining).
            slot = connection % concurrency if rate is None else _free_slot(in_use)
            in_use.add(slot)
            t0 = time.perf_counter_ns()
            try:
                status = await asyncio.wait_for(self._call(payload, slot), timeout)
            except asyncio.TimeoutError:
                codes["DEADLINE_EXCEEDED"] += 1
                return
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
                codes[f"connection: {type(exc).__name__}"] += 1
                return
            finally:
                in_use.discard(slot)
            if status != 200:
                codes[f"HTTP {status}"] += 1
                return
            latencies.append(time.perf_counter_ns() - t0)

        return await _closed_or_open_loop(
            one, self.payloads, latencies, codes, concurrency, rate, seconds, requests, progress
        )


def _free_slot(in_use: set[int]) -> int:
    slot = 0
    while slot in in_use:
        slot += 1
    return slot
