"""One bench run: describe the model, time raw onnxruntime, then each load step.

Each step is a warm-up, a wait until the server's counters are still, a
ModelStatistics snapshot, the measured phase, and a second snapshot: the
difference is what the server did for exactly the measured requests
(queue and compute time, the batch sizes it achieved, its failures).

Over REST (``--protocol http``) the runner's own calls go through the SDK's
REST transport and the load is REST inference calls; the figures are the same.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import importlib.util
import os
import platform
from collections import Counter
from pathlib import Path
from typing import Any

import grpc

from onnxserve.bench.drivers import DriverRun, PythonDriver, RestPythonDriver
from onnxserve.bench.h2load import H2LoadDriver, find_h2load
from onnxserve.bench.progress import Progress
from onnxserve.bench.raw import find_model_file, measure_raw
from onnxserve.bench.results import BenchReport, LatencySummary, ServerDelta, StepResult
from onnxserve.bench.settings import BenchSettings
from onnxserve.bench.workload import (
    ModelInfo,
    RestRequest,
    WorkloadError,
    build_inputs,
    encode_request,
    encode_rest_request,
    model_info,
    parse_shapes,
)
from onnxserve.client.calls import Call
from onnxserve.client.connection import Connection
from onnxserve.client.errors import InferenceServerError
from onnxserve.client.rest import HttpRequest, error_for_status
from onnxserve.client.transport import async_transports
from onnxserve.layout import format_input_range
from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.protocol import model_config_pb2 as mc

__all__ = ["BenchError", "run_bench", "server_delta"]

_DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
_SETTLE_POLL_S = 0.05
_SETTLE_MAX_S = 5.0


# Settings never written into a report (the JSON file and its notes).
_SECRET_SETTINGS = frozenset({"token"})


class BenchError(RuntimeError):
    """The run could not be made (server unreachable, model refused the request, ...)."""


def _sums(response: pb.ModelStatisticsResponse) -> dict[str, object]:
    """The counters of every version of the model, added together."""
    totals: Counter[str] = Counter()
    batches: Counter[int] = Counter()
    for stats in response.model_stats:
        infer = stats.inference_stats
        totals["inference_count"] += stats.inference_count
        totals["execution_count"] += stats.execution_count
        for name in _DURATIONS:
            duration = getattr(infer, name)
            totals[f"{name}.count"] += duration.count
            totals[f"{name}.ns"] += duration.ns
        for batch in stats.batch_stats:
            batches[int(batch.batch_size)] += batch.compute_infer.count
    return {"totals": totals, "batches": batches}


def server_delta(
    before: pb.ModelStatisticsResponse, after: pb.ModelStatisticsResponse
) -> ServerDelta:
    """What the server recorded between two ModelStatistics answers."""
    b, a = _sums(before), _sums(after)
    bt, at = b["totals"], a["totals"]
    assert isinstance(bt, Counter) and isinstance(at, Counter)
    d = {key: at[key] - bt[key] for key in set(at) | set(bt)}

    def avg_us(name: str) -> float:
        count = d.get(f"{name}.count", 0)
        return d.get(f"{name}.ns", 0) / count / 1000 if count else 0.0

    bb, ab = b["batches"], a["batches"]
    assert isinstance(bb, Counter) and isinstance(ab, Counter)
    executions = {size: ab[size] - bb[size] for size in sorted(ab) if ab[size] - bb[size] > 0}
    return ServerDelta(
        success=d.get("success.count", 0),
        fail=d.get("fail.count", 0),
        inference_count=d.get("inference_count", 0),
        execution_count=d.get("execution_count", 0),
        queue_us=avg_us("queue"),
        compute_input_us=avg_us("compute_input"),
        compute_infer_us=avg_us("compute_infer"),
        compute_output_us=avg_us("compute_output"),
        batch_executions=executions,
    )


class _Server:
    """The few calls the runner itself makes (metadata, config, statistics, one check),
    over the SDK's transport for the bench's protocol (gRPC or REST)."""

    def __init__(self, connection: Connection, model: str, version: str) -> None:
        # Opened in the running event loop (grpc.aio channels belong to theirs).
        self.transport = async_transports(connection)[0]
        self.model = model
        self.version = version

    async def call(self, method: str, request: object, timeout: float = 10) -> Any:
        """The response message of one call; the SDK's errors raised."""
        return await self.transport.unary(Call(method, request, _same, idempotent=True), timeout)

    async def close(self) -> None:
        await self.transport.close()

    async def statistics(self) -> pb.ModelStatisticsResponse:
        return await self.call(
            "ModelStatistics", pb.ModelStatisticsRequest(name=self.model, version=self.version)
        )

    async def settled_statistics(self) -> pb.ModelStatisticsResponse:
        """Statistics once requests the client gave up on (h2load's warm-up) are counted."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _SETTLE_MAX_S
        previous = await self.statistics()
        while True:
            await asyncio.sleep(_SETTLE_POLL_S)
            current = await self.statistics()
            if current == previous or loop.time() > deadline:
                return current
            previous = current


def _same(response: Any) -> Any:
    return response


def _environment() -> dict[str, object]:
    import numpy

    env: dict[str, object] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "numpy": numpy.__version__,
        "grpcio": grpc.__version__,
    }
    if hasattr(os, "getloadavg"):
        env["load_average_at_start"] = [round(v, 2) for v in os.getloadavg()]
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        env["onnxruntime"] = None
    return env


def _choose_driver(
    settings: BenchSettings,
    connection: Connection,
    payloads: list[bytes],
    answer_bytes: int,
    notes: list[str],
    rest_requests: list[RestRequest] | None = None,
) -> PythonDriver | H2LoadDriver | RestPythonDriver:
    target = connection.targets[0]
    h2load = find_h2load()
    no_h2 = settings.driver == "python" or h2load is None or settings.certificate_chain is not None
    if rest_requests is not None and settings.http_version == "2" and no_h2:
        raise BenchError(
            "--http-version 2 needs the h2load driver (the python driver speaks HTTP/1.1; "
            "h2load is not installed, is not chosen, or cannot present the client certificate "
            "of mutual TLS); use --http-version 1.1"
        )
    # h2load cannot present a client certificate (mutual TLS).
    mutual_tls = settings.certificate_chain is not None
    if settings.driver == "h2load" and mutual_tls:
        raise BenchError(
            "--driver h2load cannot present a client certificate (mutual TLS); use --driver python"
        )
    if settings.driver in ("h2load", "auto") and h2load is not None and not mutual_tls:
        if len(payloads) > 1:
            notes.append("h2load sends one request body: the first of the generated inputs")
        return H2LoadDriver(
            h2load,
            target,
            payloads[0],
            settings.connections,
            response_bytes=answer_bytes + 5,
            tls=connection.tls,
            headers=connection.metadata,
            rest=rest_requests[0] if rest_requests is not None else None,
            http1=rest_requests is not None and settings.http_version == "1.1",
        )
    if settings.driver == "auto":
        notes.append(
            "h2load cannot present a client certificate: the python driver, which shares "
            "this machine's CPUs with the server"
            if mutual_tls
            else "h2load not found (apt-get install nghttp2-client): the python driver shares "
            "this machine's CPUs with the server"
        )
    if rest_requests is not None:
        return RestPythonDriver(target, rest_requests, settings.timeout, connection=connection)
    return PythonDriver(
        target, payloads, settings.timeout, settings.connections, connection=connection
    )


def _step_result(
    settings: BenchSettings,
    mode: str,
    load: float,
    driver: str,
    run: DriverRun,
    delta: ServerDelta,
    report: BenchReport,
) -> StepResult:
    notes = list(run.notes)
    codes = dict(run.failure_codes)
    if run.successes is None:
        # h2load without a way to count answers: gRPC errors travel as HTTP 200,
        # so the server's count is the only one.
        successes = min(delta.success, run.requests)
        grpc_failures = run.requests - successes - sum(codes.values())
        if grpc_failures > 0:
            codes["GRPC (from server statistics)"] = grpc_failures
        if 0 < delta.success + delta.fail < run.requests:
            notes.append(
                f"the server's statistics count {delta.success + delta.fail} of "
                f"{run.requests} requests: the rest failed before reaching the model (bad "
                "requests), or the server's statistics leave some of its processes out; "
                "check with --driver python"
            )
        if delta.success > run.requests:
            notes.append(
                f"the server counted {delta.success} successes for {run.requests} requests: "
                "other clients were calling this model"
            )
    else:
        successes = run.successes
        if delta.success != successes:
            notes.append(
                f"the server's statistics count {delta.success} successes, the client "
                f"{successes}: other clients were calling this model, or the server's "
                "statistics leave some of its processes out"
            )
    failures = run.requests - successes
    seconds = max(run.seconds, 1e-9)
    samples = successes * settings.batch_size
    ratio = None
    if report.raw is not None:
        ratio = samples / seconds / report.raw.best.samples_per_s
    return StepResult(
        mode=mode,
        load=load,
        driver=driver,
        requests=run.requests,
        successes=successes,
        failures=failures,
        failure_codes=codes,
        seconds=run.seconds,
        infer_per_s=successes / seconds,
        samples_per_s=samples / seconds,
        latency=LatencySummary.from_ns(run.latencies_ns),
        # Statistics that saw none of the requests (another process of the
        # server answered them) describe nothing: left out rather than shown as 0.
        server=None if run.requests and delta.success + delta.fail == 0 else delta,
        ratio_vs_raw=ratio,
        client_cpu_s=run.client_cpu_s,
        notes=tuple(notes),
    )


async def _describe(server: _Server, settings: BenchSettings) -> tuple[ModelInfo, mc.ModelConfig]:
    try:
        metadata = await server.call(
            "ModelMetadata",
            pb.ModelMetadataRequest(name=settings.model, version=settings.model_version),
        )
        config = await server.call(
            "ModelConfig",
            pb.ModelConfigRequest(name=settings.model, version=settings.model_version),
        )
    except InferenceServerError as exc:
        raise BenchError(
            f"cannot describe model '{settings.model}' at {settings.url}: "
            f"{exc.code.name}: {exc.message}"
        ) from None
    return model_info(metadata, config.config, parse_shapes(settings.shape)), config.config


async def _check_request(server: _Server, payload: bytes) -> pb.ModelInferResponse:
    """One call before measuring: a request the model refuses is an error, not a figure."""
    try:
        return await server.call("ModelInfer", pb.ModelInferRequest.FromString(payload), 60)
    except InferenceServerError as exc:
        raise BenchError(
            f"the server refused the bench's request: {exc.code.name}: {exc.message}"
        ) from None


async def _check_rest_request(server: _Server, request: RestRequest) -> None:
    """The same check for the REST body the load will post, as it stands."""
    exchange = server.transport.transport.exchange
    http_request = HttpRequest("POST", request.path, (request.body,), dict(request.headers))
    loop = asyncio.get_running_loop()
    try:
        status, _, body = await loop.run_in_executor(None, exchange, http_request, 60.0)
    except InferenceServerError as exc:
        raise BenchError(
            f"the bench's REST request failed: {exc.code.name}: {exc.message}"
        ) from None
    if status != 200:
        error = error_for_status(status, body)
        raise BenchError(
            f"the server refused the bench's REST request (HTTP {status}): "
            f"{error.code.name}: {error.message}"
        )


def _raw_model_file(settings: BenchSettings, info: ModelInfo) -> Path | None:
    if settings.model_file is not None:
        if not settings.model_file.is_file():
            raise BenchError(f"--model-file {settings.model_file} does not exist")
        return settings.model_file
    if settings.repository is not None:
        return find_model_file(settings.repository, settings.model, settings.model_version, info)
    return None


async def run_bench(settings: BenchSettings, progress: Progress | None = None) -> BenchReport:
    """Run every step of ``settings`` against the server; never raises for slow answers."""
    progress = progress or Progress(enabled=False)
    rest = settings.rest
    connection = settings.connection(settings.url, protocol="http" if rest else None)
    target = connection.targets[0]
    scheme = "https" if connection.tls else "http"
    report = BenchReport(
        model=settings.model,
        model_version=settings.model_version,
        url=f"{scheme}://{target}" if rest else target,
        driver="",
        batch_size=settings.batch_size,
        started_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        settings={
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in dataclasses.asdict(settings).items()
            if k not in _SECRET_SETTINGS
        },
        environment=_environment(),
    )
    server = _Server(connection, settings.model, settings.model_version)
    try:
        return await _run(settings, connection, server, report, progress)
    finally:
        await server.close()


async def _run(
    settings: BenchSettings,
    connection: Connection,
    server: _Server,
    report: BenchReport,
    progress: Progress,
) -> BenchReport:
    try:
        info, config = await _describe(server, settings)
        arrays = build_inputs(
            info,
            settings.batch_size,
            settings.input_data,
            int_range=settings.int_range,
            seed=settings.seed,
        )
    except WorkloadError as exc:
        raise BenchError(str(exc)) from None
    if settings.input_data == "random" and not settings.int_range:
        for name, (low, high) in sorted(info.input_ranges.items()):
            report.notes.append(
                f"random values of input '{name}' are drawn from the range its config "
                f"declares ({format_input_range(low, high)}); --int-range overrides it"
            )
    if info.batchable and not config.HasField("dynamic_batching"):
        report.notes.append(
            "the model's config has no dynamic_batching: the server runs each request on its own"
        )
    payloads = [encode_request(settings.model, settings.model_version, info, a) for a in arrays]
    rest_requests = None
    if settings.rest:
        try:
            rest_requests = [
                encode_rest_request(settings.model, settings.model_version, info, a, settings.body)
                for a in arrays
            ]
        except WorkloadError as exc:
            raise BenchError(str(exc)) from None
        await _check_rest_request(server, rest_requests[0])
        answer_bytes = 0
        report.notes.append(
            f"REST: POST {rest_requests[0].path} over HTTP/{settings.http_version}, "
            + (
                "binary tensor bodies both ways (Triton's extension)"
                if settings.body == "binary"
                else "JSON bodies both ways"
            )
        )
    else:
        answer_bytes = (await _check_request(server, payloads[0])).ByteSize()

    if settings.raw_baseline:
        try:
            model_file = _raw_model_file(settings, info)
        except WorkloadError as exc:
            raise BenchError(str(exc)) from None
        if model_file is None:
            report.notes.append(
                "no raw onnxruntime baseline: give --model-file or --repository "
                "(or --no-raw-baseline)"
            )
        elif importlib.util.find_spec("onnxruntime") is None:
            report.notes.append(
                "no raw onnxruntime baseline: onnxruntime is not installed here "
                "(pip install 'onnxserve[server]')"
            )
        else:
            try:
                report.raw = measure_raw(
                    model_file,
                    info,
                    settings.raw_batch_sizes,
                    seconds=settings.raw_seconds,
                    device=settings.raw_device,
                    threads=settings.raw_threads,
                    int_range=settings.int_range,
                    seed=settings.seed,
                    progress=lambda label, f: progress.update(label, f),
                )
            except WorkloadError as exc:
                raise BenchError(str(exc)) from None
        if report.raw is not None:
            best, batch1 = report.raw.best, report.raw.batch1
            progress.done(
                f"raw onnxruntime ({', '.join(report.raw.providers)}): "
                + (f"batch 1 {batch1.mean_ms:.3f} ms mean; " if batch1 else "")
                + f"best {best.samples_per_s:,.0f} samples/s at batch {best.batch}"
            )

    driver = _choose_driver(
        settings, connection, payloads, answer_bytes, report.notes, rest_requests
    )
    report.driver = driver.name
    if settings.request_rate:
        steps = [("request_rate", rate) for rate in settings.request_rate]
        cap = max(settings.concurrency)
    else:
        steps = [("concurrency", float(c)) for c in settings.concurrency]
        cap = 0
    async with driver:
        for mode, load in steps:
            concurrency = int(load) if mode == "concurrency" else cap
            rate = load if mode == "request_rate" else None
            label = f"{mode.replace('_', ' ')} {load:g}"
            progress.update(f"{label}: warm-up", 0.0)
            await driver.warmup(concurrency, rate, settings.warmup)
            before = await server.settled_statistics()

            def show(fraction: float, detail: str, label: str = label) -> None:
                progress.update(label, fraction, detail)

            run = await driver.run(
                concurrency,
                rate,
                seconds=settings.duration,
                requests=settings.requests,
                progress=show,
            )
            after = await server.settled_statistics()
            step = _step_result(
                settings, mode, load, driver.name, run, server_delta(before, after), report
            )
            report.steps.append(step)
            latency = step.latency
            progress.done(
                f"{label}: {step.infer_per_s:,.1f} infer/s, "
                + (f"p50 {latency.p50_ms:.2f} ms, " if latency else "")
                + f"{step.failures} failed"
            )
    if hasattr(os, "getloadavg"):
        report.environment["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    return report
