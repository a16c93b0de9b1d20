"""Adding up the statistics of ``--workers`` processes (the end-to-end cases are in
test_batching_workers.py and test_server_metrics.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from onnxserve.server.errors import QueueFull, RequestTimeout
from onnxserve.server.peers import (
    PeerClient,
    PeerServer,
    VersionReport,
    WorkerPeers,
    merge_reports,
)
from onnxserve.server.statistics import ExecutionTiming, VersionStatistics


def report(
    version: str, successes: int, batches: dict[int, int], pending: int = 0, last: int = 0
) -> VersionReport:
    """A version's report after ``successes`` requests run in ``batches`` (size: runs)."""
    sink = VersionStatistics()
    for size, runs in batches.items():
        for _ in range(runs):
            sink.record_execution(ExecutionTiming(size, 10, 500, 20))
    for _ in range(successes):
        sink.record_success(
            rows=1, queue_ns=10, timing=ExecutionTiming(1, 10, 500, 20), total_ns=1000
        )
    snapshot = sink.snapshot()
    snapshot.last_inference_ms = last
    return VersionReport("m", version, snapshot, pending)


def test_counts_durations_and_pending_add_up_and_the_latest_inference_wins() -> None:
    own = report("1", 3, {1: 1, 2: 1}, pending=2, last=100)
    peer = report("1", 5, {2: 1, 3: 1}, pending=1, last=250)

    (merged,) = merge_reports([own], [[peer]])
    stats = merged.statistics.to_proto("m", "1")

    assert merged.pending == 3
    assert stats.last_inference == 250
    assert stats.inference_count == 3 + 5
    assert stats.execution_count == 4
    assert stats.inference_stats.success.count == 8
    assert stats.inference_stats.success.ns == 8000
    assert stats.inference_stats.queue.ns == 80
    assert stats.inference_stats.fail.count == 0
    assert [
        (b.batch_size, b.compute_infer.count, b.compute_infer.ns) for b in stats.batch_stats
    ] == [
        (1, 1, 500),
        (2, 2, 1000),
        (3, 1, 500),
    ]
    # The reports merged from are left as they were.
    assert own.statistics.inference_count == 3 and own.pending == 2


def test_versions_stay_apart_and_a_version_only_a_peer_serves_is_kept() -> None:
    own = [report("1", 1, {1: 1}), report("2", 2, {1: 2})]
    stray = report("1", 7, {1: 7})
    stray.model = "other"
    peer = [report("1", 4, {1: 4}), report("3", 1, {1: 1}), stray]

    merged = merge_reports(own, [peer])

    assert [(r.model, r.version, r.statistics.success.count) for r in merged] == [
        ("m", "1", 5),
        ("m", "2", 2),
        ("m", "3", 1),
        ("other", "1", 7),
    ]


def test_failures_are_counted_by_reason() -> None:
    sink = VersionStatistics()
    sink.record_failure(100, QueueFull("full"))
    sink.record_failure(100, RequestTimeout("late"))
    sink.record_failure(100, asyncio.CancelledError())
    sink.record_failure(100, RuntimeError("bug"))
    sink.record_failure(100, QueueFull("full"))
    snapshot = sink.snapshot()
    assert snapshot.failures == {
        "queue_full": 2,
        "deadline_exceeded": 1,
        "cancelled": 1,
        "internal": 1,
    }
    assert snapshot.to_proto("m", "1").inference_stats.fail.count == 5


def test_a_peer_answers_its_reports_over_a_unix_socket(tmp_path: Path) -> None:
    """Two peers on real Unix sockets; the JSON round trip loses nothing."""
    sent = [report("1", 3, {1: 1, 4: 2}, pending=1, last=7)]
    sent[0].statistics.failures["queue_full"] = 2

    async def exchange() -> list[list[VersionReport]]:
        address = f"unix:{tmp_path / 'worker-1.sock'}"
        server = PeerServer(address, lambda: sent)
        await server.start()
        client = PeerClient(WorkerPeers(0, f"unix:{tmp_path / 'worker-0.sock'}", (address,)))
        try:
            return await client.gather(5.0)
        finally:
            await client.close()
            await server.stop()

    (received,) = asyncio.run(exchange())
    assert received == sent


def test_a_silent_peer_is_left_out(tmp_path: Path) -> None:
    async def ask() -> list[list[VersionReport]]:
        gone = f"unix:{tmp_path / 'nobody.sock'}"
        client = PeerClient(WorkerPeers(0, f"unix:{tmp_path / 'me.sock'}", (gone,)))
        try:
            return await client.gather(0.5)
        finally:
            await client.close()

    assert asyncio.run(ask()) == []
