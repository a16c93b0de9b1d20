"""benchmarks/run_benchmark.py without TensorFlow or a server: how it recognises the
seed model in a repository, which run it shows, and the verdicts it writes.

The verdict lines are what the README's figures are copied from, so their
arithmetic (ratio against 0.35, latency delta against 0.5 ms) is checked on
figures built by hand.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from benchmarks.run_benchmark import ProtocolFloor, SeedModel, TargetRun, find_seed, markdown
from onnxserve.bench.results import (
    BenchReport,
    LatencySummary,
    RawPoint,
    RawResult,
    ServerDelta,
    StepResult,
)
from tests.support.models import add_sub_model


def lstm_model(path: Path, hidden: int = 128, length: int | str = 50) -> Path:
    """Two stacked ONNX LSTMs over embedded tokens: the seed's graph shape, tiny weights."""
    embed, rng = 4, np.random.default_rng(0)

    def weights(name: str, shape: list[int]) -> onnx.TensorProto:
        return helper.make_tensor(
            name, TensorProto.FLOAT, shape, rng.random(int(np.prod(shape))).tolist()
        )

    nodes = [
        helper.make_node("Gather", ["table", "tokens"], ["embedded"]),
        helper.make_node("Transpose", ["embedded"], ["seq"], perm=[1, 0, 2]),
        helper.make_node("LSTM", ["seq", "W1", "R1"], ["y1"], hidden_size=hidden),
        helper.make_node("Squeeze", ["y1", "axis1"], ["h1"]),
        helper.make_node("LSTM", ["h1", "W2", "R2"], ["", "last"], hidden_size=hidden),
        helper.make_node("Squeeze", ["last", "axis0"], ["positive"]),
    ]
    graph = helper.make_graph(
        nodes,
        "seed",
        [helper.make_tensor_value_info("tokens", TensorProto.INT32, ["batch", length])],
        [helper.make_tensor_value_info("positive", TensorProto.FLOAT, ["batch", hidden])],
        initializer=[
            weights("table", [10, embed]),
            weights("W1", [1, 4 * hidden, embed]),
            weights("R1", [1, 4 * hidden, hidden]),
            weights("W2", [1, 4 * hidden, hidden]),
            weights("R2", [1, 4 * hidden, hidden]),
            helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
            helper.make_tensor("axis0", TensorProto.INT64, [1], [0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def test_the_seed_is_found_by_its_graph_and_others_are_not(tmp_path: Path) -> None:
    add_sub_model(tmp_path / "a_simple" / "1" / "model.onnx")
    lstm_model(tmp_path / "small_lstm" / "1" / "model.onnx", hidden=16)
    lstm_model(tmp_path / "sentiment" / "1" / "model.onnx")
    lstm_model(tmp_path / "sentiment" / "2" / "model.onnx", length="sequence")
    seed = find_seed(tmp_path, None)
    assert seed is not None
    assert (seed.name, seed.input_name, seed.input_dtype) == ("sentiment", "tokens", np.int32)
    assert find_seed(tmp_path / "missing", None) is None
    with pytest.raises(SystemExit, match="not the seed"):
        find_seed(tmp_path, "small_lstm")
    empty = tmp_path / "empty"
    add_sub_model(empty / "simple" / "1" / "model.onnx")
    assert find_seed(empty, None) is None


def report(raw_b1_ms: float, raw_best: float, c1_mean_ms: float, c64_samples: float,
           failed: int = 0) -> BenchReport:  # fmt: skip
    def step(concurrency: int, samples: float, mean_ms: float, failures: int) -> StepResult:
        latency = LatencySummary(100, mean_ms, mean_ms, mean_ms, mean_ms, mean_ms, mean_ms)
        server = ServerDelta(100, failures, 100, 50, 10.0, 1.0, 100.0, 1.0, {2: 50})
        return StepResult(
            "concurrency", concurrency, "h2load", 100 + failures, 100, failures, {}, 1.0,
            samples, samples, latency, server, samples / raw_best, 4.0,
        )  # fmt: skip

    raw = RawResult(
        "model.onnx",
        ("CPUExecutionProvider",),
        0,
        (
            RawPoint(1, 100, raw_b1_ms, raw_b1_ms, raw_b1_ms, 1000 / raw_b1_ms, (raw_b1_ms,)),
            RawPoint(64, 10, 10.0, 10.0, 10.0, raw_best, (10.0,)),
        ),
    )
    result = BenchReport("seed_lstm", "", "x", "h2load", 1, "now", {}, {"cpus": 2})
    result.raw = raw
    result.steps = [step(1, 700.0, c1_mean_ms, 0), step(64, c64_samples, 30.0, failed)]
    return result


def test_the_page_judges_the_targets_on_the_median_run(tmp_path: Path) -> None:
    args = argparse.Namespace(
        duration=5.0, warmup=2.0, repeat=3, connections=1, server_arg=["--workers=2"]
    )
    seed = SeedModel(tmp_path, "seed_lstm", "tokens", np.dtype(np.int32), "built")
    good = report(raw_b1_ms=1.0, raw_best=4000.0, c1_mean_ms=1.4, c64_samples=1600.0)
    bad = report(raw_b1_ms=1.0, raw_best=4000.0, c1_mean_ms=1.6, c64_samples=1200.0, failed=2)
    middle = report(raw_b1_ms=1.0, raw_best=4000.0, c1_mean_ms=1.5, c64_samples=1500.0)
    floor = ProtocolFloor(calls_per_s=3000.0, mean_latency_ms=0.3)
    page = markdown(good, [good, bad, middle], seed, args, floor=floor)
    sweep_row = (
        "| 1 | 700 | 700 | 1.40 | 1.40 | 1.40 | 1.40 | 0.01 | 0.10 | 2.0 | 0 | 0.17 | 400% |"
    )
    assert sweep_row in page
    assert "## Issue 3's targets: the median of 3 runs" in page
    assert "| 0.38 x (runs: 0.30 to 0.40) | yes |" in page
    assert "| no failed request | 2 failed of 602 | no |" in page
    assert "+0.500 ms (runs: +0.400 to +0.600) | yes |" in page
    assert "| 2 | 1.000 | 4,000 (64) | 1.600 | +0.600 | 1,200 | 0.30 | 2 | 1.00 |" in page
    assert "- Server: `onnxserve serve --workers=2` on a loopback port" in page
    assert "--repeat 3 --server-arg=--workers=2` (or `make bench`)" in page
    assert "1,500 infer/s at concurrency 64 and 1.500 ms at concurrency 1, are 50% of" in page
    assert "and +1.200 ms from that latency." in page
    failing = markdown(bad, [bad], seed, args)
    assert "| 0.30 x (runs: 0.30 to 0.30) | no |" in failing
    assert "+0.600 ms (runs: +0.600 to +0.600) | no |" in failing
    assert "Protocol floor" not in failing
    assert TargetRun.of(replace(bad, raw=None)) is None
