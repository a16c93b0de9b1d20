"""Ensembles: ``platform: "ensemble"`` with ``ensemble_scheduling { step [...] }``, as Triton's.

An ensemble is a served model whose requests run through other served models:
each step names a model (``model_name``, ``model_version``: -1 for its highest
READY version), maps the step model's inputs to ensemble tensors
(``input_map { key: "<step model input>" value: "<ensemble tensor>" }``) and its
outputs to new ensemble tensors (``output_map``). Ensemble tensors are the
ensemble's inputs and the steps' mapped outputs; its outputs are steps' outputs.

Checked at load (:func:`plan_ensemble`), each refusal naming the step, the
model and the tensor: every step model must be served (so an ensemble loads
after the models it uses), every input of a step model mapped, every name a
map uses must exist, every tensor produced once, types equal and shapes
compatible along every edge, batch sizes that fit (a batching ensemble needs
steps that batch at least as many rows), and no cycles.

A request runs the steps as their inputs become available (independent steps
at once), each through its model's own scheduler
(:class:`onnxserve.server.caller.ModelCaller`): an ensemble step is batched
with every other caller's requests to that model and counted in that model's
statistics (per step, as Triton reports them). The ensemble's own statistics
count its requests; their queue and compute durations are the sums of its
steps', as in Triton. A step that fails fails the request, with the step's
status and a message naming the step.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.protocol import model_config_pb2 as mc
from onnxserve.server.caller import ModelCaller
from onnxserve.server.config import TensorSpec, check_declared_tensors, model_kind, tensor_specs
from onnxserve.server.errors import ConfigError, ModelNotFound, ModelUnavailable, ServerError
from onnxserve.server.inference import DecodedRequest, ModelSignature
from onnxserve.server.model import metadata_of, signature_of
from onnxserve.server.statistics import ExecutionTiming, VersionStatistics

if TYPE_CHECKING:
    from onnxserve.server.repository import ModelSource

log = logging.getLogger(__name__)

ENSEMBLE_PLATFORM = "ensemble"


@dataclass(frozen=True)
class EnsembleStep:
    """One step: the model it calls and how its tensors map to the ensemble's."""

    index: int  # 1-based, as a person counts the steps of the config
    model_name: str
    version: str  # "" for the highest READY version
    input_map: Mapping[str, str]  # step model input -> ensemble tensor
    output_map: Mapping[str, str]  # step model output -> ensemble tensor

    @property
    def label(self) -> str:
        return f"step {self.index} (model '{self.model_name}')"


# (model name, version "" for latest) -> the model's signature; raises ModelNotFound/Unavailable.
SignatureLookup = Callable[[str, str], ModelSignature]


def _full_shape(spec: TensorSpec, batchable: bool) -> tuple[int, ...]:
    return (-1, *spec.dims) if batchable else spec.dims


def _compatible(a: Sequence[int], b: Sequence[int]) -> bool:
    return len(a) == len(b) and all(x == y or x == -1 or y == -1 for x, y in zip(a, b, strict=True))


def plan_ensemble(
    name: str, config: mc.ModelConfig, lookup: SignatureLookup
) -> tuple[EnsembleStep, ...]:
    """The ensemble's steps, checked against the served models; raises ConfigError saying why."""
    where = f"ensemble '{name}'"
    if not config.ensemble_scheduling.step:
        raise ConfigError(f"{where}: ensemble_scheduling has no step")
    batchable = config.max_batch_size > 0
    own_inputs = {t.name: t for t in tensor_specs(config.input)}
    own_outputs = {t.name: t for t in tensor_specs(config.output)}
    steps = []
    signatures: dict[int, ModelSignature] = {}
    for index, step in enumerate(config.ensemble_scheduling.step, 1):
        version = "" if step.model_version < 0 else str(step.model_version)
        planned = EnsembleStep(
            index, step.model_name, version, dict(step.input_map), dict(step.output_map)
        )
        if not step.model_name:
            raise ConfigError(f"{where}: step {index} names no model_name")
        if step.model_name == name:
            raise ConfigError(f"{where}: {planned.label} calls the ensemble itself (a cycle)")
        try:
            signatures[index] = lookup(step.model_name, version)
        except (ModelNotFound, ModelUnavailable) as exc:
            raise ConfigError(
                f"{where}: {planned.label} cannot be used: {exc.message} (an ensemble loads "
                "once the models of its steps serve)"
            ) from None
        steps.append(planned)
    # What each ensemble tensor is: (producer label, spec, producing model batches).
    produced: dict[str, tuple[str, TensorSpec, bool, int]] = {}
    for step in steps:
        signature = signatures[step.index]
        for output, tensor in sorted(step.output_map.items()):
            spec = signature.outputs.get(output)
            if spec is None:
                raise ConfigError(
                    f"{where}: {step.label} output_map names '{output}', which is not an output "
                    f"of model '{step.model_name}' (its outputs: {', '.join(signature.outputs)})"
                )
            if tensor in own_inputs:
                raise ConfigError(
                    f"{where}: {step.label} writes tensor '{tensor}', which is an ensemble input"
                )
            if tensor in produced:
                raise ConfigError(
                    f"{where}: tensor '{tensor}' is written by both {produced[tensor][0]} and "
                    f"{step.label}; each ensemble tensor has one producer"
                )
            produced[tensor] = (step.label, spec, signature.batchable, step.index)
    for step in steps:
        signature = signatures[step.index]
        if batchable and (
            not signature.batchable or signature.max_batch_size < config.max_batch_size
        ):
            raise ConfigError(
                f"{where}: {step.label} takes batches of at most {signature.max_batch_size} "
                f"(max_batch_size) but the ensemble takes {config.max_batch_size}; a step model "
                "must batch at least as many rows as its ensemble"
            )
        for model_input in signature.inputs:
            if model_input not in step.input_map:
                raise ConfigError(
                    f"{where}: {step.label} leaves input '{model_input}' of model "
                    f"'{step.model_name}' unmapped (input_map {{ key: \"{model_input}\" value: "
                    '"<ensemble tensor>" })'
                )
        for model_input in sorted(step.input_map):  # a map: no order of its own
            if model_input not in signature.inputs:
                raise ConfigError(
                    f"{where}: {step.label} input_map names '{model_input}', which is not an "
                    f"input of model '{step.model_name}' (its inputs: "
                    f"{', '.join(signature.inputs)})"
                )
        for model_input, spec in signature.inputs.items():  # in the model's order
            tensor = step.input_map[model_input]
            if tensor in own_inputs:
                source_label, source, source_batches = (
                    "ensemble input",
                    own_inputs[tensor],
                    batchable,
                )
            elif tensor in produced:
                source_label, source, source_batches, _ = produced[tensor]
            else:
                raise ConfigError(
                    f"{where}: {step.label} reads tensor '{tensor}', which is neither an "
                    "ensemble input nor an output any step maps"
                )
            _check_edge(
                where,
                f"tensor '{tensor}' ({source_label} -> {step.label} input '{model_input}')",
                (source, source_batches),
                (spec, signature.batchable),
            )
    for output, spec in own_outputs.items():
        if output not in produced:
            raise ConfigError(f"{where}: ensemble output '{output}' is produced by no step")
        label, source, source_batches, _ = produced[output]
        _check_edge(where, f"ensemble output '{output}' (from {label})", (source, source_batches),
                    (spec, batchable))  # fmt: skip
    _refuse_cycles(where, steps, produced)
    return tuple(steps)


def _check_edge(
    where: str, edge: str, source: tuple[TensorSpec, bool], target: tuple[TensorSpec, bool]
) -> None:
    (have, have_batches), (want, want_batches) = source, target
    if have.datatype != want.datatype:
        raise ConfigError(f"{where}: {edge} is {have.datatype} but {want.datatype} is expected")
    have_shape, want_shape = _full_shape(have, have_batches), _full_shape(want, want_batches)
    if not _compatible(have_shape, want_shape):
        raise ConfigError(
            f"{where}: {edge} has shape {list(have_shape)} but {list(want_shape)} is expected "
            "(-1: any size; a batching model's first dimension is the batch)"
        )


def _refuse_cycles(
    where: str,
    steps: Sequence[EnsembleStep],
    produced: Mapping[str, tuple[str, TensorSpec, bool, int]],
) -> None:
    """Refuse steps that depend on themselves, naming the cycle."""
    by_index = {step.index: step for step in steps}
    needs = {
        step.index: sorted({produced[t][3] for t in step.input_map.values() if t in produced})
        for step in steps
    }
    state: dict[int, int] = {}  # 1: on the current path, 2: done
    path: list[int] = []

    def visit(index: int) -> None:
        state[index] = 1
        path.append(index)
        for before in needs[index]:
            if state.get(before) == 1:
                cycle = [*path[path.index(before) :], before]
                raise ConfigError(
                    f"{where}: the steps form a cycle: "
                    + " -> ".join(by_index[i].label for i in cycle)
                )
            if state.get(before) is None:
                visit(before)
        path.pop()
        state[index] = 2

    for step in steps:
        if state.get(step.index) is None:
            visit(step.index)


def complete_ensemble_config(declared: mc.ModelConfig, name: str) -> mc.ModelConfig:
    done = mc.ModelConfig()
    done.CopyFrom(declared)
    done.name = name
    check_declared_tensors(done, name, "ensemble")
    if done.instance_group:
        raise ConfigError(
            f"model '{name}': an ensemble has no instance_group of its own (nor a "
            "dynamic_batching); its steps run on their models' instances and schedulers"
        )
    if not done.HasField("version_policy"):
        done.version_policy.latest.num_versions = 1
    return done


class EnsembleModel:
    """A servable ensemble version (what a ServingVersion holds for it)."""

    cuda_requested = False
    providers: list[str] = []
    instance_count = 1

    def __init__(
        self, name: str, version: int, config: mc.ModelConfig, steps: tuple[EnsembleStep, ...]
    ) -> None:
        self.name = name
        self.version = version
        self.version_label = str(version)
        self.config = config
        self.steps = steps
        self.statistics = VersionStatistics()
        self.signature = signature_of(name, config, bytes_as_text=False)

    def metadata(self, versions: Sequence[str]) -> pb.ModelMetadataResponse:
        return metadata_of(self.signature, versions, ENSEMBLE_PLATFORM)


class EnsembleScheduler:
    """Runs an ensemble's requests step by step, each on its model's scheduler."""

    def __init__(self, model: EnsembleModel, caller: ModelCaller) -> None:
        self._model = model
        self._caller = caller

    async def infer(
        self, request: DecodedRequest, deadline_ns: int | None
    ) -> dict[str, np.ndarray]:
        model = self._model
        tensors: dict[str, np.ndarray] = dict(request.inputs)
        reports: list[tuple[int, ExecutionTiming]] = []
        waiting = list(model.steps)
        try:
            while waiting:
                ready = [s for s in waiting if all(t in tensors for t in s.input_map.values())]
                waiting = [s for s in waiting if s not in ready]
                results = await asyncio.gather(
                    *(self._step(step, tensors, request, deadline_ns) for step in ready)
                )
                for step, (decoded, outputs) in zip(ready, results, strict=True):
                    for output, tensor in step.output_map.items():
                        tensors[tensor] = outputs[output]
                    if decoded.report is not None:
                        reports.append(decoded.report)
        except BaseException as exc:
            model.statistics.record_failure(time.monotonic_ns() - request.arrival_ns, exc)
            raise
        timing = ExecutionTiming(
            request.batch_size,
            sum(t.input_ns for _, t in reports),
            sum(t.infer_ns for _, t in reports),
            sum(t.output_ns for _, t in reports),
        )
        model.statistics.record_success(
            rows=request.batch_size,
            queue_ns=sum(q for q, _ in reports),
            timing=timing,
            total_ns=time.monotonic_ns() - request.arrival_ns,
        )
        return {name: tensors[name] for name in request.output_names}

    async def _step(
        self,
        step: EnsembleStep,
        tensors: Mapping[str, np.ndarray],
        request: DecodedRequest,
        deadline_ns: int | None,
    ) -> tuple[DecodedRequest, dict[str, np.ndarray]]:
        try:
            return await self._caller.infer(
                step.model_name,
                step.version,
                {model_input: tensors[t] for model_input, t in step.input_map.items()},
                list(step.output_map),
                request_id=request.id,
                priority=request.priority,
                deadline_ns=deadline_ns,
            )
        except ServerError as exc:
            raise type(exc)(f"ensemble '{self._model.name}' {step.label}: {exc.message}") from None

    async def close(self) -> None:
        """Nothing of its own to release: the steps' schedulers belong to their models."""


def open_ensemble(
    name: str,
    version: int,
    declared: mc.ModelConfig,
    lookup: SignatureLookup,
    caller: ModelCaller,
) -> tuple[EnsembleModel, EnsembleScheduler]:
    """A servable ensemble version, its steps checked against the models serving now."""
    config = complete_ensemble_config(declared, name)
    steps = plan_ensemble(name, config, lookup)
    model = EnsembleModel(name, version, config, steps)
    log.info(
        "loaded ensemble '%s' version %d: %d step(s) (%s)",
        name,
        version,
        len(steps),
        ", ".join(step.model_name for step in steps),
    )
    return model, EnsembleScheduler(model, caller)


def ensembles_last(sources: list[ModelSource]) -> list[ModelSource]:
    """Models in load order: an ensemble loads once the models of its steps have."""
    return sorted(sources, key=lambda source: model_kind(source.config) == "ensemble")
