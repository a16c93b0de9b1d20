"""The figures a bench run produces, as plain dataclasses (and so as JSON).

Kept free of gRPC and onnxruntime so the report, the plot and the committed
benchmark script can read a result without either.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "BenchReport",
    "LatencySummary",
    "RawPoint",
    "RawResult",
    "ServerDelta",
    "StepResult",
]


@dataclass(frozen=True)
class LatencySummary:
    """Client-side latency of the successful requests of one step, in milliseconds."""

    count: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float

    @classmethod
    def from_ns(cls, latencies_ns: Sequence[int] | np.ndarray) -> LatencySummary | None:
        values = np.asarray(latencies_ns, dtype=np.float64) / 1e6
        if values.size == 0:
            return None
        p50, p90, p99 = np.percentile(values, [50, 90, 99])
        return cls(
            count=int(values.size),
            mean_ms=float(values.mean()),
            p50_ms=float(p50),
            p90_ms=float(p90),
            p99_ms=float(p99),
            min_ms=float(values.min()),
            max_ms=float(values.max()),
        )


@dataclass(frozen=True)
class ServerDelta:
    """The model's ModelStatistics over one step (after minus before).

    Durations are averages per successful request, in microseconds, as Triton
    defines them: each request is charged its batch's compute time.
    """

    success: int
    fail: int
    inference_count: int
    execution_count: int
    queue_us: float
    compute_input_us: float
    compute_infer_us: float
    compute_output_us: float
    batch_executions: dict[int, int] = field(default_factory=dict)

    @property
    def compute_us(self) -> float:
        return self.compute_input_us + self.compute_infer_us + self.compute_output_us

    @property
    def avg_batch(self) -> float | None:
        """Rows per model execution: the batch size the server achieved."""
        if self.execution_count == 0:
            return None
        return self.inference_count / self.execution_count


@dataclass(frozen=True)
class StepResult:
    """One measurement step: a concurrency (closed loop) or a request rate (open loop)."""

    mode: str  # "concurrency" or "request_rate"
    load: float  # the concurrency or the target requests/s
    driver: str
    requests: int  # sent and finished in the measured window
    successes: int  # answered with gRPC OK
    failures: int
    failure_codes: dict[str, int]
    seconds: float
    infer_per_s: float
    samples_per_s: float
    latency: LatencySummary | None
    server: ServerDelta | None
    ratio_vs_raw: float | None = None
    client_cpu_s: float | None = None  # the load generator's CPU time during the step
    notes: tuple[str, ...] = ()

    @property
    def client_cpu_percent(self) -> float | None:
        """The load generator's CPU use in % of one core: what it took from the server."""
        if self.client_cpu_s is None or self.seconds <= 0:
            return None
        return 100.0 * self.client_cpu_s / self.seconds

    @property
    def label(self) -> str:
        if self.mode == "concurrency":
            return f"c={int(self.load)}"
        return f"{self.load:g}/s"


@dataclass(frozen=True)
class RawPoint:
    """onnxruntime ``run`` at one batch size, in this process: the figures of the
    fastest timing chunk, and every chunk's mean (their spread shows the noise)."""

    batch: int
    runs: int
    mean_ms: float
    p50_ms: float
    p99_ms: float
    samples_per_s: float
    chunk_means_ms: tuple[float, ...] = ()


@dataclass(frozen=True)
class RawResult:
    """The raw onnxruntime baseline: the same model file, without a server in between."""

    model_file: str
    providers: tuple[str, ...]
    intra_op_threads: int
    points: tuple[RawPoint, ...]

    @property
    def batch1(self) -> RawPoint | None:
        return next((p for p in self.points if p.batch == 1), None)

    @property
    def best(self) -> RawPoint:
        return max(self.points, key=lambda p: p.samples_per_s)


@dataclass
class BenchReport:
    """A whole run: what was measured, every step, the baseline and the comparison."""

    model: str
    model_version: str
    url: str
    driver: str
    batch_size: int
    started_at: str
    settings: dict[str, Any]
    environment: dict[str, Any]
    steps: list[StepResult] = field(default_factory=list)
    raw: RawResult | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def failures(self) -> int:
        return sum(step.failures for step in self.steps)

    def step_at_concurrency(self, concurrency: int) -> StepResult | None:
        return next(
            (s for s in self.steps if s.mode == "concurrency" and int(s.load) == concurrency),
            None,
        )

    def latency_delta_ms(self, step: StepResult) -> float | None:
        """The step's mean latency minus raw onnxruntime's batch-1 mean latency."""
        if self.raw is None or self.raw.batch1 is None or step.latency is None:
            return None
        return step.latency.mean_ms - self.raw.batch1.mean_ms

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for step, step_data in zip(self.steps, data["steps"], strict=True):
            if step.server is not None:
                step_data["server"]["avg_batch"] = step.server.avg_batch
                step_data["server"]["compute_us"] = step.server.compute_us
            step_data["latency_delta_vs_raw_batch1_ms"] = self.latency_delta_ms(step)
            step_data["client_cpu_percent"] = step.client_cpu_percent
        if self.raw is not None:
            data["raw"]["best"] = dataclasses.asdict(self.raw.best)
            batch1 = self.raw.batch1
            data["raw"]["batch1"] = None if batch1 is None else dataclasses.asdict(batch1)
        data["failures"] = self.failures
        return data
