"""Server wiring and lifecycle: start, load, ready, drain on SIGTERM, stop.

A single process opens its gRPC port before models load, so liveness answers at
once while readiness (ServerReady and grpc.health.v1) stays false until every
model is loaded. Each of ``--workers`` processes loads first and only then
joins the shared port: the kernel hands a new connection to any process bound
to it, and one still loading would answer UNAVAILABLE to a client that another
process already told the server was ready. On SIGTERM or SIGINT readiness
turns NOT_SERVING first, in-flight requests get ``grace_period_s`` to finish,
then the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.protocol import grpc_service_pb2_grpc as pb_grpc
from onnxserve.protocol import model_config_pb2 as mc
from onnxserve.server.peers import PeerStatistics, WorkerPeers
from onnxserve.server.registry import ModelRegistry
from onnxserve.server.runtime import available_cpus
from onnxserve.server.service import InferenceService
from onnxserve.server.settings import ServerSettings

log = logging.getLogger(__name__)

INFERENCE_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


def grpc_options(settings: ServerSettings) -> list[tuple[str, int]]:
    options = [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        # Refuse to share a port silently with another process, unless this
        # is one of --workers processes that share it on purpose.
        ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
    ]
    if settings.max_connection_age_s > 0:
        # gRPC sends GOAWAY after the age; unset, it never does (and the grace is unbounded).
        options.append(("grpc.max_connection_age_ms", round(settings.max_connection_age_s * 1e3)))
        if settings.max_connection_age_grace_s > 0:
            grace_ms = round(settings.max_connection_age_grace_s * 1e3)
            options.append(("grpc.max_connection_age_grace_ms", grace_ms))
    return options


def reflection_pool() -> descriptor_pool.DescriptorPool:
    """One pool with every service this port serves, for server reflection.

    The protocol's messages live in a private pool (onnxserve/protocol/_pool.py)
    while health and reflection register in protobuf's default one; reflection
    answers from a single pool, so it gets a copy of all four files.
    """
    pool = descriptor_pool.DescriptorPool()
    for file in (mc.DESCRIPTOR, pb.DESCRIPTOR, health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR):
        pool.AddSerializedFile(file.serialized_pb)
    return pool


class InferenceServer:
    """One server process: the gRPC server, the models, health and reflection."""

    def __init__(self, settings: ServerSettings, peers: WorkerPeers | None = None) -> None:
        self.settings = settings
        cpu_budget = max(1, (settings.cpu_threads or available_cpus()) // settings.workers)
        self.registry = ModelRegistry(settings.model_repository, settings.device, cpu_budget)
        self.peer_statistics = PeerStatistics(peers) if peers is not None else None
        self.service = InferenceService(self.registry, self.peer_statistics)
        self.health = health.aio.HealthServicer()
        self.server = grpc.aio.server(options=grpc_options(settings))
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(self.service, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (
                INFERENCE_SERVICE,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self.server,
            pool=reflection_pool(),
        )
        address = f"{self.settings.host}:{self.settings.grpc_port}"
        for service in ("", INFERENCE_SERVICE):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.settings.workers > 1:
            # Binding queues connections in this socket's backlog: bind only
            # once loaded, so that the kernel routes none here before then.
            log.info("loading models before joining port %s (gRPC)", address)
            await self.registry.load_all()
            await self._listen(address)
        else:
            await self._listen(address)
            log.info("listening on %s (gRPC); loading models", address)
            await self.registry.load_all()
        if self.registry.is_ready():
            for service in ("", INFERENCE_SERVICE):
                await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
            log.info("ready: %s", ", ".join(self.registry.model_names()) or "no models")
        else:
            log.error("not ready: some models failed to load (see RepositoryIndex for reasons)")

    async def _listen(self, address: str) -> None:
        try:
            self.server.add_insecure_port(address)
        except RuntimeError:
            raise OSError(f"cannot listen on {address}: is the port in use?") from None
        if self.peer_statistics is not None:
            # Where the other workers ask this one for its statistics.
            self.server.add_insecure_port(self.peer_statistics.peers.own_address)
        await self.server.start()

    def request_stop(self) -> None:
        self._stopping.set()

    async def wait_and_drain(self) -> None:
        await self._stopping.wait()
        log.info(
            "stopping: readiness off, %.1fs for in-flight requests", self.settings.grace_period_s
        )
        self.service.draining = True
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.grace_period_s)
        if self.peer_statistics is not None:
            await self.peer_statistics.close()
        await self.registry.close()
        log.info("stopped")


async def serve(settings: ServerSettings, peers: WorkerPeers | None = None) -> None:
    server = InferenceServer(settings, peers)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, server.request_stop)
    await server.start()
    await server.wait_and_drain()


def run(settings: ServerSettings) -> int:
    """Run the server until SIGTERM/SIGINT; the process's exit code.

    ``settings`` are valid (ServerSettings checks itself when it is made).
    """
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
        asyncio.run(serve(settings, peers))
    except OSError as exc:
        log.error("%s", exc)
        return 1
    return 0
