"""Stopping without losing a call, --exit-on-error, and the log an operator reads."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest

from onnxserve.protocol import grpc_service_pb2_grpc as pb_grpc
from tests.support.batching_models import pair_model
from tests.support.infer_requests import infer_request
from tests.support.models import add_sub_model, write_config
from tests.support.server import RunningServer

X = np.ones((1, 16), dtype=np.float32)


async def drive_and_stop(
    server: RunningServer, calls: int = 400, in_flight: int = 16, stop_after: int = 120
) -> Counter[str]:
    """As a client would: ``calls`` calls, ``in_flight`` at a time, SIGTERM after ``stop_after``."""
    codes: Counter[str] = Counter()
    pending = iter(range(calls))
    finished = 0
    pair = np.ones((1, 3), dtype=np.float32)
    request = infer_request("pair", {"INPUT0": pair, "INPUT1": pair})
    assert server.process is not None
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def caller() -> None:
            nonlocal finished
            for _ in pending:
                try:
                    await stub.ModelInfer(request, timeout=30)
                    codes["OK"] += 1
                except grpc.aio.AioRpcError as error:
                    codes[error.code().name] += 1
                finished += 1
                if finished == stop_after:
                    server.process.send_signal(signal.SIGTERM)

        await asyncio.gather(*(caller() for _ in range(in_flight)))
    return codes


@pytest.fixture(scope="module")
def batching_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("drain_repository")
    pair_model(root / "pair" / "1" / "model.onnx")
    # Batches wait up to 5 ms for company: at SIGTERM accepted calls sit in the queue.
    write_config(
        root / "pair", "max_batch_size: 16\ndynamic_batching { max_queue_delay_microseconds: 5000 }"
    )
    return root


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_under_load_answers_only_ok_and_unavailable(
    batching_repository: Path, workers: int
) -> None:
    """Every call accepted before the drain finishes OK; later ones get UNAVAILABLE."""
    runs = 5 if workers == 1 else 2
    for _ in range(runs):
        server = RunningServer(batching_repository, ["--workers", str(workers)]).start()
        try:
            codes = asyncio.run(drive_and_stop(server))
            assert server.process is not None
            assert server.process.wait(timeout=60) == 0
        finally:
            server.stop()
        assert set(codes) <= {"OK", "UNAVAILABLE"}, codes
        assert codes["OK"] >= 120 and sum(codes.values()) == 400
        assert "stopped" in server.log()


def test_exit_on_error_fails_the_start_and_without_it_the_server_stays_live(
    tmp_path: Path,
) -> None:
    add_sub_model(tmp_path / "good" / "1" / "model.onnx")
    corrupt = tmp_path / "corrupt" / "1" / "model.onnx"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(b"this is not an onnx file")
    for workers in ("1", "2"):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "onnxserve",
                "serve",
                "--model-repository",
                str(tmp_path),
                "--host",
                "127.0.0.1",
                "--grpc-port",
                "0",
                "--metrics-port",
                "0",
                "--workers",
                workers,
                "--exit-on-error",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode != 0
        assert "--exit-on-error" in done.stderr and "corrupt" in done.stderr
        assert str(tmp_path) not in done.stderr
    with RunningServer(tmp_path, require_ready=False) as server:
        assert server.process is not None and server.process.poll() is None


def test_json_logs_one_event_per_line_at_the_resolved_level(tmp_path: Path) -> None:
    add_sub_model(tmp_path / "simple" / "1" / "model.onnx")
    (tmp_path / "model.onnx").write_bytes(b"a model in the wrong place")
    config = tmp_path.parent / f"{tmp_path.name}.toml"
    config.write_text('[serve]\nlog_format = "json"\n')
    # The level comes from the environment, the format from the config file.
    env = {"ONNXSERVE_LOG_LEVEL": "WARNING"}
    server = RunningServer(tmp_path, ["--config", str(config)], env=env)
    with server, server.channel() as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        marker = np.full((1, 16), 12345.678, dtype=np.float32)
        for _ in range(5):
            stub.ModelInfer(infer_request("simple", {"INPUT0": marker, "INPUT1": X}))
            with pytest.raises(grpc.RpcError):
                stub.ModelInfer(infer_request("simple", {"INPUT0": marker[:, :5]}))
    events = [json.loads(line) for line in server.log().splitlines() if line.strip()]
    assert events, "the server logged nothing"
    assert all({"time", "level", "logger", "message"} <= set(e) for e in events)
    assert {e["level"] for e in events} <= {"WARNING", "ERROR"}
    skipped = [e["message"] for e in events if "skipped" in e["message"]]
    assert skipped == [
        "skipped 'model.onnx' in the model repository: a file, not a model folder: "
        "put it in <model>/1/model.onnx"
    ]
    assert "12345" not in server.log()  # no tensor contents, no line per request


def test_text_logs_at_info_say_what_happens_but_nothing_per_request(tmp_path: Path) -> None:
    add_sub_model(tmp_path / "simple" / "1" / "model.onnx")
    with RunningServer(tmp_path) as server, server.channel() as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        before = server.log().count("\n")
        for _ in range(20):
            stub.ModelInfer(infer_request("simple", {"INPUT0": X, "INPUT1": X}))
        assert server.log().count("\n") == before
    lines = server.log().splitlines()
    assert any(" INFO onnxserve.server.app: ready: simple" in line for line in lines)
    assert any("stopping: readiness off" in line for line in lines)
