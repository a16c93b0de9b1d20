"""The GPU path's rules, checked on the CPU: accelerator options, CUDA graphs, TensorRT, fallback.

Every refusal is a message a model's author can act on, and it is the same on
a machine with or without a GPU (the config, not the machine, is wrong).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import grpc
import onnxruntime as ort
import pytest

from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.protocol import grpc_service_pb2_grpc as pb_grpc
from onnxserve.protocol import model_config_pb2 as mc
from onnxserve.server.accelerators import (
    check_graph_tensors,
    default_cache_dir,
    plan_gpu,
    prepare_engine_cache,
    tensorrt_options,
)
from onnxserve.server.config import TensorSpec, parse_config_text
from onnxserve.server.errors import ConfigError
from onnxserve.server.runtime import CPU, CUDA, TENSORRT, OnnxSession, plan_session
from tests.support.gpu_models import dense_model, lstm_model
from tests.support.models import write_config
from tests.support.server import RunningServer

ORT = "1.31.1"
GRAPHS = """
max_batch_size: 32
parameters { key: "allowed_batch_sizes" value { string_value: "8,1,32" } }
optimization { execution_accelerators { gpu_execution_accelerator [
  { name: "cuda" parameters { key: "enable_cuda_graph" value: "true" } }
] } }
"""


def _config(text: str, name: str = "m") -> mc.ModelConfig:
    config = parse_config_text(text, name)
    config.name = name  # as the server names a model by its folder
    return config


def test_no_accelerators_means_plain_cuda_on_the_first_gpu() -> None:
    plan = plan_gpu(_config("max_batch_size: 8"), ORT)
    assert plan.cuda_options == {"device_id": "0"}
    assert plan.tensorrt_options is None and plan.cuda_graph_sizes == ()
    placed = plan_gpu(_config("instance_group [{ kind: KIND_GPU gpus: [2] }]"), ORT)
    assert placed.device_id == 2 and placed.cuda_options == {"device_id": "2"}


def test_cuda_parameters_pass_through_as_onnxruntime_options() -> None:
    config = _config(
        'optimization { execution_accelerators { gpu_execution_accelerator [{ name: "cuda" '
        'parameters { key: "cudnn_conv_algo_search" value: "HEURISTIC" } }] } }'
    )
    assert plan_gpu(config, ORT).cuda_options == {
        "device_id": "0",
        "cudnn_conv_algo_search": "HEURISTIC",
    }


def test_cuda_graphs_one_per_allowed_batch_size() -> None:
    plan = plan_gpu(_config(GRAPHS), ORT)
    assert plan.cuda_graph_sizes == (1, 8, 32)
    assert plan.cuda_options["enable_cuda_graph"] == "1"
    off = GRAPHS.replace('value: "true"', 'value: "0"')
    assert plan_gpu(_config(off), ORT).cuda_graph_sizes == ()
    assert "enable_cuda_graph" not in plan_gpu(_config(off), ORT).cuda_options


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('value: "true"', 'value: "maybe"'), "enable_cuda_graph must be true or false"),
        (
            ('string_value: "8,1,32"', 'string_value: "0,8"'),
            "allowed_batch_sizes must list sizes within 1 to max_batch_size (32), not '0,8'",
        ),
        (
            ("max_batch_size: 32", "max_batch_size: 16"),
            "within 1 to max_batch_size (16), not '8,1,32'",
        ),
        (("max_batch_size: 32", ""), "enable_cuda_graph needs max_batch_size"),
        (
            ('parameters { key: "allowed_batch_sizes" value { string_value: "8,1,32" } }', ""),
            "enable_cuda_graph needs parameter allowed_batch_sizes",
        ),
        (
            ("max_batch_size: 32", "max_batch_size: 32 instance_group [{ kind: KIND_CPU }]"),
            "needs GPU instances, but an instance_group is KIND_CPU",
        ),
        (
            ("max_batch_size: 32", "max_batch_size: 32 instance_group [{ count: 2 }]"),
            "needs a single model instance (instance_group count 1, not 2)",
        ),
        (
            ('{ name: "cuda"', '{ name: "tensorrt" }, { name: "cuda"'),
            "works with the CUDA provider only",
        ),
    ],
)
def test_cuda_graph_refusals(change: tuple[str, str], message: str) -> None:
    text = GRAPHS.replace(*change)
    assert text != GRAPHS
    with pytest.raises(ConfigError) as raised:
        plan_gpu(_config(text), ORT)
    assert message in str(raised.value)
    assert str(raised.value).startswith("model 'm': ")


def test_cuda_graphs_need_an_onnxruntime_with_graph_ids() -> None:
    with pytest.raises(ConfigError, match=r"needs onnxruntime 1\.17 or later .* not 1\.16\.3"):
        plan_gpu(_config(GRAPHS), "1.16.3")


def test_graph_tensors_need_fixed_non_batch_dims() -> None:
    fixed = TensorSpec("tokens", "INT32", (-1, 50))
    check_graph_tensors("m", [fixed], [TensorSpec("score", "FP32", (-1, -1))])
    with pytest.raises(ConfigError, match=r"fixed dimensions after the batch .* \['batch', -1\]"):
        check_graph_tensors("m", [TensorSpec("tokens", "INT32", (-1, -1))], [])
    with pytest.raises(ConfigError, match="needs a dynamic batch dimension first"):
        check_graph_tensors("m", [TensorSpec("tokens", "INT32", (1, 50))], [])
    with pytest.raises(ConfigError, match="'text' is BYTES"):
        check_graph_tensors("m", [TensorSpec("text", "BYTES", (-1, 1))], [])


def test_tensorrt_options_in_triton_spelling(tmp_path: Path) -> None:
    options, cache = tensorrt_options(
        "m",
        {
            "precision_mode": "FP16",
            "max_workspace_size_bytes": "1073741824",
            "trt_engine_cache_enable": "1",
            "trt_timing_cache_enable": "true",
            "trt_builder_optimization_level": "3",
        },
        device_id=1,
        cache_dir=tmp_path,
    )
    assert cache == tmp_path / "tensorrt" / "m"
    assert options == {
        "device_id": "1",
        "trt_fp16_enable": "True",
        "trt_int8_enable": "False",
        "trt_max_workspace_size": "1073741824",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache),
        "trt_builder_optimization_level": "3",
    }


def test_tensorrt_cache_defaults_to_a_temporary_directory() -> None:
    options, cache = tensorrt_options("m", {"trt_engine_cache_enable": "1"}, 0)
    assert options["trt_engine_cache_path"] == str(cache)
    assert cache == default_cache_dir() / "tensorrt" / "m"
    assert default_cache_dir().is_dir()
    assert default_cache_dir().parent == Path(tempfile.gettempdir())
    assert tensorrt_options("m", {"precision_mode": "FP32"}, 0) == (
        {"device_id": "0", "trt_fp16_enable": "False", "trt_int8_enable": "False"},
        None,
    )


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"trt_engine_cache_path": "/tmp/x"}, "is refused: engines are cached under the server's"),
        ({"trt_extra_plugin_lib_paths": "a.so"}, "may not load libraries into the server"),
        ({"trt_cuda_graph_enable": "1"}, "use the cuda accelerator's enable_cuda_graph"),
        ({"precision_mode": "FP8"}, "precision_mode must be one of FP32, FP16, INT8, not 'FP8'"),
        ({"max_workspace_size_bytes": "1GB"}, "must be an integer, not '1GB'"),
        ({"max_workspace_size_bytes": "-1"}, "must not be negative"),
        ({"int8_calibration_table_name": "../table"}, "must not contain a path"),
        ({"trt_fp16_enable": "1"}, "trt_fp16_enable is unknown; known: int8_calibration"),
    ],
)
def test_tensorrt_refusals(parameters: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        tensorrt_options("m", parameters, 0, Path("/unused"))
    assert message in str(raised.value)


def test_engine_cache_is_never_inside_the_repository(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    repository.mkdir()
    with pytest.raises(ConfigError, match="may not be inside the model repository"):
        prepare_engine_cache("m", repository / "m" / "cache", repository)
    prepare_engine_cache("m", tmp_path / "cache" / "tensorrt" / "m", repository)
    assert (tmp_path / "cache" / "tensorrt" / "m").is_dir()


def test_unknown_gpu_accelerator_is_refused_on_any_machine() -> None:
    config = _config(
        'optimization { execution_accelerators { gpu_execution_accelerator [{ name: "rocm" }] } }'
    )
    with pytest.raises(ConfigError, match="unknown gpu_execution_accelerator 'rocm'; known: cuda"):
        plan_session(config, "auto", 2, cuda_usable=False)


def test_cpu_plans_ignore_gpu_options_but_not_their_errors() -> None:
    plan = plan_session(_config(GRAPHS), "cpu", 2, cuda_usable=None)
    assert plan.providers == [(CPU, {})] and not plan.wants_cuda
    assert plan.gpu.cuda_graph_sizes == (1, 8, 32)  # read, unused on the CPU
    broken = GRAPHS.replace('value: "true"', 'value: "yes please"')
    with pytest.raises(ConfigError, match="must be true or false"):
        plan_session(_config(broken), "cpu", 2, cuda_usable=False)


def test_device_cuda_without_cuda_is_refused() -> None:
    with pytest.raises(ConfigError, match="--device cuda was asked for but this onnxruntime"):
        plan_session(_config("max_batch_size: 8"), "cuda", 2, cuda_usable=False)


@pytest.mark.skipif(
    CUDA not in ort.get_available_providers(), reason="onnxruntime has no CUDA provider here"
)
def test_gpu_build_orders_tensorrt_before_cuda_before_cpu() -> None:
    config = _config(
        'optimization { execution_accelerators { gpu_execution_accelerator [{ name: "tensorrt" '
        'parameters { key: "precision_mode" value: "FP16" } }] } }'
    )
    plan = plan_session(config, "auto", 2, cuda_usable=None)
    assert [name for name, _ in plan.providers] == [TENSORRT, CUDA, CPU]
    assert plan.wants_tensorrt and plan.wants_cuda
    assert plan.providers[0][1]["trt_fp16_enable"] == "True"


def test_cuda_graphs_on_a_cpu_session_are_not_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The CPU keeps plain runs (no binding); the model loads and says graphs are not used."""
    path = dense_model(tmp_path / "1" / "model.onnx")
    config = _config(GRAPHS.replace("8,1,32", "1,4"))
    with caplog.at_level(logging.WARNING):
        session = OnnxSession(path, config, plan_session(config, "cpu", 2, None))
    assert session.binding is None and session.cuda_graph_sizes == ()
    assert "enable_cuda_graph is not used: the model runs on CPUExecutionProvider" in caplog.text


def test_cuda_graphs_refused_for_dynamic_non_batch_dims_on_any_machine(tmp_path: Path) -> None:
    path = lstm_model(tmp_path / "1" / "model.onnx")
    import onnx

    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "length"
    onnx.save(model, str(path))
    config = _config(GRAPHS)
    with pytest.raises(ConfigError, match=r"input 'tokens' has shape \['batch', -1\]"):
        OnnxSession(path, config, plan_session(config, "cpu", 2, None))


def test_server_reports_a_refused_cuda_graph_config(tmp_path: Path) -> None:
    """What a user sees: the model is UNAVAILABLE with the reason, the server stays up."""
    dense_model(tmp_path / "dense" / "1" / "model.onnx")
    write_config(
        tmp_path / "dense",
        GRAPHS.replace(
            '\nparameters { key: "allowed_batch_sizes" value { string_value: "8,1,32" } }', ""
        ),
    )
    with (
        RunningServer(tmp_path, require_ready=False) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        (row,) = stub.RepositoryIndex(pb.RepositoryIndexRequest()).models
    assert row.state == "UNAVAILABLE"
    assert row.reason == (
        "model 'dense': enable_cuda_graph needs parameter allowed_batch_sizes (for example "
        '"1,8,32,64"): a graph is captured for each padded batch size, and batches are padded '
        "to those sizes"
    )
