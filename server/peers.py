"""Statistics for the whole server when ``--workers`` processes share its port.

The kernel hands each connection to one process, so a ModelStatistics call or
a /metrics scrape reaches one worker, which knows only its own traffic.
Triton's clients, perf_analyzer and Prometheus read the numbers as the
server's, so the worker that answers asks the others and adds their counters
to its own. The workers talk over private Unix sockets (in a directory only
this server's user can enter), each served by a small gRPC server of its own
that offers one method and answers with this worker's :class:`VersionReport`
list as JSON: no TLS, no tokens, no call limit on that path, and nothing of it
on the public port. A peer that does not answer in time counts with its last
answer (logged): counters summed over the workers must never go down, or
Prometheus reads a counter reset and rate() jumps; a peer that died or hangs
stops the whole server anyway (onnxserve.server.workers).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from onnxserve.server.statistics import StatisticsSnapshot

log = logging.getLogger(__name__)

_METHOD_SERVICE = "onnxserve.internal.WorkerPeers"
_METHOD_NAME = "Reports"
# How long the answering worker waits for its peers, at most.
PEER_TIMEOUT_S = 2.0
#: How often each worker's event loop writes its heartbeat.
HEARTBEAT_S = 0.5


@dataclass(frozen=True)
class WorkerPeers:
    """This worker's place among the ``--workers`` processes.

    ``pids``: a shared array the supervisor fills with the workers' process ids
    once they are started (for the process metrics of worker 0).
    """

    index: int
    own_address: str
    peer_addresses: tuple[str, ...]
    pids: Any = None
    #: A shared array of time.monotonic() per worker, each written by its own
    #: worker's event loop every HEARTBEAT_S (the supervisor detects a stuck one).
    heartbeats: Any = None
    #: The supervisor's process id (a worker stops when it is no longer its parent).
    parent_pid: int = 0


@dataclass
class VersionReport:
    """One model version's numbers in one process: statistics and requests in flight."""

    model: str
    version: str
    statistics: StatisticsSnapshot
    pending: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "statistics": self.statistics.to_dict(),
            "pending": self.pending,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VersionReport:
        return cls(
            model=str(data["model"]),
            version=str(data["version"]),
            statistics=StatisticsSnapshot.from_dict(data["statistics"]),
            pending=int(data["pending"]),
        )


def merge_reports(
    own: Sequence[VersionReport], others: Sequence[Sequence[VersionReport]]
) -> list[VersionReport]:
    """Every process's numbers added up per model version (versions any of them serves)."""
    merged: dict[tuple[str, str], VersionReport] = {}
    for reports in (own, *others):
        for report in reports:
            target = merged.setdefault(
                (report.model, report.version),
                VersionReport(report.model, report.version, StatisticsSnapshot(), 0),
            )
            target.statistics.merge(report.statistics)
            target.pending += report.pending
    return [merged[key] for key in sorted(merged, key=lambda k: (k[0], _version_order(k[1])))]


def _version_order(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (0, version)


def _encode(reports: Sequence[VersionReport]) -> bytes:
    return json.dumps([report.to_dict() for report in reports]).encode()


def _decode(payload: bytes) -> list[VersionReport]:
    return [VersionReport.from_dict(item) for item in json.loads(payload)]


class PeerServer:
    """This worker's Unix-socket server, answering its own reports to the others."""

    def __init__(self, address: str, reports: Callable[[], list[VersionReport]]) -> None:
        self._address = address
        self._reports = reports
        self._server = grpc.aio.server()

    async def start(self) -> None:
        async def answer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return _encode(self._reports())

        handler = grpc.method_handlers_generic_handler(
            _METHOD_SERVICE, {_METHOD_NAME: grpc.unary_unary_rpc_method_handler(answer)}
        )
        self._server.add_generic_rpc_handlers((handler,))
        self._server.add_insecure_port(self._address)
        await self._server.start()

    async def stop(self) -> None:
        await self._server.stop(None)


class PeerClient:
    """Asks the other workers for their reports."""

    def __init__(self, peers: WorkerPeers) -> None:
        self.peers = peers
        self._calls: list[grpc.aio.UnaryUnaryMultiCallable] = []
        self._channels: list[grpc.aio.Channel] = []
        # Each peer's latest answer, used while it does not answer in time.
        self._last: dict[str, list[VersionReport]] = {}

    def _ensure_calls(self) -> list[grpc.aio.UnaryUnaryMultiCallable]:
        # Channels belong to the running event loop: made on first use.
        if not self._calls:
            self._channels = [grpc.aio.insecure_channel(a) for a in self.peers.peer_addresses]
            method = f"/{_METHOD_SERVICE}/{_METHOD_NAME}"
            self._calls = [channel.unary_unary(method) for channel in self._channels]
        return self._calls

    async def gather(self, timeout_s: float = PEER_TIMEOUT_S) -> list[list[VersionReport]]:
        """Every peer's reports: its answer within ``timeout_s``, else its last one."""
        calls = self._ensure_calls()
        answers = await asyncio.gather(
            *(call(b"", timeout=timeout_s) for call in calls), return_exceptions=True
        )
        reports: list[list[VersionReport]] = []
        for address, answer in zip(self.peers.peer_addresses, answers, strict=True):
            if isinstance(answer, BaseException):
                code = answer.code() if isinstance(answer, grpc.aio.AioRpcError) else answer
                last = self._last.get(address)
                log.warning(
                    "the worker at %s did not answer for statistics (%s); %s",
                    address,
                    code,
                    "its last answer counts" if last is not None else "it never answered",
                )
                if last is not None:
                    reports.append(last)
            else:
                self._last[address] = decoded = _decode(answer)
                reports.append(decoded)
        return reports

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
