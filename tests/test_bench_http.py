"""``onnxserve bench --protocol http``: short real runs against a real server's REST port.

h2load over HTTP/1.1 (one connection per request in flight) and h2c, the python
driver's asyncio HTTP/1.1, binary and JSON bodies: every step must count its
requests, with no failure, and agree with the server's statistics. REST is the
native front end's: without the built module these tests skip.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from onnxserve.bench.h2load import H2LoadDriver, find_h2load
from onnxserve.bench.runner import BenchError, run_bench
from onnxserve.bench.settings import BenchSettings
from onnxserve.bench.workload import ModelInfo, encode_rest_request
from onnxserve.client.types import TensorMetadata
from onnxserve.settings import SettingsError
from tests.support.models import add_sub_model, identity_model, write_config
from tests.support.server import RunningServer, rest_served

needs_h2load = pytest.mark.skipif(find_h2load() is None, reason="h2load is not installed")


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench_http_repository")
    add_sub_model(root / "simple" / "1" / "model.onnx")
    write_config(root / "simple", "max_batch_size: 8 dynamic_batching {}")
    identity_model(root / "identity_bytes" / "1" / "model.onnx", "BYTES")
    identity_model(root / "identity_fp16" / "1" / "model.onnx", "FP16")
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[RunningServer]:
    if not rest_served():
        pytest.skip("REST is served by the native front end (make install)")
    with RunningServer(repository, http=True) as running:
        yield running


def settings(server: RunningServer, **changes: object) -> BenchSettings:
    base = BenchSettings(
        model="simple",
        url=f"http://{server.http_address}",
        concurrency=(1, 4),
        duration=0.4,
        warmup=0.2,
        raw_baseline=False,
        progress=False,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def check_sane(report: object, batch_size: int = 1) -> None:
    for step in report.steps:  # type: ignore[attr-defined]
        assert step.failures == 0, step.failure_codes
        assert step.requests == step.successes > 0
        assert step.infer_per_s > 0
        latency = step.latency
        assert latency is not None and latency.count == step.successes
        assert 0 < latency.p50_ms <= latency.p90_ms <= latency.p99_ms <= latency.max_ms
        assert step.server is not None
        assert step.server.success == step.successes and step.server.fail == 0
        assert step.server.inference_count == step.successes * batch_size


def test_rest_bodies_binary_and_json() -> None:
    info = ModelInfo("m", ("1",), 8, (TensorMetadata("x", "FP32", (2,)),), "model.onnx")
    x = np.array([[1.0, 2.5]], np.float32)
    binary = encode_rest_request("m", "1", info, {"x": x})
    assert binary.path == "/v2/models/m/versions/1/infer"
    headers = dict(binary.headers)
    length = int(headers["Inference-Header-Content-Length"])
    header = json.loads(binary.body[:length])
    assert header["inputs"][0]["parameters"] == {"binary_data_size": 8}
    assert header["parameters"] == {"binary_data_output": True}
    assert binary.body[length:] == x.tobytes()
    plain = encode_rest_request("m", "", info, {"x": x}, "json")
    assert plain.path == "/v2/models/m/infer"
    assert json.loads(plain.body)["inputs"][0]["data"] == [1.0, 2.5]
    half = ModelInfo("h", (), 8, (TensorMetadata("x", "FP16", (2,)),), "model.onnx")
    with pytest.raises(ValueError, match="JSON cannot carry: use --body binary"):
        encode_rest_request("h", "", half, {"x": x.astype(np.float16)}, "json")


def test_h2load_command_for_rest() -> None:
    info = ModelInfo("m", (), 8, (TensorMetadata("x", "FP32", (2,)),), "model.onnx")
    request = encode_rest_request("m", "", info, {"x": np.zeros((1, 2), np.float32)})
    driver = H2LoadDriver("h2load", "127.0.0.1:9", b"", 2, rest=request, http1=True,
                          headers=[("authorization", "Bearer t")])  # fmt: skip
    command = driver.command(8, requests=100)
    assert command[-1] == "http://127.0.0.1:9/v2/models/m/infer"
    assert "--h1" in command and command[command.index("-c") + 1] == "8"  # one per request
    assert command[command.index("-m") + 1] == "1"
    assert (
        "Inference-Header-Content-Length: "
        + dict(request.headers)["Inference-Header-Content-Length"]
        in command
    )
    assert "authorization: Bearer t" in command and "te: trailers" not in command
    assert driver.body.read_bytes() == request.body  # no gRPC frame
    h2c = H2LoadDriver("h2load", "127.0.0.1:9", b"", 2, rest=request)
    assert "--h1" not in h2c.command(8, requests=100) and h2c.layout(8) == (2, 4)


def test_protocol_settings_are_checked() -> None:
    with pytest.raises(SettingsError, match="needs a REST URL"):
        BenchSettings(model="m", url="grpc://h:1", protocol="http")
    assert BenchSettings(model="m", url="http://h:1").rest
    assert BenchSettings(model="m", url="h:8000", protocol="http").rest
    assert not BenchSettings(model="m", url="h:8001").rest


@needs_h2load
@pytest.mark.parametrize("body", ["binary", "json"])
def test_h2load_over_http1(server: RunningServer, body: str) -> None:
    report = __import__("asyncio").run(run_bench(settings(server, driver="h2load", body=body)))
    assert report.driver == "h2load" and report.url == f"http://{server.http_address}"
    assert any(
        f"over HTTP/1.1, {'binary' if body == 'binary' else 'JSON'}" in n for n in report.notes
    )
    check_sane(report)


@needs_h2load
def test_h2load_over_h2c_with_a_batch(server: RunningServer) -> None:
    import asyncio

    run = settings(server, driver="h2load", http_version="2", connections=2, batch_size=4,
                   url=server.http_address, protocol="http")  # fmt: skip
    report = asyncio.run(run_bench(run))
    check_sane(report, batch_size=4)


@pytest.mark.parametrize("body", ["binary", "json"])
def test_python_driver_over_http1(server: RunningServer, body: str) -> None:
    import asyncio

    report = asyncio.run(
        run_bench(settings(server, driver="python", body=body, request_rate=(200,)))
    )
    assert report.driver == "python"
    check_sane(report)
    report = asyncio.run(
        run_bench(settings(server, driver="python", model="identity_bytes", body=body))
    )
    check_sane(report)


def test_refusals_before_any_load(server: RunningServer) -> None:
    import asyncio

    with pytest.raises(BenchError, match="JSON cannot carry"):
        asyncio.run(run_bench(settings(server, model="identity_fp16", body="json")))
    with pytest.raises(BenchError, match="NOT_FOUND"):
        asyncio.run(run_bench(settings(server, model="nope")))
    with pytest.raises(BenchError, match="--http-version 2 needs the h2load driver"):
        asyncio.run(run_bench(settings(server, driver="python", http_version="2")))


@needs_h2load
def test_the_command_line_over_http(server: RunningServer, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "onnxserve", "bench", "simple", "--url", server.http_address,
         "--protocol", "http", "--concurrency", "2", "--duration", "0.3", "--warmup", "0.1",
         "--no-raw-baseline", "--no-progress", "--json", str(tmp_path / "bench.json")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    document = json.loads((tmp_path / "bench.json").read_text())
    assert document["failures"] == 0 and document["settings"]["protocol"] == "http"
    assert document["steps"][0]["successes"] > 0
