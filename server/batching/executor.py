"""Run a batch of validated requests: merge, run, split, time, and record the statistics.

Both schedulers run requests through a :class:`BatchExecutor`: the dynamic
batcher with the requests of one batch, the direct scheduler with one
request. :meth:`BatchExecutor.run` runs on an instance thread (or, for a lone
short request, on the event loop's: the batcher decides) and never raises:
every request gets an outcome, its outputs or the error it ends with.
:meth:`BatchExecutor.record` then feeds the model's statistics once per run and
once per request, so both schedulers count the same way. The three phases are
timed here, and only here: input (merging and padding), infer (the model's
run), output (checking and splitting).

One caller's bad input never fails another's. Validation catches what it can
before requests share a batch (datatypes, shapes, integer ranges); when
onnxruntime still fails on a merged batch, the batch is isolated: its requests
are re-run in halves, and halves of the halves that fail, down to single
requests, so only the requests that fail on their own fail, each with its own
status, and every other request gets its answer. This runs on the instance
thread, never on the event loop (a batch run inline holds one request and
has nothing to isolate). A request fails with INVALID_ARGUMENT when
onnxruntime says its input was at fault (:func:`refused_input_reason`), with
INTERNAL and a generic message otherwise (the details go to the log: one line
per isolated batch, not per request).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from onnxserve.server.errors import InvalidInput, ModelExecutionError, ServerError
from onnxserve.server.inference import DecodedRequest
from onnxserve.server.model import ModelVersion
from onnxserve.server.runtime import refused_input_reason
from onnxserve.server.statistics import ExecutionTiming

log = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]
Outcome = Outputs | ServerError


@dataclass
class ExecutedBatch:
    """What became of a batch: per request, its outcome and the run that answered it."""

    outcomes: list[Outcome]
    timings: list[ExecutionTiming | None]  # None where the request failed
    executions: list[ExecutionTiming]  # every run that succeeded, for batch statistics
    isolated: bool = False  # the merged run failed and its requests were re-run apart

    @classmethod
    def failed(cls, count: int, error: ServerError) -> ExecutedBatch:
        """Every one of ``count`` requests ends with ``error``."""
        return cls([error] * count, [None] * count, [])


def _same_rows(rows: int) -> int:
    return rows


class BatchExecutor:
    """Runs batches of one model version; safe to use from several instance threads."""

    #: Whether the batcher may run a lone short request on the event loop's thread.
    may_run_inline = True

    def __init__(self, model: ModelVersion, padded_rows: Callable[[int], int] = _same_rows) -> None:
        self._model = model
        self._padded_rows = padded_rows
        self._batchable = model.signature.batchable
        self._input_names = tuple(model.signature.inputs)
        self._output_order = tuple(model.signature.outputs)

    def run(self, requests: Sequence[DecodedRequest]) -> ExecutedBatch:
        """Merge, run, split; a failure becomes the outcome of the requests that cause it."""
        try:
            results, timing = self._execute(requests)
        except ServerError as exc:
            return ExecutedBatch.failed(len(requests), exc)
        except Exception as exc:
            if len(requests) > 1:
                return self._isolate(requests, exc)
            return ExecutedBatch.failed(1, self._failure(exc, log_it=True))
        return ExecutedBatch(list(results), [timing] * len(requests), [timing])

    def execute_whole(self, request: DecodedRequest) -> tuple[Outputs, ExecutionTiming]:
        """Run one request (the native front end's merged batch) and time it; raises
        what the run raised: a ServerError is the model's fault, anything else
        onnxruntime's refusal, which :meth:`isolate` can tell apart by request."""
        results, timing = self._execute([request])
        return results[0], timing

    def isolate(self, requests: Sequence[DecodedRequest], error: Exception) -> ExecutedBatch:
        """Re-run requests whose merged run failed with ``error`` apart (see the module
        docstring)."""
        return self._isolate(requests, error)

    def _isolate(self, requests: Sequence[DecodedRequest], error: Exception) -> ExecutedBatch:
        """Re-run a failed batch's requests in halves until each failure is one request's."""
        count = len(requests)
        outcomes: list[Outcome | None] = [None] * count
        timings: list[ExecutionTiming | None] = [None] * count
        executions: list[ExecutionTiming] = []
        middle = count // 2
        parts = [(middle, count), (0, middle)]  # a stack: the first half runs first
        runs = 0
        reasons: dict[str, None] = {}  # what the single requests failed with, in order
        while parts:
            start, end = parts.pop()
            runs += 1
            try:
                results, timing = self._execute(requests[start:end])
            except ServerError as exc:  # the model's own fault: no request is to blame
                outcomes[start:end] = [exc] * (end - start)
                continue
            except Exception as exc:
                if end - start > 1:
                    middle = (start + end) // 2
                    parts += [(middle, end), (start, middle)]
                else:
                    outcomes[start] = self._failure(exc, log_it=False)
                    reasons[f"{type(exc).__name__}: {str(exc).strip()}"] = None
                continue
            executions.append(timing)
            outcomes[start:end] = results
            timings[start:end] = [timing] * (end - start)
        final = [outcome for outcome in outcomes if outcome is not None]
        assert len(final) == count, "every request of an isolated batch has an outcome"
        failed = sum(isinstance(outcome, ServerError) for outcome in final)
        log.warning(
            "model '%s': a batch of %d requests failed in onnxruntime (%s: %s); re-run apart "
            "in %d runs: %d request(s) failed on their own (%s), %d answered",
            self._model.name,
            count,
            type(error).__name__,
            str(error).strip(),
            runs,
            failed,
            "; ".join(list(reasons)[:3]) or "none",
            count - failed,
        )
        return ExecutedBatch(final, timings, executions, isolated=True)

    def failure(self, error: Exception) -> ServerError:
        """The status of one request that onnxruntime failed on, alone (logged)."""
        return self._failure(error, log_it=True)

    def _failure(self, error: Exception, log_it: bool) -> ServerError:
        """The status of one request that onnxruntime failed on, alone."""
        reason = refused_input_reason(error)
        if reason is not None:
            log.debug("model '%s' refused a request's input: %s", self._model.name, error)
            return InvalidInput(f"model '{self._model.name}' cannot run on this input: {reason}")
        if log_it:
            log.error(
                "model '%s' failed on a request: %s: %s",
                self._model.name,
                type(error).__name__,
                str(error).strip(),
            )
        return ModelExecutionError(
            f"model '{self._model.name}' failed to run the request; see the server log"
        )

    def record(
        self, requests: Sequence[DecodedRequest], batch: ExecutedBatch, dispatched_ns: int
    ) -> None:
        """Count the batch's runs and each request's outcome in the model's statistics.

        A request's queue time ends at ``dispatched_ns`` (a time.monotonic_ns()
        instant) and its total time now.
        """
        statistics = self._model.statistics
        for timing in batch.executions:
            statistics.record_execution(timing)
        if batch.isolated:
            statistics.record_isolation(
                sum(isinstance(outcome, ServerError) for outcome in batch.outcomes)
            )
        now = time.monotonic_ns()
        for request, outcome, timing in zip(requests, batch.outcomes, batch.timings, strict=True):
            arrival = request.arrival_ns
            if timing is None or isinstance(outcome, ServerError):
                error = outcome if isinstance(outcome, BaseException) else None
                statistics.record_failure(now - arrival, error)
            else:
                statistics.record_success(
                    rows=request.batch_size,
                    queue_ns=dispatched_ns - arrival,
                    timing=timing,
                    total_ns=now - arrival,
                )
                request.report = (dispatched_ns - arrival, timing)

    def _execute(self, requests: Sequence[DecodedRequest]) -> tuple[list[Outputs], ExecutionTiming]:
        started = time.perf_counter_ns()
        output_names = self._output_names(requests)
        rows = sum(r.batch_size for r in requests)
        padded = self._padded_rows(rows)
        whole = len(requests) == 1 and padded == rows
        if whole:
            feeds = requests[0].inputs
        else:
            feeds = {
                name: _merge([r.inputs[name] for r in requests], padded - rows)
                for name in self._input_names
            }
        merged = time.perf_counter_ns()
        outputs = self._model.execute(feeds, output_names)
        ran = time.perf_counter_ns()
        if self._batchable:
            for name, array in outputs.items():
                if array.ndim == 0 or array.shape[0] != padded:
                    raise ModelExecutionError(
                        f"model '{self._model.name}' returned output '{name}' with shape "
                        f"{list(array.shape)} for a batch of {padded}; its first dimension "
                        "must be the batch"
                    )
        if whole:
            results = [outputs]
        else:
            results = []
            start = 0
            for request in requests:
                end = start + request.batch_size
                results.append({name: outputs[name][start:end] for name in request.output_names})
                start = end
        done = time.perf_counter_ns()
        batch_size = padded if self._batchable else 1
        return results, ExecutionTiming(batch_size, merged - started, ran - merged, done - ran)

    def _output_names(self, requests: Sequence[DecodedRequest]) -> tuple[str, ...]:
        first = requests[0].output_names
        if all(r.output_names == first for r in requests):
            return first
        wanted = {name for r in requests for name in r.output_names}
        return tuple(name for name in self._output_order if name in wanted)


def executor_for(
    model: ModelVersion, padded_rows: Callable[[int], int] = _same_rows
) -> BatchExecutor:
    """The executor of a model: its own where it has one (Python models), else the ONNX one."""
    own = getattr(model, "create_executor", None)
    if own is not None:
        executor: BatchExecutor = own(padded_rows)
        return executor
    return BatchExecutor(model, padded_rows)


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
