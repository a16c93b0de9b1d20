"""The batcher's queue: priority levels, queue policies, timeouts, and picking a batch.

- Priority levels (1 is the highest) are served in order, FIFO within a level.
- Each level's ModelQueuePolicy bounds its queue (QueueFull at once) and times
  requests out: REJECT fails a request that waited too long without running
  (DEADLINE_EXCEEDED); DELAY serves it after that level's requests that are on
  time. A request whose gRPC deadline has passed is dropped before it costs
  compute.
- Rows, not requests, fill a batch: a request with batch dim 3 takes 3 of the
  batch's rows, and a request is never split across batches.
- Only requests whose non-batch shapes agree are merged; the others wait for a
  batch of their own kind (variable-length inputs batch per length).

Everything here runs on the event loop, so it needs no locks. The queue says
which requests would form the next batch (:meth:`RequestQueue.pick`); whether
that batch leaves now or waits is the batcher's decision.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from onnxserve.server.config_batching import BatchingConfig
from onnxserve.server.errors import InvalidInput, QueueFull, RequestTimeout
from onnxserve.server.inference import DecodedRequest

QUEUED = 0
RUNNING = 1
FINISHED = 2

Outputs = dict[str, np.ndarray]


class QueuedRequest:
    """One request in the batcher, from its arrival until its outcome is delivered."""

    __slots__ = (
        "delay_on_timeout",
        "future",
        "key",
        "level",
        "outcome",
        "queue_timeout_ns",
        "reject_at_ns",
        "request",
        "rows",
        "state",
        "timer",
    )

    def __init__(
        self,
        request: DecodedRequest,
        future: asyncio.Future[Outputs],
        key: tuple[object, ...],
        level: int,
    ) -> None:
        self.request = request
        self.future = future
        self.rows = request.batch_size
        self.key = key
        self.level = level
        self.state = QUEUED
        self.queue_timeout_ns = 0  # monotonic instant after which DELAY applies; 0: never
        self.delay_on_timeout = False
        self.reject_at_ns = 0  # monotonic instant after which it fails unrun; 0: never
        self.timer: asyncio.TimerHandle | None = None
        # With preserve_ordering, the finished outcome waits here for its turn.
        self.outcome: Outputs | BaseException | None = None


@dataclass
class Pick:
    """The requests that would form the next batch, still queued."""

    entries: list[QueuedRequest]
    rows: int
    # A request of the batch's kind did not fit: the batch cannot grow.
    blocked: bool

    def oldest_arrival(self) -> int:
        return min(e.request.arrival_ns for e in self.entries)


class RequestQueue:
    """The queued requests of one model, one FIFO per priority level."""

    def __init__(
        self,
        config: BatchingConfig,
        model_name: str,
        input_names: Sequence[str],
        on_timeout: Callable[[QueuedRequest, RequestTimeout], None],
    ) -> None:
        self._config = config
        self._model_name = model_name
        self._input_names = tuple(input_names)
        self._on_timeout = on_timeout
        self._levels: list[deque[QueuedRequest]] = [deque() for _ in range(config.priority_levels)]
        self.count = 0  # requests queued
        self.rows = 0  # their rows

    def entry_for(self, request: DecodedRequest, future: asyncio.Future[Outputs]) -> QueuedRequest:
        """A new entry, keyed so that only requests of equal non-batch shapes merge."""
        inputs = request.inputs
        key = tuple(inputs[name].shape[1:] for name in self._input_names)
        return QueuedRequest(request, future, key, self._config.level_of(request.priority))

    def admit(
        self, entry: QueuedRequest, deadline_ns: int | None, loop: asyncio.AbstractEventLoop
    ) -> None:
        """Queue the entry under its level's policy, or raise why it cannot be queued."""
        config = self._config
        if entry.rows > config.max_rows:
            raise InvalidInput(
                f"a request of {entry.rows} rows cannot fit a batch of model "
                f"'{self._model_name}', whose largest allowed batch size is {config.max_rows}"
            )
        policy = config.policies[entry.level]
        queue = self._levels[entry.level]
        if policy.max_queue_size and len(queue) >= policy.max_queue_size:
            raise QueueFull(
                f"model '{self._model_name}' has {len(queue)} requests queued at priority "
                f"level {entry.level + 1}, its max_queue_size; retry later"
            )
        arrival = entry.request.arrival_ns
        timeout = policy.timeout_of(entry.request.timeout_us)
        reject_at = deadline_ns or 0
        if timeout:
            if policy.delay_on_timeout:
                entry.queue_timeout_ns = arrival + timeout
                entry.delay_on_timeout = True
            elif reject_at == 0 or arrival + timeout < reject_at:
                reject_at = arrival + timeout
        if reject_at and reject_at <= time.monotonic_ns():
            raise RequestTimeout(
                f"the request to model '{self._model_name}' timed out before it was queued"
            )
        entry.reject_at_ns = reject_at
        queue.append(entry)
        self.count += 1
        self.rows += entry.rows
        if reject_at:
            entry.timer = loop.call_at(reject_at / 1e9, self._expire, entry)

    def remove(self, entry: QueuedRequest) -> None:
        """Take a queued entry out of its queue (it will not run)."""
        queue = self._levels[entry.level]
        if queue and queue[0] is entry:
            queue.popleft()
        else:
            queue.remove(entry)
        self.count -= 1
        self.rows -= entry.rows
        entry.state = FINISHED

    def drain(self) -> list[QueuedRequest]:
        """Take every queued entry out (none of them will run)."""
        drained = []
        for queue in self._levels:
            while queue:
                entry = queue[0]
                self.remove(entry)
                drained.append(entry)
        return drained

    def timeout_error(self, entry: QueuedRequest) -> RequestTimeout:
        waited = (time.monotonic_ns() - entry.request.arrival_ns) // 1000
        return RequestTimeout(
            f"the request to model '{self._model_name}' timed out after {waited} us in the "
            "queue; it was not run"
        )

    def _expire(self, entry: QueuedRequest) -> None:
        """Timer: a queued request reached its deadline or REJECT timeout unrun."""
        entry.timer = None
        if entry.state != QUEUED:
            return
        self.remove(entry)
        self._on_timeout(entry, self.timeout_error(entry))

    def oldest_arrival(self) -> int:
        return min(q[0].request.arrival_ns for q in self._levels if q)

    def _candidates(self, now: int) -> Iterator[QueuedRequest]:
        """Queued entries in service order: by level; on-time before DELAYed, FIFO."""
        for queue in self._levels:
            delayed = []
            for entry in queue:
                if entry.delay_on_timeout and entry.queue_timeout_ns <= now:
                    delayed.append(entry)
                else:
                    yield entry
            yield from delayed

    def pick(self, now: int) -> tuple[Pick, list[QueuedRequest]]:
        """The next batch in service order (left queued), and the expired entries taken out.

        The batch takes the kind (non-batch shapes) of the first request in
        service order and grows with requests of that kind until the target
        rows are reached or one does not fit.
        """
        config = self._config
        target = config.target_rows
        picked: list[QueuedRequest] = []
        expired: list[QueuedRequest] = []
        rows = 0
        key: tuple[object, ...] | None = None
        blocked = False
        for entry in self._candidates(now):
            if entry.reject_at_ns and entry.reject_at_ns <= now:
                expired.append(entry)
                continue
            if key is None:
                key = entry.key
            elif entry.key != key:
                continue
            if rows + entry.rows > config.max_rows:
                blocked = True
                break
            picked.append(entry)
            rows += entry.rows
            if rows >= target:
                break
        for entry in expired:
            self.remove(entry)
        return Pick(picked, rows, blocked), expired

    def take(self, entries: Sequence[QueuedRequest]) -> None:
        """The picked entries leave the queue to run."""
        for entry in entries:
            self.remove(entry)
            entry.state = RUNNING
            if entry.timer is not None:
                entry.timer.cancel()
                entry.timer = None
