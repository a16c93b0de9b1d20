"""The CUDA arena cap of a model (issue 24): gpu_mem_limit and arena_extend_strategy.

Read as Triton's onnxruntime backend reads them (the cuda accelerator's parameters, or the
model's own parameters, its older spelling) and checked on every machine, GPU or not.
"""

from __future__ import annotations

import pytest

from onnxserve.protocol import model_config_pb2 as mc
from onnxserve.server.accelerators import plan_gpu
from onnxserve.server.config import parse_config_text
from onnxserve.server.errors import ConfigError

ORT = "1.32.0"


def _config(accelerator: str = "", model: str = "") -> mc.ModelConfig:
    text = model
    if accelerator:
        text += (
            ' optimization { execution_accelerators { gpu_execution_accelerator [{ name: "cuda" '
            f"{accelerator} }}] }} }}"
        )
    config = parse_config_text(text, "m")
    config.name = "m"
    return config


def _parameter(key: str, value: str) -> str:
    return f'parameters {{ key: "{key}" value: "{value}" }}'


def _model_parameter(key: str, value: str) -> str:
    return f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}'


def test_the_cuda_accelerator_caps_the_arena() -> None:
    config = _config(
        _parameter("gpu_mem_limit", "4294967296")
        + " "
        + _parameter("arena_extend_strategy", "kSameAsRequested")
    )
    assert plan_gpu(config, ORT).cuda_options == {
        "device_id": "0",
        "gpu_mem_limit": "4294967296",
        "arena_extend_strategy": "kSameAsRequested",
    }


def test_tritons_model_level_parameters_count_where_the_accelerator_is_silent() -> None:
    config = _config(
        _parameter("gpu_mem_limit", "1000"),
        _model_parameter("gpu_mem_limit", "2000")
        + " "
        + _model_parameter("arena_extend_strategy", "1"),
    )
    options = plan_gpu(config, ORT).cuda_options
    assert options["gpu_mem_limit"] == "1000"  # the accelerator's value wins
    assert options["arena_extend_strategy"] == "kSameAsRequested"  # Triton's 1
    only_model = _config(model=_model_parameter("gpu_mem_limit", " 2147483648 "))
    assert plan_gpu(only_model, ORT).cuda_options["gpu_mem_limit"] == "2147483648"


@pytest.mark.parametrize(
    ("accelerator", "model", "message"),
    [
        (_parameter("gpu_mem_limit", "4GB"), "", "gpu_mem_limit must be an integer, not '4GB'"),
        (_parameter("gpu_mem_limit", "0"), "", "must be a positive number of bytes"),
        ("", _model_parameter("gpu_mem_limit", "-1"), "the model's parameter gpu_mem_limit"),
        (_parameter("arena_extend_strategy", "2"), "", "kNextPowerOfTwo or kSameAsRequested"),
    ],
)
def test_a_bad_arena_setting_is_refused_with_its_reason(
    accelerator: str, model: str, message: str
) -> None:
    with pytest.raises(ConfigError, match="model 'm'") as caught:
        plan_gpu(_config(accelerator, model), ORT)
    assert message in str(caught.value)
