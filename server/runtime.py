"""onnxruntime sessions: execution providers, thread budgets, and running a graph.

onnxruntime-gpu lists CUDAExecutionProvider as available even where the CUDA
libraries are missing, then silently falls back to the CPU at session creation.
The providers actually in use are therefore read back from each session and
reported (log warning + the model's ModelConfig parameters); with
``--device cuda`` a fallback is a load error instead.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxserve.layout import CUSTOM_OPS_EXTENSIONS, CUSTOM_OPS_PARAMETER
from onnxserve.protocol import model_config_pb2 as mc
from onnxserve.protocol.codec import numpy_dtype
from onnxserve.protocol.datatypes import ort_to_protocol
from onnxserve.server.accelerators import (
    CUDA_GRAPH_PARAMETER,
    GpuPlan,
    check_graph_tensors,
    plan_gpu,
    prepare_engine_cache,
)
from onnxserve.server.binding import BoundRunner
from onnxserve.server.config import TensorSpec, onnx_dims
from onnxserve.server.errors import ConfigError
from onnxserve.server.model_files import opset_domains
from onnxserve.sessions import SessionError, create_session, needs_extensions

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
_CPU_ACCELERATORS = {"openvino": "OpenVINOExecutionProvider", "dnnl": "DnnlExecutionProvider"}
_ONNX_BFLOAT16 = 16  # TensorProto.BFLOAT16
# Model config parameters (Triton's onnxruntime backend names) read here.
_INT_PARAMETERS = ("intra_op_thread_count", "inter_op_thread_count", "execution_mode")
_BOOL_PARAMETERS = ("enable_mem_arena", "enable_mem_pattern", "allow_spinning")
# onnxruntime's status name for a run refused because of its input values.
_INVALID_ARGUMENT = "INVALID_ARGUMENT"


def available_cpus() -> int:
    """CPUs this process may use: affinity, capped by a cgroup CPU quota if any.

    onnxruntime's default thread pool sizes itself to the machine's cores and
    ignores container limits, which throttles pods on Kubernetes.
    """
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        count = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        count = min(count, max(1, int(quota + 0.999)))
    return max(1, count)


# Device nodes through which a process reaches an NVIDIA GPU on Linux: the
# driver's (/dev/nvidia0...), WSL2's GPU paravirtualisation, Jetson's iGPU.
_GPU_DEVICE_PATTERNS = ("nvidia[0-9]*", "dxg", "nvhost-ctrl-gpu")
_HIDDEN_DEVICES = ("", "-1", "none", "NoDevFiles")


def nvidia_gpu_visible() -> bool | None:
    """False when this process surely cannot reach an NVIDIA GPU; None when unsure.

    Asked before offering CUDA to onnxruntime under ``--device auto``: on a
    CPU-only machine onnxruntime-gpu would otherwise print library-loading
    errors for the first model before falling back to the CPU.
    """
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and hidden.strip() in _HIDDEN_DEVICES:
        return False
    devices = Path("/dev")
    if not sys.platform.startswith("linux") or not devices.is_dir():
        return None
    return any(any(devices.glob(pattern)) for pattern in _GPU_DEVICE_PATTERNS)


def _cgroup_cpu_quota() -> float | None:
    try:  # cgroup v2
        text = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:  # cgroup v1
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 else None
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class SessionPlan:
    """What a session is asked for: providers in priority order and thread counts."""

    providers: list[tuple[str, dict[str, str]]]
    intra_op_threads: int
    inter_op_threads: int
    wants_cuda: bool
    gpu: GpuPlan = field(default_factory=GpuPlan)

    @property
    def wants_tensorrt(self) -> bool:
        return any(name == TENSORRT for name, _ in self.providers)


def _config_parameter(config: mc.ModelConfig, key: str) -> str | None:
    return config.parameters[key].string_value if key in config.parameters else None


def plan_session(
    config: mc.ModelConfig,
    device: str,
    cpu_budget: int,
    cuda_usable: bool | None,
    cache_dir: Path | None = None,
) -> SessionPlan:
    """Decide providers and threads for one model from --device and its config.

    The GPU accelerators are read and checked on every machine (see
    :func:`onnxserve.server.accelerators.plan_gpu`), so a config that cannot
    work is refused with or without a GPU; they are offered to onnxruntime
    only where it may use CUDA. ``cache_dir``: where TensorRT keeps engines
    (a temporary directory of the process when None).
    """
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    gpu = plan_gpu(config, ort.__version__, cache_dir)
    kinds = {g.kind for g in config.instance_group}
    instances = sum(max(g.count, 1) for g in config.instance_group) or 1
    cpu_only = device == "cpu" or kinds == {mc.ModelInstanceGroup.KIND_CPU}
    providers: list[tuple[str, dict[str, str]]] = []
    wants_cuda = False
    if not cpu_only and CUDA in available and cuda_usable is not False:
        if gpu.tensorrt_options is not None:
            if TENSORRT not in available:
                raise ConfigError(
                    f"model '{config.name}': accelerator 'tensorrt' is not available "
                    "in this onnxruntime build"
                )
            providers.append((TENSORRT, gpu.tensorrt_options))
        providers.append((CUDA, gpu.cuda_options))
        wants_cuda = True
    elif device == "cuda" and not cpu_only:
        raise ConfigError(
            f"model '{config.name}': --device cuda was asked for but this onnxruntime "
            "cannot use CUDA (install onnxruntime-gpu with CUDA and cuDNN, or use --device auto)"
        )
    for accelerator in config.optimization.execution_accelerators.cpu_execution_accelerator:
        provider = _CPU_ACCELERATORS.get(accelerator.name)
        if provider is None or provider not in available:
            raise ConfigError(
                f"model '{config.name}': cpu_execution_accelerator '{accelerator.name}' is not "
                "available in this onnxruntime build"
            )
        providers.append((provider, dict(accelerator.parameters)))
    providers.append((CPU, {}))
    intra = _config_int_parameter(config, "intra_op_thread_count")
    inter = _config_int_parameter(config, "inter_op_thread_count")
    # The whole budget is onnxruntime's: the native front end needs no core of
    # its own (no event loop per request). On 2 cores, 2 threads served 7,616
    # requests/s at 64 clients against 4,616 with 1 (2026-12-02,
    # benchmarks/README.md); the grpc.aio front end it replaced needed one.
    return SessionPlan(
        providers=providers,
        intra_op_threads=intra or max(1, cpu_budget // instances),
        inter_op_threads=inter or 1,
        wants_cuda=wants_cuda,
        gpu=gpu,
    )


def _config_int_parameter(config: mc.ModelConfig, key: str) -> int:
    value = _config_parameter(config, key)
    if value is None:
        return 0
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(
            f"model '{config.name}': parameter {key} must be an integer, not '{value}'"
        ) from None
    if number < 0:
        raise ConfigError(f"model '{config.name}': parameter {key} must not be negative")
    return number


def _config_bool_parameter(config: mc.ModelConfig, key: str) -> bool | None:
    value = _config_parameter(config, key)
    if value is None:
        return None
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"model '{config.name}': parameter {key} must be true or false")


def session_options(config: mc.ModelConfig, plan: SessionPlan) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = plan.intra_op_threads
    options.inter_op_num_threads = plan.inter_op_threads
    level = config.optimization.graph.level
    options.graph_optimization_level = {
        -1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        1: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    }.get(level, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    if _config_int_parameter(config, "execution_mode") == 1:
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    arena = _config_bool_parameter(config, "enable_mem_arena")
    if arena is not None:
        options.enable_cpu_mem_arena = arena
    pattern = _config_bool_parameter(config, "enable_mem_pattern")
    if pattern is not None:
        options.enable_mem_pattern = pattern
    # Spinning intra-op threads burn the cores the gRPC threads need between
    # batches; a server is better off without it unless told otherwise.
    spinning = _config_bool_parameter(config, "allow_spinning")
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return options


def needs_custom_ops(config: mc.ModelConfig, model_path: Path) -> bool:
    """Whether the model needs onnxruntime-extensions' operators: its config says so
    (:data:`CUSTOM_OPS_PARAMETER`), or its graph imports their domain. Only then is the
    library loaded."""
    value = _config_parameter(config, CUSTOM_OPS_PARAMETER)
    if value is not None:
        libraries = {part.strip() for part in value.split(",") if part.strip()}
        unknown = libraries - {CUSTOM_OPS_EXTENSIONS}
        if unknown:
            raise ConfigError(
                f"model '{config.name}': parameter {CUSTOM_OPS_PARAMETER} names "
                f"{', '.join(sorted(unknown))}; the custom operator library onnxserve knows "
                f"is {CUSTOM_OPS_EXTENSIONS}"
            )
        if libraries:
            return True
    return needs_extensions(opset_domains(model_path))


def _bindable(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> bool:
    """IO binding moves numeric tensors; BYTES stay on the host and BF16 has its own path."""
    return all(spec.datatype not in ("BYTES", "BF16") for spec in (*inputs, *outputs))


class OnnxSession:
    """One onnxruntime InferenceSession plus what the server needs to know about it."""

    def __init__(self, model_path: Path, config: mc.ModelConfig, plan: SessionPlan) -> None:
        import onnxruntime as ort

        name = config.name
        if plan.wants_tensorrt and plan.gpu.engine_cache is not None:
            prepare_engine_cache(name, plan.gpu.engine_cache, model_path.parents[2])
        custom_ops = needs_custom_ops(config, model_path)
        if custom_ops:
            log.info("model '%s': loading onnxruntime-extensions' custom operators", name)
            if "tensorflow" in sys.modules:  # measured: its RE2 breaks the extensions' regex ops
                log.warning(
                    "model '%s': TensorFlow is loaded in this server process; "
                    "onnxruntime-extensions' regex operators answer wrongly beside it",
                    name,
                )
        try:
            self._session = create_session(
                model_path,
                plan.providers,
                options=session_options(config, plan),
                custom_ops=custom_ops,
            )
        except SessionError as exc:  # its message says what is wrong with the graph
            message = str(exc)
            if "graph capture" in message:
                raise ConfigError(
                    f"model '{name}': {CUDA_GRAPH_PARAMETER} cannot be used with this model: "
                    f"{message}"
                ) from None
            raise ConfigError(f"model '{name}': onnxruntime cannot load it: {message}") from None
        # onnxruntime logs every failed run itself; the executor logs failures
        # once, in words (one line per batch, not per attempt), so runs stay quiet.
        self._run_options = ort.RunOptions()
        self._run_options.log_severity_level = 4
        self.providers: list[str] = list(self._session.get_providers())
        self.intra_op_threads = plan.intra_op_threads
        self.inputs = tuple(self._spec(node) for node in self._session.get_inputs())
        self.outputs = tuple(self._spec(node) for node in self._session.get_outputs())
        self._bf16_io = any(t.datatype == "BF16" for t in (*self.inputs, *self.outputs))
        #: "cuda" when batches go through IO binding (on CUDA only), else None.
        self.binding: str | None = None
        #: The padded batch sizes replayed as CUDA graphs.
        self.cuda_graph_sizes: tuple[int, ...] = ()
        self._runner: BoundRunner | None = None
        sizes = plan.gpu.cuda_graph_sizes
        if sizes:
            check_graph_tensors(name, self.inputs, self.outputs)
        if plan.wants_tensorrt and TENSORRT not in self.providers and CUDA in self.providers:
            log.warning(
                "model '%s': onnxruntime could not start TensorRT (are its libraries, "
                "libnvinfer.so.10 and libnvonnxparser.so.10, installed?); it runs on CUDA alone",
                name,
            )
        if CUDA in self.providers and _bindable(self.inputs, self.outputs):
            self._runner = BoundRunner(
                self._session, "cuda", plan.gpu.device_id, graphs=bool(sizes)
            )
            self.binding = "cuda"
            if sizes:
                self._capture(name, sizes)
        elif sizes:
            log.warning(
                "model '%s': %s is not used: the model runs on %s, not CUDA",
                name,
                CUDA_GRAPH_PARAMETER,
                self.providers[0],
            )

    def _capture(self, name: str, sizes: tuple[int, ...]) -> None:
        """One CUDA graph per padded batch size, from zeros, before the model reports ready."""
        assert self._runner is not None
        for size in sizes:
            feeds = {
                spec.name: np.zeros((size, *spec.dims[1:]), dtype=numpy_dtype(spec.datatype))
                for spec in self.inputs
            }
            try:
                self._runner.capture(size, feeds)
            except Exception as exc:  # onnxruntime raises several unrelated types
                raise ConfigError(
                    f"model '{name}': capturing its CUDA graph for batch size {size} failed "
                    f"({type(exc).__name__}: {exc}); remove {CUDA_GRAPH_PARAMETER} from its "
                    "cuda accelerator"
                ) from None
        self.cuda_graph_sizes = sizes
        log.info("model '%s': CUDA graphs captured for batch sizes %s", name, sizes)

    @staticmethod
    def _spec(node: Any) -> TensorSpec:
        datatype = ort_to_protocol(node.type)
        if datatype is None:
            raise ConfigError(
                f"tensor '{node.name}' has type {node.type}, which the protocol cannot carry"
            )
        return TensorSpec(node.name, datatype, onnx_dims(node.shape))

    def run(self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str]) -> list[np.ndarray]:
        """Run the graph (releases the GIL while onnxruntime computes)."""
        if self._runner is not None:
            return self._runner.run(feeds, output_names)
        if self._bf16_io:
            return self._run_bfloat16(feeds, output_names)
        return list(self._session.run(list(output_names), dict(feeds), self._run_options))

    def _run_bfloat16(
        self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> list[np.ndarray]:
        # onnxruntime's numpy bridge has no bfloat16; move those tensors as
        # uint16 bits tagged with the ONNX element type instead.
        import ml_dtypes
        import onnxruntime as ort

        values = {}
        for name, array in feeds.items():
            if array.dtype == ml_dtypes.bfloat16:
                values[name] = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
                    np.ascontiguousarray(array).view(np.uint16), onnx_element_type=_ONNX_BFLOAT16
                )
            else:
                values[name] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array))
        results = self._session.run_with_ort_values(list(output_names), values, self._run_options)
        arrays = []
        for value in results:
            if value.data_type() == "tensor(bfloat16)":
                shape = tuple(value.shape())
                count = int(np.prod(shape, dtype=np.int64))
                buffer = (ctypes.c_uint16 * count).from_address(value.data_ptr())
                arrays.append(
                    np.array(buffer, dtype=np.uint16).view(ml_dtypes.bfloat16).reshape(shape)
                )
            else:
                arrays.append(value.numpy())
        return arrays


def refused_input_reason(error: BaseException) -> str | None:
    """onnxruntime's reason when a run failed because of its input values, else None.

    onnxruntime raises ``InvalidArgument`` (status INVALID_ARGUMENT) where a
    kernel finds an input value it cannot use, such as a Gather index outside
    its table ("indices element out of data bounds"); other failures (FAIL,
    RUNTIME_EXCEPTION...) say nothing about whose input was at fault. The
    reason is onnxruntime's status message without the node's name, or a
    generic one where that message holds a source path (never shown to callers).
    """
    text = str(error)
    if type(error).__name__ != "InvalidArgument" and _INVALID_ARGUMENT not in text:
        return None
    for marker in ("Status Message: ", f"{_INVALID_ARGUMENT} : "):
        if marker in text:
            text = text.split(marker, 1)[1]
            break
    text = text.strip()
    if "/" in text or "\\" in text:
        return "onnxruntime refused the input"
    return text[:300]
