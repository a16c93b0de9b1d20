"""The dynamic batcher in-process, on real onnxruntime sessions.

A :class:`Gate` holds the model's instances busy around the real run, so the
queue reaches each state (full, timed out, mixed shapes, priorities) by
construction rather than by racing a clock. Timing assertions only ever say
"at least" (a delay was honoured) or use generous caps that a wrongly waiting
batcher would blow through.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from onnxserve.server.batching import DynamicBatcher
from onnxserve.server.config_batching import BatchingConfig
from onnxserve.server.errors import (
    ConfigError,
    InvalidInput,
    ModelExecutionError,
    ModelUnavailable,
    QueueFull,
    RequestTimeout,
)
from onnxserve.server.inference import DecodedRequest
from onnxserve.server.model import ModelVersion
from onnxserve.server.scheduler import DirectScheduler, create_scheduler
from tests.support.batching_models import Gate, load, pair_model

T = TypeVar("T")


@pytest.fixture(scope="module")
def pair_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pair_model(tmp_path_factory.mktemp("pair") / "model.onnx")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, timeout=60))


def request(
    first: np.ndarray,
    second: np.ndarray | None = None,
    *,
    priority: int = 0,
    timeout_us: int = 0,
    outputs: tuple[str, ...] = ("OUTPUT0", "OUTPUT1"),
) -> DecodedRequest:
    """A validated request for the pair model (INPUT1 defaults to ones)."""
    second = np.ones_like(first) if second is None else second
    return DecodedRequest(
        model_name="model",
        model_version="1",
        id="",
        inputs={"INPUT0": first, "INPUT1": second},
        output_names=outputs,
        batch_size=int(first.shape[0]),
        raw_output=True,
        priority=priority,
        timeout_us=timeout_us,
    )


def rows(count: int, length: int = 4, start: float = 0.0) -> np.ndarray:
    """``count`` distinct rows: row i holds start + i everywhere."""
    values = start + np.arange(count, dtype=np.float32)[:, None]
    return np.repeat(values, length, axis=1).astype(np.float32)


async def in_thread(function: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(function, *args)


async def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait on the event loop until ``condition()`` holds (it is never a test's verdict)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.005)


def batcher_for(path: Path, batching: str, extra: str = "", max_batch: int = 16) -> DynamicBatcher:
    model = load(path, f"max_batch_size: {max_batch}\ndynamic_batching {{ {batching} }}\n{extra}")
    scheduler = create_scheduler(model)
    assert isinstance(scheduler, DynamicBatcher)
    return scheduler


def model_of(batcher: DynamicBatcher) -> ModelVersion:
    return batcher._model


async def start(batcher: DynamicBatcher, infer_request: DecodedRequest) -> asyncio.Task[Any]:
    task = asyncio.create_task(batcher.infer(infer_request, None))
    await asyncio.sleep(0)  # let it reach the queue
    return task


async def hold_instance(batcher: DynamicBatcher, gate: Gate) -> asyncio.Task[Any]:
    """Start a one-row blocker and wait until it is inside the (closed) gate."""
    blocker = await start(batcher, request(rows(1, start=-1.0)))
    await in_thread(gate.wait_started)
    return blocker


def check_pair(infer_request: DecodedRequest, outputs: dict[str, np.ndarray]) -> None:
    first = infer_request.inputs["INPUT0"]
    second = infer_request.inputs["INPUT1"]
    assert set(outputs) == set(infer_request.output_names)
    if "OUTPUT0" in outputs:
        np.testing.assert_array_equal(outputs["OUTPUT0"], first + second)
    if "OUTPUT1" in outputs:
        np.testing.assert_array_equal(outputs["OUTPUT1"], first - second)


def batch_counts(model: ModelVersion) -> dict[int, int]:
    proto = model.statistics.to_proto("model", "1")
    return {b.batch_size: b.compute_infer.count for b in proto.batch_stats}


def test_create_scheduler_picks_the_batcher_only_for_dynamic_batching(pair_path: Path) -> None:
    assert isinstance(create_scheduler(load(pair_path, "max_batch_size: 8")), DirectScheduler)
    auto = load(pair_path, "")  # auto-complete: batchable, max 64, dynamic_batching {}
    assert auto.config.HasField("dynamic_batching")
    assert isinstance(create_scheduler(auto), DynamicBatcher)


def test_mixed_batch_sizes_merge_into_one_run_and_split_by_rows(pair_path: Path) -> None:
    batcher = batcher_for(pair_path, "")
    model = model_of(batcher)
    gate = Gate(model)

    async def scenario() -> None:
        blocker = await hold_instance(batcher, gate)
        sizes = [1, 3, 2, 4, 1, 5]  # 16 rows: exactly max_batch_size
        requests = [request(rows(n, start=100.0 * i)) for i, n in enumerate(sizes)]
        requests[2] = request(rows(2, start=200.0), rows(2, start=7.0), outputs=("OUTPUT1",))
        tasks = [await start(batcher, r) for r in requests]
        late = request(rows(2, start=900.0))  # does not fit: the next batch
        tasks.append(await start(batcher, late))
        gate.open.set()
        results = await asyncio.gather(blocker, *tasks)
        for infer_request, outputs in zip([*requests, late], results[1:], strict=True):
            check_pair(infer_request, outputs)

    run(scenario())
    assert gate.batch_sizes == [1, 16, 2]
    assert batch_counts(model) == {1: 1, 16: 1, 2: 1}
    stats = model.statistics.to_proto("model", "1")
    assert stats.inference_count == 19
    assert stats.execution_count == 3
    assert stats.inference_stats.success.count == 8


def test_lone_request_is_dispatched_at_once_without_a_delay(pair_path: Path) -> None:
    batcher = batcher_for(pair_path, "")
    gate = Gate(model_of(batcher))

    async def scenario() -> None:
        task = await start(batcher, request(rows(2)))
        # Nothing else is queued or coming: it must already be running.
        await in_thread(gate.wait_started, 1, 10.0)
        gate.open.set()
        check_pair(request(rows(2)), await task)

    run(scenario())


def test_lone_requests_run_on_the_loop_thread_and_concurrent_ones_on_instance_threads(
    pair_path: Path,
) -> None:
    batcher = batcher_for(pair_path, "")
    gate = Gate(model_of(batcher))
    gate.open.set()

    async def scenario() -> None:
        for index in range(30):  # one at a time: the batcher learns they come alone
            infer_request = request(rows(1, start=float(index)))
            check_pair(infer_request, await batcher.infer(infer_request, None))
        sequential = len(gate.runs)
        assert gate.threads[0].startswith("ort-")  # a lone run's length is not known yet
        assert gate.threads[-1] == threading.current_thread().name
        burst = [request(rows(1, start=float(100 + i))) for i in range(20)]
        results = await asyncio.gather(*(batcher.infer(r, None) for r in burst))
        for infer_request, outputs in zip(burst, results, strict=True):
            check_pair(infer_request, outputs)
        runs = zip(gate.threads, gate.batch_sizes, strict=True)
        merged = [
            thread for index, (thread, size) in enumerate(runs) if index >= sequential and size > 1
        ]
        assert merged, "a burst of 20 concurrent requests must produce a merged batch"
        assert all(thread.startswith("ort-") for thread in merged)

    run(scenario())


def test_small_batches_gather_only_under_concurrent_load(pair_path: Path) -> None:
    """The decision itself: a batch waits for company only after concurrent arrivals."""
    sequential = batcher_for(pair_path, "")
    concurrent = batcher_for(pair_path, "")
    gate = Gate(model_of(concurrent))

    async def scenario() -> tuple[bool, bool, int]:
        for index in range(30):  # alone, one after the other
            await sequential.infer(request(rows(1, start=float(index))), None)
        blocker = await hold_instance(concurrent, gate)
        burst = [await start(concurrent, request(rows(1, start=float(i)))) for i in range(30)]
        gate.open.set()
        await asyncio.gather(blocker, *burst)
        return sequential._gathering(), concurrent._gathering(), concurrent._gather_ns()

    alone, loaded, window_ns = run(scenario())
    assert not alone  # a lone request never waits
    assert loaded
    assert 0 < window_ns <= 8_000_000


def test_queue_delay_holds_a_lone_request_and_a_full_preferred_batch_leaves_at_once(
    pair_path: Path,
) -> None:
    waiting = batcher_for(pair_path, "max_queue_delay_microseconds: 200000")

    async def lone() -> float:
        began = time.monotonic()
        await waiting.infer(request(rows(1)), None)
        return time.monotonic() - began

    assert run(lone()) >= 0.2

    # A 30 s delay: only reaching the preferred size can release these in time.
    preferred = batcher_for(
        pair_path, "max_queue_delay_microseconds: 30000000 preferred_batch_size: [ 4 ]"
    )
    gate = Gate(model_of(preferred))
    gate.open.set()

    async def four() -> None:
        requests = [request(rows(1, start=float(i))) for i in range(4)]
        results = await asyncio.wait_for(
            asyncio.gather(*(preferred.infer(r, None) for r in requests)), timeout=20
        )
        for infer_request, outputs in zip(requests, results, strict=True):
            check_pair(infer_request, outputs)

    run(four())
    assert gate.batch_sizes == [4]


def test_requests_of_different_shapes_never_share_a_batch(pair_path: Path) -> None:
    batcher = batcher_for(pair_path, "")
    gate = Gate(model_of(batcher))

    async def scenario() -> None:
        blocker = await hold_instance(batcher, gate)
        lengths = [3, 5, 3, 5, 3]
        requests = [request(rows(1, length=n, start=float(i))) for i, n in enumerate(lengths)]
        tasks = [await start(batcher, r) for r in requests]
        gate.open.set()
        await blocker
        for infer_request, task in zip(requests, tasks, strict=True):
            check_pair(infer_request, await task)

    run(scenario())
    shapes = [run_feeds["INPUT0"].shape for run_feeds in gate.runs]
    assert shapes == [(1, 4), (3, 3), (2, 5)]
    np.testing.assert_array_equal(gate.runs[1]["INPUT0"][:, 0], [0.0, 2.0, 4.0])


def test_priority_levels_are_served_highest_first_and_fifo_within_a_level(
    pair_path: Path,
) -> None:
    batcher = batcher_for(pair_path, "priority_levels: 2 default_priority_level: 2", max_batch=1)
    gate = Gate(model_of(batcher))

    async def scenario() -> None:
        blocker = await hold_instance(batcher, gate)
        # ids in INPUT0; priority 0 and 9 (out of range) mean the default level 2.
        order = [(1.0, 0), (2.0, 2), (3.0, 1), (4.0, 9), (5.0, 1)]
        tasks = [await start(batcher, request(rows(1, start=v), priority=p)) for v, p in order]
        gate.open.set()
        await asyncio.gather(blocker, *tasks)

    run(scenario())
    assert [float(r["INPUT0"][0, 0]) for r in gate.runs] == [-1.0, 3.0, 5.0, 1.0, 2.0, 4.0]


@pytest.mark.parametrize("preserve", [True, False])
def test_preserve_ordering_releases_responses_in_arrival_order(
    pair_path: Path, preserve: bool
) -> None:
    batcher = batcher_for(
        pair_path,
        f"preserve_ordering: {str(preserve).lower()}",
        extra="instance_group [ { count: 2 kind: KIND_CPU } ]",
        max_batch=1,
    )
    model = model_of(batcher)
    gate = Gate(model, per_run=True)

    async def scenario() -> None:
        first = await start(batcher, request(rows(1, start=1.0)))
        await in_thread(gate.wait_started)  # run 0
        second = await start(batcher, request(rows(1, start=2.0)))
        await in_thread(gate.wait_started)  # run 1, on the other instance
        gate.run_gates[1].set()  # the second finishes first
        await until(lambda: model.statistics.execution_count == 1)
        await asyncio.sleep(0.05)
        assert second.done() is (not preserve)
        assert not first.done()
        gate.run_gates[0].set()
        check_pair(request(rows(1, start=1.0)), await first)
        check_pair(request(rows(1, start=2.0)), await second)

    run(scenario())


def test_a_full_queue_rejects_at_once(pair_path: Path) -> None:
    batcher = batcher_for(pair_path, "default_queue_policy { max_queue_size: 2 }", max_batch=1)
    model = model_of(batcher)
    gate = Gate(model)

    async def scenario() -> None:
        blocker = await hold_instance(batcher, gate)
        queued = [await start(batcher, request(rows(1, start=float(i)))) for i in range(2)]
        with pytest.raises(QueueFull, match="max_queue_size"):
            await batcher.infer(request(rows(1)), None)
        gate.open.set()
        await asyncio.gather(blocker, *queued)

    run(scenario())
    stats = model.statistics.to_proto("model", "1")
    assert stats.inference_stats.fail.count == 1
    assert stats.execution_count == 3


def test_queue_timeout_rejects_a_request_that_never_runs(pair_path: Path) -> None:
    batcher = batcher_for(pair_path, "default_queue_policy { default_timeout_microseconds: 50000 }")
    model = model_of(batcher)
    gate = Gate(model)

    async def scenario() -> None:
        blocker = await hold_instance(batcher, gate)
        with pytest.raises(RequestTimeout, match="not run"):
            await batcher.infer(request(rows(3)), None)  # the gate is still closed
        gate.open.set()
        await blocker

    run(scenario())
    stats = model.statistics.to_proto("model", "1")
    assert gate.batch_sizes == [1]
    assert (stats.execution_count, stats.inference_count) == (1, 1)
    assert stats.inference_stats.fail.count == 1


@pytest.mark.parametrize(
    ("policy", "request_timeout_us", "times_out"),
    [
        ("allow_timeout_override: true", 50_000, True),  # no default: any override counts
        ("", 50_000, False),  # overrides not allowed: the request's timeout is ignored
        ("allow_timeout_override: true default_timeout_microseconds: 50000", 60_000_000, True),
    ],
    ids=["override-applies", "override-ignored", "override-cannot-lengthen"],
)
def test_the_request_timeout_parameter_follows_allow_timeout_override(
    pair_path: Path, policy: str, request_timeout_us: int, times_out: bool
) -> None:
    batcher = batcher_for(pair_path, f"default_queue_policy {{ {policy} }}")
    gate = Gate(model_of(batcher))

    async def scenario() -> None:
        blocker = await hold_instance(batcher, gate)
        task = await start(batcher, request(rows(1), timeout_us=request_timeout_us))
        done, _ = await asyncio.wait([task], timeout=1.0)
        assert bool(done) is times_out
        gate.open.set()
        await blocker
        if times_out:
            with pytest.raises(RequestTimeout):
                await task
        else:
            check_pair(request(rows(1)), await task)

    run(scenario())


def test_delay_action_serves_timed_out_requests_after_those_on_time(pair_path: Path) -> None:
    batcher = batcher_for(
        pair_path,
        "default_queue_policy { timeout_action: DELAY allow_timeout_override: true }",
        max_batch=1,
    )
    gate = Gate(model_of(batcher))

    async def scenario() -> None:
        blocker = await hold_instance(batcher, gate)
        late = await start(batcher, request(rows(1, start=1.0), timeout_us=10_000))
        await asyncio.sleep(0.05)  # its 10 ms queue timeout has passed
        on_time = await start(batcher, request(rows(1, start=2.0)))
        gate.open.set()
        await asyncio.gather(blocker, late, on_time)  # DELAY never rejects

    run(scenario())
    assert [float(r["INPUT0"][0, 0]) for r in gate.runs] == [-1.0, 2.0, 1.0]


def test_a_passed_grpc_deadline_drops_the_request_before_it_runs(pair_path: Path) -> None:
    batcher = batcher_for(pair_path, "")
    model = model_of(batcher)
    gate = Gate(model)

    async def scenario() -> None:
        with pytest.raises(RequestTimeout):
            await batcher.infer(request(rows(1)), time.monotonic_ns() - 1)
        blocker = await hold_instance(batcher, gate)
        with pytest.raises(RequestTimeout):
            await batcher.infer(request(rows(2)), time.monotonic_ns() + 50_000_000)
        gate.open.set()
        await blocker

    run(scenario())
    assert gate.batch_sizes == [1]
    stats = model.statistics.to_proto("model", "1")
    assert stats.inference_stats.fail.count == 2
    assert stats.inference_count == 1


def test_cancelled_requests_leave_the_batcher_serving(pair_path: Path) -> None:
    batcher = batcher_for(pair_path, "")
    model = model_of(batcher)
    gate = Gate(model)

    async def scenario() -> None:
        blocker = await hold_instance(batcher, gate)
        requests = [request(rows(1, start=float(i))) for i in range(5)]
        tasks = [await start(batcher, r) for r in requests]
        tasks[1].cancel()
        tasks[3].cancel()
        gate.open.set()
        await blocker
        for index, (infer_request, task) in enumerate(zip(requests, tasks, strict=True)):
            if index in (1, 3):
                with pytest.raises(asyncio.CancelledError):
                    await task
            else:
                check_pair(infer_request, await task)
        # Cancelled while running: the batch finishes, its outcome is dropped.
        gate.open.clear()
        running = await start(batcher, request(rows(2)))
        await in_thread(gate.wait_started)
        running.cancel()
        gate.open.set()
        with pytest.raises(asyncio.CancelledError):
            await running
        check_pair(request(rows(4)), await batcher.infer(request(rows(4)), None))

    run(scenario())
    assert gate.batch_sizes == [1, 3, 2, 4]
    assert model.statistics.to_proto("model", "1").inference_stats.fail.count == 2


def test_an_onnxruntime_failure_fails_its_batch_and_the_batcher_goes_on(pair_path: Path) -> None:
    batcher = batcher_for(pair_path, "")
    model = model_of(batcher)

    async def scenario() -> None:
        # Lengths 3 and 4 pass validation (dims are -1) but cannot be added.
        with pytest.raises(ModelExecutionError, match="see the server log"):
            await batcher.infer(request(rows(1, length=3), rows(1, length=4)), None)
        check_pair(request(rows(2)), await batcher.infer(request(rows(2)), None))

    run(scenario())
    assert model.statistics.to_proto("model", "1").inference_stats.fail.count == 1


def test_batches_are_padded_to_allowed_sizes(pair_path: Path) -> None:
    batcher = batcher_for(
        pair_path,
        "",
        extra='parameters { key: "allowed_batch_sizes" value: { string_value: "4,8" } }',
    )
    model = model_of(batcher)
    gate = Gate(model)
    gate.open.set()

    async def scenario() -> None:
        for count in (3, 5, 8):
            infer_request = request(rows(count, start=10.0))
            outputs = await batcher.infer(infer_request, None)
            assert outputs["OUTPUT0"].shape == (count, 4)
            check_pair(infer_request, outputs)
        with pytest.raises(InvalidInput, match="largest allowed batch size is 8"):
            await batcher.infer(request(rows(9)), None)

    run(scenario())
    assert gate.batch_sizes == [4, 8, 8]
    assert batch_counts(model) == {4: 1, 8: 2}
    np.testing.assert_array_equal(gate.runs[0]["INPUT0"][3], np.zeros(4))


def test_close_fails_queued_requests_and_waits_for_running_ones(pair_path: Path) -> None:
    batcher = batcher_for(pair_path, "")
    gate = Gate(model_of(batcher))

    async def scenario() -> None:
        blocker = await hold_instance(batcher, gate)
        queued = await start(batcher, request(rows(1)))
        closing = asyncio.create_task(batcher.close())
        with pytest.raises(ModelUnavailable):
            await queued
        assert not closing.done()
        gate.open.set()
        await closing
        check_pair(request(rows(1, start=-1.0)), await blocker)
        with pytest.raises(ModelUnavailable):
            await batcher.infer(request(rows(1)), None)

    run(scenario())


@pytest.mark.parametrize(
    ("batching", "message"),
    [
        ("preferred_batch_size: [ 32 ]", "preferred_batch_size 32"),
        ("priority_levels: 2 default_priority_level: 3", "default_priority_level"),
        ("default_priority_level: 2", "priority_levels > 0"),
        (
            "priority_levels: 2 default_priority_level: 1 "
            "priority_queue_policy { key: 5 value {} }",
            "level 5",
        ),
    ],
)
def test_invalid_batching_configs_are_refused_at_load(
    pair_path: Path, batching: str, message: str
) -> None:
    model = load(pair_path, f"max_batch_size: 16\ndynamic_batching {{ {batching} }}")
    with pytest.raises(ConfigError, match=message):
        BatchingConfig.from_model_config(model.config)


def test_bad_allowed_batch_sizes_are_refused(pair_path: Path) -> None:
    model = load(
        pair_path,
        'max_batch_size: 8\ndynamic_batching {}\nparameters { key: "allowed_batch_sizes" '
        'value: { string_value: "4,16" } }',
    )
    with pytest.raises(ConfigError, match="allowed_batch_sizes"):
        BatchingConfig.from_model_config(model.config)
