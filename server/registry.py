"""The models a server holds: load, reload and unload them; find them per request.

A model that fails to load does not stop the server: it is listed as
UNAVAILABLE with the reason in RepositoryIndex and its requests get
UNAVAILABLE, while the server reports not ready (Triton's strict readiness),
so an orchestrator sees a broken deployment instead of routing traffic to it
(``--exit-on-error`` makes such a start fail instead).

Every change goes through :meth:`ModelRegistry.apply`, which brings one model
in line with a fresh scan of its folder: new or changed versions are loaded
first, and only once they are READY do the versions they replace start
draining (onnxserve.server.lifecycle), so a caller asking for the latest
version always finds one. A new version that fails to load while the model's
other versions serve is reported and the others keep serving. Start-up, the
repository poller and RepositoryModelLoad / RepositoryModelUnload are the
drivers (onnxserve.server.control); one at a time, under a lock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from onnxserve.layout import version_number
from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.server.caller import ModelCaller
from onnxserve.server.classification import read_labels
from onnxserve.server.config import model_kind
from onnxserve.server.ensemble import ensembles_last, open_ensemble
from onnxserve.server.errors import (
    ConfigError,
    ModelLoadRefused,
    ModelNotFound,
    ModelUnavailable,
    quoted,
)
from onnxserve.server.lifecycle import ModelEntry, ServingVersion, VersionSlot, VersionState
from onnxserve.server.model import LoadOptions, ModelVersion, load_model_version
from onnxserve.server.model_files import check_model_files
from onnxserve.server.peers import VersionReport
from onnxserve.server.python_models.model import PythonModel, auto_complete
from onnxserve.server.python_models.requirements import check_requirements
from onnxserve.server.repository import (
    ModelSource,
    RepositoryScan,
    Skipped,
    relative_reason,
    scan_one,
    scan_repository,
)
from onnxserve.server.runtime import CUDA, nvidia_gpu_visible
from onnxserve.server.scheduler import ClosingScheduler, Scheduler, create_scheduler

log = logging.getLogger(__name__)

# How many names an unknown model's message lists (RepositoryIndex has them all).
_NAMES_LISTED = 10
#: The start of a READY version's reason in RepositoryIndex when its files (or the
#: model's config) changed on disk and the new ones failed to load in place.
STALE_REASON = "serving the previously loaded copy; the changed files failed to load"


class ModelRegistry:
    """Models by name and version; lookups are cheap dictionary reads on the event loop."""

    def __init__(
        self,
        repository: Path,
        device: str,
        cpu_budget: int,
        drain_timeout_s: float = 10.0,
        *,
        cache_dir: Path | None = None,
        model_control_mode: str = "none",
        repository_poll_secs: float = 15.0,
    ) -> None:
        self.repository = repository
        self._model_control_mode = model_control_mode
        self._repository_poll_secs = repository_poll_secs
        self._device = device
        self._cpu_budget = cpu_budget
        self._cache_dir = cache_dir
        self._drain_timeout_s = drain_timeout_s
        self._cuda_usable: bool | None = None
        self._models: dict[str, ModelEntry] = {}
        self._control = asyncio.Lock()
        self._drains: set[asyncio.Task[None]] = set()
        self._reported: set[Skipped] = set()
        # The scan each model was last brought in line with (see changed()).
        self._applied: dict[str, tuple[object, ...]] = {}
        self.loaded = False
        # Ensemble steps and BLS calls reach served models through this.
        self.caller = ModelCaller(self.get)
        # The native front end's hooks (onnxserve.server.native): the scheduler an
        # ONNX model version gets, given the one it would have, and a call after
        # every change of what serves.
        self.wrap_scheduler: Callable[[ModelVersion, Scheduler], Scheduler] | None = None
        self.on_change: Callable[[], None] | None = None

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # -- driving the lifecycle -----------------------------------------------------------

    async def scan(self, name: str | None = None) -> RepositoryScan:
        """Scan the repository (or one model folder) off the event loop; report skipped entries."""
        loop = asyncio.get_running_loop()
        if name is None:
            scan = await loop.run_in_executor(None, scan_repository, self.repository)
        else:
            scan = await loop.run_in_executor(None, scan_one, self.repository, name)
        self._report_skipped(scan, whole=name is None)
        for source in scan.models:
            if source.error:
                source.error = relative_reason(source.error, self.repository)
        return scan

    def _report_skipped(self, scan: RepositoryScan, whole: bool) -> None:
        """One log line per skipped entry, the first time it is seen."""
        for skipped in scan.skipped:
            if skipped not in self._reported:
                self._reported.add(skipped)
                level = logging.INFO if skipped.hidden else logging.WARNING
                log.log(
                    level, "skipped '%s' in the model repository: %s", skipped.entry, skipped.why
                )
        if whole and not scan.models and not self.loaded:
            log.warning(
                "the model repository holds no model folders (<model>/<version>/model.onnx)"
            )

    async def load_all(self, only: tuple[str, ...] | None = None) -> None:
        """Start-up: scan and load every model (``only``: just these; the rest listed unloaded).

        Versions load one at a time, which keeps peak memory predictable and
        lets the first load settle whether CUDA works before the others try.
        """
        if self._device == "auto" and self._cuda_usable is None and nvidia_gpu_visible() is False:
            self._cuda_usable = False
            log.info("no NVIDIA GPU is visible to this process: models run on the CPU")
        scan = await self.scan()
        async with self._control:
            chosen = [s for s in scan.models if only is None or s.name in only]
            chosen_names = {s.name for s in chosen}
            for source in scan.models:
                entry = self._models.setdefault(source.name, ModelEntry(source.name))
                if source.name in chosen_names:
                    entry.versions = {v: VersionSlot(VersionState.LOADING) for v in source.versions}
                else:
                    entry.loaded = False
            for source in ensembles_last(chosen):
                await self._apply(source)
            missing = sorted(set(only or ()) - {s.name for s in scan.models})
            for name in missing:
                log.error("--load-model names '%s', which is not in the model repository", name)
        self.loaded = True
        self._changed()

    async def apply(self, source: ModelSource) -> ModelEntry:
        """Bring one model in line with a fresh scan of its folder (load, reload, drain)."""
        async with self._control:
            entry = await self._apply(source)
        self._changed()
        return entry

    def changed(self, source: ModelSource) -> bool:
        """Whether a scan of a model differs from the one last applied (config, files, error)."""
        return self._applied.get(source.name) != _signature(source)

    async def _apply(self, source: ModelSource) -> ModelEntry:
        self._applied[source.name] = _signature(source)
        entry = self._models.setdefault(source.name, ModelEntry(source.name))
        serving_before = bool(entry.ready_versions()) and entry.loaded
        entry.loaded = True
        if source.error:
            if serving_before:
                log.error(
                    "model '%s' could not be reloaded (its previous versions keep serving): %s",
                    source.name,
                    source.error,
                )
                for slot in entry.versions.values():
                    if slot.state is VersionState.READY:
                        slot.reason = f"{STALE_REASON}: {source.error}"
                return entry
            log.error("model '%s' is unavailable: %s", source.name, source.error)
            entry.error = source.error
            self._drain_versions(entry, list(entry.versions))
            return entry
        entry.error = None
        for version, path in sorted(source.versions.items()):
            slot = entry.versions.get(version)
            previous = (
                slot.serving if slot is not None and slot.state is VersionState.READY else None
            )
            if previous is not None and previous.fingerprint == source.fingerprints.get(version):
                assert slot is not None
                slot.reason = ""  # unchanged on disk (and whatever failed before is gone)
                continue
            if previous is None:
                entry.versions[version] = VersionSlot(VersionState.LOADING)
            loaded = await self._load(source, version, path, entry, serving_before)
            if loaded is None:
                continue
            entry.versions[version] = VersionSlot(VersionState.READY, serving=loaded)
            if previous is not None:  # the same version number, changed on disk
                log.info(
                    "model '%s' version %d reloaded; the old copy drains", source.name, version
                )
                self._start_drain(previous)
        if serving_before and not any(
            v in entry.versions and entry.versions[v].state is VersionState.READY
            for v in source.versions
        ):
            return entry  # none of the versions to serve could load: keep what serves
        removed = [v for v in entry.versions if v not in source.versions]
        self._drain_versions(entry, removed)
        return entry

    async def _load(
        self, source: ModelSource, version: int, path: Path, entry: ModelEntry, others_serve: bool
    ) -> ServingVersion | None:
        try:
            root = self.repository.resolve()
            labels = read_labels(source.config, root / source.name, root)
            kind = model_kind(source.config)
            if kind == "ensemble":
                serving = self._load_ensemble(source, version)
            elif kind == "python":
                serving = await self._load_python(source, version, path)
            else:
                serving = await self._load_onnx(source, version, path)
            serving.labels = labels
            return serving
        except ConfigError as exc:
            reason = relative_reason(str(exc), self.repository)
            log.error("model '%s' version %d is unavailable: %s", source.name, version, reason)
            slot = entry.versions[version]
            if slot.state is VersionState.READY:
                # Changed on disk and the new files failed: the old copy keeps serving,
                # and RepositoryIndex says so (READY, with this reason).
                slot.reason = f"{STALE_REASON}: {reason}"
            if slot.serving is None or slot.state is not VersionState.READY:
                # A new version that fails while others serve does not block readiness.
                entry.versions[version] = VersionSlot(
                    VersionState.FAILED, reason=reason, blocks_readiness=not others_serve
                )
            return None

    async def _load_onnx(self, source: ModelSource, version: int, path: Path) -> ServingVersion:
        loop = asyncio.get_running_loop()
        options = LoadOptions(
            self._device,
            self._cpu_budget,
            self._cuda_usable,
            self._cache_dir,
        )
        model = await loop.run_in_executor(None, self._load_checked, source, version, path, options)
        if model.cuda_requested and self._cuda_usable is None:
            # Settle once whether CUDA works, so later models skip a doomed attempt.
            self._cuda_usable = CUDA in model.providers
        scheduler = create_scheduler(model)
        if self.wrap_scheduler is not None:
            scheduler = self.wrap_scheduler(model, scheduler)
        return ServingVersion(model, scheduler, source.fingerprints.get(version, ()))

    async def _load_python(self, source: ModelSource, version: int, path: Path) -> ServingVersion:
        """Start the model's instance processes (each runs its initialize) off the event loop."""
        loop = asyncio.get_running_loop()
        check_requirements(path.parent.parent, source.name, self.repository.resolve())
        config, first = await loop.run_in_executor(
            None, auto_complete, source.config, source.name, path
        )
        model = PythonModel(source.name, version, config, path, self.caller.bls_handler(loop))
        await loop.run_in_executor(None, model.start, first)

        def failed(reason: str) -> None:  # on an instance thread
            loop.call_soon_threadsafe(self._python_failed, source.name, version, model, reason)

        model.on_failure = failed
        scheduler = ClosingScheduler(create_scheduler(model), model.close)  # type: ignore[arg-type]
        return ServingVersion(model, scheduler, source.fingerprints.get(version, ()))  # type: ignore[arg-type]

    def _python_failed(self, name: str, version: int, model: PythonModel, reason: str) -> None:
        """A Python model version gave up (its process kept crashing): UNAVAILABLE, with why."""
        entry = self._models.get(name)
        slot = entry.versions.get(version) if entry is not None else None
        if slot is None or slot.serving is None or slot.serving.model is not model:
            return
        entry.versions[version] = VersionSlot(VersionState.FAILED, reason=reason)  # type: ignore[union-attr]
        self._start_drain(slot.serving)

    def _load_ensemble(self, source: ModelSource, version: int) -> ServingVersion:
        """Check the steps against the models serving now (on the event loop: no I/O)."""
        model, scheduler = open_ensemble(
            source.name,
            version,
            source.config,
            lambda name, wanted: self.get(name, wanted).model.signature,
            self.caller,
        )
        return ServingVersion(model, scheduler, source.fingerprints.get(version, ()))  # type: ignore[arg-type]

    def _load_checked(
        self, source: ModelSource, version: int, path: Path, options: LoadOptions
    ) -> ModelVersion:
        """On a worker thread: prove the files, then create the session."""
        where = f"model '{source.name}' version {version}"
        check_model_files(path, self.repository.resolve(), where)
        return load_model_version(source.name, version, path, source.config, options)

    def _drain_versions(self, entry: ModelEntry, versions: list[int]) -> None:
        """READY versions start draining (and leave the entry once drained); the rest leave now."""
        for version in versions:
            slot = entry.versions[version]
            if slot.state is VersionState.DRAINING:
                continue
            if slot.state is not VersionState.READY or slot.serving is None:
                del entry.versions[version]
                continue
            log.info("model '%s' version %d drains and unloads", entry.name, version)
            draining = VersionSlot(VersionState.DRAINING, serving=slot.serving)
            entry.versions[version] = draining

            def forget(version: int = version, draining: VersionSlot = draining) -> None:
                if entry.versions.get(version) is draining:
                    del entry.versions[version]

            self._start_drain(slot.serving, forget)

    def _start_drain(self, serving: ServingVersion, then: Callable[[], None] | None = None) -> None:
        """Drain in the background, then call ``then``."""

        async def drain() -> None:
            await serving.drain(self._drain_timeout_s)
            if then is not None:
                then()
            self._changed()
            log.info("model '%s' version %s unloaded", serving.name, serving.label)

        task = asyncio.get_running_loop().create_task(drain())
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)

    async def unload(self, name: str) -> None:
        """Drain every version of a model and mark it unloaded; returns once drained."""
        async with self._control:
            entry = self._entry(name)
            entry.loaded = False
            entry.error = None
            self._drain_versions(entry, list(entry.versions))
        self._changed()
        await self.wait_drained()

    async def forget(self, name: str) -> None:
        """A model folder that left the repository: unload it and drop it from the index."""
        await self.unload(name)
        self._models.pop(name, None)
        self._applied.pop(name, None)

    async def load(self, name: str, allow_python: bool = True) -> ModelEntry:
        """(Re)load one model from its folder now (RepositoryModelLoad).

        ``allow_python`` False refuses a Python model (its model.py is code the
        server would run on a name the network chose).
        """
        scan = await self.scan(name)
        if not scan.models:
            raise ModelNotFound(f"model '{quoted(name)}' is not in the model repository")
        source = scan.models[0]
        if not allow_python and model_kind(source.config) == "python":
            raise ModelLoadRefused(
                f"model '{name}' is a Python model (backend python): its model.py runs code, "
                "and this server loads Python models only at start-up (--load-model) unless "
                "started with --allow-python-load"
            )
        return await self.apply(source)

    async def wait_drained(self) -> None:
        while self._drains:
            await asyncio.gather(*list(self._drains))

    # -- lookups ----------------------------------------------------------------------------

    def is_ready(self) -> bool:
        """Loaded, and every model the server serves has what it was asked to serve."""
        return self.loaded and all(entry.is_ready() for entry in self._models.values())

    def failures(self) -> list[str]:
        """Reasons of the models and versions that failed (for --exit-on-error)."""
        reasons = []
        for entry in self._models.values():
            if entry.error:
                reasons.append(entry.error)
            reasons.extend(
                s.reason for s in entry.versions.values() if s.state is VersionState.FAILED
            )
        return reasons

    def _entry(self, name: str) -> ModelEntry:
        entry = self._models.get(name)
        if entry is None:
            raise self.unknown(name)
        return entry

    def unknown(self, name: str) -> ModelNotFound:
        """NOT_FOUND for a name the server does not serve: what it serves, how to add one.

        The list is bounded (:data:`_NAMES_LISTED` names); the advice follows
        ``--model-control-mode``, since a folder copied into the repository
        after the start loads by itself only in ``poll`` mode.
        """
        names = sorted(self._models)
        if not names:
            served = "the server serves no model"
        else:
            served = "the models served are " + ", ".join(f"'{n}'" for n in names[:_NAMES_LISTED])
            if len(names) > _NAMES_LISTED:
                served += f" and {len(names) - _NAMES_LISTED} more (RepositoryIndex lists them)"
        if self._model_control_mode == "poll":
            how = (
                f"a model folder added to the repository loads at the next scan "
                f"(every {self._repository_poll_secs:g} s)"
            )
        elif self._model_control_mode == "explicit":
            how = "to serve a model of the repository, load it (RepositoryModelLoad)"
        else:
            how = (
                "models load at start only (--model-control-mode none): to add one, restart "
                "the server, or serve with --model-control-mode poll (loads new folders) or "
                "explicit (RepositoryModelLoad)"
            )
        return ModelNotFound(f"model '{quoted(name)}' is not served: {served}; {how}")

    def get(self, name: str, version: str = "") -> ServingVersion:
        """The READY version asked for ("" means the highest READY version)."""
        entry = self._entry(name)
        if entry.error:
            raise ModelUnavailable(f"model '{name}' is unavailable: {entry.error}")
        if not entry.loaded:
            raise ModelUnavailable(f"model '{name}' is not loaded")
        if version == "":
            latest = entry.latest_ready()
            if latest is None:
                reasons = "; ".join(s.reason for s in entry.versions.values() if s.reason)
                raise ModelUnavailable(
                    f"model '{name}' has no version ready" + (f": {reasons}" if reasons else "")
                )
            serving = entry.versions[latest].serving
            assert serving is not None  # READY slots always hold one
            return serving
        number = version_number(version)
        if number is None:
            raise ModelNotFound(
                f"model '{name}' has no version '{quoted(version)}'; versions are positive "
                "integers in ASCII digits"
            )
        slot = entry.versions.get(number)
        if slot is None:
            served = ", ".join(map(str, sorted(entry.versions))) or "none"
            raise ModelNotFound(f"model '{name}' has no version {number} (served: {served})")
        if slot.state is not VersionState.READY or slot.serving is None:
            raise ModelUnavailable(
                f"model '{name}' version {number} is {slot.state.value.lower()}"
                + (f": {slot.reason}" if slot.reason else "")
            )
        return slot.serving

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self.get(name, version)
        except (ModelNotFound, ModelUnavailable):
            return False
        return True

    def ready_version_labels(self, name: str) -> list[str]:
        return [str(v) for v in self._entry(name).ready_versions()]

    def serving_versions(self, name: str, version: str = "") -> list[ServingVersion]:
        """For statistics: one READY version, or every version of the model holding a handle."""
        if version:
            return [self.get(name, version)]
        return self._entry(name).serving()

    def in_flight(self) -> int:
        """Requests accepted by any version and not yet answered."""
        return sum(s.in_flight for e in self._models.values() for s in e.serving())

    def reports(self) -> list[VersionReport]:
        """This process's numbers for every version that holds a handle (READY or DRAINING)."""
        return [
            VersionReport(name, serving.label, serving.snapshot(), serving.pending)
            for name in sorted(self._models)
            for serving in self._models[name].serving()
        ]

    def model_names(self) -> list[str]:
        return sorted(self._models)

    def is_loaded(self, name: str) -> bool:
        entry = self._models.get(name)
        return entry is not None and entry.loaded

    def index(self, ready_only: bool) -> list[pb.RepositoryIndexResponse.ModelIndex]:
        rows: list[pb.RepositoryIndexResponse.ModelIndex] = []
        for name in sorted(self._models):
            rows.extend(self._models[name].index_rows(ready_only))
        return rows

    async def close(self) -> None:
        """Drain every version (the server has stopped taking calls) and release threads."""
        async with self._control:
            for entry in self._models.values():
                self._drain_versions(entry, list(entry.versions))
        self._changed()
        await self.wait_drained()


def _signature(source: ModelSource) -> tuple[object, ...]:
    return (source.error, tuple(sorted(source.fingerprints.items())))
