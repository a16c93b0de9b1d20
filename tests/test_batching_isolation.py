"""Batch isolation in-process: one request's bad input never fails the rest of its batch.

The picky model fails in onnxruntime for values no validation can know
about (an index into a table the graph computes; a Reshape driven by data).
A :class:`Gate` holds the model's instance while good and bad requests queue,
so they are merged into one batch by construction; then every request must
get its own outcome.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onnxserve.server.batching import DynamicBatcher
from onnxserve.server.errors import InvalidInput, ModelExecutionError, ServerError
from onnxserve.server.inference import DecodedRequest, decode_request
from onnxserve.server.scheduler import DirectScheduler, create_scheduler
from tests.support.batching_models import Gate, load, pair_model, picky_inputs, picky_model
from tests.support.infer_requests import infer_request
from tests.support.models import identity_model


@pytest.fixture(scope="module")
def picky_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return picky_model(tmp_path_factory.mktemp("picky") / "model.onnx")


def request(inputs: dict[str, np.ndarray]) -> DecodedRequest:
    return DecodedRequest(
        model_name="model",
        model_version="1",
        id="",
        inputs=inputs,
        output_names=("OUTPUT0", "OUTPUT1"),
        batch_size=1,
        raw_output=True,
    )


def check_good(inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
    np.testing.assert_array_equal(outputs["OUTPUT0"], inputs["X"])
    np.testing.assert_array_equal(outputs["OUTPUT1"][:, 0, 0], inputs["IDX"][:, 0] * 10.0)


async def outcome(awaitable: Any) -> Any:
    try:
        return await awaitable
    except ServerError as exc:
        return exc


def merged(
    batcher: Any, gate: Gate, blocker: DecodedRequest, requests: list[DecodedRequest]
) -> list[Any]:
    """Each request's outcome, all queued behind ``blocker`` so that they leave as one batch."""

    async def scenario() -> list[Any]:
        first = asyncio.create_task(batcher.infer(blocker, None))
        await asyncio.to_thread(gate.wait_started)
        tasks = [asyncio.create_task(outcome(batcher.infer(r, None))) for r in requests]
        await asyncio.sleep(0.05)  # all queued behind the blocker
        gate.open.set()
        await first
        return await asyncio.gather(*tasks)

    return asyncio.run(asyncio.wait_for(scenario(), timeout=60))


def test_only_the_requests_that_fail_alone_fail_and_each_gets_its_own_status(
    picky_path: Path,
) -> None:
    model = load(picky_path, "max_batch_size: 32\ndynamic_batching {}")
    batcher = create_scheduler(model)
    assert isinstance(batcher, DynamicBatcher)
    gate = Gate(model)
    rows = [picky_inputs(float(i), index=i % 10) for i in range(20)]
    rows[5] = picky_inputs(5.0, index=99)  # out of the computed table: INVALID_ARGUMENT
    rows[14] = picky_inputs(14.0, width=5)  # cannot be reshaped: INTERNAL

    results = merged(batcher, gate, request(picky_inputs(-1.0)), [request(r) for r in rows])
    assert gate.batch_sizes[:2] == [1, 20]  # the twenty were merged, and that run failed
    for index, (inputs, result) in enumerate(zip(rows, results, strict=True)):
        if index == 5:
            assert isinstance(result, InvalidInput)
            assert "idx=99" in result.message and "[-10,9]" in result.message
        elif index == 14:
            assert isinstance(result, ModelExecutionError)
            assert "see the server log" in result.message
            assert "/" not in result.message  # onnxruntime's source paths stay in the log
        else:
            check_good(inputs, result)
    stats = model.statistics
    assert (stats.isolation_count, stats.isolated_failures) == (1, 2)
    proto = stats.to_proto("model", "1")
    assert proto.inference_stats.fail.count == 2
    assert proto.inference_stats.success.count == 19  # the blocker and 18 good requests
    assert proto.inference_count == 19
    # Only runs that answered are counted as executions, and they hold only good rows.
    executed = sum(b.batch_size * b.compute_infer.count for b in proto.batch_stats)
    assert executed == 19


def test_the_direct_scheduler_maps_onnxruntime_input_errors_the_same_way(
    picky_path: Path,
) -> None:
    model = load(picky_path, "max_batch_size: 8")
    scheduler = create_scheduler(model)
    assert isinstance(scheduler, DirectScheduler)

    async def scenario() -> list[Any]:
        return [
            await outcome(scheduler.infer(request(inputs), None))
            for inputs in (picky_inputs(1.0, index=50), picky_inputs(2.0, width=3))
        ]

    invalid, internal = asyncio.run(scenario())
    assert isinstance(invalid, InvalidInput) and "idx=50" in invalid.message
    assert isinstance(internal, ModelExecutionError)
    good = picky_inputs(3.0, index=4)
    check_good(good, asyncio.run(scheduler.infer(request(good), None)))
    assert model.statistics.isolation_count == 0


def test_bytes_that_are_not_utf8_are_refused_before_they_can_share_a_batch(
    tmp_path: Path,
) -> None:
    model = load(identity_model(tmp_path / "text.onnx", "BYTES"), "max_batch_size: 8")
    text = np.array([[b"fine", b"\xff\xfe", b"ok", b""]], dtype=object)
    with pytest.raises(InvalidInput, match="element 1 is not valid UTF-8"):
        decode_request(infer_request("model", {"INPUT0": text}), model.signature, "1")


def test_nan_and_inf_rows_are_run_and_leave_the_other_rows_of_their_batch_alone(
    tmp_path: Path,
) -> None:
    """Non-finite floats are not refused: models compute row by row, so only that row's
    answer is NaN (a converted Keras CNN did the same); a model that fails on them is
    isolated like any other failure."""
    model = load(pair_model(tmp_path / "pair.onnx"), "max_batch_size: 8\ndynamic_batching {}")
    batcher = create_scheduler(model)
    gate = Gate(model)
    firsts = [np.full((1, 3), float(i), dtype=np.float32) for i in range(4)]
    firsts[1][0, 1] = np.nan
    firsts[2][0, 0] = np.inf

    def pair_request(first: np.ndarray) -> DecodedRequest:
        inputs = {"INPUT0": first, "INPUT1": np.ones_like(first)}
        return DecodedRequest("model", "1", "", inputs, ("OUTPUT0",), 1, True)

    results = merged(batcher, gate, pair_request(firsts[0]), [pair_request(f) for f in firsts])
    assert gate.batch_sizes == [1, 4]
    for first, outputs in zip(firsts, results, strict=True):
        np.testing.assert_array_equal(outputs["OUTPUT0"], first + 1)
    assert model.statistics.isolation_count == 0
