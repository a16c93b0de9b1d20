"""Model control, Triton's three modes: two drivers of the registry's version lifecycle.

- ``none`` (the default): models load at start-up; RepositoryModelLoad and
  RepositoryModelUnload are refused.
- ``poll``: :class:`RepositoryPoller` rescans the repository every
  ``--repository-poll-secs``; a model whose files changed is brought in line
  (new versions load before the ones they replace drain), a model folder that
  disappeared drains and leaves the index, a new one loads. Load and unload
  calls are refused, as in Triton (the repository is the truth).
- ``explicit``: :class:`ModelControl` serves RepositoryModelLoad (the model's
  folder in the configured repository, nothing else) and RepositoryModelUnload.

Triton's model-control CVEs and TorchServe's ShellTorch came from load calls
that fetched from URLs or wrote files sent over the wire. A load here names a
model folder of the repository and nothing else: no URL is ever fetched and
every parameter (Triton's ``config`` override and ``file:`` contents) is
refused, so this API can only choose among files the operator put there. A
Python model (whose model.py is code) is refused by name unless the server was
started with ``--allow-python-load``; ``--load-model`` (the operator's own
choice at start-up) loads one regardless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from onnxserve.layout import MODEL_NAME_RULE, is_valid_model_name
from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.server.errors import (
    InvalidInput,
    ModelControlRefused,
    ModelLoadFailed,
    quoted,
)
from onnxserve.server.registry import ModelRegistry, ensembles_last

log = logging.getLogger(__name__)


class RepositoryPoller:
    """``poll`` mode: rescan the repository periodically and apply what changed."""

    def __init__(self, registry: ModelRegistry, interval_s: float) -> None:
        self._registry = registry
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.poll_once()
            except Exception:
                log.exception("repository poll failed; the next one tries again")

    async def poll_once(self) -> None:
        """One scan: apply every model whose folder changed, forget the ones that left."""
        registry = self._registry
        scan = await registry.scan()
        present = {source.name for source in scan.models}
        for source in ensembles_last(scan.models):
            if registry.changed(source):
                await registry.apply(source)
        for name in registry.model_names():
            if name not in present:
                log.info("model '%s' left the repository: it drains and unloads", name)
                await registry.forget(name)


def _check_parameters(parameters: Mapping[str, pb.ModelRepositoryParameter], rpc: str) -> None:
    for key in parameters:
        if key.startswith("file:"):
            raise InvalidInput(
                f"{rpc}: onnxserve never accepts model files over the wire ('{key}'); put "
                "the files in the model repository and load the model by name"
            )
        if key == "config":
            raise InvalidInput(
                f"{rpc}: config overrides are not accepted; edit the model's config.pbtxt "
                "in the repository"
            )
        if not (rpc == "RepositoryModelUnload" and key == "unload_dependents"):
            raise InvalidInput(f"{rpc}: unknown parameter '{key}'")


class ModelControl:
    """RepositoryModelLoad / RepositoryModelUnload, served only in ``explicit`` mode."""

    def __init__(self, registry: ModelRegistry, mode: str, allow_python_load: bool = False) -> None:
        self._registry = registry
        self.mode = mode
        # Python models run their model.py: loaded on a network call only when allowed.
        self.allow_python_load = allow_python_load

    @property
    def explicit(self) -> bool:
        return self.mode == "explicit"

    def _check(self, rpc: str, repository: str, name: str) -> None:
        if not self.explicit:
            raise ModelControlRefused(
                f"{rpc} is refused: the server runs with --model-control-mode {self.mode}; "
                "models are loaded and unloaded by "
                + ("repository polling" if self.mode == "poll" else "restarting it")
                + " (start it with --model-control-mode explicit to allow this call)"
            )
        if repository:
            raise InvalidInput(
                f"{rpc}: repository_name must be empty (the server has one model repository)"
            )
        if not is_valid_model_name(name):
            raise InvalidInput(
                f"{rpc}: '{quoted(name)}' is not a valid model name ({MODEL_NAME_RULE})"
            )

    async def load(self, request: pb.RepositoryModelLoadRequest) -> None:
        """Load (or reload what changed of) a model from its repository folder."""
        rpc = "RepositoryModelLoad"
        self._check(rpc, request.repository_name, request.model_name)
        _check_parameters(request.parameters, rpc)
        log.info("%s: loading model '%s'", rpc, request.model_name)
        # Shielded: a caller whose deadline passes leaves a load that goes on to its end
        # (RepositoryIndex shows how it ended), never one stopped half-way.
        entry = await asyncio.shield(
            self._registry.load(request.model_name, allow_python=self.allow_python_load)
        )
        if entry.error is not None:
            raise ModelLoadFailed(f"model '{entry.name}' failed to load: {entry.error}")
        failed = [f"version {v}: {s.reason}" for v, s in entry.versions.items() if s.reason]
        if not entry.ready_versions():
            raise ModelLoadFailed(f"model '{entry.name}' failed to load: {'; '.join(failed)}")
        if failed:
            raise ModelLoadFailed(
                f"model '{entry.name}' loaded only in part (versions "
                f"{', '.join(map(str, entry.ready_versions()))} serve): {'; '.join(failed)}"
            )

    async def unload(self, request: pb.RepositoryModelUnloadRequest) -> None:
        """Drain and unload every version of a model; returns once they have drained."""
        rpc = "RepositoryModelUnload"
        self._check(rpc, request.repository_name, request.model_name)
        _check_parameters(request.parameters, rpc)
        if request.model_name not in self._registry.model_names():
            raise self._registry.unknown(request.model_name)
        log.info("%s: unloading model '%s'", rpc, request.model_name)
        await asyncio.shield(self._registry.unload(request.model_name))
