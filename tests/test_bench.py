"""``onnxserve bench`` against a real server on tiny models.

The server runs as a separate process (tests/support/server.py); the bench
drives it with both drivers and reads its statistics. Nothing here asserts a
timing threshold: the checks are that the figures are consistent with each
other and with what the server counted (successes, failures, rows), which a
miscounting load generator or a wrong statistics delta would break.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from onnxserve.bench.drivers import PythonDriver
from onnxserve.bench.h2load import H2LoadDriver, find_h2load
from onnxserve.bench.raw import find_model_file
from onnxserve.bench.report import format_report, write_plot
from onnxserve.bench.results import BenchReport, StepResult
from onnxserve.bench.runner import BenchError, _Server, _step_result, run_bench, server_delta
from onnxserve.bench.settings import BenchSettings
from onnxserve.bench.workload import (
    ModelInfo,
    WorkloadError,
    build_inputs,
    decode_frame,
    encode_frame,
    encode_request,
    integer_range,
    model_info,
    parse_shapes,
)
from onnxserve.cli import main
from onnxserve.client.connection import plan_connection
from onnxserve.client.types import TensorMetadata
from onnxserve.layout import format_input_range, input_range_key
from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.protocol import model_config_pb2 as mc
from onnxserve.protocol.codec import raw_to_array
from onnxserve.settings import SettingsError, resolve
from tests.support.models import LOOKUP_ROWS, add_sub_model, lookup_model, write_config
from tests.support.server import RunningServer

VOCABULARY = LOOKUP_ROWS
needs_h2load = pytest.mark.skipif(
    find_h2load() is None, reason="h2load not installed (apt-get install nghttp2-client)"
)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench_repository")
    add_sub_model(root / "simple" / "1" / "model.onnx")
    add_sub_model(root / "simple" / "3" / "model.onnx")  # the raw baseline takes the highest
    lookup_model(root / "lookup" / "1" / "model.onnx")
    # The server would refuse ids beyond the table (read from the graph) before they reach
    # the model; an open upper bound lets them through, to fail in onnxruntime.
    write_config(
        root / "lookup",
        f'parameters {{ key: "{input_range_key("INPUT0")}" value: {{ string_value: "0," }} }}',
    )
    # The same lookup with its valid ids declared in its config.
    lookup_model(root / "lookup_ranged" / "1" / "model.onnx")
    write_config(
        root / "lookup_ranged",
        "max_batch_size: 64 dynamic_batching {} parameters { key: "
        f'"{input_range_key("INPUT0")}" value {{ string_value: '
        f'"{format_input_range(0, VOCABULARY - 1)}" }} }}',
    )
    add_sub_model(root / "unbatched" / "1" / "model.onnx")
    write_config(
        root / "unbatched",
        'max_batch_size: 8 input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }, '
        '{ name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]',
    )
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[RunningServer]:
    with RunningServer(repository) as running:
        yield running


def settings(server: RunningServer, repository: Path, **changes: object) -> BenchSettings:
    base = BenchSettings(
        model="simple",
        url=f"grpc://{server.address}",
        concurrency=(1, 4),
        duration=0.4,
        warmup=0.1,
        repository=repository,
        raw_batch_sizes=(1, 8),
        raw_seconds=0.05,
        driver="python",
        progress=False,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def check_consistent(step: StepResult, batch_size: int = 1) -> None:
    """What must hold for any step that had no failure, whatever the speed."""
    assert step.failures == 0, step.failure_codes
    assert step.requests == step.successes > 0
    assert step.infer_per_s > 0
    assert step.samples_per_s == pytest.approx(step.infer_per_s * batch_size)
    latency = step.latency
    assert latency is not None and latency.count == step.successes
    assert 0 < latency.min_ms <= latency.p50_ms <= latency.p90_ms <= latency.p99_ms
    assert latency.p99_ms <= latency.max_ms
    assert latency.min_ms <= latency.mean_ms <= latency.max_ms
    server = step.server
    assert server is not None
    assert server.success == step.successes and server.fail == 0
    assert server.inference_count == step.successes * batch_size
    assert server.execution_count >= 1
    assert sum(server.batch_executions.values()) == server.execution_count
    assert server.avg_batch is not None and server.avg_batch >= batch_size
    assert step.client_cpu_s is not None and step.client_cpu_s >= 0


# --- the request body h2load posts ---------------------------------------------------------


def test_h2load_body_is_a_grpc_frame_holding_the_request() -> None:
    info = ModelInfo(
        name="m",
        versions=("1",),
        max_batch_size=8,
        inputs=(TensorMetadata("A", "FP32", (4,)), TensorMetadata("B", "INT32", (2, 3))),
        default_model_filename="model.onnx",
    )
    arrays = build_inputs(info, 2, "random", int_range=(5, 7), seed=3)[0]
    body = encode_frame(encode_request("m", "1", info, arrays))
    flag, length = struct.unpack(">BI", body[:5])
    assert flag == 0 and length == len(body) - 5
    request = decode_frame(body)
    assert (request.model_name, request.model_version) == ("m", "1")
    assert [(t.name, t.datatype, list(t.shape)) for t in request.inputs] == [
        ("A", "FP32", [2, 4]),
        ("B", "INT32", [2, 2, 3]),
    ]
    for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=True):
        decoded = raw_to_array(raw, tensor.datatype, list(tensor.shape))
        np.testing.assert_array_equal(decoded, arrays[tensor.name])
    assert arrays["B"].min() >= 5 and arrays["B"].max() <= 7
    with pytest.raises(WorkloadError, match="declares"):
        decode_frame(body[:-1])
    with pytest.raises(WorkloadError, match="compressed"):
        decode_frame(b"\x01" + body[1:])


def test_variable_dims_need_a_shape_and_shapes_are_checked() -> None:
    metadata = pb.ModelMetadataResponse(name="m", versions=["1"])
    metadata.inputs.add(name="tokens", datatype="INT32", shape=[-1, -1])
    config = mc.ModelConfig(name="m", max_batch_size=16)
    with pytest.raises(WorkloadError, match="--shape tokens:N"):
        model_info(metadata, config, {})
    assert model_info(metadata, config, parse_shapes("tokens:50")).inputs[0].shape == (50,)
    with pytest.raises(WorkloadError, match="unknown input"):
        model_info(metadata, config, parse_shapes("tokens:50;other:1"))
    assert parse_shapes("a:3x4;b:5") == {"a": (3, 4), "b": (5,)}


def test_random_integers_follow_the_declared_range_unless_told_otherwise() -> None:
    metadata = pb.ModelMetadataResponse(name="m", versions=["1"])
    for name in ("ids", "mask", "plain"):
        metadata.inputs.add(name=name, datatype="INT64", shape=[-1, 3])
    config = mc.ModelConfig(name="m", max_batch_size=8)
    config.parameters[input_range_key("ids")].string_value = "0,9"
    config.parameters[input_range_key("mask")].string_value = "-3,"
    config.parameters[input_range_key("gone")].string_value = "0,1"  # no such input: ignored
    info = model_info(metadata, config, {})
    assert dict(info.input_ranges) == {"ids": (0, 9), "mask": (-3, None)}
    int64 = np.dtype(np.int64)
    assert integer_range(info, "ids", int64) == (0, 9)
    assert integer_range(info, "mask", int64) == (-3, 99)  # the open side from the default
    assert integer_range(info, "plain", int64) == (0, 99)
    assert integer_range(info, "ids", int64, (5, 500)) == (5, 500)  # --int-range wins
    assert integer_range(info, "ids", np.dtype(np.uint8), (-5, 500)) == (0, 255)
    arrays = build_inputs(info, 8, "random", count=4)
    for request in arrays:
        assert request["ids"].min() >= 0 and request["ids"].max() <= 9
        assert request["mask"].min() >= -3 and request["mask"].max() <= 99
    config.parameters[input_range_key("ids")].string_value = "9,0"
    with pytest.raises(WorkloadError, match=r"onnxserve\.input_range\.ids: the range's minimum"):
        model_info(metadata, config, {})


def test_bench_keeps_random_ids_inside_the_declared_range(
    server: RunningServer, repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 9: a 10-word embedding fails on the default 0..99 ids (``lookup`` declares
    only a lower bound, so onnxruntime meets them and the server answers
    INVALID_ARGUMENT); with its range declared in the config the bench drives it
    with no failure, no flag needed."""
    common = ["--url", server.address, "--driver", "python", "--concurrency", "1,4",
              "--requests", "40", "--warmup", "0", "--no-raw-baseline",
              "--no-progress"]  # fmt: skip
    assert main(["bench", "lookup", *common]) == 2
    assert "refused the bench's request: INVALID_ARGUMENT" in capsys.readouterr().err
    out_json = tmp_path / "bench.json"
    assert main(["bench", "lookup_ranged", *common, "--json", str(out_json)]) == 0
    result = json.loads(out_json.read_text())
    assert [s["failures"] for s in result["steps"]] == [0, 0]
    assert [s["server"]["success"] for s in result["steps"]] == [40, 40]
    assert any("declares (0,9)" in note for note in result["notes"])
    # An explicit range still wins, even a wrong one.
    assert main(["bench", "lookup_ranged", *common, "--int-range", "0,50"]) == 2
    assert "INVALID_ARGUMENT" in capsys.readouterr().err


def test_settings_refuse_nonsense_before_any_request() -> None:
    for variable, flag in (("CONCURRENCY", "--concurrency"), ("INT_RANGE", "--int-range")):
        environ = {"ONNXSERVE_BENCH_MODEL": "m", f"ONNXSERVE_BENCH_{variable}": "9,1,0"}
        with pytest.raises(SettingsError, match=flag):
            resolve(BenchSettings, None, environ=environ, section="bench")


# --- against the server --------------------------------------------------------------------


def test_python_driver_sweep_matches_server_statistics(
    server: RunningServer, repository: Path
) -> None:
    report = asyncio.run(run_bench(settings(server, repository, batch_size=2)))
    assert report.driver == "python"
    assert [s.load for s in report.steps] == [1.0, 4.0]
    for step in report.steps:
        check_consistent(step, batch_size=2)
    raw = report.raw
    assert raw is not None and raw.model_file.endswith("simple/3/model.onnx")
    assert [p.batch for p in raw.points] == [1, 8]
    for point in raw.points:
        assert point.runs >= 5 and len(point.chunk_means_ms) == 5
        assert point.mean_ms == pytest.approx(min(point.chunk_means_ms))
        assert point.samples_per_s == pytest.approx(point.batch * 1000 / point.mean_ms)
    for step in report.steps:
        assert step.ratio_vs_raw == pytest.approx(step.samples_per_s / raw.best.samples_per_s)
    one = report.step_at_concurrency(1)
    assert one is not None and one.latency is not None and raw.batch1 is not None
    assert report.latency_delta_ms(one) == pytest.approx(one.latency.mean_ms - raw.batch1.mean_ms)
    text = format_report(report)
    assert "p99 ms" in text and "concurrency 1: mean latency" in text
    assert "concurrency 4:" in text and "x raw onnxruntime's best batched" in text


def test_request_rate_sends_the_requested_count(server: RunningServer, repository: Path) -> None:
    report = asyncio.run(
        run_bench(
            settings(server, repository, request_rate=(400.0,), requests=60, raw_baseline=False)
        )
    )
    (step,) = report.steps
    assert step.mode == "request_rate" and step.requests == 60
    check_consistent(step)
    assert report.raw is None


@needs_h2load
def test_h2load_driver_counts_match_server_statistics(
    server: RunningServer, repository: Path
) -> None:
    report = asyncio.run(
        run_bench(settings(server, repository, driver="h2load", concurrency=(1, 8), requests=300))
    )
    assert report.driver == "h2load"
    for step in report.steps:
        assert step.requests == 300
        check_consistent(step)
        assert not step.notes  # answers counted from h2load's bytes agree with the server
    # Duration mode sizes the request count from the warm-up's rate.
    timed = asyncio.run(
        run_bench(settings(server, repository, driver="h2load", concurrency=(4,),
                           raw_baseline=False))
    )  # fmt: skip
    check_consistent(timed.steps[0])
    assert any("warm-up's rate" in note for note in timed.steps[0].notes)


def test_load_spread_over_several_connections(server: RunningServer, repository: Path) -> None:
    quick = {"concurrency": (6,), "requests": 60, "raw_baseline": False, "connections": 3}
    report = asyncio.run(run_bench(settings(server, repository, **quick)))
    check_consistent(report.steps[0])
    assert report.steps[0].requests == 60
    if find_h2load() is not None:
        report = asyncio.run(
            run_bench(settings(server, repository,
                               **{**quick, "concurrency": (5,), "connections": 2},
                               driver="h2load"))
        )  # fmt: skip
        step = report.steps[0]
        check_consistent(step)
        assert any("6 streams in flight" in note for note in step.notes)


def test_h2load_command_spreads_streams_over_connections() -> None:
    driver = H2LoadDriver("h2load", "127.0.0.1:9", b"x", connections=4)
    command = " ".join(driver.command(64, requests=1000, rate=800.0))
    assert "-c 4 -t 1 -m 16" in command and "-n 1000" in command
    assert "--rps 200" in command  # h2load's rate is per client
    assert command.endswith("http://127.0.0.1:9/inference.GRPCInferenceService/ModelInfer")
    assert driver.layout(2) == (2, 1) and driver.layout(64, requests=3) == (3, 22)
    with pytest.raises(ValueError, match="connections"):
        H2LoadDriver("h2load", "127.0.0.1:9", b"x", connections=0)


@needs_h2load
@pytest.mark.parametrize("answer_size_known", [True, False])
def test_h2load_counts_grpc_failures_that_arrive_as_http_200(
    server: RunningServer, repository: Path, answer_size_known: bool
) -> None:
    """gRPC errors reach h2load as HTTP 200. With the size of a good answer known,
    the DATA bytes tell how many calls got one; without it, the server's counters do."""
    info = ModelInfo("lookup", ("1",), 64, (TensorMetadata("INPUT0", "INT64", (3,)),), "model.onnx")
    bad = encode_request("lookup", "", info, {"INPUT0": np.full((1, 3), 50, dtype=np.int64)})
    good = encode_request("lookup", "", info, {"INPUT0": np.ones((1, 3), dtype=np.int64)})

    async def measure() -> StepResult:
        stats = _Server(plan_connection(server.address), "lookup", "")
        try:
            answer = await stats.call("ModelInfer", pb.ModelInferRequest.FromString(good))
            size = answer.ByteSize() + 5 if answer_size_known else None
            executable = find_h2load()
            assert executable is not None
            async with H2LoadDriver(executable, server.address, bad, response_bytes=size) as load:
                before = await stats.settled_statistics()
                run = await load.run(4, None, seconds=0, requests=40)
                after = await stats.settled_statistics()
        finally:
            await stats.close()
        assert (run.successes is None) is not answer_size_known
        report = BenchReport("lookup", "", server.address, "h2load", 1, "", {}, {})
        s = settings(server, repository)
        return _step_result(s, "concurrency", 4, "h2load", run, server_delta(before, after), report)

    step = asyncio.run(measure())
    assert step.requests == 40
    assert step.successes == 0 and step.failures == 40
    code = (
        "gRPC error (answer without a message)"
        if answer_size_known
        else ("GRPC (from server statistics)")
    )
    assert step.failure_codes == {code: 40}
    assert step.server is not None and step.server.fail == 40
    assert not step.notes  # client and server agree


def test_cli_counts_failed_requests_and_writes_json_and_png(
    server: RunningServer, repository: Path, tmp_path: Path
) -> None:
    """Every other request carries an id outside the lookup table: exactly half fail."""
    data = tmp_path / "ids.npz"
    np.savez(data, INPUT0=np.array([[1, 2, 3], [4, 5, 50]], dtype=np.int64))
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    code = main([
        "bench", "lookup", "--url", server.address, "--driver", "python",
        "--concurrency", "1", "--requests", "10", "--warmup", "0", "--input-data", str(data),
        "--model-file", str(repository / "lookup" / "1" / "model.onnx"),
        "--raw-batch-sizes", "1,4", "--raw-seconds", "0.05", "--int-range", "0,9",
        "--json", str(out_json), "--plot", str(out_png), "--no-progress",
    ])  # fmt: skip
    assert code == 1  # failures make a non-zero exit status
    result = json.loads(out_json.read_text())
    (step,) = result["steps"]
    assert (step["requests"], step["successes"], step["failures"]) == (10, 5, 5)
    assert sum(step["failure_codes"].values()) == 5
    assert step["server"]["success"] == 5 and step["server"]["fail"] == 5
    assert step["ratio_vs_raw"] == pytest.approx(
        step["samples_per_s"] / result["raw"]["best"]["samples_per_s"]
    )
    assert result["failures"] == 5
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_raw_baseline_is_a_png(tmp_path: Path) -> None:
    report = BenchReport("m", "", "x", "python", 1, "", {}, {})
    path = tmp_path / "nested" / "plot.png"
    write_plot(report, path)
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert format_report(report).startswith("onnxserve bench: model 'm' at x, driver python")


def test_a_request_the_model_refuses_stops_the_run(server: RunningServer, repository: Path) -> None:
    with pytest.raises(BenchError, match="refused the bench's request"):
        asyncio.run(run_bench(settings(server, repository, model="lookup", int_range=(50, 60))))
    with pytest.raises(BenchError, match="cannot describe model 'missing'"):
        asyncio.run(run_bench(settings(server, repository, model="missing")))
    other_model = repository / "lookup" / "1" / "model.onnx"
    with pytest.raises(BenchError, match="is it the served model"):
        asyncio.run(run_bench(settings(server, repository, model_file=other_model)))


def test_raw_model_file_is_the_highest_served_version(repository: Path) -> None:
    info = ModelInfo("simple", ("1", "3"), 8, (), "model.onnx")
    assert find_model_file(repository, "simple", "", info).parent.name == "3"
    assert find_model_file(repository, "simple", "1", info).parent.name == "1"
    with pytest.raises(WorkloadError, match="does not exist"):
        find_model_file(repository, "simple", "2", info)


def test_python_driver_needs_a_payload() -> None:
    with pytest.raises(ValueError, match="no request"):
        PythonDriver("127.0.0.1:1", [], 1.0)


def test_settings_come_from_a_bench_table(tmp_path: Path) -> None:
    config = tmp_path / "bench.toml"
    config.write_text(
        '[bench]\nmodel = "m"\nconcurrency = [1, 4]\nint-range = [0, 9]\nplot = "out.png"\n'
    )
    loaded = resolve(BenchSettings, None, environ={}, config_file=config, section="bench")
    assert (loaded.model, loaded.concurrency, loaded.int_range) == ("m", (1, 4), (0, 9))
    assert loaded.plot == tmp_path / "out.png" and loaded.driver == "auto"


def test_input_files_give_one_request_per_batch_of_rows(tmp_path: Path) -> None:
    info = ModelInfo("m", ("1",), 8, (TensorMetadata("ids", "INT64", (3,)),), "model.onnx")
    listed = tmp_path / "plain.json"
    listed.write_text(json.dumps({"ids": [[1, 2, 3], [4, 5, 6], [7, 8, 9], [0, 0, 0]]}))
    requests = build_inputs(info, 2, str(listed))
    assert [r["ids"].tolist() for r in requests] == [[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [0, 0, 0]]]
    assert requests[0]["ids"].dtype == np.int64
    # perf_analyzer's layout: one sample per entry, optionally {"content", "shape"}.
    samples = tmp_path / "perf.json"
    samples.write_text(
        json.dumps({"data": [{"ids": [1, 2, 3]}, {"ids": {"content": [4, 5, 6], "shape": [3]}}]})
    )
    (single,) = build_inputs(info, 2, str(samples))
    assert single["ids"].tolist() == [[1, 2, 3], [4, 5, 6]]
    one_sample = tmp_path / "one.npz"
    np.savez(one_sample, ids=np.array([7, 8, 9]))
    assert build_inputs(info, 3, str(one_sample))[0]["ids"].tolist() == [[7, 8, 9]] * 3
    np.savez(tmp_path / "wrong.npz", ids=np.zeros((2, 4)))
    with pytest.raises(WorkloadError, match=r"expected \[3\] or \[N, 3\]"):
        build_inputs(info, 1, str(tmp_path / "wrong.npz"))
    other = tmp_path / "other.npz"
    np.savez(other, tokens=np.zeros((2, 3)))
    with pytest.raises(WorkloadError, match="no array for input 'ids'"):
        build_inputs(info, 1, str(other))


def test_a_batchable_model_without_dynamic_batching_is_pointed_out(
    server: RunningServer, repository: Path
) -> None:
    note = "no dynamic_batching"
    quick = {"concurrency": (2,), "requests": 20, "warmup": 0.0, "raw_baseline": False}
    plain = asyncio.run(run_bench(settings(server, repository, model="unbatched", **quick)))
    check_consistent(plain.steps[0])
    assert plain.steps[0].server is not None and plain.steps[0].server.avg_batch == 1.0
    assert any(note in n for n in plain.notes)
    batched = asyncio.run(run_bench(settings(server, repository, **quick)))
    assert not any(note in n for n in batched.notes)
