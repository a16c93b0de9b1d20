"""ModelStatistics for the whole server when ``--workers`` processes share its port.

The kernel hands each connection to one process, so a statistics call reaches
one worker, which knows only its own traffic. Triton's clients and
perf_analyzer read the statistics as the server's, so the worker that answers
asks the others over private Unix sockets (in a directory only this server's
user can enter) and adds their counters to its own. A peer that does not
answer in time is left out and logged; a peer that died stops the whole
server anyway (see onnxserve.server.workers).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import grpc

from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.protocol import grpc_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

# Metadata a worker sends to its peers: answer with your own counters only
# (without it, each peer would ask the others in turn).
_LOCAL_ONLY_KEY = "onnxserve-worker-local"
LOCAL_ONLY_METADATA = ((_LOCAL_ONLY_KEY, "1"),)
# How long the answering worker waits for its peers, at most.
PEER_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class WorkerPeers:
    """Where this worker listens for its peers, and where they listen."""

    own_address: str
    peer_addresses: tuple[str, ...]


def is_local_only(metadata: Iterable[tuple[str, str | bytes]] | None) -> bool:
    return any(key == _LOCAL_ONLY_KEY for key, _ in metadata or ())


class PeerStatistics:
    """Asks the other workers for their ModelStatistics."""

    def __init__(self, peers: WorkerPeers) -> None:
        self.peers = peers
        self._stubs: list[pb_grpc.GRPCInferenceServiceStub] = []
        self._channels: list[grpc.aio.Channel] = []

    def _ensure_stubs(self) -> list[pb_grpc.GRPCInferenceServiceStub]:
        # Channels belong to the running event loop: made on first use.
        if not self._stubs:
            self._channels = [grpc.aio.insecure_channel(a) for a in self.peers.peer_addresses]
            self._stubs = [pb_grpc.GRPCInferenceServiceStub(c) for c in self._channels]
        return self._stubs

    async def gather(
        self, request: pb.ModelStatisticsRequest, timeout_s: float
    ) -> list[pb.ModelStatisticsResponse]:
        stubs = self._ensure_stubs()
        answers = await asyncio.gather(
            *(
                stub.ModelStatistics(request, timeout=timeout_s, metadata=LOCAL_ONLY_METADATA)
                for stub in stubs
            ),
            return_exceptions=True,
        )
        responses: list[pb.ModelStatisticsResponse] = []
        for address, answer in zip(self.peers.peer_addresses, answers, strict=True):
            if isinstance(answer, BaseException):
                code = answer.code() if isinstance(answer, grpc.aio.AioRpcError) else answer
                log.warning("statistics leave out the worker at %s: %s", address, code)
            else:
                responses.append(answer)
        return responses

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


def merge_statistics(
    own: pb.ModelStatisticsResponse, others: Sequence[pb.ModelStatisticsResponse]
) -> pb.ModelStatisticsResponse:
    """``own`` with every peer's counters added, model version by model version.

    Counts and durations add up; ``last_inference`` is the latest of them.
    Versions only a peer reports (it cannot happen while every worker loads
    the same repository) are left out rather than guessed at.
    """
    merged = pb.ModelStatisticsResponse()
    merged.CopyFrom(own)
    by_version = {(s.name, s.version): s for s in merged.model_stats}
    for response in others:
        for stats in response.model_stats:
            target = by_version.get((stats.name, stats.version))
            if target is not None:
                _add_model_statistics(target, stats)
    return merged


def _add_model_statistics(target: pb.ModelStatistics, source: pb.ModelStatistics) -> None:
    target.last_inference = max(target.last_inference, source.last_inference)
    target.inference_count += source.inference_count
    target.execution_count += source.execution_count
    _add_durations(target.inference_stats, source.inference_stats)
    batches = {b.batch_size: b for b in target.batch_stats}
    for batch in source.batch_stats:
        if batch.batch_size in batches:
            _add_durations(batches[batch.batch_size], batch)
        else:
            target.batch_stats.add().CopyFrom(batch)
    target.batch_stats.sort(key=lambda b: b.batch_size)


def _add_durations(
    target: pb.InferStatistics | pb.InferBatchStatistics,
    source: pb.InferStatistics | pb.InferBatchStatistics,
) -> None:
    """Add every StatisticDuration field of ``source`` to ``target``'s."""
    for field, value in source.ListFields():
        if isinstance(value, pb.StatisticDuration):
            duration = getattr(target, field.name)
            duration.count += value.count
            duration.ns += value.ns
