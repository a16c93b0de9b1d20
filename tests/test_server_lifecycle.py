"""The server process as an operator sees it: broken models, busy ports, CUDA, SIGTERM."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from onnxserve.client import Client
from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.protocol import grpc_service_pb2_grpc as pb_grpc
from onnxserve.server.runtime import nvidia_gpu_visible
from tests.support.infer_requests import infer_request, outputs_of
from tests.support.models import add_sub_model, write_config
from tests.support.server import RunningServer, free_port, rest_served

X = np.ones((1, 16), dtype=np.float32)


@pytest.fixture(scope="module")
def mixed_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mixed")
    add_sub_model(root / "good" / "1" / "model.onnx")
    corrupt = root / "corrupt" / "1" / "model.onnx"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(b"this is not an onnx file")
    add_sub_model(root / "sequence" / "1" / "model.onnx")
    write_config(root / "sequence", "sequence_batching { }")
    add_sub_model(root / "wrongtype" / "1" / "model.onnx")
    write_config(
        root / "wrongtype",
        'max_batch_size: 4 input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [16] },'
        ' { name: "INPUT1" data_type: TYPE_FP32 dims: [16] } ]',
    )
    return root


def test_broken_models_are_reported_and_the_rest_serve(mixed_repository: Path) -> None:
    server = RunningServer(mixed_repository)
    # Not ready (a model failed), so wait for liveness and the good model instead.
    server.wait_ready = lambda: None  # type: ignore[method-assign]
    with server, grpc.insecure_channel(server.address) as channel:
        grpc.channel_ready_future(channel).result(timeout=60)
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(600):
            index = stub.RepositoryIndex(pb.RepositoryIndexRequest())
            if (
                all(m.state != "LOADING" for m in index.models)
                and stub.ModelReady(pb.ModelReadyRequest(name="good")).ready
            ):
                break
        states = {m.name: (m.state, m.reason) for m in index.models}
        assert states["good"] == ("READY", "")
        assert states["corrupt"][0] == "UNAVAILABLE"
        assert "onnxruntime cannot load it" in states["corrupt"][1]
        assert states["sequence"][0] == "UNAVAILABLE"
        assert "sequence_batching" in states["sequence"][1]
        assert "TYPE_INT32 but the ONNX graph has TYPE_FP32" in states["wrongtype"][1]
        assert all(str(mixed_repository) not in reason for _, reason in states.values())
        assert stub.ServerLive(pb.ServerLiveRequest()).live
        assert not stub.ServerReady(pb.ServerReadyRequest()).ready
        response = stub.ModelInfer(infer_request("good", {"INPUT0": X, "INPUT1": X}))
        np.testing.assert_array_equal(outputs_of(response)["OUTPUT0"], X + X)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(infer_request("sequence", {"INPUT0": X, "INPUT1": X}))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "sequence_batching" in info.value.details()


def test_sigterm_drains_and_exits_zero(tmp_path: Path) -> None:
    add_sub_model(tmp_path / "simple" / "1" / "model.onnx")
    server = RunningServer(tmp_path).start()
    assert server.stop() == 0
    log = server.log()
    assert "stopping: readiness off" in log and "stopped" in log


def test_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    add_sub_model(tmp_path / "simple" / "1" / "model.onnx")
    serve = [sys.executable, "-m", "onnxserve", "serve", "--model-repository", str(tmp_path)]
    serve += ["--host", "127.0.0.1"]
    with RunningServer(tmp_path) as first:
        busy = str(first.port)
        grpc_taken = subprocess.run(
            [*serve, "--grpc-port", busy, "--metrics-port", "0"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        metrics_taken = subprocess.run(
            [*serve, "--grpc-port", str(free_port()), "--metrics-port", busy],
            capture_output=True,
            text=True,
            timeout=60,
        )
        health_taken = subprocess.run(
            [*serve, "--grpc-port", str(free_port()), "--metrics-port", "0", "--health-port", busy],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if rest_served():  # REST is the native front end's
            ports = ["--grpc-port", str(free_port()), "--metrics-port", "0", "--http-port", busy]
            http_taken = subprocess.run(
                [*serve, *ports],
                capture_output=True,
                text=True,
                timeout=60,
            )
    if rest_served():
        assert http_taken.returncode == 1
        assert f"cannot listen on 127.0.0.1:{first.port} (--http-port)" in http_taken.stderr
    assert health_taken.returncode == 1
    assert f"cannot listen on 127.0.0.1:{first.port}" in health_taken.stderr
    assert "Failed to add port" not in health_taken.stderr, health_taken.stderr
    assert grpc_taken.returncode == 1
    assert f"cannot listen on 127.0.0.1:{first.port}" in grpc_taken.stderr
    # onnxserve's line alone: gRPC core's own "Failed to add port" line does not precede it.
    assert "Failed to add port" not in grpc_taken.stderr, grpc_taken.stderr
    assert grpc_taken.stderr.count("\n") == 1, grpc_taken.stderr
    assert metrics_taken.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{first.port}" in metrics_taken.stderr
    assert "--metrics-port 0 turns metrics off" in metrics_taken.stderr


def test_missing_repository_is_a_clear_error(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "onnxserve", "serve", "--model-repository", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2
    assert "is not a directory" in completed.stderr


def test_cuda_fallback_is_reported(tmp_path: Path) -> None:
    """Without usable CUDA, --device cuda refuses the model and auto says it runs on the CPU."""
    add_sub_model(tmp_path / "simple" / "1" / "model.onnx")
    cuda_built_in = "CUDAExecutionProvider" in ort.get_available_providers()
    auto = RunningServer(tmp_path, ["--device", "auto"]).start()
    try:
        with grpc.insecure_channel(auto.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            config = stub.ModelConfig(pb.ModelConfigRequest(name="simple")).config
        providers = config.parameters["onnxserve.execution_providers"].string_value
        assert providers == "CPUExecutionProvider"
    finally:
        auto.stop()
    if cuda_built_in and nvidia_gpu_visible() is False:
        # onnxruntime is not even asked: no library-loading errors in the log.
        assert "no NVIDIA GPU is visible" in auto.log()
        assert "libonnxruntime_providers_cuda" not in auto.log()
    elif cuda_built_in:
        assert "could not use CUDA" in auto.log()
    strict = RunningServer(tmp_path, ["--device", "cuda"], require_ready=False)
    with strict, grpc.insecure_channel(strict.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        (row,) = stub.RepositoryIndex(pb.RepositoryIndexRequest()).models
        assert row.state == "UNAVAILABLE"
        assert "CUDA" in row.reason


def test_hidden_gpus_are_not_offered_to_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> None:
    for hidden in ("", "-1", "none"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert nvidia_gpu_visible() is False


def test_a_model_whose_config_warns_is_logged_at_every_load(tmp_path: Path) -> None:
    """The sentiment example trained on its fallback sentences says so in its config."""
    from onnxserve.examples.common import add_config_warning
    from onnxserve.examples.sentiment.train import fallback_warning

    add_sub_model(tmp_path / "sentiment" / "1" / "model.onnx")
    config = tmp_path / "sentiment" / "config.pbtxt"
    config.write_text('name: "sentiment"\n')
    add_config_warning(config, fallback_warning(48))
    with RunningServer(tmp_path) as server, Client(server.address) as client:
        reported = client.model_config("sentiment").parameters["onnxserve.warning"].string_value
    assert reported.startswith("trained on the 48 fallback sentences, not on UCI's")
    (line,) = [line for line in server.log().splitlines() if "fallback sentences" in line]
    assert "WARNING" in line and "model 'sentiment' version 1: trained on the 48" in line
