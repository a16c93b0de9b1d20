"""Adding up the statistics of ``--workers`` processes (the end-to-end case is in
test_batching_workers.py)."""

from __future__ import annotations

from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.server.peers import is_local_only, merge_statistics


def stats(last: int, successes: int, batches: dict[int, int]) -> pb.ModelStatistics:
    model = pb.ModelStatistics(
        name="m",
        version="1",
        last_inference=last,
        inference_count=sum(size * runs for size, runs in batches.items()),
        execution_count=sum(batches.values()),
    )
    model.inference_stats.success.count = successes
    model.inference_stats.success.ns = successes * 1000
    model.inference_stats.queue.count = successes
    model.inference_stats.queue.ns = successes * 10
    for size, runs in batches.items():
        entry = model.batch_stats.add(batch_size=size)
        entry.compute_infer.count = runs
        entry.compute_infer.ns = runs * 500
    return model


def test_counts_and_durations_add_up_and_the_latest_inference_wins() -> None:
    own = pb.ModelStatisticsResponse(model_stats=[stats(100, 3, {1: 1, 2: 1})])
    peer = pb.ModelStatisticsResponse(model_stats=[stats(250, 5, {2: 1, 3: 1})])

    (merged,) = merge_statistics(own, [peer]).model_stats

    assert merged.last_inference == 250
    assert merged.inference_count == 3 + 5
    assert merged.execution_count == 4
    assert merged.inference_stats.success.count == 8
    assert merged.inference_stats.success.ns == 8000
    assert merged.inference_stats.queue.ns == 80
    assert not merged.inference_stats.HasField("fail")
    assert [
        (b.batch_size, b.compute_infer.count, b.compute_infer.ns) for b in merged.batch_stats
    ] == [
        (1, 1, 500),
        (2, 2, 1000),
        (3, 1, 500),
    ]
    # The caller's own message is left as it was.
    assert own.model_stats[0].inference_count == 3


def test_versions_are_added_separately_and_unknown_ones_are_left_out() -> None:
    first, second = stats(1, 1, {1: 1}), stats(1, 2, {1: 2})
    second.version = "2"
    own = pb.ModelStatisticsResponse(model_stats=[first, second])
    stray = stats(1, 7, {1: 7})
    stray.name = "other"
    peer = pb.ModelStatisticsResponse(model_stats=[stats(1, 4, {1: 4}), stray])

    merged = merge_statistics(own, [peer])

    assert [(m.name, m.version, m.inference_stats.success.count) for m in merged.model_stats] == [
        ("m", "1", 5),
        ("m", "2", 2),
    ]


def test_only_the_workers_marker_asks_for_local_counters() -> None:
    assert is_local_only((("onnxserve-worker-local", "1"),))
    assert not is_local_only((("authorization", "Bearer x"),))
    assert not is_local_only(None)
