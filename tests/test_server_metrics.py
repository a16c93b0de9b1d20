"""/metrics as Prometheus scrapes it: Triton's series with the right counts after known calls."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.protocol import grpc_service_pb2_grpc as pb_grpc
from onnxserve.server.errors import FAILURE_REASONS
from tests.support.batching_models import picky_inputs, picky_model, spin_model
from tests.support.infer_requests import infer_request
from tests.support.models import add_sub_model, write_config
from tests.support.server import RunningServer, free_port

X = np.ones((1, 16), dtype=np.float32)
BLOCKING_SPIN = 1_500_000  # loop turns that keep the spin model busy for over a second
SETTLE_S = 0.5  # time for a request sent just before to reach the server's queue

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def spin(value: float, turns: int = 0) -> pb.ModelInferRequest:
    return infer_request(
        "spin",
        {
            "INPUT0": np.full((1, 4), value, dtype=np.float32),
            "SPIN": np.array([[turns]], dtype=np.int64),
        },
    )


@pytest.fixture(scope="module")
def metrics_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("metrics_repository")
    add_sub_model(root / "simple" / "1" / "model.onnx")
    spin_model(root / "spin" / "1" / "model.onnx")
    write_config(
        root / "spin",
        "max_batch_size: 1\ndynamic_batching { default_queue_policy { max_queue_size: 2 } }\n",
    )
    picky_model(root / "picky" / "1" / "model.onnx")
    server = RunningServer(root, ["--metrics-port", str(free_port())])
    with server:
        yield server


def metrics_port(server: RunningServer) -> int:
    return int(server.extra_args[server.extra_args.index("--metrics-port") + 1])


def rpc_code(call: object) -> grpc.StatusCode:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def test_metrics_count_successes_failures_by_reason_and_batches(
    metrics_server: RunningServer,
) -> None:
    with metrics_server.channel() as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        # simple: 5 one-row calls and one of 3 rows, one after another; 2 malformed calls.
        for _ in range(5):
            stub.ModelInfer(infer_request("simple", {"INPUT0": X, "INPUT1": X}), timeout=30)
        three = np.ones((3, 16), dtype=np.float32)
        stub.ModelInfer(infer_request("simple", {"INPUT0": three, "INPUT1": three}), timeout=30)
        wrong = np.ones((1, 5), dtype=np.float32)
        for _ in range(2):
            bad = infer_request("simple", {"INPUT0": wrong, "INPUT1": wrong})
            assert rpc_code(lambda b=bad: stub.ModelInfer(b, timeout=30)) == (
                grpc.StatusCode.INVALID_ARGUMENT
            )
        # picky: one success; two runs onnxruntime fails (a Reshape: internal) and one
        # where it blames the input (a Gather index out of its table).
        internal, invalid = grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT
        for inputs, code in (
            (picky_inputs(1.0), grpc.StatusCode.OK),
            (picky_inputs(2.0, width=5), internal),
            (picky_inputs(3.0, width=5), internal),
            (picky_inputs(4.0, index=10), invalid),
        ):
            request = infer_request("picky", inputs)
            assert rpc_code(lambda r=request: stub.ModelInfer(r, timeout=30)) == code
        # spin: one instance busy with a long run, a queue of at most 2.
        blocker = stub.ModelInfer.future(spin(1.0, BLOCKING_SPIN), timeout=120)
        time.sleep(SETTLE_S)
        cancelled = stub.ModelInfer.future(spin(2.0), timeout=120)
        time.sleep(SETTLE_S)
        cancelled.cancel()
        assert rpc_code(lambda: stub.ModelInfer(spin(3.0), timeout=0.3)) == (
            grpc.StatusCode.DEADLINE_EXCEEDED
        )
        time.sleep(SETTLE_S)
        queued = [stub.ModelInfer.future(spin(4.0 + i), timeout=120) for i in range(2)]
        time.sleep(SETTLE_S)
        assert rpc_code(lambda: stub.ModelInfer(spin(9.0), timeout=30)) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        during = scrape(metrics_port(metrics_server))
        assert not blocker.done()
        for future in (blocker, *queued):
            future.result(timeout=120)
        statistics = stub.ModelStatistics(pb.ModelStatisticsRequest(), timeout=30)

    # Requests accepted and not answered while the blocker ran: it and the two queued.
    assert value(during, "nv_inference_pending_request_count", model="spin", version="1") == 3
    samples = scrape(metrics_port(metrics_server))
    expected = {
        "simple": (6, {"invalid_argument": 2}, 8, 6),
        "picky": (1, {"internal": 2, "invalid_argument": 1}, 1, 1),
        "spin": (3, {"cancelled": 1, "deadline_exceeded": 1, "queue_full": 1}, 3, 3),
    }
    for model, (successes, failures, inferences, executions) in expected.items():
        labels = {"model": model, "version": "1"}
        assert value(samples, "nv_inference_request_success", **labels) == successes
        for reason in FAILURE_REASONS:
            counted = value(samples, "nv_inference_request_failure", **labels, reason=reason)
            assert counted == failures.get(reason, 0), (model, reason)
        assert value(samples, "nv_inference_count", **labels) == inferences
        assert value(samples, "nv_inference_exec_count", **labels) == executions
        assert value(samples, "nv_inference_pending_request_count", **labels) == 0
        request_us = value(samples, "nv_inference_request_duration_us", **labels)
        queue_us = value(samples, "nv_inference_queue_duration_us", **labels)
        infer_us = value(samples, "nv_inference_compute_infer_duration_us", **labels)
        assert request_us >= queue_us + infer_us > 0
        for phase in ("input", "output"):
            assert value(samples, f"nv_inference_compute_{phase}_duration_us", **labels) >= 0
        assert value(samples, "onnxserve_inference_batch_size_count", **labels) == executions
        # No merged batch failed here (the calls came one at a time).
        assert value(samples, "onnxserve_batch_isolations_total", **labels) == 0
    # The two queued spin requests waited for the blocker's run of over a second.
    assert value(samples, "nv_inference_queue_duration_us", model="spin", version="1") > 500_000
    simple = {"model": "simple", "version": "1"}
    assert value(samples, "onnxserve_inference_batch_size_bucket", **simple, le="1.0") == 5
    assert value(samples, "onnxserve_inference_batch_size_bucket", **simple, le="2.0") == 5
    assert value(samples, "onnxserve_inference_batch_size_bucket", **simple, le="4.0") == 6
    assert value(samples, "onnxserve_inference_batch_size_bucket", **simple, le="+Inf") == 6
    assert value(samples, "onnxserve_inference_batch_size_sum", **simple) == 8
    # ModelStatistics is the other reader of the same counters.
    by_model = {s.name: s for s in statistics.model_stats}
    assert by_model["spin"].inference_stats.fail.count == 3
    assert by_model["simple"].inference_stats.fail.count == 2
    assert by_model["simple"].inference_stats.success.count == 6
    # The standard process metrics.
    assert value(samples, "process_resident_memory_bytes") > 0
    assert ("python_info", ()) not in samples  # python_info carries labels
    assert any(name == "python_info" for name, _ in samples)


def test_metrics_keep_triton_names_without_a_total_suffix(metrics_server: RunningServer) -> None:
    with urllib.request.urlopen(
        f"http://127.0.0.1:{metrics_port(metrics_server)}/metrics", timeout=30
    ) as answer:
        text = answer.read().decode()
    assert "# TYPE nv_inference_request_success untyped" in text
    assert 'nv_inference_request_success{model="simple",version="1"}' in text
    assert "nv_inference_request_success_total" not in text
    assert "# TYPE nv_inference_pending_request_count gauge" in text
    assert "# TYPE onnxserve_inference_batch_size histogram" in text


def test_two_workers_report_the_whole_server(tmp_path: Path) -> None:
    """Worker 0 serves /metrics with every worker's counters and each one's process metrics."""
    add_sub_model(tmp_path / "simple" / "1" / "model.onnx")
    port = free_port()
    with RunningServer(tmp_path, ["--workers", "2", "--metrics-port", str(port)]) as server:
        wrong = np.ones((1, 5), dtype=np.float32)
        for index in range(10):  # connections, not calls, are spread over the workers
            with grpc.insecure_channel(
                server.address, options=[("grpc.use_local_subchannel_pool", 1)]
            ) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                if index < 8:
                    stub.ModelInfer(infer_request("simple", {"INPUT0": X, "INPUT1": X}), timeout=30)
                else:
                    bad = infer_request("simple", {"INPUT0": wrong, "INPUT1": wrong})
                    with pytest.raises(grpc.RpcError) as refused:
                        stub.ModelInfer(bad, timeout=30)
                    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        for _ in range(3):  # whichever way the scrape goes, the sums are the server's
            samples = scrape(port)
            labels = {"model": "simple", "version": "1"}
            assert value(samples, "nv_inference_request_success", **labels) == 8
            failures = value(
                samples, "nv_inference_request_failure", **labels, reason="invalid_argument"
            )
            assert failures == 2
            assert value(samples, "nv_inference_exec_count", **labels) == 8
        workers = {
            dict(labels).get("worker")
            for name, labels in samples
            if name == "process_cpu_seconds_total"
        }
        assert workers == {"0", "1"}
