"""One loaded model version: its completed config, its onnxruntime session, its statistics."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxserve.layout import (
    LOAD_RESIDENT_PARAMETER,
    LOAD_SECONDS_PARAMETER,
    MODEL_BYTES_PARAMETER,
    PROVIDERS_PARAMETER,
    WARNING_PARAMETER,
)
from onnxserve.memory import format_bytes, measure, peak_resident_bytes
from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.protocol import model_config_pb2 as mc
from onnxserve.server.config import complete_config, tensor_specs
from onnxserve.server.errors import ConfigError
from onnxserve.server.inference import ModelSignature
from onnxserve.server.input_ranges import complete_ranges, declared_ranges
from onnxserve.server.model_files import model_files_bytes
from onnxserve.server.runtime import CUDA, OnnxSession, plan_session
from onnxserve.server.statistics import VersionStatistics
from onnxserve.server.warmup import warm_up

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadOptions:
    """Server-wide inputs to loading a model."""

    device: str
    cpu_budget: int
    cuda_usable: bool | None  # None: not yet known in this process
    cache_dir: Path | None = None  # TensorRT engines; None: a temporary directory


def signature_of(
    name: str, config: mc.ModelConfig, *, bytes_as_text: bool = True
) -> ModelSignature:
    """What requests to a model are checked against, from its completed config.

    ``bytes_as_text``: BYTES inputs as str (onnxruntime), else as bytes (Python models).
    """
    return ModelSignature(
        name=name,
        inputs={t.name: t for t in tensor_specs(config.input)},
        outputs={t.name: t for t in tensor_specs(config.output)},
        max_batch_size=config.max_batch_size,
        input_ranges=declared_ranges(config),
        bytes_as_text=bytes_as_text,
    )


def metadata_of(
    signature: ModelSignature, versions: Sequence[str], platform: str
) -> pb.ModelMetadataResponse:
    """ModelMetadata with a leading -1 on batchable models, as perf_analyzer expects."""
    lead = [-1] if signature.batchable else []
    response = pb.ModelMetadataResponse(
        name=signature.name, versions=list(versions), platform=platform
    )
    for spec in signature.inputs.values():
        response.inputs.add(name=spec.name, datatype=spec.datatype, shape=[*lead, *spec.dims])
    for spec in signature.outputs.values():
        response.outputs.add(name=spec.name, datatype=spec.datatype, shape=[*lead, *spec.dims])
    return response


class ModelVersion:
    """A servable model version. ``execute`` runs on a worker thread."""

    def __init__(
        self,
        name: str,
        version: int,
        config: mc.ModelConfig,
        session: OnnxSession,
        cuda_requested: bool = False,
    ) -> None:
        self.name = name
        self.version = version
        self.version_label = str(version)
        self.config = config
        self.session = session
        self.cuda_requested = cuda_requested
        self.statistics = VersionStatistics()
        self.signature = signature_of(name, config)
        self.instance_count = sum(max(g.count, 1) for g in config.instance_group) or 1

    @property
    def providers(self) -> list[str]:
        return self.session.providers

    def metadata(self, versions: Sequence[str]) -> pb.ModelMetadataResponse:
        return metadata_of(self.signature, versions, self.config.platform)

    def execute(
        self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """Run one (possibly merged) batch through onnxruntime (on a worker thread).

        Untimed: the batch executor (``onnxserve.server.batching.executor``)
        times a run's phases around this call, in one place.
        """
        prepared = {name: np.ascontiguousarray(array) for name, array in feeds.items()}
        results = self.session.run(prepared, output_names)
        return dict(zip(output_names, results, strict=True))


def load_model_version(
    name: str, version: int, path: Path, declared: mc.ModelConfig, options: LoadOptions
) -> ModelVersion:
    """Create the session and the completed config; raises ConfigError on any problem.

    The load is timed and the server's resident memory read around it; both, and
    the size of the model's files, are logged and reported in the ModelConfig's
    parameters (:data:`~onnxserve.layout.LOAD_SECONDS_PARAMETER` and the two
    next to it): ModelStatistics has no field for them. The resident growth is
    the load's own only while no other load runs at the same time.
    """
    with measure() as span:
        loaded = _load(name, version, path, declared, options)
    file_bytes = model_files_bytes(path)
    parameters = loaded.config.parameters  # the completed config ModelConfig reports
    parameters[LOAD_SECONDS_PARAMETER].string_value = f"{span.seconds:.3f}"
    parameters[MODEL_BYTES_PARAMETER].string_value = str(file_bytes)
    growth = span.growth_bytes
    if growth is not None:
        parameters[LOAD_RESIDENT_PARAMETER].string_value = str(max(growth, 0))
    config = loaded.config
    log.info(
        "loaded model '%s' version %d in %.2fs: max_batch_size %d, providers %s, intra-op "
        "threads %d; model files %s, resident memory +%s (server %s now, %s at most)",
        name,
        version,
        span.seconds,
        config.max_batch_size,
        ",".join(loaded.providers),
        loaded.session.intra_op_threads,
        format_bytes(file_bytes),
        format_bytes(None if growth is None else max(growth, 0)),
        format_bytes(span.after_bytes),
        format_bytes(peak_resident_bytes()),
    )
    return loaded


def _load(
    name: str, version: int, path: Path, declared: mc.ModelConfig, options: LoadOptions
) -> ModelVersion:
    named = mc.ModelConfig()
    named.CopyFrom(declared)
    named.name = name
    plan = plan_session(
        named,
        options.device,
        options.cpu_budget,
        options.cuda_usable,
        options.cache_dir,
    )
    session = OnnxSession(path, named, plan)
    if plan.wants_cuda and CUDA not in session.providers:
        if options.device == "cuda":
            raise ConfigError(
                f"model '{name}': CUDA was asked for but onnxruntime fell back to the CPU "
                "(are the CUDA and cuDNN libraries onnxruntime-gpu needs installed?)"
            )
        log.warning(
            "model '%s' version %d: onnxruntime could not use CUDA (its CUDA or cuDNN "
            "libraries are missing or no GPU is visible) and runs on the CPU instead",
            name,
            version,
        )
    config = complete_config(named, name, session.inputs, session.outputs)
    config.parameters[PROVIDERS_PARAMETER].string_value = ",".join(session.providers)
    complete_ranges(config, path)
    if WARNING_PARAMETER in config.parameters:
        log.warning(
            "model '%s' version %d: %s",
            name,
            version,
            config.parameters[WARNING_PARAMETER].string_value,
        )
    loaded = ModelVersion(name, version, config, session, cuda_requested=plan.wants_cuda)
    if config.model_warmup:
        warm_up(loaded, path.parent.parent)
    return loaded
