"""One loaded model version: its completed config, its onnxruntime session, its statistics."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxserve.layout import PROVIDERS_PARAMETER, WARNING_PARAMETER
from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.protocol import model_config_pb2 as mc
from onnxserve.server.config import complete_config, tensor_specs
from onnxserve.server.errors import ConfigError
from onnxserve.server.inference import ModelSignature
from onnxserve.server.input_ranges import complete_ranges, declared_ranges
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
        self.signature = ModelSignature(
            name=name,
            inputs={t.name: t for t in tensor_specs(config.input)},
            outputs={t.name: t for t in tensor_specs(config.output)},
            max_batch_size=config.max_batch_size,
            input_ranges=declared_ranges(config),
        )
        self.instance_count = sum(max(g.count, 1) for g in config.instance_group) or 1

    @property
    def providers(self) -> list[str]:
        return self.session.providers

    def metadata(self, versions: Sequence[str]) -> pb.ModelMetadataResponse:
        """ModelMetadata with a leading -1 on batchable models, as perf_analyzer expects."""
        lead = [-1] if self.signature.batchable else []
        response = pb.ModelMetadataResponse(
            name=self.name, versions=list(versions), platform=self.config.platform
        )
        for spec in self.signature.inputs.values():
            response.inputs.add(name=spec.name, datatype=spec.datatype, shape=[*lead, *spec.dims])
        for spec in self.signature.outputs.values():
            response.outputs.add(name=spec.name, datatype=spec.datatype, shape=[*lead, *spec.dims])
        return response

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
    """Create the session and the completed config; raises ConfigError on any problem."""
    named = mc.ModelConfig()
    named.CopyFrom(declared)
    named.name = name
    plan = plan_session(
        named, options.device, options.cpu_budget, options.cuda_usable, options.cache_dir
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
    log.info(
        "loaded model '%s' version %d: max_batch_size %d, providers %s, intra-op threads %d",
        name,
        version,
        config.max_batch_size,
        ",".join(session.providers),
        plan.intra_op_threads,
    )
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
