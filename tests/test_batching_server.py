"""The dynamic batcher through a real ``onnxserve serve`` process, over gRPC.

A spin model (an ONNX Loop whose length the request sets) holds the model's
single instance busy for a second or more, long enough for the requests sent
after it to be queued behind it; every assertion is then about what the
server did with that queue, read back from responses and statistics.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import Future

import grpc
import numpy as np
import pytest

from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.protocol import grpc_service_pb2_grpc as pb_grpc
from tests.support.batching_models import pair_model, spin_model
from tests.support.infer_requests import infer_request, outputs_of
from tests.support.models import write_config
from tests.support.server import RunningServer

# Loop turns that keep the spin model busy for well over a second here.
BLOCKING_SPIN = 1_500_000
# Time for a request sent just before to reach the server's queue.
SETTLE_S = 0.5


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("batching_repository")
    pair_model(root / "pair" / "1" / "model.onnx")
    write_config(root / "pair", "max_batch_size: 32\ndynamic_batching {}\n")
    pair_model(root / "auto" / "1" / "model.onnx")  # no config: auto-completed
    spin_model(root / "spin" / "1" / "model.onnx")
    write_config(
        root / "spin",
        """
max_batch_size: 1
dynamic_batching {
  priority_levels: 2
  default_priority_level: 2
  default_queue_policy { allow_timeout_override: true }
}
""",
    )
    spin_model(root / "spin_small_queue" / "1" / "model.onnx")
    write_config(
        root / "spin_small_queue",
        "max_batch_size: 1\ndynamic_batching { default_queue_policy { max_queue_size: 1 } }\n",
    )
    with RunningServer(root) as running:
        yield running


@pytest.fixture(scope="module")
def stub(server: RunningServer) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def spin_request(
    model: str, spin: int, value: float, parameters: dict[str, int] | None = None
) -> pb.ModelInferRequest:
    message = infer_request(
        model,
        {
            "INPUT0": np.full((1, 4), value, dtype=np.float32),
            "SPIN": np.array([[spin]], dtype=np.int64),
        },
    )
    for key, number in (parameters or {}).items():
        message.parameters[key].int64_param = number
    return message


def statistics(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> pb.ModelStatistics:
    response = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model))
    return response.model_stats[0]


def value_of(future: Future[pb.ModelInferResponse]) -> float:
    return float(outputs_of(future.result(timeout=60))["OUTPUT0"][0, 0])


def test_server_metadata_lists_the_schedule_policy_extension(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    extensions = stub.ServerMetadata(pb.ServerMetadataRequest()).extensions
    assert "schedule_policy" in extensions


@pytest.mark.parametrize("model", ["pair", "auto"])
def test_concurrent_requests_of_mixed_rows_and_lengths_get_their_own_rows(
    stub: pb_grpc.GRPCInferenceServiceStub, model: str
) -> None:
    before = statistics(stub, model)
    generator = np.random.default_rng(7)
    sent = []
    for index in range(48):
        count = int(generator.integers(1, 5))
        length = (3, 6)[index % 2]
        first = generator.standard_normal((count, length)).astype(np.float32)
        second = generator.standard_normal((count, length)).astype(np.float32)
        future = stub.ModelInfer.future(
            infer_request(model, {"INPUT0": first, "INPUT1": second}), timeout=60
        )
        sent.append((first, second, future))
    for first, second, future in sent:
        outputs = outputs_of(future.result())
        np.testing.assert_array_equal(outputs["OUTPUT0"], first + second)
        np.testing.assert_array_equal(outputs["OUTPUT1"], first - second)
    after = statistics(stub, model)
    total_rows = sum(first.shape[0] for first, _, _ in sent)
    assert after.inference_count - before.inference_count == total_rows
    executed_rows = sum(b.batch_size * b.compute_infer.count for b in after.batch_stats) - sum(
        b.batch_size * b.compute_infer.count for b in before.batch_stats
    )
    assert executed_rows == total_rows  # no padding configured: every row ran once
    assert after.inference_stats.success.count - before.inference_stats.success.count == 48


def test_a_full_queue_answers_resource_exhausted_at_once(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    model = "spin_small_queue"
    blocker = stub.ModelInfer.future(spin_request(model, BLOCKING_SPIN, 1.0), timeout=120)
    time.sleep(SETTLE_S)
    queued = stub.ModelInfer.future(spin_request(model, 0, 2.0), timeout=120)
    time.sleep(SETTLE_S)
    began = time.monotonic()
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelInfer(spin_request(model, 0, 3.0), timeout=120)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_queue_size" in (refused.value.details() or "")
    assert not blocker.done()  # it was refused while the queue was full, not after
    assert time.monotonic() - began < 60
    assert value_of(blocker) == 1.0
    assert value_of(queued) == 2.0


def test_deadline_and_timeout_expire_in_the_queue_and_never_run(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    model = "spin"
    before = statistics(stub, model)
    blocker = stub.ModelInfer.future(spin_request(model, BLOCKING_SPIN, 1.0), timeout=120)
    time.sleep(SETTLE_S)
    with pytest.raises(grpc.RpcError) as deadline:
        stub.ModelInfer(spin_request(model, 0, 2.0), timeout=0.3)
    assert deadline.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The request's own `timeout` parameter (overrides are allowed for this model).
    with pytest.raises(grpc.RpcError) as timed_out:
        stub.ModelInfer(spin_request(model, 0, 3.0, {"timeout": 200_000}), timeout=120)
    assert timed_out.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "not run" in (timed_out.value.details() or "")
    assert not blocker.done()
    assert value_of(blocker) == 1.0
    after = statistics(stub, model)
    assert after.execution_count - before.execution_count == 1  # only the blocker ran
    assert after.inference_count - before.inference_count == 1
    assert after.inference_stats.fail.count - before.inference_stats.fail.count == 2


def test_priority_overtakes_the_queue(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    model = "spin"
    finished: list[float] = []
    blocker = stub.ModelInfer.future(spin_request(model, BLOCKING_SPIN, 1.0), timeout=120)
    time.sleep(SETTLE_S)
    low = stub.ModelInfer.future(spin_request(model, 1000, 2.0), timeout=120)
    time.sleep(SETTLE_S)
    high = stub.ModelInfer.future(spin_request(model, 1000, 3.0, {"priority": 1}), timeout=120)
    for future in (blocker, low, high):
        future.add_done_callback(lambda f: finished.append(value_of(f)))
    for future in (blocker, low, high):
        future.result(timeout=60)
    assert finished == [1.0, 3.0, 2.0]


def test_cancelled_calls_never_run_and_the_server_keeps_serving(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    model = "spin"
    before = statistics(stub, model)
    blocker = stub.ModelInfer.future(spin_request(model, BLOCKING_SPIN, 1.0), timeout=120)
    time.sleep(SETTLE_S)
    cancelled = [
        stub.ModelInfer.future(spin_request(model, 0, float(10 + i)), timeout=120) for i in range(8)
    ]
    time.sleep(SETTLE_S)
    for future in cancelled:
        future.cancel()
    assert value_of(blocker) == 1.0
    answer = stub.ModelInfer(spin_request(model, 0, 5.0), timeout=60)
    assert float(outputs_of(answer)["OUTPUT0"][0, 0]) == 5.0
    after = statistics(stub, model)
    assert after.execution_count - before.execution_count == 2
    assert after.inference_stats.fail.count - before.inference_stats.fail.count == 8


def test_auto_completed_batchable_models_get_dynamic_batching(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    config = stub.ModelConfig(pb.ModelConfigRequest(name="auto")).config
    assert config.max_batch_size == 64
    assert config.HasField("dynamic_batching")


def test_a_client_that_disconnects_with_queued_calls_leaves_the_server_serving(
    server: RunningServer, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    model = "spin"
    before = statistics(stub, model)
    blocker = stub.ModelInfer.future(spin_request(model, BLOCKING_SPIN, 1.0), timeout=120)
    time.sleep(SETTLE_S)
    channel = grpc.insecure_channel(server.address)
    other = pb_grpc.GRPCInferenceServiceStub(channel)
    queued = [
        other.ModelInfer.future(spin_request(model, 0, float(20 + i)), timeout=120)
        for i in range(6)
    ]
    time.sleep(SETTLE_S)
    channel.close()  # the connection goes away with six calls queued
    assert all(future.done() for future in queued)
    assert value_of(blocker) == 1.0
    answer = stub.ModelInfer(spin_request(model, 0, 6.0), timeout=60)
    assert float(outputs_of(answer)["OUTPUT0"][0, 0]) == 6.0
    after = statistics(stub, model)
    assert after.execution_count - before.execution_count == 2


def test_streamed_requests_are_batched_and_each_answered(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    firsts = [np.full((1, 5), float(i), dtype=np.float32) for i in range(24)]
    requests = [
        infer_request("pair", {"INPUT0": first, "INPUT1": first}, request_id=str(index))
        for index, first in enumerate(firsts)
    ]
    answers = list(stub.ModelStreamInfer(iter(requests), timeout=60))
    assert len(answers) == 24
    for answer in answers:
        assert not answer.error_message
        index = int(answer.infer_response.id)
        outputs = outputs_of(answer.infer_response)
        np.testing.assert_array_equal(outputs["OUTPUT0"], firsts[index] * 2)
