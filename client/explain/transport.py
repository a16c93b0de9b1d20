"""Perturbed rows to the server: in batches of at most the model's max_batch_size, a bounded
number of calls in flight, every call and row counted.

An estimator asks for many rows at once (occlusion all of them, KernelSHAP and
LIME all their samples, the Partition explainer a few hundred at a time).
:class:`Predictor` cuts them into requests of at most ``max_rows`` rows, each
with the model's other inputs repeated alongside, and hands the list to a
*sender*: :class:`ThreadSender` for the blocking :class:`Client` (a thread per
call in flight, at most ``concurrency``), :class:`LoopSender` for the
:class:`AsyncClient` (coroutines on the client's own event loop under a
semaphore of ``concurrency``), so the server's batcher sees up to
``concurrency`` requests at a time to merge. The first failed call cancels
those not yet sent and raises the server's error unchanged.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from onnxserve.client.aio import AsyncClient
    from onnxserve.client.sync import Client

__all__ = ["LoopSender", "Predictor", "Request", "ThreadSender"]

#: One request's inputs by name.
Request = dict[str, np.ndarray]
#: Sends requests, returns their outputs in order.
Sender = Callable[[Sequence[Request]], list[dict[str, np.ndarray]]]


@dataclass
class Predictor:
    """Rows of the explained input in, one score per row out, through the server.

    ``fixed`` holds the model's other inputs (one row each, without the batch
    dimension); ``batched`` is False for a model without a batch dimension,
    which is sent one row per call. ``target`` indexes the flattened output row
    (None: the whole row is returned by :meth:`outputs`, and :meth:`scores`
    refuses).
    """

    send: Sender
    input_name: str
    output_name: str
    max_rows: int
    batched: bool = True
    fixed: Mapping[str, np.ndarray] = field(default_factory=dict)
    target: int | None = None
    calls: int = 0
    inferences: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _requests(self, rows: np.ndarray) -> list[Request]:
        step = self.max_rows if self.batched else 1
        requests = []
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            if self.batched:
                request = {
                    name: np.repeat(value[np.newaxis, ...], len(chunk), axis=0)
                    for name, value in self.fixed.items()
                }
                request[self.input_name] = chunk
            else:
                request = {name: value for name, value in self.fixed.items()}
                request[self.input_name] = chunk[0]
            requests.append(request)
        return requests

    def outputs(self, rows: np.ndarray) -> np.ndarray:
        """The model's output for each row, flattened per row: ``(len(rows), k)`` float64."""
        rows = np.asarray(rows)
        if not len(rows):
            return np.zeros((0, 0))
        requests = self._requests(rows)
        answers = self.send(requests)
        with self._lock:
            self.calls += len(requests)
            self.inferences += len(rows)
        parts = []
        for request, answer in zip(requests, answers, strict=True):
            if self.output_name not in answer:
                raise KeyError(
                    f"the server's answer has no output '{self.output_name}'; "
                    f"it has {', '.join(answer) or 'none'}"
                )
            count = len(request[self.input_name]) if self.batched else 1
            parts.append(np.asarray(answer[self.output_name], np.float64).reshape(count, -1))
        return np.concatenate(parts)

    def scores(self, rows: np.ndarray) -> np.ndarray:
        """The explained output (``target`` of each row's output): ``(len(rows),)`` float64."""
        if self.target is None:
            raise RuntimeError("the target output element is not chosen yet")
        outputs = self.outputs(rows)
        if not len(outputs):
            return np.zeros(0)
        if self.target >= outputs.shape[1]:
            raise IndexError(
                f"target {self.target} is past the {outputs.shape[1]} values of "
                f"output '{self.output_name}'"
            )
        return outputs[:, self.target]


def _infer_options(sender: ThreadSender | LoopSender) -> dict[str, Any]:
    """What every request of an explanation asks: the one output, the version, the deadline."""
    return {"outputs": [sender.output_name], "version": sender.version, "timeout": sender.timeout}


@dataclass
class ThreadSender:
    """Blocking calls from at most ``concurrency`` threads (the :class:`Client` is thread-safe)."""

    client: Client
    model: str
    output_name: str
    concurrency: int
    version: str | int | None = None
    timeout: float | None = None
    peak: int = 0
    _in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _one(self, request: Request) -> dict[str, np.ndarray]:
        with self._lock:
            self._in_flight += 1
            self.peak = max(self.peak, self._in_flight)
        try:
            return self.client.infer(self.model, request, **_infer_options(self))
        finally:
            with self._lock:
                self._in_flight -= 1

    def __call__(self, requests: Sequence[Request]) -> list[dict[str, np.ndarray]]:
        if len(requests) == 1 or self.concurrency == 1:
            return [self._one(request) for request in requests]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            futures = [pool.submit(self._one, request) for request in requests]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for future in done:
                if future.exception() is not None:
                    for pending in futures:
                        pending.cancel()
                    raise future.exception()  # type: ignore[misc]
            return [future.result() for future in futures]


@dataclass
class LoopSender:
    """Coroutines on the :class:`AsyncClient`'s loop, ``concurrency`` at a time.

    Called from a worker thread (the estimators are blocking code): each call
    schedules its requests on ``loop`` and waits for them there.
    """

    client: AsyncClient
    loop: asyncio.AbstractEventLoop
    model: str
    output_name: str
    concurrency: int
    version: str | int | None = None
    timeout: float | None = None
    peak: int = 0
    _in_flight: int = 0

    async def _all(self, requests: Sequence[Request]) -> list[dict[str, np.ndarray]]:
        gate = asyncio.Semaphore(self.concurrency)

        async def one(request: Request) -> dict[str, np.ndarray]:
            async with gate:
                self._in_flight += 1
                self.peak = max(self.peak, self._in_flight)
                try:
                    return await self.client.infer(self.model, request, **_infer_options(self))
                finally:
                    self._in_flight -= 1

        tasks = [asyncio.ensure_future(one(request)) for request in requests]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()

    def __call__(self, requests: Sequence[Request]) -> list[dict[str, np.ndarray]]:
        return run_on(self.loop, self._all(requests))


def run_on(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coroutine`` on ``loop`` from another thread and wait for its result."""
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result()


class Stopwatch:
    """Wall-clock seconds since it was made."""

    def __init__(self) -> None:
        self._start = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self._start
