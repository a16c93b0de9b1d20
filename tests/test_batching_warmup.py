"""Warm-up at load from ``model_warmup``: samples from zeros, random values and files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxserve.server.errors import ConfigError
from tests.support.batching_models import load, pair_model


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    return pair_model(tmp_path / "pair" / "1" / "model.onnx")


def warmup_config(first: str, second: str, batch_size: int = 4, dims: str = "[ 3 ]") -> str:
    return f"""
max_batch_size: 8
dynamic_batching {{}}
model_warmup [
  {{
    name: "sample"
    batch_size: {batch_size}
    count: 2
    inputs {{ key: "INPUT0" value: {{ data_type: TYPE_FP32 dims: {dims} {first} }} }}
    inputs {{ key: "INPUT1" value: {{ data_type: TYPE_FP32 dims: {dims} {second} }} }}
  }}
]
"""


def test_zero_random_and_file_samples_warm_the_model_up_uncounted(model_path: Path) -> None:
    warmup = model_path.parent.parent / "warmup"
    warmup.mkdir()
    (warmup / "ones").write_bytes(np.ones((4, 3), dtype=np.float32).tobytes())
    model = load(model_path, warmup_config('input_data_file: "ones"', "random_data: true"))
    stats = model.statistics.to_proto("model", "1")
    assert (stats.execution_count, stats.inference_count) == (0, 0)
    load(model_path, warmup_config("zero_data: true", "zero_data: true"))


def test_a_sample_that_cannot_run_makes_the_load_fail(model_path: Path) -> None:
    # [4, 3] + [4, 5] passes the config checks (dims are free) but cannot be added.
    config = warmup_config("zero_data: true", "zero_data: true").replace(
        'key: "INPUT1" value: { data_type: TYPE_FP32 dims: [ 3 ]',
        'key: "INPUT1" value: { data_type: TYPE_FP32 dims: [ 5 ]',
    )
    with pytest.raises(ConfigError, match="warm-up sample failed to run"):
        load(model_path, config)


@pytest.mark.parametrize(
    ("first", "batch_size", "message"),
    [
        ('input_data_file: "../../pair/1/model.onnx"', 4, "leads outside"),
        ('input_data_file: "missing"', 4, "cannot be read"),
        ('input_data_file: "short"', 4, "needs 48"),
        ("zero_data: true", 9, "batch_size 9"),
    ],
)
def test_bad_samples_are_refused_with_the_reason(
    model_path: Path, first: str, batch_size: int, message: str
) -> None:
    warmup = model_path.parent.parent / "warmup"
    warmup.mkdir()
    (warmup / "short").write_bytes(b"\0" * 8)
    with pytest.raises(ConfigError, match=message):
        load(model_path, warmup_config(first, "zero_data: true", batch_size=batch_size))
