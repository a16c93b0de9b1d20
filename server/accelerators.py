"""GPU execution providers from config.pbtxt, in Triton's spelling: CUDA, CUDA graphs, TensorRT.

``optimization { execution_accelerators { gpu_execution_accelerator [...] } }``
names the providers a model runs on when it runs on a GPU:

- ``cuda``: its parameters are onnxruntime CUDA provider options, passed as
  they are (Triton's onnxruntime backend does the same), except
  ``enable_cuda_graph``, which onnxserve drives itself: one graph is captured
  per padded batch size at load and replayed per batch (see
  :mod:`onnxserve.server.binding`). It is checked here, on any machine, so that
  a config that cannot work is refused the same way with or without a GPU.
- GPU memory: device memory = the weights + onnxruntime's CUDA arena, which
  grows (by powers of two, by default) up to ``gpu_mem_limit`` bytes. The
  limit and ``arena_extend_strategy`` (``kNextPowerOfTwo`` / ``kSameAsRequested``,
  or 0 / 1) are taken, as Triton's onnxruntime backend takes them, from the
  cuda accelerator's parameters or from the model's own ``parameters``
  (Triton's older spelling; the accelerator's value wins), checked as a
  positive byte count here, on every machine.
- ``tensorrt``: Triton's keys (``precision_mode: FP16``,
  ``max_workspace_size_bytes``, ``trt_engine_cache_enable`` ...) translated to
  onnxruntime's TensorRT provider options. Engines and timing caches go under
  the server's cache directory, never where the config says: a config lives in
  the model repository, which the server only reads.

Everything here is pure: it reads a ModelConfig and returns options, so the
rules are tested without onnxruntime's GPU build.
"""

from __future__ import annotations

import functools
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from onnxserve.layout import ALLOWED_BATCH_SIZES_PARAMETER
from onnxserve.protocol import model_config_pb2 as mc
from onnxserve.server.config import TensorSpec
from onnxserve.server.config_batching import parse_allowed_batch_sizes
from onnxserve.server.errors import ConfigError

CUDA_ACCELERATOR = "cuda"
TENSORRT_ACCELERATOR = "tensorrt"
#: The cuda accelerator parameter that turns CUDA graphs on (onnxruntime's option name).
CUDA_GRAPH_PARAMETER = "enable_cuda_graph"
#: onnxruntime's run option that selects a captured graph (1.17 and later; 0 is reserved).
GRAPH_ID_RUN_OPTION = "gpu_graph_id"
GRAPH_ID_MIN_ORT = (1, 17)
#: CUDA provider options that cap and shape the device memory arena (onnxruntime's names,
#: which Triton's onnxruntime backend also reads from model-level parameters).
GPU_MEM_LIMIT_PARAMETER = "gpu_mem_limit"
ARENA_EXTEND_PARAMETER = "arena_extend_strategy"
# Triton's integers and onnxruntime's names -> the names onnxruntime's CUDA options parse.
_ARENA_STRATEGIES = {
    "0": "kNextPowerOfTwo",
    "1": "kSameAsRequested",
    "knextpoweroftwo": "kNextPowerOfTwo",
    "ksameasrequested": "kSameAsRequested",
}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")

# Triton's TensorRT accelerator keys -> onnxruntime TensorRT provider options
# (Triton's onnxruntime backend README, "Parameter mapping"), by value kind.
_TRT_INT = {
    "max_workspace_size_bytes": "trt_max_workspace_size",
    "trt_max_partition_iterations": "trt_max_partition_iterations",
    "trt_min_subgraph_size": "trt_min_subgraph_size",
    "trt_dla_core": "trt_dla_core",
    "trt_builder_optimization_level": "trt_builder_optimization_level",
    "trt_auxiliary_streams": "trt_auxiliary_streams",
}
_TRT_BOOL = {
    "int8_use_native_calibration_table": "trt_int8_use_native_calibration_table",
    "trt_dla_enable": "trt_dla_enable",
    "trt_force_sequential_engine_build": "trt_force_sequential_engine_build",
    "trt_context_memory_sharing_enable": "trt_context_memory_sharing_enable",
    "trt_layer_norm_fp32_fallback": "trt_layer_norm_fp32_fallback",
    "trt_force_timing_cache": "trt_force_timing_cache",
    "trt_detailed_build_log": "trt_detailed_build_log",
    "trt_build_heuristics_enable": "trt_build_heuristics_enable",
    "trt_sparsity_enable": "trt_sparsity_enable",
}
_TRT_NAME = {  # file names or patterns, never paths
    "int8_calibration_table_name": "trt_int8_calibration_table_name",
    "trt_engine_cache_prefix": "trt_engine_cache_prefix",
    "trt_tactic_sources": "trt_tactic_sources",
    "trt_profile_min_shapes": "trt_profile_min_shapes",
    "trt_profile_max_shapes": "trt_profile_max_shapes",
    "trt_profile_opt_shapes": "trt_profile_opt_shapes",
}
# Where a config would make the server write or load files of its choosing.
_TRT_REFUSED = {
    "trt_engine_cache_path": "engines are cached under the server's cache directory",
    "trt_timing_cache_path": "timing caches are kept under the server's cache directory",
    "trt_extra_plugin_lib_paths": "a model config may not load libraries into the server",
    "trt_dump_subgraphs": "it writes files into the server's working directory",
    "trt_dump_ep_context_model": "it writes files next to the model",
    "trt_ep_context_file_path": "it writes files next to the model",
    "trt_ep_context_embed_mode": "it goes with trt_dump_ep_context_model",
    "trt_cuda_graph_enable": f"use the cuda accelerator's {CUDA_GRAPH_PARAMETER} with the CUDA "
    "provider instead",
}
_TRT_KNOWN = sorted(
    {"precision_mode", "trt_engine_cache_enable", "trt_timing_cache_enable"}
    | set(_TRT_INT)
    | set(_TRT_BOOL)
    | set(_TRT_NAME)
)
_PRECISIONS = ("FP32", "FP16", "INT8")
_FILE_NAME = re.compile(r"^[^/\\]*$")


@dataclass(frozen=True)
class GpuPlan:
    """The GPU providers one model asks for, checked; used only where CUDA is offered."""

    device_id: int = 0
    cuda_options: dict[str, str] = field(default_factory=dict)
    tensorrt_options: dict[str, str] | None = None  # None: no TensorRT
    cuda_graph_sizes: tuple[int, ...] = ()  # non-empty: one CUDA graph per padded batch size
    engine_cache: Path | None = None  # where TensorRT writes engines, if it caches any


def _bool(model: str, where: str, key: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(
        f"model '{model}': {where} parameter {key} must be true or false, not '{value}'"
    )


def _int(model: str, where: str, key: str, value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ConfigError(
            f"model '{model}': {where} parameter {key} must be an integer, not '{value}'"
        ) from None


@functools.cache
def default_cache_dir() -> Path:
    """A directory of this process's own, made on first use (TensorRT engines and timings)."""
    return Path(tempfile.mkdtemp(prefix="onnxserve-cache-"))


def plan_gpu(config: mc.ModelConfig, ort_version: str, cache_dir: Path | None = None) -> GpuPlan:
    """Read and check the model's GPU accelerators; raises ConfigError naming the problem.

    Runs for every model on every machine (the answer does not depend on
    whether a GPU is there); whether the providers are then offered to
    onnxruntime is :func:`onnxserve.server.runtime.plan_session`'s choice.
    """
    name = config.name
    gpus = [gpu for group in config.instance_group for gpu in group.gpus]
    device_id = gpus[0] if gpus else 0
    cuda: dict[str, str] = {"device_id": str(device_id)}
    tensorrt: dict[str, str] | None = None
    engine_cache: Path | None = None
    graphs = False
    for accelerator in config.optimization.execution_accelerators.gpu_execution_accelerator:
        if accelerator.name == CUDA_ACCELERATOR:
            for key, value in accelerator.parameters.items():
                if key == CUDA_GRAPH_PARAMETER:
                    graphs = _bool(name, "the cuda accelerator's", key, value)
                else:
                    cuda[key] = value
        elif accelerator.name == TENSORRT_ACCELERATOR:
            if tensorrt is not None:
                raise ConfigError(f"model '{name}': the tensorrt accelerator is given twice")
            tensorrt, engine_cache = tensorrt_options(
                name, accelerator.parameters, device_id, cache_dir
            )
        else:
            raise ConfigError(
                f"model '{name}': unknown gpu_execution_accelerator '{accelerator.name}'; "
                f"known: {CUDA_ACCELERATOR}, {TENSORRT_ACCELERATOR}"
            )
    _memory_options(config, cuda)
    sizes: tuple[int, ...] = ()
    if graphs:
        sizes = check_cuda_graphs(config, ort_version, tensorrt is not None)
        cuda[CUDA_GRAPH_PARAMETER] = "1"
    return GpuPlan(device_id, cuda, tensorrt, sizes, engine_cache)


def _memory_options(config: mc.ModelConfig, cuda: dict[str, str]) -> None:
    """Check (and normalise) gpu_mem_limit and arena_extend_strategy into the CUDA options.

    A model-level parameter fills in what the cuda accelerator does not set.
    """
    name = config.name
    for key in (GPU_MEM_LIMIT_PARAMETER, ARENA_EXTEND_PARAMETER):
        where = "the cuda accelerator's"
        if key not in cuda and key in config.parameters:
            cuda[key] = config.parameters[key].string_value
            where = "the model's"
        if key not in cuda:
            continue
        value = cuda[key].strip()
        if key == GPU_MEM_LIMIT_PARAMETER:
            limit = _int(name, where, key, value)
            if limit < 1:
                raise ConfigError(
                    f"model '{name}': {where} parameter {key} must be a positive number of "
                    f"bytes, not '{value}'"
                )
            cuda[key] = str(limit)
        else:
            strategy = _ARENA_STRATEGIES.get(value.lower())
            if strategy is None:
                raise ConfigError(
                    f"model '{name}': {where} parameter {key} must be kNextPowerOfTwo or "
                    f"kSameAsRequested (0 or 1), not '{value}'"
                )
            cuda[key] = strategy


def check_cuda_graphs(
    config: mc.ModelConfig, ort_version: str, with_tensorrt: bool
) -> tuple[int, ...]:
    """The padded batch sizes to capture graphs for, or ConfigError saying why not.

    What the model's ONNX graph allows (fixed non-batch dims, every node on
    CUDA, no control flow) is checked once the session exists.
    """
    where = f"model '{config.name}': {CUDA_GRAPH_PARAMETER}"
    if _version(ort_version) < GRAPH_ID_MIN_ORT:
        raise ConfigError(
            f"{where} needs onnxruntime {'.'.join(map(str, GRAPH_ID_MIN_ORT))} or later "
            f"(one graph per batch size), not {ort_version}"
        )
    if with_tensorrt:
        raise ConfigError(
            f"{where} works with the CUDA provider only; remove it or the tensorrt accelerator"
        )
    if any(group.kind == mc.ModelInstanceGroup.KIND_CPU for group in config.instance_group):
        raise ConfigError(f"{where} needs GPU instances, but an instance_group is KIND_CPU")
    instances = sum(max(group.count, 1) for group in config.instance_group) or 1
    if instances > 1:
        raise ConfigError(
            f"{where} needs a single model instance (instance_group count 1, not {instances}): "
            "onnxruntime replays CUDA graphs from one thread at a time"
        )
    if ALLOWED_BATCH_SIZES_PARAMETER not in config.parameters:
        raise ConfigError(
            f"{where} needs parameter {ALLOWED_BATCH_SIZES_PARAMETER} (for example "
            '"1,8,32,64"): a graph is captured for each padded batch size, and batches are '
            "padded to those sizes"
        )
    if config.max_batch_size < 1:
        raise ConfigError(f"{where} needs max_batch_size (batches padded to allowed sizes)")
    # The batcher's own reading of the sizes, so both agree on every batch.
    sizes = parse_allowed_batch_sizes(config)
    return sizes


def tensorrt_options(
    model: str, parameters: Mapping[str, str], device_id: int, cache_dir: Path | None = None
) -> tuple[dict[str, str], Path | None]:
    """Triton's tensorrt accelerator parameters as onnxruntime TensorRT provider options.

    Returns the options and the engine cache directory when caching is on:
    ``<cache_dir>/tensorrt/<model>``, under :func:`default_cache_dir` when the
    server was given none. onnxruntime's Python binding reads TensorRT flags
    as "True"/"False".
    """
    where = "the tensorrt accelerator's"
    options: dict[str, str] = {"device_id": str(device_id)}
    cache: Path | None = None
    for key, value in parameters.items():
        if key in _TRT_REFUSED:
            raise ConfigError(
                f"model '{model}': {where} parameter {key} is refused: {_TRT_REFUSED[key]}"
            )
        if key == "precision_mode":
            mode = value.strip().upper()
            if mode not in _PRECISIONS:
                raise ConfigError(
                    f"model '{model}': {where} precision_mode must be one of "
                    f"{', '.join(_PRECISIONS)}, not '{value}'"
                )
            options["trt_fp16_enable"] = str(mode == "FP16")
            options["trt_int8_enable"] = str(mode == "INT8")
        elif key in _TRT_INT:
            number = _int(model, where, key, value)
            if number < 0 and key != "trt_auxiliary_streams":
                raise ConfigError(f"model '{model}': {where} parameter {key} must not be negative")
            options[_TRT_INT[key]] = str(number)
        elif key in _TRT_BOOL:
            options[_TRT_BOOL[key]] = str(_bool(model, where, key, value))
        elif key in _TRT_NAME:
            if not _FILE_NAME.match(value):
                raise ConfigError(
                    f"model '{model}': {where} parameter {key} must not contain a path"
                )
            options[_TRT_NAME[key]] = value
        elif key in ("trt_engine_cache_enable", "trt_timing_cache_enable"):
            enabled = _bool(model, where, key, value)
            options[key] = str(enabled)
            if enabled:
                cache = (cache_dir or default_cache_dir()) / "tensorrt" / model
                path = (
                    "trt_engine_cache_path"
                    if key == "trt_engine_cache_enable"
                    else ("trt_timing_cache_path")
                )
                options[path] = str(cache)
        else:
            raise ConfigError(
                f"model '{model}': {where} parameter {key} is unknown; known: "
                f"{', '.join(_TRT_KNOWN)}"
            )
    return options, cache


def prepare_engine_cache(model: str, cache: Path, repository: Path) -> None:
    """Make the engine cache directory; refuse one inside the model repository."""
    resolved = cache.resolve()
    if resolved.is_relative_to(repository.resolve()):
        raise ConfigError(
            f"model '{model}': the TensorRT engine cache may not be inside the model "
            "repository; give the server a cache directory outside it"
        )
    try:
        resolved.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"model '{model}': cannot create the TensorRT engine cache directory "
            f"({exc.strerror or exc})"
        ) from None


def _version(text: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def check_graph_tensors(
    model: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
) -> None:
    """A CUDA graph replays fixed shapes: every input needs a dynamic batch dim and fixed others.

    ``inputs`` and ``outputs`` are the ONNX file's full shapes (batch dim
    included, -1 where dynamic). Outputs may have symbolic dims (their shapes
    are read from a first run); their datatypes must be numeric.
    """
    where = f"model '{model}': {CUDA_GRAPH_PARAMETER}"
    for spec in (*inputs, *outputs):
        if spec.datatype in ("BYTES", "BF16"):
            raise ConfigError(
                f"{where} needs numeric tensors that onnxruntime binds on the device; "
                f"'{spec.name}' is {spec.datatype}"
            )
    for spec in inputs:
        if not spec.dims or spec.dims[0] != -1:
            raise ConfigError(
                f"{where} needs a dynamic batch dimension first; input '{spec.name}' has "
                f"shape {list(spec.dims)}"
            )
        if any(d < 0 for d in spec.dims[1:]):
            raise ConfigError(
                f"{where} needs fixed dimensions after the batch dimension (a graph replays "
                f"one shape per batch size); input '{spec.name}' has shape "
                f"{['batch', *spec.dims[1:]]}"
            )
