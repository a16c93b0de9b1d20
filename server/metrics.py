"""Prometheus metrics at ``/metrics`` (``--metrics-port``), with Triton's names.

A custom collector reads the statistics sinks when Prometheus scrapes, so
metrics cost nothing per request. The numbers are the ModelStatistics
numbers (the same :class:`~onnxserve.server.peers.VersionReport` list, merged
over every ``--workers`` process; worker 0 serves the endpoint), per model and
version:

=========================================== ======== ==================================
series (labels ``model``, ``version``)      kind     from
=========================================== ======== ==================================
nv_inference_request_success                counter  successful requests
nv_inference_request_failure (+ ``reason``) counter  failed requests, by reason
nv_inference_count                          counter  samples (batch rows) inferred
nv_inference_exec_count                     counter  model executions (batches)
nv_inference_request_duration_us            counter  end-to-end time of successes
nv_inference_queue_duration_us              counter  queue time of successes
nv_inference_compute_input_duration_us      counter  batch merge and input preparation
nv_inference_compute_infer_duration_us      counter  onnxruntime
nv_inference_compute_output_duration_us     counter  output split
nv_inference_pending_request_count          gauge    requests accepted, not yet answered
onnxserve_inference_batch_size              histogram executions by batch size
onnxserve_batch_isolations_total            counter  merged batches that failed in
                                                     onnxruntime and were re-run apart
onnxserve_batch_isolated_failures_total     counter  requests that then failed alone
=========================================== ======== ==================================

The Triton-named counters are exposed without a ``_total`` suffix, exactly as
Triton names them (so its dashboards, alerts and prometheus-adapter rules
work unchanged); prometheus_client would append ``_total`` to a counter, so
they are typed ``untyped``, which PromQL's rate() treats the same. The average
queue time per request over 5 minutes is
``rate(nv_inference_queue_duration_us[5m]) / rate(nv_inference_request_success[5m])``.

``reason`` is onnxserve's finer split of Triton's: invalid_argument (Triton
OTHER), queue_full and deadline_exceeded (REJECTED), cancelled (CANCELED),
unavailable (OTHER), internal (BACKEND). Every reason is exported, zeros
included, so that rate() sees each series from the start.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import (
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    make_wsgi_app,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    UnknownMetricFamily,
)
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from onnxserve.server.errors import FAILURE_REASONS
from onnxserve.server.peers import VersionReport
from onnxserve.server.statistics import StatisticsSnapshot

log = logging.getLogger(__name__)

_LABELS = ["model", "version"]
# Upper bounds of the batch-size histogram's buckets.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

# (name, help, what to read from a snapshot): Triton's counts ...
_COUNTS: tuple[tuple[str, str, Callable[[StatisticsSnapshot], int]], ...] = (
    ("nv_inference_request_success", "Successful inference requests", lambda s: s.success.count),
    ("nv_inference_count", "Inferences performed (batch rows)", lambda s: s.inference_count),
    ("nv_inference_exec_count", "Model executions (batches)", lambda s: s.execution_count),
)
# ... and its cumulative durations of successful requests, in microseconds:
# (name part, snapshot field, what it times).
_DURATIONS = (
    ("request", "success", "end-to-end time"),
    ("queue", "queue", "queue time"),
    ("compute_input", "compute_input", "batch merge and input preparation"),
    ("compute_infer", "compute_infer", "onnxruntime"),
    ("compute_output", "compute_output", "output split"),
)


def inference_families(reports: Iterable[VersionReport]) -> list[Metric]:
    """The per-model-version metric families of a list of reports."""
    reports = list(reports)
    families: list[Metric] = []
    failure = UnknownMetricFamily(
        "nv_inference_request_failure",
        "Failed inference requests, by reason",
        labels=[*_LABELS, "reason"],
    )
    pending = GaugeMetricFamily(
        "nv_inference_pending_request_count",
        "Requests accepted and not yet answered (queued or running)",
        labels=_LABELS,
    )
    batch_size = HistogramMetricFamily(
        "onnxserve_inference_batch_size",
        "Model executions by batch size (rows per execution)",
        labels=_LABELS,
    )
    isolations = CounterMetricFamily(
        "onnxserve_batch_isolations",
        "Merged batches that failed in onnxruntime and were re-run request by request",
        labels=_LABELS,
    )
    isolated_failures = CounterMetricFamily(
        "onnxserve_batch_isolated_failures",
        "Requests of isolated batches that failed on their own",
        labels=_LABELS,
    )
    for report in reports:
        labels = [report.model, report.version]
        isolations.add_metric(labels, report.statistics.isolation_count)
        isolated_failures.add_metric(labels, report.statistics.isolated_failures)
        for reason in FAILURE_REASONS:
            failure.add_metric([*labels, reason], report.statistics.failures.get(reason, 0))
        pending.add_metric(labels, report.pending)
        buckets, total = _batch_buckets(report.statistics)
        batch_size.add_metric(labels, buckets, total)
    for name, documentation, read in _COUNTS:
        family = UnknownMetricFamily(name, documentation, labels=_LABELS)
        for report in reports:
            family.add_metric([report.model, report.version], read(report.statistics))
        families.append(family)
    for part, field, what in _DURATIONS:
        family = UnknownMetricFamily(
            f"nv_inference_{part}_duration_us",
            f"Cumulative {what} of successful requests (us)",
            labels=_LABELS,
        )
        for report in reports:
            duration = getattr(report.statistics, field)
            family.add_metric([report.model, report.version], duration.ns // 1000)
        families.append(family)
    return [*families, failure, pending, batch_size, isolations, isolated_failures]


def _batch_buckets(statistics: StatisticsSnapshot) -> tuple[list[tuple[str, float]], float]:
    """Cumulative histogram buckets from the executions per batch size, and their sum."""
    executions = {size: d.executions for size, d in statistics.batches.items()}
    buckets: list[tuple[str, float]] = [
        (floatToGoString(bound), float(sum(n for size, n in executions.items() if size <= bound)))
        for bound in BATCH_SIZE_BUCKETS
    ]
    buckets.append(("+Inf", float(sum(executions.values()))))
    total = float(sum(size * n for size, n in executions.items()))
    return buckets, total


class InferenceCollector(Collector):
    """Reads the reports at scrape time (``gather`` runs on the metrics thread)."""

    def __init__(self, gather: Callable[[], list[VersionReport]]) -> None:
        self._gather = gather

    def collect(self) -> Iterator[Metric]:
        try:
            reports = self._gather()
        except Exception:
            log.exception("metrics: cannot read the statistics")
            return
        yield from inference_families(reports)


class WorkersProcessCollector(Collector):
    """The standard process_* metrics of every ``--workers`` process, labelled ``worker``."""

    def __init__(self, pids: Any) -> None:
        self._pids = pids

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for index, pid in enumerate(list(self._pids)):
            if not pid:
                continue
            collector = ProcessCollector(pid=lambda pid=pid: pid, registry=None)
            for family in collector.collect():
                target = merged.get(family.name)
                if target is None:
                    target = merged[family.name] = Metric(
                        family.name, family.documentation, family.type
                    )
                for sample in family.samples:
                    target.add_sample(
                        sample.name, {**sample.labels, "worker": str(index)}, sample.value
                    )
        yield from merged.values()


def metrics_registry(
    gather: Callable[[], list[VersionReport]], worker_pids: Any = None
) -> CollectorRegistry:
    """The registry /metrics serves: inference metrics and the standard process metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(InferenceCollector(gather))
    if worker_pids is None:
        ProcessCollector(registry=registry)
    else:
        registry.register(WorkersProcessCollector(worker_pids))
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


#: Connections /metrics serves at once; one more is closed at once (Prometheus
#: scrapes over one connection at a time per target).
METRICS_CONNECTIONS = 16
#: A /metrics connection that sends nothing (or trickles its request) for this long is closed.
METRICS_IDLE_TIMEOUT_S = 10.0


class _QuietHandler(WSGIRequestHandler):
    """One request per connection, a socket timeout, and no access log."""

    timeout = METRICS_IDLE_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:
        """No access log line per scrape."""


class _BoundedServer(ThreadingMixIn, WSGIServer):
    """prometheus_client's thread-per-connection server, with a bound on the threads.

    prometheus_client's own starts a thread for every connection and waits on
    it without a timeout, so idle connections pile threads up without end.
    Here at most METRICS_CONNECTIONS are served at once (the next is closed
    unanswered) and each read times out after METRICS_IDLE_TIMEOUT_S.
    """

    daemon_threads = True

    def __init__(self, address: tuple[str, int], family: int) -> None:
        self.address_family = family
        self._slots = threading.BoundedSemaphore(METRICS_CONNECTIONS)
        super().__init__(address, _QuietHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class MetricsEndpoint:
    """The HTTP server of /metrics, on its own daemon thread (bounded: _BoundedServer)."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry) -> None:
        self._host = host
        self._port = port
        self._registry = registry
        self._server: _BoundedServer | None = None

    def start(self) -> None:
        try:
            family = socket.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)[0][0]
            server = _BoundedServer((self._host, self._port), family)
        except OSError as exc:
            raise OSError(
                f"cannot serve metrics on {self._host}:{self._port} ({exc.strerror}): is the "
                "port in use? (--metrics-port 0 turns metrics off)"
            ) from None
        server.set_app(make_wsgi_app(self._registry))
        self._server = server
        threading.Thread(target=server.serve_forever, name="onnxserve-metrics", daemon=True).start()

    def stop(self) -> None:
        """Blocks until the serving thread has stopped: call it off the event loop."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
