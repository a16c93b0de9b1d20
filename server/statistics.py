"""The statistics sink of one model version, with Triton's meaning for every field.

Request-level durations (success, fail, queue, compute_*) count each request
once, charging it its batch's compute durations; batch-level statistics count
executions per batch size. ``inference_count`` counts samples (rows) and
``execution_count`` counts model executions, so their ratio is the achieved
batch size. Failed requests are also counted by reason (the ``reason`` label of
``nv_inference_request_failure``).

The executor feeds the sink once per request and once per batch; readers take
a :class:`StatisticsSnapshot` (plain numbers) and never touch the live
counters: ModelStatistics (``to_proto``) and the Prometheus collector
(onnxserve.server.metrics) are two readers, and with ``--workers`` the
snapshots of all workers are added up (onnxserve.server.peers). Updates come
from the event loop and worker threads, hence the lock.
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.server.errors import FailureReason, failure_reason


@dataclass
class Duration:
    """A count of events and their cumulative duration in nanoseconds."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += max(ns, 0) * count

    def merge(self, other: Duration) -> None:
        self.count += other.count
        self.ns += other.ns

    def fill(self, target: pb.StatisticDuration) -> None:
        target.count = self.count
        target.ns = self.ns


@dataclass
class BatchDurations:
    """The compute phases of every execution at one batch size."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)

    def merge(self, other: BatchDurations) -> None:
        self.compute_input.merge(other.compute_input)
        self.compute_infer.merge(other.compute_infer)
        self.compute_output.merge(other.compute_output)

    @property
    def executions(self) -> int:
        return self.compute_infer.count


_REQUEST_DURATIONS = (
    "success",
    "fail",
    "queue",
    "compute_input",
    "compute_infer",
    "compute_output",
)
_PHASES = ("compute_input", "compute_infer", "compute_output")


@dataclass
class StatisticsSnapshot:
    """One model version's counters at one instant: plain numbers, safe to share."""

    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    failures: dict[str, int] = field(default_factory=dict)  # by FailureReason
    batches: dict[int, BatchDurations] = field(default_factory=dict)  # by batch size
    # Batch isolation (see VersionStatistics.record_isolation); not in Triton's proto.
    isolation_count: int = 0
    isolated_failures: int = 0

    def merge(self, other: StatisticsSnapshot) -> None:
        """Add another process's counters; the latest inference wins."""
        self.last_inference_ms = max(self.last_inference_ms, other.last_inference_ms)
        self.inference_count += other.inference_count
        self.execution_count += other.execution_count
        self.isolation_count += other.isolation_count
        self.isolated_failures += other.isolated_failures
        for name in _REQUEST_DURATIONS:
            getattr(self, name).merge(getattr(other, name))
        for reason, count in other.failures.items():
            self.failures[reason] = self.failures.get(reason, 0) + count
        for size, durations in other.batches.items():
            self.batches.setdefault(size, BatchDurations()).merge(durations)

    def to_proto(self, name: str, version: str) -> pb.ModelStatistics:
        stats = pb.ModelStatistics(
            name=name,
            version=version,
            last_inference=self.last_inference_ms,
            inference_count=self.inference_count,
            execution_count=self.execution_count,
        )
        for duration_name in _REQUEST_DURATIONS:
            getattr(self, duration_name).fill(getattr(stats.inference_stats, duration_name))
        for size in sorted(self.batches):
            durations = self.batches[size]
            entry = stats.batch_stats.add(batch_size=size)
            for phase in _PHASES:
                getattr(durations, phase).fill(getattr(entry, phase))
        return stats

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, for the other worker processes."""
        return {
            "last_inference_ms": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "isolation_count": self.isolation_count,
            "isolated_failures": self.isolated_failures,
            **{name: _pair(getattr(self, name)) for name in _REQUEST_DURATIONS},
            "failures": dict(self.failures),
            "batches": {
                str(size): [_pair(getattr(d, phase)) for phase in _PHASES]
                for size, d in self.batches.items()
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StatisticsSnapshot:
        snapshot = cls(
            last_inference_ms=int(data["last_inference_ms"]),
            inference_count=int(data["inference_count"]),
            execution_count=int(data["execution_count"]),
            isolation_count=int(data["isolation_count"]),
            isolated_failures=int(data["isolated_failures"]),
            failures={str(k): int(v) for k, v in data["failures"].items()},
        )
        for name in _REQUEST_DURATIONS:
            setattr(snapshot, name, Duration(*map(int, data[name])))
        for size, phases in data["batches"].items():
            snapshot.batches[int(size)] = BatchDurations(
                *(Duration(*map(int, pair)) for pair in phases)
            )
        return snapshot


def _pair(duration: Duration) -> list[int]:
    return [duration.count, duration.ns]


@dataclass(frozen=True)
class ExecutionTiming:
    """Durations of one model execution, in nanoseconds."""

    batch_size: int
    input_ns: int
    infer_ns: int
    output_ns: int


class VersionStatistics:
    """The server side's cumulative counters for one model version since it was loaded.

    (The protocol's and the client's ModelStatistics are what callers read;
    this is what the server records them from.)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals = StatisticsSnapshot()

    def record_execution(self, timing: ExecutionTiming) -> None:
        """One model run over a batch of ``timing.batch_size`` rows."""
        with self._lock:
            totals = self._totals
            totals.execution_count += 1
            batch = totals.batches.get(timing.batch_size)
            if batch is None:
                batch = totals.batches[timing.batch_size] = BatchDurations()
            batch.compute_input.add(timing.input_ns)
            batch.compute_infer.add(timing.infer_ns)
            batch.compute_output.add(timing.output_ns)

    def record_success(
        self, *, rows: int, queue_ns: int, timing: ExecutionTiming, total_ns: int
    ) -> None:
        """One request answered: its queue wait, its batch's compute, its total time."""
        with self._lock:
            totals = self._totals
            totals.inference_count += rows
            totals.last_inference_ms = time.time_ns() // 1_000_000
            totals.success.add(total_ns)
            totals.queue.add(queue_ns)
            totals.compute_input.add(timing.input_ns)
            totals.compute_infer.add(timing.infer_ns)
            totals.compute_output.add(timing.output_ns)

    def record_failure(self, total_ns: int, error: BaseException | None = None) -> None:
        """A request to this version that failed, whoever failed it (once per request).

        ``error`` decides the reason (onnxserve.server.errors.failure_reason).
        """
        reason: FailureReason = failure_reason(error)
        with self._lock:
            totals = self._totals
            totals.fail.add(total_ns)
            totals.failures[reason] = totals.failures.get(reason, 0) + 1
            totals.last_inference_ms = time.time_ns() // 1_000_000

    @property
    def execution_count(self) -> int:
        with self._lock:
            return self._totals.execution_count

    @property
    def inference_count(self) -> int:
        with self._lock:
            return self._totals.inference_count

    def snapshot(self) -> StatisticsSnapshot:
        """A copy of the counters now, for readers."""
        with self._lock:
            return copy.deepcopy(self._totals)

    def to_proto(self, name: str, version: str) -> pb.ModelStatistics:
        return self.snapshot().to_proto(name, version)

    def record_isolation(self, failed: int) -> None:
        """A merged batch failed in onnxruntime and its requests were re-run apart.

        ``failed`` of them failed on their own (each also counted by
        record_failure); the others were answered. ModelStatistics on the wire
        is Triton's and does not carry these; /metrics does.
        """
        with self._lock:
            self._totals.isolation_count += 1
            self._totals.isolated_failures += failed

    @property
    def isolation_count(self) -> int:
        with self._lock:
            return self._totals.isolation_count

    @property
    def isolated_failures(self) -> int:
        with self._lock:
            return self._totals.isolated_failures
