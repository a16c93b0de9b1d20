"""One model version's lifecycle, and the serving handle the servicer holds.

::

    LOADING --> READY --> DRAINING --> UNLOADED
       |
       +------> FAILED

A version takes requests only while READY. Draining stops intake (new requests
go to another READY version or get UNAVAILABLE), waits until every request
the version accepted has its answer, and only then closes its scheduler, so a
version that is replaced or unloaded never drops a call in flight.

The servicer gets a :class:`ServingVersion` for a READY version: model,
scheduler and statistics are always there (never Optional), and ``enter()`` /
``leave()`` around a request are what draining waits for.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from dataclasses import dataclass, field

from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.server.model import ModelVersion
from onnxserve.server.repository import Fingerprint
from onnxserve.server.scheduler import Scheduler
from onnxserve.server.statistics import StatisticsSnapshot, VersionStatistics

log = logging.getLogger(__name__)


class VersionState(enum.Enum):
    """Where a model version is in its lifecycle."""

    LOADING = "LOADING"
    READY = "READY"
    DRAINING = "DRAINING"
    UNLOADED = "UNLOADED"
    FAILED = "FAILED"

    @property
    def index_state(self) -> str:
        """The state string RepositoryIndex reports, as Triton spells it."""
        return _INDEX_STATES[self]


_INDEX_STATES = {
    VersionState.LOADING: "LOADING",
    VersionState.READY: "READY",
    VersionState.DRAINING: "UNLOADING",
    VersionState.UNLOADED: "UNAVAILABLE",
    VersionState.FAILED: "UNAVAILABLE",
}


class ServingVersion:
    """A loaded model version with its scheduler: what a request runs on."""

    __slots__ = (
        "_drained",
        "accepting",
        "fingerprint",
        "in_flight",
        "labels",
        "model",
        "scheduler",
    )

    def __init__(self, model: ModelVersion, scheduler: Scheduler, fingerprint: Fingerprint) -> None:
        self.model = model
        self.scheduler = scheduler
        self.fingerprint = fingerprint
        # Class labels by output (label_filename), for the classification extension.
        self.labels: dict[str, tuple[str, ...]] = {}
        self.in_flight = 0  # requests accepted and not yet answered
        self.accepting = True
        self._drained: asyncio.Event | None = None

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def label(self) -> str:
        return self.model.version_label

    @property
    def statistics(self) -> VersionStatistics:
        return self.model.statistics

    def snapshot(self) -> StatisticsSnapshot:
        """The statistics as of now, with the failures a native queue decided on its own."""
        record = getattr(self.scheduler, "record_native_failures", None)
        if record is not None:
            record()
        return self.statistics.snapshot()

    @property
    def pending(self) -> int:
        """Requests accepted and not yet answered, with those a native queue holds."""
        native = getattr(self.scheduler, "native_pending", None)
        return self.in_flight + (native() if native is not None else 0)

    def enter(self) -> None:
        """A request is accepted (call on the event loop, right after the lookup)."""
        self.in_flight += 1

    def leave(self) -> None:
        """The request has its answer."""
        self.in_flight -= 1
        if self.in_flight == 0 and self._drained is not None:
            self._drained.set()

    async def drain(self, timeout_s: float) -> None:
        """Stop intake, wait for every accepted request's answer, then close the scheduler.

        After ``timeout_s`` the scheduler is closed anyway: what is still
        queued then gets UNAVAILABLE.
        """
        self.accepting = False
        if self.in_flight:
            self._drained = asyncio.Event()
            started = time.monotonic()
            try:
                await asyncio.wait_for(self._drained.wait(), timeout_s)
            except asyncio.TimeoutError:
                log.warning(
                    "model '%s' version %s: %d request(s) still in flight after %.1fs of "
                    "draining; closing it anyway",
                    self.name,
                    self.label,
                    self.in_flight,
                    time.monotonic() - started,
                )
        await self.scheduler.close()


@dataclass
class VersionSlot:
    """One version number of a model: its state and, while READY or DRAINING, its handle.

    ``blocks_readiness``: a FAILED version that keeps the server from being
    ready (a version the server was asked to serve and cannot), as opposed to
    a new version that failed while the model's previous ones keep serving.
    """

    state: VersionState
    reason: str = ""
    serving: ServingVersion | None = None
    blocks_readiness: bool = True


@dataclass
class ModelEntry:
    """A model of the repository as the registry knows it."""

    name: str
    versions: dict[int, VersionSlot] = field(default_factory=dict)
    error: str | None = None  # the model folder itself is unusable
    loaded: bool = True  # False: not loaded (explicit mode) or unloaded

    def ready_versions(self) -> list[int]:
        return sorted(v for v, s in self.versions.items() if s.state is VersionState.READY)

    def latest_ready(self) -> int | None:
        """The highest READY version (what a request without a version gets), or None.

        Asked on every request: one pass, no sorted list.
        """
        return max(
            (v for v, s in self.versions.items() if s.state is VersionState.READY), default=None
        )

    def serving(self) -> list[ServingVersion]:
        """Versions that hold a handle (READY or DRAINING), for statistics."""
        return [s.serving for _, s in sorted(self.versions.items()) if s.serving is not None]

    def is_ready(self) -> bool:
        """No failure the server must own up to (loads in progress do not count).

        Until start-up has loaded every model the registry is not ready anyway;
        after it, a model being loaded or reloaded does not take the whole
        server out of its Service.
        """
        if not self.loaded:
            return True
        return self.error is None and not any(
            s.state is VersionState.FAILED and s.blocks_readiness for s in self.versions.values()
        )

    def index_rows(self, ready_only: bool) -> list[pb.RepositoryIndexResponse.ModelIndex]:
        row = pb.RepositoryIndexResponse.ModelIndex
        if self.error is not None:
            return (
                [] if ready_only else [row(name=self.name, state="UNAVAILABLE", reason=self.error)]
            )
        if not self.loaded and not self.versions:
            return (
                []
                if ready_only
                else [row(name=self.name, state="UNAVAILABLE", reason="not loaded")]
            )
        return [
            row(name=self.name, version=str(v), state=s.state.index_state, reason=s.reason)
            for v, s in sorted(self.versions.items())
            if not ready_only or s.state is VersionState.READY
        ]
