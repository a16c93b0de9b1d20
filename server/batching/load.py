"""How busy a model is lately: the figures behind two of the batcher's choices.

From each arrival (rows queued or running at that moment, the gap since the
previous one) and each one-row run (its duration), the estimator keeps a few
smoothed figures and answers two questions:

- may a lone request run on the event loop's own thread (:meth:`inline_allowed`)?
- how long may a batch short of its target wait for company under concurrent
  load (:meth:`gather_until`)?

It lives on the event loop with the queue (no locks) and knows nothing of
requests or batches beyond these numbers.
"""

from __future__ import annotations

# A lone request runs on the event loop's thread only when recent arrivals
# found fewer than this many rows queued or running (smoothed) ...
INLINE_MAX_LOAD = 0.5
# ... and a one-row run has been taking less than this (so the loop is never
# held for long, whatever the model) ...
INLINE_MAX_RUN_NS = 2_000_000
# ... and at least this many arrivals in a row found nothing queued or running.
# (The smoothed load alone starts again from zero after a pause of
# LOAD_RESET_NS, which a process descheduled on a busy machine takes under
# concurrent load too; measured: a fifth of the batches at 64 clients then ran
# one row on the loop's thread, holding every other request back.)
INLINE_MIN_IDLE_ARRIVALS = 3
# Under concurrent load (smoothed rows queued or running at arrivals of at
# least this), a batch short of its target waits up to this many one-row run
# times, and never more than the cap, for more requests ...
GATHER_MIN_LOAD = 2.0
GATHER_RUNS = 16
GATHER_MAX_NS = 8_000_000
# ... and stops waiting once no request came for this many average gaps.
GATHER_PAUSE_GAPS = 2
# Per arrival, how much of the peak load figure is kept (half-life ~140 arrivals).
PEAK_DECAY = 0.995
# After this long without an arrival the load figure starts again from zero,
# so the first requests after a burst are not held as if the burst went on.
LOAD_RESET_NS = 20_000_000
# Weight of the newest observation in the smoothed figures.
LOAD_SMOOTHING = 0.1


class LoadEstimator:
    """Smoothed load, arrival gaps and one-row run time of one model's batcher."""

    __slots__ = (
        "_gap_ns",
        "_idle_arrivals",
        "_last_arrival_ns",
        "_lone_run_ns",
        "_peak_load",
        "_recent_load",
    )

    def __init__(self) -> None:
        # Smoothed rows queued or running when a request arrives.
        self._recent_load = 0.0
        # Smoothed duration of one-row runs (0: none seen yet).
        self._lone_run_ns = 0.0
        self._last_arrival_ns = 0
        self._gap_ns = 0.0  # smoothed time between arrivals
        # The most rows seen queued or running at once lately (slowly
        # forgotten): when that many are in, no one else is coming.
        self._peak_load = 0.0
        # Arrivals in a row that found nothing queued or running.
        self._idle_arrivals = 0

    def arrival(self, arrival_ns: int, busy_rows: int, rows: int) -> None:
        """A request of ``rows`` arrived while ``busy_rows`` were queued or running."""
        gap = arrival_ns - self._last_arrival_ns
        if gap > LOAD_RESET_NS:
            self._recent_load = 0.0  # the stream had stopped: what follows starts afresh
            self._gap_ns = 0.0
            self._peak_load = 0.0
        elif gap >= 0:
            self._gap_ns += (gap - self._gap_ns) * LOAD_SMOOTHING
        self._last_arrival_ns = max(self._last_arrival_ns, arrival_ns)
        self._recent_load += (busy_rows - self._recent_load) * LOAD_SMOOTHING
        self._peak_load = max(busy_rows + rows, self._peak_load * PEAK_DECAY)
        self._idle_arrivals = 0 if busy_rows else self._idle_arrivals + 1

    def lone_run(self, run_ns: int) -> None:
        """A batch of one row took ``run_ns`` (merge, run and split)."""
        if self._lone_run_ns:
            self._lone_run_ns += (run_ns - self._lone_run_ns) * LOAD_SMOOTHING
        else:
            self._lone_run_ns = run_ns

    def inline_allowed(self) -> bool:
        """Few rows were busy at recent arrivals and a one-row run is known to be short.

        Handing a batch to an instance thread and its result back costs two
        thread wake-ups (about 0.1 to 0.2 ms here), a large part of a small
        model's latency. When requests come one at a time and a lone run is
        known to be short, the loop may run it itself: nothing else is waiting
        for the loop, and onnxruntime releases the GIL meanwhile. "One at a
        time" means both: the smoothed load is low, and the last few arrivals
        each found the model idle. (The batcher
        adds the rest: a batch of one request, nothing else queued or running.)
        """
        return (
            self._idle_arrivals >= INLINE_MIN_IDLE_ARRIVALS
            and self._recent_load < INLINE_MAX_LOAD
            and 0 < self._lone_run_ns < INLINE_MAX_RUN_NS
        )

    def gathering(self, queued_rows: int, running_rows: int, target_rows: int) -> bool:
        """Without a configured delay: hold a batch briefly under concurrent load?

        When many clients keep requests coming, a free instance that takes
        whatever one or two requests are queued runs the model at its least
        efficient, and on a small machine those cycles are taken from the
        gRPC stack that feeds it (measured: 64 clients kept batches near 3).
        So while recent arrivals found at least ``GATHER_MIN_LOAD`` rows
        queued or running, a batch short of its target waits for more, as
        long as requests keep arriving (no pause of a few average gaps), fewer
        rows are in than the most seen in at once lately (when all clients'
        requests are in, no one else is coming) and at most
        :meth:`gather_ns` for its oldest request. A request that
        comes alone never sees such load, so it never waits.
        """
        return (
            self._recent_load >= GATHER_MIN_LOAD
            and queued_rows < target_rows
            and queued_rows + running_rows < self._peak_load
            and self._lone_run_ns > 0
            and self._gap_ns > 0
        )

    def gather_ns(self) -> int:
        """The longest a gathering batch's oldest request waits: some one-row runs, capped."""
        return int(min(GATHER_RUNS * self._lone_run_ns, GATHER_MAX_NS))

    def gather_until(self, oldest_arrival_ns: int) -> int:
        """The instant a gathering batch stops waiting: its window ends, or arrivals pause."""
        return min(
            oldest_arrival_ns + self.gather_ns(),
            self._last_arrival_ns + GATHER_PAUSE_GAPS * int(self._gap_ns),
        )
