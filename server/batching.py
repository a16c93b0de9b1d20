"""Dynamic batching: merge concurrent requests of one model into one onnxruntime run.

Batching is why a server beats calling onnxruntime in each service: an LSTM
runs several times more samples per second at batch 64 than at batch 1. The
batcher follows Triton's dynamic batcher where its config says so, and
TensorFlow Serving's opportunistic batching where it says nothing:

- Rows, not requests, fill a batch: a request with batch dim 3 takes 3 of
  ``max_batch_size`` rows. A request is never split across batches.
- A batch is formed only when a model instance is free. Requests that arrive
  while every instance is busy pile up and leave together, so with no
  ``max_queue_delay_microseconds`` a lone request never waits, and under load
  batches grow by themselves to what the model's speed calls for. Under
  concurrent load (not for a lone request) a batch also waits for company
  while requests keep arriving (at most 16 one-row run times, capped at 8 ms):
  on a small machine the cycles a model wastes on tiny batches are taken
  from the gRPC stack.
- A lone request on an idle model runs on the event loop's thread when a
  one-row run is known to be short, saving two thread hand-offs.
- With a delay configured, a batch that is not full (``max_batch_size``, or the
  largest ``preferred_batch_size``) waits until its oldest request has waited
  that long.
- Only requests whose non-batch shapes agree are merged; the others wait for
  a batch of their own kind (variable-length inputs batch per length).
- Priority levels (1 is the highest) are served in order, FIFO within a level;
  queue policies per level bound the queue (QueueFull at once) and time out
  requests (REJECT: DEADLINE_EXCEEDED; DELAY: served after that level's
  requests that are on time). A request whose gRPC deadline has passed is
  dropped before it costs compute.

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
import logging
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from onnxserve.layout import ALLOWED_BATCH_SIZES_PARAMETER
from onnxserve.protocol import model_config_pb2 as mc
from onnxserve.server.errors import (
    ConfigError,
    InvalidInput,
    ModelExecutionError,
    ModelUnavailable,
    QueueFull,
    RequestCancelled,
    RequestTimeout,
    ServerError,
)
from onnxserve.server.inference import InferRequest
from onnxserve.server.model import ModelVersion
from onnxserve.server.statistics import ExecutionTiming

log = logging.getLogger(__name__)


_QUEUED = 0
_RUNNING = 1
_FINISHED = 2

Outputs = dict[str, np.ndarray]

# A lone request runs on the event loop's thread only when recent arrivals
# found fewer than this many rows queued or running (smoothed) ...
_INLINE_MAX_LOAD = 0.5
# ... and a one-row run has been taking less than this (so the loop is never
# held for long, whatever the model).
_INLINE_MAX_RUN_NS = 2_000_000
# Under concurrent load (smoothed rows queued or running at arrivals of at
# least this), a batch short of its target waits up to this many one-row run
# times, and never more than the cap, for more requests ...
_GATHER_MIN_LOAD = 2.0
_GATHER_RUNS = 16
_GATHER_MAX_NS = 8_000_000
# ... and stops waiting once no request came for this many average gaps.
_GATHER_PAUSE_GAPS = 2
# Per arrival, how much of the peak load figure is kept (half-life ~140 arrivals).
_PEAK_DECAY = 0.995
# Weight of the newest observation in those smoothed figures.
# After this long without an arrival the load figure starts again from zero,
# so the first requests after a burst are not held as if the burst went on.
_LOAD_RESET_NS = 20_000_000
_LOAD_SMOOTHING = 0.1


@dataclass(frozen=True)
class QueuePolicy:
    """One priority level's ModelQueuePolicy, times in nanoseconds (0: none)."""

    timeout_ns: int
    delay_on_timeout: bool
    allow_timeout_override: bool
    max_queue_size: int

    @classmethod
    def from_proto(cls, policy: mc.ModelQueuePolicy) -> QueuePolicy:
        return cls(
            timeout_ns=policy.default_timeout_microseconds * 1000,
            delay_on_timeout=policy.timeout_action == mc.ModelQueuePolicy.DELAY,
            allow_timeout_override=policy.allow_timeout_override,
            max_queue_size=policy.max_queue_size,
        )

    def timeout_of(self, request_timeout_us: int) -> int:
        """The request's queue timeout in ns (0: none), as Triton decides it.

        The request's ``timeout`` parameter counts only when the policy allows
        an override, and then it may shorten the default but never lengthen it
        (a default of 0 means no timeout, so any override shortens it).
        """
        timeout = self.timeout_ns
        if self.allow_timeout_override and request_timeout_us > 0:
            override = request_timeout_us * 1000
            if timeout == 0 or override < timeout:
                timeout = override
        return timeout


@dataclass(frozen=True)
class BatchingConfig:
    """What the batcher takes from a completed ModelConfig, checked once at load."""

    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...]
    max_queue_delay_ns: int
    preserve_ordering: bool
    priority_levels: int
    default_priority_level: int
    policies: tuple[QueuePolicy, ...]  # index 0 is priority level 1
    allowed_batch_sizes: tuple[int, ...]

    @classmethod
    def from_model_config(cls, config: mc.ModelConfig) -> BatchingConfig:
        """Read ``dynamic_batching``; raises ConfigError on values Triton would refuse."""
        name = config.name
        batching = config.dynamic_batching
        max_batch = config.max_batch_size
        if max_batch <= 0:
            raise ConfigError(f"model '{name}': dynamic batching needs max_batch_size > 0")
        preferred = tuple(sorted(set(batching.preferred_batch_size)))
        for size in preferred:
            if size < 1 or size > max_batch:
                raise ConfigError(
                    f"model '{name}': preferred_batch_size {size} is not within 1 to "
                    f"max_batch_size {max_batch}"
                )
        levels = batching.priority_levels
        default_level = batching.default_priority_level
        if levels == 0:
            if default_level not in (0, 1) or batching.priority_queue_policy:
                raise ConfigError(
                    f"model '{name}': default_priority_level and priority_queue_policy need "
                    "priority_levels > 0"
                )
            levels, default_level = 1, 1
        elif not 1 <= default_level <= levels:
            raise ConfigError(
                f"model '{name}': default_priority_level must be within 1 to priority_levels "
                f"({levels}), not {default_level}"
            )
        default_policy = QueuePolicy.from_proto(batching.default_queue_policy)
        for level in batching.priority_queue_policy:
            if not 1 <= level <= levels:
                raise ConfigError(
                    f"model '{name}': priority_queue_policy for level {level}, but "
                    f"priority_levels is {levels}"
                )
        policies = tuple(
            QueuePolicy.from_proto(batching.priority_queue_policy[level])
            if level in batching.priority_queue_policy
            else default_policy
            for level in range(1, levels + 1)
        )
        return cls(
            max_batch_size=max_batch,
            preferred_batch_sizes=preferred,
            max_queue_delay_ns=batching.max_queue_delay_microseconds * 1000,
            preserve_ordering=batching.preserve_ordering,
            priority_levels=levels,
            default_priority_level=default_level,
            policies=policies,
            allowed_batch_sizes=_allowed_batch_sizes(config),
        )

    def level_of(self, priority: int) -> int:
        """A request's priority as a 0-based level index; 0 or out of range is the default."""
        if priority == 0 or priority > self.priority_levels:
            priority = self.default_priority_level
        return priority - 1

    @property
    def target_rows(self) -> int:
        """Rows at which a batch leaves at once: the largest preferred size, else the max."""
        limit = self.max_batch_size
        if self.allowed_batch_sizes:
            limit = min(limit, self.allowed_batch_sizes[-1])
        if self.preferred_batch_sizes:
            return min(limit, self.preferred_batch_sizes[-1])
        return limit

    @property
    def max_rows(self) -> int:
        """Rows one batch may hold (padding cannot go beyond the largest allowed size)."""
        if self.allowed_batch_sizes:
            return min(self.max_batch_size, self.allowed_batch_sizes[-1])
        return self.max_batch_size

    def padded_rows(self, rows: int) -> int:
        """The allowed batch size a batch of ``rows`` is padded to (``rows`` if none)."""
        for size in self.allowed_batch_sizes:
            if size >= rows:
                return size
        return rows


def _allowed_batch_sizes(config: mc.ModelConfig) -> tuple[int, ...]:
    if ALLOWED_BATCH_SIZES_PARAMETER not in config.parameters:
        return ()
    text = config.parameters[ALLOWED_BATCH_SIZES_PARAMETER].string_value
    try:
        sizes = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise ConfigError(
            f"model '{config.name}': parameter {ALLOWED_BATCH_SIZES_PARAMETER} must be a "
            f"comma-separated list of batch sizes, not '{text}'"
        ) from None
    if not sizes or sizes[0] < 1 or sizes[-1] > config.max_batch_size:
        raise ConfigError(
            f"model '{config.name}': parameter {ALLOWED_BATCH_SIZES_PARAMETER} must list sizes "
            f"within 1 to max_batch_size ({config.max_batch_size}), not '{text}'"
        )
    return sizes


class _Entry:
    """One queued request and everything the batcher needs to decide about it."""

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
        "seq",
        "state",
        "timer",
    )

    def __init__(
        self,
        request: InferRequest,
        future: asyncio.Future[Outputs],
        key: tuple[object, ...],
        level: int,
        seq: int,
    ) -> None:
        self.request = request
        self.future = future
        self.rows = request.batch_size
        self.key = key
        self.level = level
        self.seq = seq
        self.state = _QUEUED
        self.queue_timeout_ns = 0  # monotonic instant after which DELAY applies; 0: never
        self.delay_on_timeout = False
        self.reject_at_ns = 0  # monotonic instant after which it fails unrun; 0: never
        self.timer: asyncio.TimerHandle | None = None
        # With preserve_ordering, the finished outcome waits here for its turn.
        self.outcome: Outputs | BaseException | None = None


class _Batch:
    """Entries that run together, and what the instance thread made of them."""

    __slots__ = ("dispatched_ns", "entries", "error", "results", "timing")

    def __init__(self, entries: list[_Entry], dispatched_ns: int) -> None:
        self.entries = entries
        self.dispatched_ns = dispatched_ns
        self.results: list[Outputs] = []
        self.timing: ExecutionTiming | None = None
        self.error: BaseException | None = None


class DynamicBatcher:
    """The scheduler of a model with ``dynamic_batching``: see the module docstring."""

    def __init__(self, model: ModelVersion) -> None:
        self._model = model
        self._config = BatchingConfig.from_model_config(model.config)
        self._instances = model.instance_count
        self._free = self._instances
        self._executor = ThreadPoolExecutor(
            max_workers=self._instances, thread_name_prefix=f"ort-{model.name}"
        )
        self._input_names = tuple(model.signature.inputs)
        self._output_order = tuple(model.signature.outputs)
        self._queues: list[deque[_Entry]] = [deque() for _ in range(self._config.priority_levels)]
        self._queued = 0
        self._queued_rows = 0
        self._seq = 0
        self._ordered: deque[_Entry] = deque()  # preserve_ordering: unreleased, by arrival
        self._delay_timer: asyncio.TimerHandle | None = None
        self._delay_timer_at = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._idle: asyncio.Event | None = None
        self._running_rows = 0
        self._schedule_pending = False
        # Smoothed rows queued or running when a request arrives, and the
        # smoothed duration of one-row runs: together they decide whether a
        # lone request may run on the event loop's thread (_runs_inline).
        self._recent_load = 0.0
        self._lone_run_ns = 0.0
        self._last_arrival_ns = 0
        self._gap_ns = 0.0  # smoothed time between arrivals
        # The most rows seen queued or running at once lately (slowly
        # forgotten): when that many are in, no one else is coming.
        self._peak_load = 0.0

    @property
    def config(self) -> BatchingConfig:
        return self._config

    # -- the service's side ---------------------------------------------------------------

    async def infer(self, request: InferRequest, deadline_ns: int | None) -> Outputs:
        """Queue the request, wait for its batch, return its own rows of the outputs."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Outputs] = loop.create_future()
        entry = _Entry(
            request, future, self._key_of(request), self._config.level_of(request.priority), 0
        )
        try:
            self._enqueue(entry, deadline_ns)
        except ServerError:
            self._model.statistics.record_failure(time.monotonic_ns() - request.arrival_ns)
            raise
        try:
            return await future
        except asyncio.CancelledError:
            # The caller went away: a queued request leaves the queue and never
            # runs; a running one finishes and its outcome is dropped.
            if entry.state == _QUEUED:
                self._remove(entry)
                self._finish(entry, RequestCancelled("the request was cancelled"))
            raise

    async def close(self) -> None:
        """Stop taking requests, fail what is still queued, wait for running batches."""
        self._closing = True
        for queue in self._queues:
            while queue:
                entry = queue[0]
                self._remove(entry)
                self._finish(
                    entry, ModelUnavailable(f"model '{self._model.name}' is shutting down")
                )
        if self._free < self._instances:
            self._idle = asyncio.Event()
            await self._idle.wait()
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)

    # -- queueing ---------------------------------------------------------------------------

    def _key_of(self, request: InferRequest) -> tuple[object, ...]:
        """Requests merge only when every input's non-batch shape agrees."""
        inputs = request.inputs
        return tuple(inputs[name].shape[1:] for name in self._input_names)

    def _enqueue(self, entry: _Entry, deadline_ns: int | None) -> None:
        if self._closing:
            raise ModelUnavailable(f"model '{self._model.name}' is shutting down")
        config = self._config
        if entry.rows > config.max_rows:
            raise InvalidInput(
                f"a request of {entry.rows} rows cannot fit a batch of model "
                f"'{self._model.name}', whose largest allowed batch size is {config.max_rows}"
            )
        policy = config.policies[entry.level]
        queue = self._queues[entry.level]
        if policy.max_queue_size and len(queue) >= policy.max_queue_size:
            raise QueueFull(
                f"model '{self._model.name}' has {len(queue)} requests queued at priority "
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
        now = time.monotonic_ns()
        if reject_at and reject_at <= now:
            raise RequestTimeout(
                f"the request to model '{self._model.name}' timed out before it was queued"
            )
        entry.reject_at_ns = reject_at
        busy_rows = self._queued_rows + self._running_rows
        gap = arrival - self._last_arrival_ns
        if gap > _LOAD_RESET_NS:
            self._recent_load = 0.0  # the stream had stopped: what follows starts afresh
            self._gap_ns = 0.0
            self._peak_load = 0.0
        elif gap >= 0:
            self._gap_ns += (gap - self._gap_ns) * _LOAD_SMOOTHING
        self._last_arrival_ns = max(self._last_arrival_ns, arrival)
        self._recent_load += (busy_rows - self._recent_load) * _LOAD_SMOOTHING
        self._peak_load = max(busy_rows + entry.rows, self._peak_load * _PEAK_DECAY)
        self._seq += 1
        entry.seq = self._seq
        queue.append(entry)
        self._queued += 1
        self._queued_rows += entry.rows
        if config.preserve_ordering:
            self._ordered.append(entry)
        loop = self._loop
        assert loop is not None
        if reject_at:
            entry.timer = loop.call_at(reject_at / 1e9, self._expire, entry)
        if self._free and not self._schedule_pending:
            # Decide on the next loop turn, not now: requests that arrived
            # together are all queued by then and leave in one batch.
            self._schedule_pending = True
            loop.call_soon(self._deferred_schedule)

    def _remove(self, entry: _Entry) -> None:
        """Take a queued entry out of its queue (it will not run)."""
        queue = self._queues[entry.level]
        if queue and queue[0] is entry:
            queue.popleft()
        else:
            queue.remove(entry)
        self._queued -= 1
        self._queued_rows -= entry.rows
        entry.state = _FINISHED

    def _expire(self, entry: _Entry) -> None:
        """Timer: a queued request reached its deadline or REJECT timeout unrun."""
        entry.timer = None
        if entry.state != _QUEUED:
            return
        self._remove(entry)
        self._finish(entry, self._timeout_error(entry))

    def _timeout_error(self, entry: _Entry) -> RequestTimeout:
        waited = (time.monotonic_ns() - entry.request.arrival_ns) // 1000
        return RequestTimeout(
            f"the request to model '{self._model.name}' timed out after {waited} us in the "
            "queue; it was not run"
        )

    # -- forming batches ---------------------------------------------------------------------

    def _oldest_arrival(self) -> int:
        return min(q[0].request.arrival_ns for q in self._queues if q)

    def _candidates(self, now: int) -> Iterator[_Entry]:
        """Queued entries in service order: by level; on-time before DELAYed, FIFO."""
        for queue in self._queues:
            delayed = []
            for entry in queue:
                if entry.delay_on_timeout and entry.queue_timeout_ns <= now:
                    delayed.append(entry)
                else:
                    yield entry
            yield from delayed

    def _schedule(self) -> None:
        """Dispatch batches while an instance is free and the queue has a ready batch."""
        config = self._config
        while self._free and self._queued:
            now = time.monotonic_ns()
            delay = config.max_queue_delay_ns
            if delay and self._queued_rows < config.target_rows:
                ready_at = self._oldest_arrival() + delay
                if now < ready_at:
                    self._arm_delay_timer(ready_at)
                    return
            elif not delay and self._gathering():
                ready_at = min(
                    self._oldest_arrival() + self._gather_ns(),
                    self._last_arrival_ns + _GATHER_PAUSE_GAPS * int(self._gap_ns),
                )
                if now < ready_at:
                    self._arm_delay_timer(ready_at)
                    return
            batch = self._form(now)
            if batch is None:
                return
            if batch:
                self._dispatch(batch, now)

    def _gathering(self) -> bool:
        """Without a configured delay: hold a batch briefly under concurrent load?

        When many clients keep requests coming, a free instance that takes
        whatever one or two requests are queued runs the model at its least
        efficient, and on a small machine those cycles are taken from the
        gRPC stack that feeds it (measured: 64 clients kept batches near 3).
        So while recent arrivals found at least ``_GATHER_MIN_LOAD`` rows
        queued or running, a batch short of its target waits for more, as
        long as requests keep arriving (no pause of a few average gaps), fewer
        rows are in than the most seen in at once lately (when all clients'
        requests are in, no one else is coming) and at most
        :meth:`_gather_ns` for its oldest request. A request that
        comes alone never sees such load, so it never waits.
        """
        return (
            self._recent_load >= _GATHER_MIN_LOAD
            and self._queued_rows < self._config.target_rows
            and self._queued_rows + self._running_rows < self._peak_load
            and self._lone_run_ns > 0
            and self._gap_ns > 0
        )

    def _gather_ns(self) -> int:
        """The longest a gathering batch's oldest request waits: some one-row runs, capped."""
        return int(min(_GATHER_RUNS * self._lone_run_ns, _GATHER_MAX_NS))

    def _form(self, now: int) -> list[_Entry] | None:
        """Pick the next batch; [] if only expired entries were found, None to wait."""
        config = self._config
        target = config.target_rows
        picked: list[_Entry] = []
        expired: list[_Entry] = []
        rows = 0
        key: tuple[object, ...] | None = None
        blocked = False  # a request of the batch's kind did not fit: it cannot grow
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
            self._remove(entry)
            self._finish(entry, self._timeout_error(entry))
        if not picked:
            return []
        delay = config.max_queue_delay_ns
        if delay and rows < target and not blocked:
            ready_at = min(e.request.arrival_ns for e in picked) + delay
            if now < ready_at:
                self._arm_delay_timer(ready_at)
                return None
        for entry in picked:
            self._remove(entry)
            entry.state = _RUNNING
            if entry.timer is not None:
                entry.timer.cancel()
                entry.timer = None
        return picked

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

    def _dispatch(self, entries: list[_Entry], now: int) -> None:
        self._free -= 1
        self._running_rows += sum(e.rows for e in entries)
        batch = _Batch(entries, now)
        if self._runs_inline(entries):
            self._run_batch(batch)
            self._complete(batch)
            return
        try:
            self._executor.submit(self._run, batch)
        except RuntimeError as exc:  # the executor is shut down
            batch.error = ModelUnavailable(f"model '{self._model.name}' is shutting down: {exc}")
            self._complete(batch)

    def _runs_inline(self, entries: list[_Entry]) -> bool:
        """Whether to run this batch on the event loop's own thread.

        Handing a batch to an instance thread and its result back costs two
        thread wake-ups (about 0.1 to 0.2 ms here), a large part of a small
        model's latency. When requests come one at a time (no other request
        queued or running, and few were at recent arrivals) and a lone run is
        known to be short, the loop runs it itself: nothing else is waiting
        for the loop, and onnxruntime releases the GIL meanwhile. Under
        concurrent load batches always go to the instance threads, so the loop
        keeps receiving requests while the model computes.
        """
        return (
            len(entries) == 1
            and self._free == self._instances - 1
            and not self._queued
            and self._recent_load < _INLINE_MAX_LOAD
            and 0 < self._lone_run_ns < _INLINE_MAX_RUN_NS
        )

    def _run(self, batch: _Batch) -> None:
        """On an instance thread: run the batch, then report back to the event loop."""
        self._run_batch(batch)
        loop = self._loop
        assert loop is not None
        # A closed event loop raises RuntimeError: nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._complete, batch)

    def _run_batch(self, batch: _Batch) -> None:
        """Merge, run, split; any failure becomes the batch's error."""
        try:
            self._execute(batch)
        except ServerError as exc:
            batch.error = exc
        except Exception:
            log.exception(
                "model '%s' failed on a batch of %d request(s)",
                self._model.name,
                len(batch.entries),
            )
            batch.error = ModelExecutionError(
                f"model '{self._model.name}' failed to run the request's batch; see the server log"
            )

    def _execute(self, batch: _Batch) -> None:
        entries = batch.entries
        config = self._config
        started = time.perf_counter_ns()
        output_names = self._output_names(entries)
        rows = sum(e.rows for e in entries)
        padded = config.padded_rows(rows)
        if len(entries) == 1 and padded == rows:
            feeds = entries[0].request.inputs
        else:
            feeds = {
                name: _merge([e.request.inputs[name] for e in entries], padded - rows)
                for name in self._input_names
            }
        merged = time.perf_counter_ns()
        outputs, timing = self._model.execute(feeds, output_names)
        split_started = time.perf_counter_ns()
        for name, array in outputs.items():
            if array.ndim == 0 or array.shape[0] != padded:
                raise ModelExecutionError(
                    f"model '{self._model.name}' returned output '{name}' with shape "
                    f"{list(array.shape)} for a batch of {padded}; its first dimension must "
                    "be the batch"
                )
        if len(entries) == 1 and padded == rows:
            batch.results = [outputs]
        else:
            start = 0
            for entry in entries:
                end = start + entry.rows
                batch.results.append(
                    {name: outputs[name][start:end] for name in entry.request.output_names}
                )
                start = end
        done = time.perf_counter_ns()
        batch.timing = ExecutionTiming(
            timing.batch_size,
            timing.input_ns + (merged - started),
            timing.infer_ns,
            timing.output_ns + (done - split_started),
        )

    def _output_names(self, entries: Sequence[_Entry]) -> tuple[str, ...]:
        first = entries[0].request.output_names
        if all(e.request.output_names == first for e in entries):
            return first
        wanted = {name for e in entries for name in e.request.output_names}
        return tuple(name for name in self._output_order if name in wanted)

    def _complete(self, batch: _Batch) -> None:
        """On the event loop: hand each request its outcome, then look for the next batch."""
        self._free += 1
        self._running_rows -= sum(e.rows for e in batch.entries)
        statistics = self._model.statistics
        timing = batch.timing
        if batch.error is None and timing is not None:
            statistics.record_execution(timing)
            if timing.batch_size == 1:
                run_ns = timing.input_ns + timing.infer_ns + timing.output_ns
                if self._lone_run_ns:
                    self._lone_run_ns += (run_ns - self._lone_run_ns) * _LOAD_SMOOTHING
                else:
                    self._lone_run_ns = run_ns
            now = time.monotonic_ns()
            for entry, outputs in zip(batch.entries, batch.results, strict=True):
                arrival = entry.request.arrival_ns
                statistics.record_success(
                    rows=entry.rows,
                    queue_ns=batch.dispatched_ns - arrival,
                    timing=timing,
                    total_ns=now - arrival,
                )
                self._settle(entry, outputs)
        else:
            error = batch.error or ModelExecutionError("the batch produced no result")
            for entry in batch.entries:
                self._finish(entry, error)
        if self._queued and not self._closing:
            self._schedule()
        elif self._idle is not None and self._free == self._instances:
            self._idle.set()

    def _finish(self, entry: _Entry, error: BaseException) -> None:
        """A request ends in failure (it is out of the queue already)."""
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        self._model.statistics.record_failure(time.monotonic_ns() - entry.request.arrival_ns)
        self._settle(entry, error)

    def _settle(self, entry: _Entry, outcome: Outputs | BaseException) -> None:
        """Deliver an outcome, in arrival order when preserve_ordering asks for it."""
        entry.state = _FINISHED
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


def _merge(arrays: list[np.ndarray], pad_rows: int) -> np.ndarray:
    """Stack requests' rows along the batch dim, with ``pad_rows`` zero rows at the end.

    np.concatenate writes into one freshly allocated array in C, which
    measured no slower than copying into a reused preallocated buffer from
    Python, and a new array cannot be overwritten while onnxruntime reads it.
    """
    if pad_rows:
        first = arrays[0]
        padding = np.zeros((pad_rows, *first.shape[1:]), dtype=first.dtype)
        if first.dtype == object:
            padding[...] = ""
        arrays = [*arrays, padding]
    return np.concatenate(arrays, axis=0)
