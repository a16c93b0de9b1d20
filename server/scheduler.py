"""Schedulers: how a model's requests reach its onnxruntime session.

Every scheduler offers ``infer(request, deadline_ns) -> outputs`` to the
service and records statistics. The direct scheduler runs each request on its
own, at most ``instance_count`` at once, through the same batch executor as
the dynamic batcher (a batch of one request); dynamic batching lives in
``onnxserve.server.batching`` and is chosen by :func:`create_scheduler` when the
config asks for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np

from onnxserve.server.batching.executor import ExecutedBatch, executor_for
from onnxserve.server.errors import RequestTimeout
from onnxserve.server.inference import DecodedRequest
from onnxserve.server.model import ModelVersion


class Scheduler(Protocol):
    """What the service needs from a model's scheduler."""

    async def infer(
        self, request: DecodedRequest, deadline_ns: int | None
    ) -> dict[str, np.ndarray]:
        """Run the request; ``deadline_ns`` is a time.monotonic_ns() instant or None."""
        ...

    async def close(self) -> None:
        """Finish what is queued, then release threads."""
        ...


class DirectScheduler:
    """One execution per request, up to ``instance_count`` in parallel."""

    def __init__(self, model: ModelVersion) -> None:
        self._model = model
        self._executor = executor_for(model)
        self._threads = ThreadPoolExecutor(
            max_workers=model.instance_count, thread_name_prefix=f"ort-{model.name}"
        )

    def _run(self, request: DecodedRequest, deadline_ns: int | None) -> tuple[ExecutedBatch, int]:
        started = time.monotonic_ns()
        if deadline_ns is not None and started > deadline_ns:
            raise RequestTimeout(
                f"the request's deadline passed after {(started - request.arrival_ns) // 1000} us "
                "in the queue; it was not run"
            )
        return self._executor.run([request]), started

    async def infer(
        self, request: DecodedRequest, deadline_ns: int | None
    ) -> dict[str, np.ndarray]:
        loop = asyncio.get_running_loop()
        try:
            executed, started = await loop.run_in_executor(
                self._threads, self._run, request, deadline_ns
            )
        except BaseException as exc:
            self._model.statistics.record_failure(time.monotonic_ns() - request.arrival_ns, exc)
            raise
        self._executor.record([request], executed, started)
        outcome = executed.outcomes[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._threads.shutdown, True)


class ClosingScheduler:
    """A scheduler that releases its model's own resources once closed (Python processes)."""

    def __init__(self, inner: Scheduler, release: Callable[[], None]) -> None:
        self._inner = inner
        self._release = release

    async def infer(
        self, request: DecodedRequest, deadline_ns: int | None
    ) -> dict[str, np.ndarray]:
        return await self._inner.infer(request, deadline_ns)

    async def close(self) -> None:
        await self._inner.close()
        await asyncio.get_running_loop().run_in_executor(None, self._release)


def create_scheduler(model: ModelVersion) -> Scheduler:
    """The scheduler a model's config asks for: dynamic batching, or one run per request."""
    if model.config.HasField("dynamic_batching") and model.config.max_batch_size > 0:
        from onnxserve.server.batching import DynamicBatcher

        return DynamicBatcher(model)
    return DirectScheduler(model)
