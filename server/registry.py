"""The models a server holds: load them from the repository, find them per request.

A model that fails to load does not stop the server: it is listed as
UNAVAILABLE with the reason in RepositoryIndex and its requests get
UNAVAILABLE, while the server reports not ready (Triton's strict readiness),
so an orchestrator sees a broken deployment instead of routing traffic to it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.server.errors import ConfigError, ModelNotFound, ModelUnavailable
from onnxserve.server.model import LoadOptions, ModelVersion, load_model_version
from onnxserve.server.repository import ModelSource, scan_repository
from onnxserve.server.runtime import CUDA, nvidia_gpu_visible
from onnxserve.server.scheduler import Scheduler, create_scheduler

log = logging.getLogger(__name__)

READY = "READY"
UNAVAILABLE = "UNAVAILABLE"
LOADING = "LOADING"


@dataclass
class VersionState:
    state: str
    reason: str = ""
    model: ModelVersion | None = None
    scheduler: Scheduler | None = None


@dataclass
class ModelEntry:
    name: str
    versions: dict[int, VersionState] = field(default_factory=dict)
    error: str | None = None  # the model folder itself is unusable

    def ready_versions(self) -> list[int]:
        return sorted(v for v, s in self.versions.items() if s.state == READY)


class ModelRegistry:
    """Loaded models by name and version; lookups are cheap dictionary reads."""

    def __init__(self, repository: Path, device: str, cpu_budget: int) -> None:
        self.repository = repository
        self._device = device
        self._cpu_budget = cpu_budget
        self._cuda_usable: bool | None = None
        self._models: dict[str, ModelEntry] = {}
        self.loaded = False

    async def load_all(self) -> None:
        """Scan the repository and load every selected version, one at a time.

        Loading one at a time keeps peak memory predictable and lets the first
        load settle whether CUDA works here before the others try it.
        """
        if self._device == "auto" and self._cuda_usable is None and nvidia_gpu_visible() is False:
            self._cuda_usable = False
            log.info("no NVIDIA GPU is visible to this process: models run on the CPU")
        loop = asyncio.get_running_loop()
        sources = await loop.run_in_executor(None, scan_repository, self.repository)
        for source in sources:
            entry = ModelEntry(source.name, error=source.error)
            self._models[source.name] = entry
            for version in source.versions:
                entry.versions[version] = VersionState(LOADING)
        for source in sources:
            await self._load_source(source)
        self.loaded = True

    async def _load_source(self, source: ModelSource) -> None:
        entry = self._models[source.name]
        if source.error:
            log.error("model '%s' is unavailable: %s", source.name, source.error)
            return
        loop = asyncio.get_running_loop()
        for version, path in sorted(source.versions.items()):
            options = LoadOptions(self._device, self._cpu_budget, self._cuda_usable)
            try:
                model = await loop.run_in_executor(
                    None, load_model_version, source.name, version, path, source.config, options
                )
            except ConfigError as exc:
                log.error("model '%s' version %d is unavailable: %s", source.name, version, exc)
                entry.versions[version] = VersionState(UNAVAILABLE, reason=str(exc))
                continue
            if model.cuda_requested and self._cuda_usable is None:
                # Settle once whether CUDA works, so later models skip a doomed attempt.
                self._cuda_usable = CUDA in model.providers
            entry.versions[version] = VersionState(
                READY, model=model, scheduler=create_scheduler(model)
            )

    def is_ready(self) -> bool:
        """Every model folder loaded and every selected version READY."""
        if not self.loaded:
            return False
        return all(
            entry.error is None and all(s.state == READY for s in entry.versions.values())
            for entry in self._models.values()
        )

    def _entry(self, name: str) -> ModelEntry:
        entry = self._models.get(name)
        if entry is None:
            raise ModelNotFound(f"model '{name}' is not in the model repository")
        return entry

    def get(self, name: str, version: str = "") -> VersionState:
        """The READY version asked for ("" means the highest READY version)."""
        entry = self._entry(name)
        if entry.error:
            raise ModelUnavailable(f"model '{name}' is unavailable: {entry.error}")
        if version == "":
            ready = entry.ready_versions()
            if not ready:
                reasons = "; ".join(s.reason for s in entry.versions.values() if s.reason)
                raise ModelUnavailable(
                    f"model '{name}' has no version ready" + (f": {reasons}" if reasons else "")
                )
            return entry.versions[ready[-1]]
        try:
            number = int(version)
        except ValueError:
            raise ModelNotFound(
                f"model '{name}' has no version '{version}'; versions are positive integers"
            ) from None
        state = entry.versions.get(number)
        if state is None:
            served = ", ".join(map(str, sorted(entry.versions))) or "none"
            raise ModelNotFound(f"model '{name}' has no version {number} (served: {served})")
        if state.state != READY:
            raise ModelUnavailable(
                f"model '{name}' version {number} is {state.state.lower()}"
                + (f": {state.reason}" if state.reason else "")
            )
        return state

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self.get(name, version)
        except (ModelNotFound, ModelUnavailable):
            return False
        return True

    def ready_version_labels(self, name: str) -> list[str]:
        return [str(v) for v in self._entry(name).ready_versions()]

    def versions_of(self, name: str, version: str = "") -> list[ModelVersion]:
        """For statistics: one version, or every READY version of the model."""
        if version:
            state = self.get(name, version)
            return [state.model] if state.model else []
        entry = self._entry(name)
        return [entry.versions[v].model for v in entry.ready_versions() if entry.versions[v].model]

    def model_names(self) -> list[str]:
        return sorted(self._models)

    def index(self, ready_only: bool) -> list[pb.RepositoryIndexResponse.ModelIndex]:
        rows = []
        for name in sorted(self._models):
            entry = self._models[name]
            if entry.error:
                if not ready_only:
                    rows.append(
                        pb.RepositoryIndexResponse.ModelIndex(
                            name=name, state=UNAVAILABLE, reason=entry.error
                        )
                    )
                continue
            for version in sorted(entry.versions):
                state = entry.versions[version]
                if ready_only and state.state != READY:
                    continue
                rows.append(
                    pb.RepositoryIndexResponse.ModelIndex(
                        name=name, version=str(version), state=state.state, reason=state.reason
                    )
                )
        return rows

    async def close(self) -> None:
        for entry in self._models.values():
            for state in entry.versions.values():
                if state.scheduler is not None:
                    await state.scheduler.close()
