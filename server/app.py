"""Server wiring and lifecycle: start, load, ready, drain on SIGTERM, stop.

A single process opens its gRPC port before models load, so liveness answers at
once while readiness (ServerReady and grpc.health.v1) stays false until every
model is loaded. Each of ``--workers`` processes loads first and only then
joins the shared port: the kernel hands a new connection to any process bound
to it, and one still loading would answer UNAVAILABLE to a client that another
process already told the server was ready.

SIGTERM (or SIGINT) drains without losing a call:

1. readiness turns NOT_SERVING and every new inference call gets UNAVAILABLE,
   which clients retry on another replica, while the port stays open;
2. every call accepted before that finishes (the batchers keep batching);
3. once no call has arrived for ``QUIET_S`` (clients have moved on), gRPC
   stops. Stopping earlier would make gRPC cancel the calls that reached the
   process but not yet the servicer: measured, 13 to 15 of 400 calls from 16
   concurrent callers ended CANCELLED when the port closed at once;
4. the batchers stop once their last accepted call has its answer, and the
   process exits 0. All of it within ``--grace-period-s``.

SIGHUP re-reads ``--auth-token-file``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time
from typing import TYPE_CHECKING

from onnxserve.server import early_signals, event_loop
from onnxserve.server.control import ModelControl, RepositoryPoller
from onnxserve.server.guard import TokenFile, busy_refusal
from onnxserve.server.logs import configure_logging
from onnxserve.server.native import NativeFrontEnd, native_available
from onnxserve.server.peers import (
    HEARTBEAT_S,
    PEER_TIMEOUT_S,
    PeerClient,
    PeerServer,
    VersionReport,
    WorkerPeers,
)
from onnxserve.server.registry import ModelRegistry
from onnxserve.server.runtime import available_cpus
from onnxserve.server.service import DRAINING_MESSAGE, InferenceService
from onnxserve.server.settings import ServerSettings

if TYPE_CHECKING:
    from onnxserve.server.metrics import MetricsEndpoint

log = logging.getLogger(__name__)

#: The inference service's name, as health and clients name it.
INFERENCE_SERVICE = "inference.GRPCInferenceService"
#: Why no server can start without the native module, and how to build it.
NOT_BUILT = (
    "the server's front end (onnxserve._native, Rust) is not built: `make install` builds it "
    "with Rust's cargo (https://rustup.rs), as does `pip install` of onnxserve from source "
    "where cargo is installed; the client alone needs no Rust"
)
# A drain stops gRPC once no call has arrived for this long (see the module docstring).
QUIET_S = 0.25
_DRAIN_POLL_S = 0.01


class StartupFailed(Exception):
    """The server cannot start as asked (the message says why); the process exits 1."""


class InferenceServer:
    """One server process: the native front end (its ports), the models and metrics."""

    def __init__(self, settings: ServerSettings, peers: WorkerPeers | None = None) -> None:
        self.settings = settings
        cpu_budget = max(1, (settings.cpu_threads or available_cpus()) // settings.workers)
        self.registry = ModelRegistry(
            settings.model_repository,
            settings.device,
            cpu_budget,
            settings.grace_period_s,
            cache_dir=settings.cache_dir,
            model_control_mode=settings.model_control_mode,
            repository_poll_secs=settings.repository_poll_secs,
        )
        self.peers = peers
        self.peer_client = PeerClient(peers) if peers is not None else None
        self.peer_server = (
            PeerServer(peers.own_address, self.registry.reports) if peers is not None else None
        )
        self.control = ModelControl(
            self.registry, settings.model_control_mode, settings.allow_python_load
        )
        self.service = InferenceService(
            self.registry,
            self.control,
            self.peer_client,
        )
        self.tokens = TokenFile(settings.auth_token_file) if settings.auth_token_file else None
        # Rust answers the ports (onnxserve.server.native); Python runs the models.
        tokens = self.tokens
        self.native = NativeFrontEnd(
            settings,
            self.service,
            tokens.digests if tokens is not None else None,
            busy_refusal(settings.max_concurrent_rpcs),
        )
        native = self.native
        self.registry.wrap_scheduler = native.scheduler_for
        self.registry.on_change = lambda: native.refresh_routes(self.registry)
        self.metrics: MetricsEndpoint | None = None
        self.poller = (
            RepositoryPoller(self.registry, settings.repository_poll_secs)
            if settings.model_control_mode == "poll"
            else None
        )
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        settings = self.settings
        address = f"{settings.host}:{settings.grpc_port}"
        if self.tokens is not None and not settings.tls:
            log.warning(
                "bearer tokens travel in plaintext without --tls-cert; use TLS unless a "
                "TLS-terminating proxy sits in front of this port"
            )
        if self.peer_server is not None:
            await self.peer_server.start()
        if settings.metrics_port and (self.peers is None or self.peers.index == 0):
            # Before loading: with --workers, the others may be serving already.
            self._start_metrics()
        if settings.workers > 1:
            # Binding queues connections in this socket's backlog: bind only
            # once loaded, so that the kernel routes none here before then.
            log.info(
                "loading models before joining port %s (gRPC, %s event loop)",
                address,
                event_loop.describe(asyncio.get_running_loop()),
            )
            await self._load()
            await self._listen()
        else:
            await self._listen()
            log.info(
                "listening on %s (gRPC%s, %s event loop); loading models",
                address,
                ", TLS" if settings.tls else "",
                event_loop.describe(asyncio.get_running_loop()),
            )
            await self._load()
        if self.registry.is_ready():
            self.native.set_serving(True)
            log.info("ready: %s", ", ".join(self.registry.model_names()) or "no models")
        else:
            log.error("not ready: some models failed to load (see RepositoryIndex for reasons)")
        if self.poller is not None:
            self.poller.start()

    async def _load(self) -> None:
        settings = self.settings
        only: tuple[str, ...] | None = None
        if settings.model_control_mode == "explicit" and "*" not in settings.load_model:
            only = settings.load_model
        await self.registry.load_all(only)
        # What loading left (modules, sessions, configs) lives as long as the
        # process: out of the cyclic collector's sight, so that its full
        # collections do not walk it again and again while serving (they took
        # 2-3 % of the event loop's time at 64 clients before).
        gc.collect()
        gc.freeze()
        failures = self.registry.failures()
        if failures and settings.exit_on_error:
            raise StartupFailed(
                f"--exit-on-error: {len(failures)} model(s) or version(s) failed to load: "
                + "; ".join(failures)
            )

    async def _listen(self) -> None:
        """Open the ports (an OSError that names the flag of one in use: Rust binds them)."""
        settings = self.settings
        _, http_port = self.native.start()
        if http_port is not None:
            log.info(
                "HTTP/REST on %s:%d (%s)",
                settings.host,
                http_port,
                "https" if settings.tls else "HTTP/1.1 and h2c",
            )
        if settings.health_port:
            log.info(
                "grpc.health.v1 alone on %s:%d (plaintext, no token)",
                settings.host,
                settings.health_port,
            )

    def _start_metrics(self) -> None:
        from onnxserve.server.metrics import MetricsEndpoint, metrics_registry

        loop = asyncio.get_running_loop()

        def gather() -> list[VersionReport]:  # on the metrics thread
            future = asyncio.run_coroutine_threadsafe(self.service.reports(), loop)
            return future.result(timeout=PEER_TIMEOUT_S + 1)

        pids = self.peers.pids if self.peers is not None else None
        settings = self.settings
        self.metrics = MetricsEndpoint(
            settings.host, settings.metrics_port, metrics_registry(gather, pids)
        )
        self.metrics.start()
        log.info("metrics on http://%s:%d/metrics", settings.host, settings.metrics_port)

    def request_stop(self) -> None:
        self._stopping.set()

    def reload_tokens(self) -> None:
        if self.tokens is None:
            log.info("SIGHUP: no --auth-token-file to re-read")
        else:
            self.tokens.reload()
            self.native.reload_tokens()

    async def wait_and_drain(self) -> None:
        await self._stopping.wait()
        grace = self.settings.grace_period_s
        deadline = time.monotonic() + grace
        log.info("stopping: readiness off, new calls get UNAVAILABLE, %.1fs to drain", grace)
        self.service.draining = True
        native = self.native
        native.drain(DRAINING_MESSAGE)
        native.set_serving(False)
        if self.poller is not None:
            await self.poller.stop()

        def busy() -> bool:
            return bool(self.registry.in_flight() or native.in_flight())

        def idle_s() -> float:
            return min(time.monotonic() - self.service.last_call, native.idle_s())

        while busy() and time.monotonic() < deadline:
            await asyncio.sleep(_DRAIN_POLL_S)
        while idle_s() < QUIET_S and time.monotonic() < deadline:
            await asyncio.sleep(_DRAIN_POLL_S)
        await native.stop(max(0.0, deadline - time.monotonic()))
        await self.stop_sidecars()
        await self.registry.close()
        log.info("stopped")

    async def abort(self) -> None:
        """Start-up failed: close everything at once."""
        await self.native.stop(0.0)
        await self.stop_sidecars()
        await self.registry.close()

    async def stop_sidecars(self) -> None:
        if self.metrics is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.metrics.stop)
        if self.peer_client is not None:
            await self.peer_client.close()
        if self.peer_server is not None:
            await self.peer_server.stop()


async def serve(settings: ServerSettings, peers: WorkerPeers | None = None) -> None:
    loop = asyncio.get_running_loop()
    stopped: list[int] = []
    for signum in early_signals.HANDLED:
        loop.add_signal_handler(signum, stopped.append, signum)
    if peers is not None and peers.heartbeats is not None:
        peers.heartbeats[peers.index] = time.monotonic()  # handlers in place: the first beat
    if any(signum in early_signals.STOPS for signum in early_signals.take()):
        log.info("stopped before start-up: a stop signal arrived while starting")
        return
    server = InferenceServer(settings, peers)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, server.request_stop)
    loop.add_signal_handler(signal.SIGHUP, server.reload_tokens)
    if any(signum in early_signals.STOPS for signum in stopped):
        server.request_stop()
    heartbeat = loop.create_task(_heartbeat(server, peers)) if peers is not None else None
    try:
        await server.start()
    except BaseException:
        await server.abort()
        raise
    await server.wait_and_drain()
    if heartbeat is not None:
        heartbeat.cancel()


async def _heartbeat(server: InferenceServer, peers: WorkerPeers) -> None:
    """A --workers process: show the supervisor that this event loop runs, and stop
    when the supervisor is gone (PR_SET_PDEATHSIG's check, for every platform)."""
    while True:
        if peers.heartbeats is not None:
            peers.heartbeats[peers.index] = time.monotonic()
        if peers.parent_pid and os.getppid() != peers.parent_pid:
            log.error("the supervising process is gone; stopping")
            server.request_stop()
            return
        await asyncio.sleep(HEARTBEAT_S)


def run(settings: ServerSettings) -> int:
    """Run the server until SIGTERM/SIGINT; the process's exit code.

    ``settings`` are valid (ServerSettings checks itself when it is made).
    """
    configure_logging(settings.log_level, settings.log_format)
    if not native_available():
        log.error("%s", NOT_BUILT)
        return 1
    if settings.workers > 1:
        from onnxserve.server.workers import run_workers

        return run_workers(settings, run_one)
    return run_one(settings)


def run_one(settings: ServerSettings, peers: WorkerPeers | None = None) -> int:
    """Run one server process until SIGTERM/SIGINT; its exit code.

    ``peers``: set in each of ``--workers`` processes, to answer statistics
    for all of them.
    """
    try:
        event_loop.run(serve(settings, peers), settings.event_loop)
    except (OSError, StartupFailed) as exc:
        log.error("%s", exc)
        return 1
    return 0
