"""config.pbtxt: parse it, refuse what onnxserve does not implement, complete it from ONNX.

The file is the protobuf text format of ``inference.ModelConfig``, the same
schema the ModelConfig RPC returns, so a config written for Triton parses here
unchanged. Fields that parse but that onnxserve does not implement are refused
by name rather than silently ignored: a model that asked for sequence batching
and silently got none would give wrong answers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from google.protobuf import text_format
from google.protobuf.message import Message

from onnxserve.layout import (
    BACKEND,
    CUSTOM_OPS_PARAMETER,
    INPUT_RANGE_PREFIX,
    PLATFORM,
    PROVIDERS_PARAMETER,
    REPORTED_PARAMETERS,
    WARNING_PARAMETER,
)
from onnxserve.protocol import model_config_pb2 as mc
from onnxserve.protocol.datatypes import config_to_protocol, config_type_name, protocol_to_config
from onnxserve.server.errors import ConfigError

# Model parameters under this prefix are onnxserve's own: only the known ones are accepted,
# so that a misspelt one is refused instead of silently doing nothing.
_OWN_PARAMETER_PREFIX = "onnxserve."

# The other kinds of model a config may declare (Triton's names).
PYTHON_BACKEND = "python"
ENSEMBLE_PLATFORM = "ensemble"

# max_batch_size given to a batchable model whose config does not say.
DEFAULT_MAX_BATCH_SIZE = 64

# Dotted field paths (repeated and map fields by their own name) that
# onnxserve implements. Anything else that is set in a config is refused.
SUPPORTED_FIELDS = frozenset(
    {
        "name",
        "platform",
        "backend",
        "version_policy",
        "version_policy.latest",
        "version_policy.latest.num_versions",
        "version_policy.all",
        "version_policy.specific",
        "version_policy.specific.versions",
        "max_batch_size",
        "input",
        "input.name",
        "input.data_type",
        "input.format",  # Triton's layout hint for clients: checked (3 dims), then reported
        "input.dims",
        "output",
        "output.name",
        "output.data_type",
        "output.dims",
        "output.label_filename",  # the classification extension (onnxserve.server.classification)
        "ensemble_scheduling",
        "ensemble_scheduling.step",
        "ensemble_scheduling.step.model_name",
        "ensemble_scheduling.step.model_version",
        "ensemble_scheduling.step.input_map",
        "ensemble_scheduling.step.input_map.key",
        "ensemble_scheduling.step.input_map.value",
        "ensemble_scheduling.step.output_map",
        "ensemble_scheduling.step.output_map.key",
        "ensemble_scheduling.step.output_map.value",
        "optimization",
        "optimization.graph",
        "optimization.graph.level",
        "optimization.execution_accelerators",
        "optimization.execution_accelerators.gpu_execution_accelerator",
        "optimization.execution_accelerators.gpu_execution_accelerator.name",
        "optimization.execution_accelerators.gpu_execution_accelerator.parameters",
        "optimization.execution_accelerators.gpu_execution_accelerator.parameters.key",
        "optimization.execution_accelerators.gpu_execution_accelerator.parameters.value",
        "optimization.execution_accelerators.cpu_execution_accelerator",
        "optimization.execution_accelerators.cpu_execution_accelerator.name",
        "optimization.execution_accelerators.cpu_execution_accelerator.parameters",
        "optimization.execution_accelerators.cpu_execution_accelerator.parameters.key",
        "optimization.execution_accelerators.cpu_execution_accelerator.parameters.value",
        "optimization.input_pinned_memory",
        "optimization.output_pinned_memory",
        "dynamic_batching",
        "dynamic_batching.preferred_batch_size",
        "dynamic_batching.max_queue_delay_microseconds",
        "dynamic_batching.preserve_ordering",
        "dynamic_batching.priority_levels",
        "dynamic_batching.default_priority_level",
        "dynamic_batching.default_queue_policy",
        "dynamic_batching.default_queue_policy.timeout_action",
        "dynamic_batching.default_queue_policy.default_timeout_microseconds",
        "dynamic_batching.default_queue_policy.allow_timeout_override",
        "dynamic_batching.default_queue_policy.max_queue_size",
        "dynamic_batching.priority_queue_policy",
        "dynamic_batching.priority_queue_policy.key",
        "dynamic_batching.priority_queue_policy.value",
        "dynamic_batching.priority_queue_policy.value.timeout_action",
        "dynamic_batching.priority_queue_policy.value.default_timeout_microseconds",
        "dynamic_batching.priority_queue_policy.value.allow_timeout_override",
        "dynamic_batching.priority_queue_policy.value.max_queue_size",
        "instance_group",
        "instance_group.name",
        "instance_group.kind",
        "instance_group.count",
        "instance_group.gpus",
        "default_model_filename",
        "parameters",
        "parameters.key",
        "parameters.value",
        "parameters.value.string_value",
        "model_warmup",
        "model_warmup.name",
        "model_warmup.batch_size",
        "model_warmup.count",
        "model_warmup.inputs",
        "model_warmup.inputs.key",
        "model_warmup.inputs.value",
        "model_warmup.inputs.value.data_type",
        "model_warmup.inputs.value.dims",
        "model_warmup.inputs.value.zero_data",
        "model_warmup.inputs.value.random_data",
        "model_warmup.inputs.value.input_data_file",
        # Messages whose only field must keep its default (false): ``decoupled``,
        # ``enable``. A proto3 scalar at its default is not "set", so setting
        # it to true names the field below.
        "model_transaction_policy",
        "response_cache",
    }
)

# Why some fields that configs written for Triton often carry are refused
# (every other unsupported field is refused by its name alone).
REFUSAL_REASONS = {
    "runtime": "onnxserve runs every model on its own onnxruntime; there is no backend library",
    "metric_tags": "per-model metric labels are not implemented",
    "optimization.input_pinned_memory.enable": (
        "onnxserve does not stage tensors in pinned memory; remove it or set enable: false"
    ),
    "optimization.output_pinned_memory.enable": (
        "onnxserve does not stage tensors in pinned memory; remove it or set enable: false"
    ),
    "model_transaction_policy.decoupled": (
        "decoupled models (several responses per request) are not served"
    ),
    "response_cache.enable": "response caching is not implemented",
    "sequence_batching": "stateful models are not served; use dynamic_batching",
    "ensemble_scheduling.step.model_namespace": "model namespaces are not implemented",
    "ensemble_scheduling.max_inflight_responses": (
        "decoupled steps are not served, so there are no responses in flight to bound"
    ),
    "input.reshape": "reshape is not implemented; give the ONNX graph's own dims",
    "output.reshape": "reshape is not implemented; give the ONNX graph's own dims",
    "input.optional": "every input of the ONNX graph is required",
}


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as the protocol sees it.

    ``dims`` excludes the batch dimension of a batchable model; -1 marks a
    dimension of any size.
    """

    name: str
    datatype: str
    dims: tuple[int, ...]


def set_field_paths(message: Message, prefix: str = "") -> Iterator[str]:
    """The dotted paths of every field set in ``message`` (map entries as key and value)."""
    for descriptor, value in message.ListFields():
        path = f"{prefix}{descriptor.name}"
        yield path
        if descriptor.message_type is None:
            continue
        if descriptor.message_type.GetOptions().map_entry:
            for key in value:
                yield f"{path}.key"
                item = value[key]
                yield f"{path}.value"
                if isinstance(item, Message):
                    yield from set_field_paths(item, f"{path}.value.")
        elif descriptor.is_repeated:
            for item in value:
                yield from set_field_paths(item, f"{path}.")
        else:
            yield from set_field_paths(value, f"{path}.")


def unsupported_fields(config: mc.ModelConfig) -> list[str]:
    """Set fields of ``config`` that onnxserve does not implement, by dotted path.

    A field inside an unsupported one is not listed again: the outermost
    unsupported field is the one to remove.
    """
    unsupported = {p for p in set_field_paths(config) if p not in SUPPORTED_FIELDS}
    outermost = []
    for path in sorted(unsupported):
        parts = path.split(".")
        if not any(".".join(parts[:n]) in unsupported for n in range(1, len(parts))):
            outermost.append(path)
    return outermost


def _refusal(path: str) -> str:
    reason = REFUSAL_REASONS.get(path)
    return f"{path} ({reason})" if reason else path


def _check_instance_groups(config: mc.ModelConfig, model_name: str) -> None:
    gpus = {gpu for group in config.instance_group for gpu in group.gpus}
    if len(gpus) > 1:
        raise ConfigError(
            f"model '{model_name}': instance_group.gpus lists GPUs {sorted(gpus)}; onnxserve runs "
            "a model version on one GPU (run one server per GPU instead)"
        )
    if any(group.kind == mc.ModelInstanceGroup.KIND_MODEL for group in config.instance_group):
        raise ConfigError(
            f"model '{model_name}': instance_group kind KIND_MODEL is not served; use KIND_CPU, "
            "KIND_GPU or KIND_AUTO"
        )


def parse_config_text(text: str, model_name: str) -> mc.ModelConfig:
    """Parse config.pbtxt text; errors name the model and the line that failed."""
    config = mc.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ConfigError(f"config.pbtxt of model '{model_name}' does not parse: {exc}") from None
    unsupported = unsupported_fields(config)
    if unsupported:
        raise ConfigError(
            f"config.pbtxt of model '{model_name}' sets field(s) onnxserve does not support: "
            + ", ".join(_refusal(path) for path in unsupported)
        )
    _check_instance_groups(config, model_name)
    for key in config.parameters:
        if (
            key.startswith(_OWN_PARAMETER_PREFIX)
            and key not in (*REPORTED_PARAMETERS, CUSTOM_OPS_PARAMETER, WARNING_PARAMETER)
            and not key.startswith(INPUT_RANGE_PREFIX)
        ):
            raise ConfigError(
                f"model '{model_name}': unknown parameter '{key}'; onnxserve's own parameters are "
                f"{PROVIDERS_PARAMETER} (reported, not set), {CUSTOM_OPS_PARAMETER}, "
                f"{WARNING_PARAMETER} and "
                f"{INPUT_RANGE_PREFIX}<input>"
            )
    if config.name and config.name != model_name:
        raise ConfigError(
            f"config.pbtxt names the model '{config.name}' but its folder is '{model_name}'; "
            "they must match"
        )
    if config.platform not in ("", PLATFORM, ENSEMBLE_PLATFORM):
        raise ConfigError(
            f"model '{model_name}': platform '{config.platform}' is not served here; "
            f"onnxserve serves '{PLATFORM}' and '{ENSEMBLE_PLATFORM}'"
        )
    if config.backend not in ("", BACKEND, PYTHON_BACKEND):
        raise ConfigError(
            f"model '{model_name}': backend '{config.backend}' is not served here; "
            f"onnxserve serves '{BACKEND}' and '{PYTHON_BACKEND}'"
        )
    _check_kind(config, model_name)
    if config.max_batch_size < 0:
        raise ConfigError(f"model '{model_name}': max_batch_size must not be negative")
    filename = config.default_model_filename
    if filename and (Path(filename).name != filename or filename.startswith(".")):
        raise ConfigError(f"model '{model_name}': default_model_filename must be a plain file name")
    return config


ModelKind = Literal["onnx", "python", "ensemble"]


def model_kind(config: mc.ModelConfig) -> ModelKind:
    """What serves a model: onnxruntime, a Python model's process, or an ensemble of steps."""
    if config.platform == ENSEMBLE_PLATFORM:
        return "ensemble"
    if config.backend == PYTHON_BACKEND:
        return "python"
    return "onnx"


def _check_kind(config: mc.ModelConfig, model_name: str) -> None:
    """The fields that go with each kind of model, and only with it."""
    kind = model_kind(config)
    scheduled = config.HasField("ensemble_scheduling")
    if kind == "ensemble" and config.backend:
        raise ConfigError(
            f"model '{model_name}': an ensemble has no backend ('{config.backend}' given)"
        )
    if kind == "python" and config.platform:
        raise ConfigError(
            f"model '{model_name}': backend python takes no platform ('{config.platform}' given)"
        )
    if scheduled and kind != "ensemble":
        raise ConfigError(
            f"model '{model_name}': ensemble_scheduling needs platform: \"{ENSEMBLE_PLATFORM}\""
        )
    if kind == "ensemble" and not scheduled:
        raise ConfigError(
            f"model '{model_name}': platform ensemble needs ensemble_scheduling {{ step [...] }}"
        )
    if kind != "onnx" and (config.model_warmup or config.optimization.ListFields()):
        raise ConfigError(
            f"model '{model_name}': model_warmup and optimization apply to ONNX models only"
        )


def load_config_file(path: Path, model_name: str) -> mc.ModelConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"config.pbtxt of model '{model_name}' cannot be read: {type(exc).__name__}"
        ) from None
    return parse_config_text(text, model_name)


def _onnx_dims(shape: Sequence[int | str | None]) -> list[int]:
    return [d if isinstance(d, int) and d >= 0 else -1 for d in shape]


def _batchable(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> bool:
    return all(t.dims and t.dims[0] == -1 for t in (*inputs, *outputs))


def complete_config(
    config: mc.ModelConfig,
    model_name: str,
    onnx_inputs: Sequence[TensorSpec],
    onnx_outputs: Sequence[TensorSpec],
) -> mc.ModelConfig:
    """Fill in what the config leaves out from the ONNX file, and check what it says.

    ``onnx_inputs``/``onnx_outputs`` carry the ONNX graph's full shapes (batch
    dim included, -1 for symbolic dims). A model whose every input and output
    has a dynamic first dimension is batchable; given no max_batch_size it gets
    DEFAULT_MAX_BATCH_SIZE and dynamic batching, as Triton's auto-complete does.
    """
    done = mc.ModelConfig()
    done.CopyFrom(config)
    done.name = model_name
    done.platform = PLATFORM
    done.backend = BACKEND
    batchable = _batchable(onnx_inputs, onnx_outputs)
    if not config.input and not config.output and config.max_batch_size == 0 and batchable:
        done.max_batch_size = DEFAULT_MAX_BATCH_SIZE
        if done.WhichOneof("scheduling_choice") is None:
            done.dynamic_batching.SetInParent()
    if done.max_batch_size > 0 and not batchable:
        fixed = [t.name for t in (*onnx_inputs, *onnx_outputs) if not t.dims or t.dims[0] != -1]
        raise ConfigError(
            f"model '{model_name}': max_batch_size is {done.max_batch_size} but "
            f"{', '.join(fixed)} in the ONNX file have no dynamic first dimension to batch on"
        )
    skip = 1 if done.max_batch_size > 0 else 0
    _complete_tensors(done.input, onnx_inputs, skip, model_name, "input")
    _complete_tensors(done.output, onnx_outputs, skip, model_name, "output")
    for tensor in done.input:
        if tensor.format != mc.ModelInput.FORMAT_NONE and len(tensor.dims) != 3:
            raise ConfigError(
                f"model '{model_name}': input '{tensor.name}' has format "
                f"{mc.ModelInput.Format.Name(tensor.format)}, which needs 3 dims "
                f"(excluding the batch dimension), not {list(tensor.dims)}"
            )
    complete_defaults(done, model_name)
    return done


def complete_defaults(done: mc.ModelConfig, model_name: str) -> None:
    """What every completed config holds: a version policy and named instance groups."""
    if not done.HasField("version_policy"):
        done.version_policy.latest.num_versions = 1
    if not done.instance_group:
        group = done.instance_group.add()
        group.count = 1
    for index, group in enumerate(done.instance_group):
        if group.count < 1:
            group.count = 1
        if not group.name:
            group.name = f"{model_name}_{index}"


def check_declared_tensors(config: mc.ModelConfig, model_name: str, why: str) -> None:
    """A model without a graph (Python, ensemble) must declare every tensor in full.

    ``why`` says what the model is, for the message.
    """
    if not config.input or not config.output:
        raise ConfigError(
            f"model '{model_name}' ({why}) must declare its inputs and outputs in "
            "config.pbtxt (name, data_type, dims): there is no graph to complete them from"
        )
    for kind, tensors in (("input", config.input), ("output", config.output)):
        names = [t.name for t in tensors]
        for tensor in tensors:
            if not tensor.name:
                raise ConfigError(f"model '{model_name}': an {kind} has no name")
            if names.count(tensor.name) > 1:
                raise ConfigError(f"model '{model_name}': {kind} '{tensor.name}' is declared twice")
            if config_to_protocol(tensor.data_type) is None:
                raise ConfigError(
                    f"model '{model_name}': {kind} '{tensor.name}' needs a data_type "
                    "(TYPE_FP32, TYPE_STRING, ...)"
                )
            if not tensor.dims and config.max_batch_size == 0:
                raise ConfigError(
                    f"model '{model_name}': {kind} '{tensor.name}' needs dims (-1 for any size)"
                )


def _complete_tensors(
    declared: Sequence[mc.ModelInput] | Sequence[mc.ModelOutput],
    actual: Sequence[TensorSpec],
    skip: int,
    model_name: str,
    kind: str,
) -> None:
    by_name = {t.name: t for t in actual}
    seen = set()
    for tensor in declared:
        onnx = by_name.get(tensor.name)
        if onnx is None:
            raise ConfigError(
                f"model '{model_name}': config {kind} '{tensor.name}' is not an {kind} of the "
                f"ONNX graph, whose {kind}s are {', '.join(by_name) or 'none'}"
            )
        seen.add(tensor.name)
        onnx_dims = list(onnx.dims[skip:])
        if tensor.data_type == mc.TYPE_INVALID:
            tensor.data_type = protocol_to_config(onnx.datatype)
        elif config_to_protocol(tensor.data_type) != onnx.datatype:
            raise ConfigError(
                f"model '{model_name}': config says {kind} '{tensor.name}' is "
                f"{config_type_name(tensor.data_type)} but the ONNX graph has "
                f"TYPE_{'STRING' if onnx.datatype == 'BYTES' else onnx.datatype}"
            )
        if not tensor.dims:
            tensor.dims.extend(onnx_dims)
        elif len(tensor.dims) != len(onnx_dims) or any(
            c != o and o != -1 and c != -1 for c, o in zip(tensor.dims, onnx_dims, strict=True)
        ):
            raise ConfigError(
                f"model '{model_name}': config dims {list(tensor.dims)} of {kind} "
                f"'{tensor.name}' do not match the ONNX graph's {onnx_dims}"
                + (" (dims exclude the batch dimension)" if skip else "")
            )
    if kind == "input" and declared:
        missing = [n for n in by_name if n not in seen]
        if missing:
            raise ConfigError(
                f"model '{model_name}': the ONNX graph needs input(s) {', '.join(missing)} "
                "that config.pbtxt does not list"
            )
    if not declared:
        for onnx in actual:
            tensor = declared.add()  # type: ignore[attr-defined]
            tensor.name = onnx.name
            tensor.data_type = protocol_to_config(onnx.datatype)
            tensor.dims.extend(onnx.dims[skip:])


def tensor_specs(
    tensors: Sequence[mc.ModelInput] | Sequence[mc.ModelOutput],
) -> tuple[TensorSpec, ...]:
    """The completed config's inputs or outputs as TensorSpecs."""
    specs = []
    for tensor in tensors:
        datatype = config_to_protocol(tensor.data_type)
        assert datatype is not None, "complete_config guarantees a data type"
        specs.append(TensorSpec(tensor.name, datatype, tuple(int(d) for d in tensor.dims)))
    return tuple(specs)


def onnx_dims(shape: Sequence[int | str | None]) -> tuple[int, ...]:
    """onnxruntime's shape (ints, symbolic names, None) as dims with -1 for unknown."""
    return tuple(_onnx_dims(shape))
