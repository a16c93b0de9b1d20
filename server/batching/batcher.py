"""The dynamic batcher: when a batch leaves, where it runs, and how its answers go back.

The queue (:mod:`.queue`) says which requests would form the next batch, the
load estimator (:mod:`.load`) how busy the model is lately, the executor
(:mod:`.executor`) runs a batch; this module decides, in one place
(:meth:`DynamicBatcher._ready_at`), whether the next batch leaves now or waits:

- A batch is formed only when a model instance is free. Requests that arrive
  while every instance is busy pile up and leave together, so with no
  ``max_queue_delay_microseconds`` a lone request never waits, and under load
  batches grow by themselves to what the model's speed calls for. Under
  concurrent load (not for a lone request) a batch also waits for company
  while requests keep arriving (at most 16 one-row run times, capped at 8 ms):
  on a small machine the cycles a model wastes on tiny batches are taken
  from the gRPC stack.
- With a delay configured, a batch that is not full (``max_batch_size``, or the
  largest ``preferred_batch_size``) waits until its oldest request has waited
  that long.
- A lone request on an idle model runs on the event loop's thread when a
  one-row run is known to be short, saving two thread hand-offs.

The queue and all bookkeeping live on the event loop, so they need no locks;
only merging, onnxruntime and splitting run on the instance threads
(``instance_count`` of them, so that many batches are in flight at once)
(onnxruntime releases the GIL while it computes). Every outcome reaches its
request through an asyncio future that is checked with ``done()`` first,
because a cancelled call leaves its future already done.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from onnxserve.server.batching.executor import ExecutedBatch, Outputs, executor_for
from onnxserve.server.batching.load import LoadEstimator
from onnxserve.server.batching.queue import (
    FINISHED,
    QUEUED,
    Pick,
    QueuedRequest,
    RequestQueue,
)
from onnxserve.server.config_batching import BatchingConfig
from onnxserve.server.errors import (
    ModelUnavailable,
    RequestCancelled,
    ServerError,
)
from onnxserve.server.inference import DecodedRequest
from onnxserve.server.model import ModelVersion

# A call cancelled this close to its deadline or queue timeout counts as timed out.
TIMER_SLACK_NS = 2_000_000


class _RunningBatch:
    """Entries that run together, and what the executor made of them."""

    __slots__ = ("dispatched_ns", "entries", "result", "rows")

    def __init__(self, entries: list[QueuedRequest], dispatched_ns: int) -> None:
        self.entries = entries
        self.dispatched_ns = dispatched_ns
        self.rows = sum(e.rows for e in entries)
        self.result: ExecutedBatch | None = None


class DynamicBatcher:
    """The scheduler of a model with ``dynamic_batching``: see the module docstring."""

    def __init__(self, model: ModelVersion) -> None:
        self._model = model
        self._config = BatchingConfig.from_model_config(model.config)
        self._instances = model.instance_count
        self._free = self._instances
        self._threads = ThreadPoolExecutor(
            max_workers=self._instances, thread_name_prefix=f"ort-{model.name}"
        )
        self._executor = executor_for(model, self._config.padded_rows)
        self._queue = RequestQueue(
            self._config, model.name, tuple(model.signature.inputs), self._finish
        )
        self._load = LoadEstimator()
        self._ordered: deque[QueuedRequest] = deque()  # preserve_ordering: unreleased
        self._delay_timer: asyncio.TimerHandle | None = None
        self._delay_timer_at = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._idle: asyncio.Event | None = None
        self._running_rows = 0
        self._schedule_pending = False

    @property
    def config(self) -> BatchingConfig:
        return self._config

    # -- the service's side ---------------------------------------------------------------

    async def infer(self, request: DecodedRequest, deadline_ns: int | None) -> Outputs:
        """Queue the request, wait for its batch, return its own rows of the outputs."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Outputs] = loop.create_future()
        entry = self._queue.entry_for(request, future)
        try:
            self._enqueue(entry, deadline_ns, loop)
        except ServerError as exc:
            self._model.statistics.record_failure(time.monotonic_ns() - request.arrival_ns, exc)
            raise
        try:
            return await future
        except asyncio.CancelledError:
            # The caller went away: a queued request leaves the queue and never
            # runs; a running one finishes and its outcome is dropped. gRPC also
            # cancels a call the instant its deadline passes, which can come
            # before the queue's own timer (uvloop's timers have millisecond
            # resolution): a request cancelled at its deadline failed by it.
            if entry.state == QUEUED:
                self._queue.remove(entry)
                late = (
                    entry.reject_at_ns
                    and time.monotonic_ns() >= entry.reject_at_ns - TIMER_SLACK_NS
                )
                if late:
                    self._finish(entry, self._queue.timeout_error(entry))
                else:
                    self._finish(entry, RequestCancelled("the request was cancelled"))
            raise

    async def close(self) -> None:
        """Stop taking requests, fail what is still queued, wait for running batches."""
        self._closing = True
        for entry in self._queue.drain():
            self._finish(entry, ModelUnavailable(f"model '{self._model.name}' is shutting down"))
        if self._free < self._instances:
            self._idle = asyncio.Event()
            await self._idle.wait()
        await asyncio.get_running_loop().run_in_executor(None, self._threads.shutdown, True)

    def _enqueue(
        self, entry: QueuedRequest, deadline_ns: int | None, loop: asyncio.AbstractEventLoop
    ) -> None:
        if self._closing:
            raise ModelUnavailable(f"model '{self._model.name}' is shutting down")
        busy_rows = self._queue.rows + self._running_rows
        self._queue.admit(entry, deadline_ns, loop)
        self._load.arrival(entry.request.arrival_ns, busy_rows, entry.rows)
        if self._config.preserve_ordering:
            self._ordered.append(entry)
        if self._free and not self._schedule_pending:
            # Decide on the next loop turn, not now: requests that arrived
            # together are all queued by then and leave in one batch.
            self._schedule_pending = True
            loop.call_soon(self._deferred_schedule)

    # -- forming batches ---------------------------------------------------------------------

    def _schedule(self) -> None:
        """Dispatch batches while an instance is free and the queue has a ready batch."""
        queue = self._queue
        while self._free and queue.count:
            now = time.monotonic_ns()
            pick, expired = queue.pick(now)
            for entry in expired:
                self._finish(entry, queue.timeout_error(entry))
            if not pick.entries:
                return
            ready_at = self._ready_at(pick)
            if now < ready_at:
                self._arm_delay_timer(ready_at)
                return
            queue.take(pick.entries)
            self._dispatch(pick.entries, now)

    def _ready_at(self, pick: Pick) -> int:
        """When the picked batch may leave (0: now); the one place a batch is held back."""
        config = self._config
        delay = config.max_queue_delay_ns
        if delay:
            if pick.rows < config.target_rows and not pick.blocked:
                return pick.oldest_arrival() + delay
            return 0
        if self._gathering():
            return self._load.gather_until(self._queue.oldest_arrival())
        return 0

    def _gathering(self) -> bool:
        """Without a configured delay: hold a batch briefly under concurrent load?

        See :meth:`LoadEstimator.gathering`, which decides it from the rows
        queued and running now.
        """
        return self._load.gathering(self._queue.rows, self._running_rows, self._config.target_rows)

    def _gather_ns(self) -> int:
        """The longest a gathering batch's oldest request waits: some one-row runs, capped."""
        return self._load.gather_ns()

    def _deferred_schedule(self) -> None:
        self._schedule_pending = False
        self._schedule()

    def _arm_delay_timer(self, at_ns: int) -> None:
        if self._delay_timer is not None:
            if self._delay_timer_at <= at_ns:
                return
            self._delay_timer.cancel()
        assert self._loop is not None
        self._delay_timer_at = at_ns
        self._delay_timer = self._loop.call_at(at_ns / 1e9, self._delay_expired)

    def _delay_expired(self) -> None:
        self._delay_timer = None
        self._schedule()

    # -- running batches -----------------------------------------------------------------------

    def _dispatch(self, entries: list[QueuedRequest], now: int) -> None:
        batch = _RunningBatch(entries, now)
        self._free -= 1
        self._running_rows += batch.rows
        if self._runs_inline(entries):
            batch.result = self._executor.run([e.request for e in entries])
            self._complete(batch)
            return
        try:
            self._threads.submit(self._run_on_instance, batch)
        except RuntimeError as exc:  # the thread pool is shut down
            error = ModelUnavailable(f"model '{self._model.name}' is shutting down: {exc}")
            batch.result = ExecutedBatch.failed(len(entries), error)
            self._complete(batch)

    def _runs_inline(self, entries: list[QueuedRequest]) -> bool:
        """Whether to run this batch on the event loop's own thread.

        Only a batch of one request, when no other request is queued or
        running and the load estimator allows it
        (:meth:`LoadEstimator.inline_allowed`: requests have been coming one at
        a time and a lone run is known to be short). Under concurrent load
        batches always go to the instance threads, so the loop keeps receiving
        requests while the model computes.
        """
        return (
            self._executor.may_run_inline
            and len(entries) == 1
            and self._free == self._instances - 1
            and not self._queue.count
            and self._load.inline_allowed()
        )

    def _run_on_instance(self, batch: _RunningBatch) -> None:
        """On an instance thread: run the batch, then report back to the event loop."""
        batch.result = self._executor.run([e.request for e in batch.entries])
        loop = self._loop
        assert loop is not None
        # A closed event loop raises RuntimeError: nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._complete, batch)

    def _complete(self, batch: _RunningBatch) -> None:
        """On the event loop: hand each request its outcome, then look for the next batch."""
        self._free += 1
        self._running_rows -= batch.rows
        result = batch.result
        assert result is not None
        self._executor.record([e.request for e in batch.entries], result, batch.dispatched_ns)
        for timing in result.executions:
            if timing.batch_size == 1:
                self._load.lone_run(timing.input_ns + timing.infer_ns + timing.output_ns)
        for entry, outcome in zip(batch.entries, result.outcomes, strict=True):
            self._settle(entry, outcome)
        if self._queue.count and not self._closing:
            self._schedule()
        elif self._idle is not None and self._free == self._instances:
            self._idle.set()

    # -- delivering outcomes -------------------------------------------------------------------

    def _finish(self, entry: QueuedRequest, error: BaseException) -> None:
        """A request ends in failure before it ran (it is out of the queue already)."""
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        self._model.statistics.record_failure(time.monotonic_ns() - entry.request.arrival_ns, error)
        self._settle(entry, error)

    def _settle(self, entry: QueuedRequest, outcome: Outputs | BaseException) -> None:
        """Deliver an outcome, in arrival order when preserve_ordering asks for it."""
        entry.state = FINISHED
        if not self._config.preserve_ordering:
            _deliver(entry.future, outcome)
            return
        entry.outcome = outcome
        ordered = self._ordered
        while ordered and ordered[0].outcome is not None:
            head = ordered.popleft()
            assert head.outcome is not None
            _deliver(head.future, head.outcome)
            head.outcome = None


def _deliver(future: asyncio.Future[Outputs], outcome: Outputs | BaseException) -> None:
    if future.done():  # cancelled by the caller: nobody to tell
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
