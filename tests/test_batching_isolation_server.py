"""One caller's bad input never fails another's: through a real ``onnxserve serve`` process.

Each round sends many good calls and a few bad ones at once to a model whose
``max_queue_delay_microseconds`` holds the first request long enough for
the others to join its batch, as clients of a shared server would. The bad
calls must get INVALID_ARGUMENT (or INTERNAL for a failure no input check can
foresee) and every good call its own answer, round after round.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import grpc
import numpy as np
import pytest

from onnxserve.layout import input_range_key
from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.protocol import grpc_service_pb2_grpc as pb_grpc
from tests.support.batching_models import lookup_model, picky_inputs, picky_model
from tests.support.infer_requests import infer_request, outputs_of
from tests.support.models import write_config
from tests.support.server import RunningServer

ROUNDS = 3
GOOD_CALLS = 40
# Long enough for a round's calls to reach the queue before the first one leaves.
MERGING = "max_batch_size: 64\ndynamic_batching { max_queue_delay_microseconds: 300000 }\n"


def declared(text: str) -> str:
    key = input_range_key("ids")
    return f'parameters {{ key: "{key}" value: {{ string_value: "{text}" }} }}\n'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("isolation_repository")
    lookup_model(root / "declared" / "1" / "model.onnx")  # table of 50, declared 0..39
    write_config(root / "declared", MERGING + declared("0,39"))
    lookup_model(root / "inferred" / "1" / "model.onnx")  # its range only from the graph
    write_config(root / "inferred", MERGING)
    picky_model(root / "picky" / "1" / "model.onnx")
    write_config(root / "picky", MERGING)
    lookup_model(root / "malformed" / "1" / "model.onnx")
    write_config(root / "malformed", MERGING + declared("zero,39"))
    with RunningServer(root, require_ready=False) as running:
        yield running


@pytest.fixture(scope="module")
def stub(server: RunningServer) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def ids_call(stub: pb_grpc.GRPCInferenceServiceStub, model: str, ids: list[int]) -> Future[Any]:
    array = np.array([ids], dtype=np.int32)
    return stub.ModelInfer.future(infer_request(model, {"ids": array}), timeout=60)


def error_of(future: Future[Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        future.result(timeout=60)
    return info.value


def statistics(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> pb.ModelStatistics:
    return stub.ModelStatistics(pb.ModelStatisticsRequest(name=model)).model_stats[0]


@pytest.mark.parametrize(("model", "largest"), [("declared", 39), ("inferred", 49)])
def test_a_bad_id_among_many_good_calls_fails_alone_in_every_round(
    stub: pb_grpc.GRPCInferenceServiceStub, model: str, largest: int
) -> None:
    before = statistics(stub, model)
    for round_ in range(ROUNDS):
        good = [[(i + round_) % (largest + 1), i % 7, largest] for i in range(GOOD_CALLS)]
        calls = [ids_call(stub, model, ids) for ids in good[:20]]
        bad = ids_call(stub, model, [3, 4, 999_999])
        calls += [ids_call(stub, model, ids) for ids in good[20:]]
        error = error_of(bad)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = error.details() or ""
        assert "input 'ids' holds 999999 at index (0, 2)" in details
        assert f"0 to {largest}" in details
        for ids, call in zip(good, calls, strict=True):
            answer = outputs_of(call.result(timeout=60))["OUTPUT0"]
            np.testing.assert_array_equal(answer, 4.0 * np.array([ids], dtype=np.float32))
    after = statistics(stub, model)
    answered = ROUNDS * GOOD_CALLS
    assert after.inference_stats.success.count - before.inference_stats.success.count == answered
    executions = after.execution_count - before.execution_count
    assert executions < answered  # the good calls were merged into batches


@pytest.mark.parametrize(
    ("model", "ids", "value"),
    [
        ("declared", [1, -1, 2], -1),
        ("declared", [40, 1, 2], 40),  # in the table, but not in the declared range
        ("inferred", [1, 2, -5], -5),  # ONNX Gather would read row 45
        ("inferred", [50, 1, 2], 50),
    ],
)
def test_negative_and_too_large_ids_are_refused(
    stub: pb_grpc.GRPCInferenceServiceStub, model: str, ids: list[int], value: int
) -> None:
    error = error_of(ids_call(stub, model, ids))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"holds {value} at index (0, {ids.index(value)})" in (error.details() or "")


def test_model_config_shows_the_effective_ranges(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    for model, text in (("declared", "0,39"), ("inferred", "0,49")):
        config = stub.ModelConfig(pb.ModelConfigRequest(name=model)).config
        assert config.parameters[input_range_key("ids")].string_value == text


def test_a_malformed_range_makes_the_model_unavailable_with_the_reason(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    index = stub.RepositoryIndex(pb.RepositoryIndexRequest())
    states = {model.name: model for model in index.models}
    assert states["malformed"].state == "UNAVAILABLE"
    assert input_range_key("ids") in states["malformed"].reason
    assert "expected '<min>,<max>'" in states["malformed"].reason


def test_failures_validation_cannot_foresee_are_isolated_to_their_requests(
    server: RunningServer, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    before = statistics(stub, "picky")
    events_before = server.log().count("re-run apart")
    for round_ in range(ROUNDS):
        rows = [picky_inputs(float(i + 100 * round_), index=i % 10) for i in range(20)]
        rows[3] = picky_inputs(-3.0, index=10)  # outside the table the graph computes
        rows[11] = picky_inputs(-11.0, width=5)  # a Reshape onnxruntime cannot do
        calls = [
            stub.ModelInfer.future(infer_request("picky", inputs), timeout=60) for inputs in rows
        ]
        for index, (inputs, call) in enumerate(zip(rows, calls, strict=True)):
            if index == 3:
                error = error_of(call)
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "idx=10" in (error.details() or "")
            elif index == 11:
                error = error_of(call)
                assert error.code() == grpc.StatusCode.INTERNAL
                assert "see the server log" in (error.details() or "")
            else:
                outputs = outputs_of(call.result(timeout=60))
                np.testing.assert_array_equal(outputs["OUTPUT0"], inputs["X"])
                np.testing.assert_array_equal(outputs["OUTPUT1"][0, 0, 0], inputs["IDX"][0, 0] * 10)
    after = statistics(stub, "picky")
    assert after.inference_stats.fail.count - before.inference_stats.fail.count == 2 * ROUNDS
    assert after.inference_stats.success.count - before.inference_stats.success.count == 18 * ROUNDS
    # One log line per isolated batch (not per request), at least one per round.
    events = server.log().count("re-run apart") - events_before
    assert ROUNDS <= events <= 2 * ROUNDS
