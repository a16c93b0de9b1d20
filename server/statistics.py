"""Per model-version statistics with Triton's meaning for every field.

Request-level durations (success, fail, queue, compute_*) count each request
once, charging it its batch's compute durations; batch-level statistics count
executions per batch size. ``inference_count`` counts samples (rows) and
``execution_count`` counts model executions, so their ratio is the achieved
batch size. Updates come from the event loop and worker threads, hence the lock.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from onnxserve.protocol import grpc_service_pb2 as pb


@dataclass
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += max(ns, 0) * count

    def fill(self, target: pb.StatisticDuration) -> None:
        target.count = self.count
        target.ns = self.ns


@dataclass
class _BatchDurations:
    compute_input: _Duration = field(default_factory=_Duration)
    compute_infer: _Duration = field(default_factory=_Duration)
    compute_output: _Duration = field(default_factory=_Duration)


@dataclass(frozen=True)
class ExecutionTiming:
    """Durations of one model execution, in nanoseconds."""

    batch_size: int
    input_ns: int
    infer_ns: int
    output_ns: int


class ModelStatistics:
    """Cumulative counters for one model version since the server started."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.last_inference_ms = 0
        self.inference_count = 0
        self.execution_count = 0
        self.success = _Duration()
        self.fail = _Duration()
        self.queue = _Duration()
        self.compute_input = _Duration()
        self.compute_infer = _Duration()
        self.compute_output = _Duration()
        self._batches: dict[int, _BatchDurations] = {}
        # Batch isolation (see record_isolation); not part of Triton's proto.
        self.isolation_count = 0
        self.isolated_failures = 0

    def record_execution(self, timing: ExecutionTiming) -> None:
        """One model run over a batch of ``timing.batch_size`` rows."""
        with self._lock:
            self.execution_count += 1
            batch = self._batches.setdefault(timing.batch_size, _BatchDurations())
            batch.compute_input.add(timing.input_ns)
            batch.compute_infer.add(timing.infer_ns)
            batch.compute_output.add(timing.output_ns)

    def record_success(
        self, *, rows: int, queue_ns: int, timing: ExecutionTiming, total_ns: int
    ) -> None:
        """One request answered: its queue wait, its batch's compute, its total time."""
        with self._lock:
            self.inference_count += rows
            self.last_inference_ms = time.time_ns() // 1_000_000
            self.success.add(total_ns)
            self.queue.add(queue_ns)
            self.compute_input.add(timing.input_ns)
            self.compute_infer.add(timing.infer_ns)
            self.compute_output.add(timing.output_ns)

    def record_failure(self, total_ns: int) -> None:
        """A request that reached the model's scheduler and failed there."""
        with self._lock:
            self.fail.add(total_ns)
            self.last_inference_ms = time.time_ns() // 1_000_000

    def record_isolation(self, failed: int) -> None:
        """A merged batch failed in onnxruntime and its requests were re-run apart.

        ``failed`` of them failed on their own (each also counted by
        record_failure); the others were answered. Read as ``isolation_count``
        (events) and ``isolated_failures`` (requests), e.g. by a metrics
        exporter; ModelStatistics on the wire is Triton's and does not carry them.
        """
        with self._lock:
            self.isolation_count += 1
            self.isolated_failures += failed

    def to_proto(self, name: str, version: str) -> pb.ModelStatistics:
        with self._lock:
            stats = pb.ModelStatistics(
                name=name,
                version=version,
                last_inference=self.last_inference_ms,
                inference_count=self.inference_count,
                execution_count=self.execution_count,
            )
            infer = stats.inference_stats
            self.success.fill(infer.success)
            self.fail.fill(infer.fail)
            self.queue.fill(infer.queue)
            self.compute_input.fill(infer.compute_input)
            self.compute_infer.fill(infer.compute_infer)
            self.compute_output.fill(infer.compute_output)
            for size in sorted(self._batches):
                durations = self._batches[size]
                entry = stats.batch_stats.add(batch_size=size)
                durations.compute_input.fill(entry.compute_input)
                durations.compute_infer.fill(entry.compute_infer)
                durations.compute_output.fill(entry.compute_output)
        return stats
