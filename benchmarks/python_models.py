"""What a Python model and an ensemble step cost beside the plain ONNX model.

    python -m benchmarks.python_models [--calls 400] [--concurrency 16] [--json FILE]

Two measurements, on whatever machine runs it (say how busy it was):

1. The IPC of one batch, alone: a real model process (the stub, running the
   identity model.py of tests/support/pymodels) is sent batches of 64
   requests of one row each, of growing width, straight through
   :class:`onnxserve.server.python_models.process.StubProcess`; the cost is
   the round trip minus the time ``execute`` took in the model's process
   (median of many), in microseconds, wall and CPU of this process.
2. Through a real server: an ONNX identity model (FP32, 50 wide, dynamic
   batching), the same as a Python model, and an ensemble of one step calling
   the ONNX model, each called ``--calls`` times one at a time and then from
   ``--concurrency`` threads; per model the client's mean latency and, from
   ModelStatistics, the mean compute_input + compute_output per execution
   (for the Python model: its IPC; compute_infer is execute itself).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from onnxserve.client import Client
from onnxserve.server.python_models.ipc import pack
from onnxserve.server.python_models.model import model_config_json
from onnxserve.server.python_models.process import StubProcess
from tests.support.models import identity_model, write_config
from tests.support.python_repository import SOURCES, ensemble, python_model

WIDTH = 50
_TENSOR = f'{{ name: "%s" data_type: TYPE_FP32 dims: [ {WIDTH} ] }}'
_IDENTITY = (
    "max_batch_size: 64\n"
    f"input [ {_TENSOR % 'INPUT0'} ]\noutput [ {_TENSOR % 'OUTPUT0'} ]\n"
    "dynamic_batching { }\ninstance_group [{ kind: KIND_CPU }]\n"
)


def ipc_per_batch(
    widths: tuple[int, ...] = (50, 1024, 16384), rounds: int = 200
) -> list[dict[str, Any]]:
    """Round trip minus execute, per batch of 64 one-row requests, at each width."""
    from onnxserve.protocol import model_config_pb2 as mc

    process = StubProcess("identity", "identity_0_0")
    try:
        config = mc.ModelConfig(name="identity", backend="python")
        error = process.initialize(
            SOURCES / "identity.py",
            {"model_config": model_config_json(config), "model_repository": str(SOURCES)},
        )
        assert error is None, error
        rows = []
        for width in widths:
            payload = [
                {
                    "id": "",
                    "model_name": "identity",
                    "inputs": pack({"INPUT0": np.ones((1, width), np.float32)}),
                    "outputs": ["OUTPUT0"],
                    "parameters": {},
                }
                for _ in range(64)
            ]
            wall, cpu = [], []
            for _ in range(rounds):
                started, started_cpu = time.perf_counter_ns(), time.process_time_ns()
                reply = process.execute(payload, lambda *args: None)
                elapsed = time.perf_counter_ns() - started
                wall.append((elapsed - reply[2]) / 1e3)
                cpu.append((time.process_time_ns() - started_cpu) / 1e3)
            rows.append(
                {
                    "batch": "64 requests x 1 row",
                    "width": width,
                    "bytes_each_way": 64 * width * 4,
                    "ipc_us_median": round(statistics.median(wall), 1),
                    "server_cpu_us_median": round(statistics.median(cpu), 1),
                }
            )
        return rows
    finally:
        process.finalize()


def _repository(root: Path) -> Path:
    identity_model(root / "onnx" / "1" / "model.onnx", "FP32", ("batch", WIDTH))
    write_config(root / "onnx", _IDENTITY)
    python_model(root, "python", "identity", _IDENTITY)
    ensemble(
        root,
        "ensemble",
        f"max_batch_size: 64\ninput [ {_TENSOR % 'INPUT0'} ]\noutput [ {_TENSOR % 'OUTPUT0'} ]",
        [
            '{ model_name: "onnx" model_version: -1 input_map { key: "INPUT0" value: "INPUT0" }'
            ' output_map { key: "OUTPUT0" value: "OUTPUT0" } }'
        ],
    )
    return root


def _drive(client: Client, model: str, calls: int, concurrency: int) -> float:
    """Mean client latency in microseconds."""
    data = {"INPUT0": np.ones((1, WIDTH), np.float32)}

    def one(_: int) -> float:
        started = time.perf_counter()
        client.infer(model, data)
        return time.perf_counter() - started

    with ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(one, range(calls)))
    return statistics.mean(latencies) * 1e6


def through_server(calls: int, concurrency: int) -> list[dict[str, Any]]:
    from tests.support.server import RunningServer

    rows = []
    with tempfile.TemporaryDirectory(prefix="onnxserve-pymodels-") as scratch:
        repository = _repository(Path(scratch))
        with RunningServer(repository) as server, Client(server.address, timeout=60) as client:
            for model in ("onnx", "python", "ensemble"):
                _drive(client, model, 50, 1)  # warm up
            for threads in (1, concurrency):
                for model in ("onnx", "python", "ensemble"):
                    (before,) = client.statistics(model)
                    latency = _drive(client, model, calls, threads)
                    (after,) = client.statistics(model)
                    executions = max(1, after.execution_count - before.execution_count)
                    stats, was = after.inference_stats, before.inference_stats
                    io_ns = (
                        stats.compute_input.ns
                        - was.compute_input.ns
                        + stats.compute_output.ns
                        - was.compute_output.ns
                    )
                    rows.append(
                        {
                            "model": model,
                            "concurrency": threads,
                            "mean_latency_us": round(latency, 1),
                            "mean_batch": round(
                                (after.inference_count - before.inference_count) / executions, 1
                            )
                            if model != "ensemble"
                            else None,
                            "input_output_us_per_request": round(io_ns / calls / 1e3, 1),
                        }
                    )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.python_models", description=__doc__)
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=200, help="batches per IPC width")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    figures = {
        "ipc": ipc_per_batch(rounds=args.rounds),
        "server": through_server(args.calls, args.concurrency),
    }
    for row in figures["ipc"]:
        print(
            f"IPC, {row['batch']} of {row['width']} FP32 ({row['bytes_each_way']} B each way): "
            f"{row['ipc_us_median']} us wall, {row['server_cpu_us_median']} us server CPU"
        )
    for row in figures["server"]:
        print(
            f"{row['model']:>8} at concurrency {row['concurrency']:>2}: "
            f"{row['mean_latency_us']} us per call, mean batch {row['mean_batch']}, "
            f"compute_input+output {row['input_output_us_per_request']} us per request"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
