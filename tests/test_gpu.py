"""The GPU path on a real GPU: CUDA load, IO binding parity, CUDA graph replay, fallback rules.

Marked ``gpu``: they run in ``make test`` too and skip with the reason where
no GPU or no CUDA library is there. benchmarks/gpu_check.sh runs them on a
GPU machine (``pytest -m gpu`` with CUDA_VISIBLE_DEVICES set).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from onnxserve.client import Client
from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.protocol import grpc_service_pb2_grpc as pb_grpc
from onnxserve.server.binding import BoundRunner
from onnxserve.server.config import parse_config_text
from onnxserve.server.errors import ConfigError
from onnxserve.server.runtime import CPU, CUDA, TENSORRT, OnnxSession, plan_session
from tests.support.gpu import cuda_unavailable_reason, tensorrt_libraries_load
from tests.support.gpu_models import BUILDERS, sample_inputs
from tests.support.models import write_config
from tests.support.server import RunningServer

pytestmark = pytest.mark.gpu

# TF32 matrix products (onnxruntime's CUDA default on Ampere and later) round
# to about 1e-3; the CPU computes in full fp32.
TOLERANCE = {"rtol": 2e-3, "atol": 2e-3}
GRAPH_SIZES = (1, 4, 16)


def _graph_config(name: str) -> str:
    return f"""
name: "{name}"
max_batch_size: 16
dynamic_batching {{ }}
parameters {{ key: "allowed_batch_sizes" value {{ string_value: "1,4,16" }} }}
optimization {{ execution_accelerators {{ gpu_execution_accelerator [
  {{ name: "cuda" parameters {{ key: "enable_cuda_graph" value: "1" }} }}
] }} }}
"""


@pytest.fixture(scope="session", autouse=True)
def cuda_works() -> None:
    reason = cuda_unavailable_reason()
    if reason is not None:
        pytest.skip(f"needs CUDA: {reason}")


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("gpu_models")
    return {name: build(folder / name / "1" / "model.onnx") for name, build in BUILDERS.items()}


def _cuda_session(path: Path, config_text: str = "max_batch_size: 64") -> OnnxSession:
    config = parse_config_text(config_text, path.parents[1].name)
    config.name = path.parents[1].name
    return OnnxSession(path, config, plan_session(config, "cuda", 4, None))


def _cpu_run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=[CPU])
    return session.run(None, feeds)


def test_cuda_load_binds_on_the_device(model_files: dict[str, Path]) -> None:
    session = _cuda_session(model_files["dense"])
    assert session.providers[0] == CUDA
    assert session.binding == "cuda"


@pytest.mark.parametrize("model", ["dense", "lstm", "conv"])
def test_io_binding_matches_the_cpu(model_files: dict[str, Path], model: str) -> None:
    session = _cuda_session(model_files[model])
    names = [spec.name for spec in session.outputs]
    for batch in (1, 7, 64):
        feeds = sample_inputs(model, batch, seed=batch)
        for got, want in zip(
            session.run(feeds, names), _cpu_run(model_files[model], feeds), strict=True
        ):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, **TOLERANCE)


def test_device_buffers_are_reused_per_padded_size(model_files: dict[str, Path]) -> None:
    session = ort.InferenceSession(str(model_files["conv"]), providers=[CUDA])
    runner = BoundRunner(session, "cuda", 0)
    results = []
    for seed in range(3):
        feeds = sample_inputs("conv", 32, seed=seed)
        results.append((runner.run(feeds, ["probabilities"])[0], feeds))
    assert runner.buffer_sets_created == 1
    for got, feeds in results:  # each result is its own host array, not the reused buffer
        np.testing.assert_allclose(got, _cpu_run(model_files["conv"], feeds)[0], **TOLERANCE)


@pytest.mark.parametrize("model", ["dense", "conv"])
def test_cuda_graphs_replay_per_size(model_files: dict[str, Path], model: str) -> None:
    session = _cuda_session(model_files[model], _graph_config(model))
    assert session.cuda_graph_sizes == GRAPH_SIZES
    names = [spec.name for spec in session.outputs]
    for size in (*GRAPH_SIZES, 3):  # 3: no graph of its own, runs outside the graphs
        for seed in (1, 2):  # a replay must read the new inputs, not the captured ones
            feeds = sample_inputs(model, size, seed=seed * 100 + size)
            got = session.run(feeds, names)
            for value, want in zip(got, _cpu_run(model_files[model], feeds), strict=True):
                np.testing.assert_allclose(value, want, **TOLERANCE)


def test_the_seed_lstm_replays_or_is_refused_clearly(model_files: dict[str, Path]) -> None:
    """cuDNN's LSTM may not be capturable: then loading fails saying so, never a wrong answer."""
    try:
        session = _cuda_session(model_files["lstm"], _graph_config("lstm"))
    except ConfigError as exc:
        assert str(exc).startswith(
            (
                "model 'lstm': capturing its CUDA graph for batch size",
                "model 'lstm': enable_cuda_graph cannot be used with this model",
            )
        ), exc
        return
    assert session.cuda_graph_sizes == GRAPH_SIZES
    for size in GRAPH_SIZES:
        feeds = sample_inputs("lstm", size, seed=size)
        np.testing.assert_allclose(
            session.run(feeds, ["score"])[0], _cpu_run(model_files["lstm"], feeds)[0], **TOLERANCE
        )


def _visible_env() -> dict[str, str]:
    return {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0")}


@pytest.fixture(scope="module")
def graph_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repository = tmp_path_factory.mktemp("gpu_repository")
    BUILDERS["dense"](repository / "dense" / "1" / "model.onnx")
    write_config(repository / "dense", _graph_config("dense"))
    with RunningServer(repository, ["--device", "cuda"], env=_visible_env()) as server:
        yield server


def test_server_serves_batches_on_cuda_graphs(
    graph_server: RunningServer, model_files: dict[str, Path]
) -> None:
    errors: list[str] = []

    def work(seed: int) -> None:
        with Client(graph_server.address, timeout=30) as client:
            for step in range(20):
                feeds = sample_inputs("dense", 1 + (seed + step) % 3, seed=seed * 1000 + step)
                got = client.infer("dense", feeds)
                want = _cpu_run(model_files["dense"], feeds)
                for name, value in zip(("y", "total"), want, strict=True):
                    if not np.allclose(got[name], value, **TOLERANCE):
                        errors.append(f"client {seed} step {step} output {name}")

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    with grpc.insecure_channel(graph_server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        config = stub.ModelConfig(pb.ModelConfigRequest(name="dense")).config
        stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="dense")).model_stats[0]
    assert config.parameters["onnxserve.execution_providers"].string_value.startswith(CUDA)
    assert {b.batch_size for b in stats.batch_stats} <= set(GRAPH_SIZES)  # padded to graphs
    assert "CUDA graphs captured for batch sizes (1, 4, 16)" in graph_server.log()


def _providers_and_log(repository: Path, args: list[str], env: dict[str, str]) -> tuple[str, str]:
    with RunningServer(repository, args, env=env, require_ready=False) as server:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            (row,) = stub.RepositoryIndex(pb.RepositoryIndexRequest()).models
            if row.state != "READY":
                return f"{row.state}: {row.reason}", server.log()
            config = stub.ModelConfig(pb.ModelConfigRequest(name=row.name)).config
        return config.parameters["onnxserve.execution_providers"].string_value, server.log()


def test_fallback_rules(tmp_path: Path) -> None:
    BUILDERS["dense"](tmp_path / "dense" / "1" / "model.onnx")
    visible, hidden = _visible_env(), {"CUDA_VISIBLE_DEVICES": ""}
    providers, _ = _providers_and_log(tmp_path, ["--device", "auto"], visible)
    assert providers == f"{CUDA},{CPU}"
    providers, log = _providers_and_log(tmp_path, ["--device", "auto"], hidden)
    assert providers == CPU and "no NVIDIA GPU is visible" in log
    refused, _ = _providers_and_log(tmp_path, ["--device", "cuda"], hidden)
    # onnxruntime either fails to start CUDA without a device or falls back: refused both ways.
    assert refused.startswith("UNAVAILABLE: model 'dense': ") and "CUDA" in refused
    write_config(
        tmp_path / "dense",
        'optimization { execution_accelerators { gpu_execution_accelerator [{ name: "tensorrt" '
        'parameters { key: "precision_mode" value: "FP16" } }] } }',
    )
    providers, log = _providers_and_log(tmp_path, ["--device", "cuda"], visible)
    if TENSORRT not in ort.get_available_providers():
        assert providers.startswith("UNAVAILABLE") and "accelerator 'tensorrt' is not" in providers
    elif tensorrt_libraries_load():
        assert providers == f"{TENSORRT},{CUDA},{CPU}"
    else:
        assert providers == f"{CUDA},{CPU}"
        assert "could not start TensorRT" in log
