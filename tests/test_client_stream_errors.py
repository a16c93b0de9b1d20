"""A request a stream rejects raises the same exception as the same request sent alone.

ModelStreamInfer carries an error as text only (Triton's protocol), so onnxserve
also sends the status code in the failed answer's parameters
(onnxserve.protocol.parameters) and the SDK raises by it. Each case here sends
one bad request both ways to a real server and compares what the caller gets:
the class and the code, which issue 10 found to be UNKNOWN in a stream.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from onnxserve.client import (
    Client,
    DeadlineExceededError,
    InferenceServerError,
    InferRequest,
    InvalidInputError,
    ModelNotFoundError,
    ServerUnavailableError,
)
from onnxserve.client.calls import stream_result
from onnxserve.protocol import grpc_service_pb2 as pb
from tests.support.models import LOOKUP_ROWS, add_sub_model, lookup_model, write_config
from tests.support.server import RunningServer

X = np.ones((1, 16), np.float32)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("stream_errors")
    add_sub_model(root / "simple" / "1" / "model.onnx")
    lookup_model(root / "lookup" / "1" / "model.onnx")
    # Every request times out in the queue at once: DEADLINE_EXCEEDED, deterministically.
    add_sub_model(root / "impatient" / "1" / "model.onnx")
    write_config(
        root / "impatient",
        "max_batch_size: 8 dynamic_batching { default_queue_policy { "
        "timeout_action: REJECT default_timeout_microseconds: 1 } }",
    )
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx model")
    with RunningServer(root, require_ready=False) as running:
        yield running


CASES = {
    "unknown model": (InferRequest("no_such_model", {"INPUT0": X}), ModelNotFoundError),
    "unknown version": (
        InferRequest("simple", {"INPUT0": X, "INPUT1": X}, model_version=7),
        ModelNotFoundError,
    ),
    "unknown input": (InferRequest("simple", {"INPUT0": X, "INPUT9": X}), InvalidInputError),
    "wrong datatype": (
        InferRequest("simple", {"INPUT0": X.astype(np.float64), "INPUT1": X}),
        InvalidInputError,
    ),
    "missing input": (InferRequest("simple", {"INPUT0": X}), InvalidInputError),
    # Refused at decode: the server reads the table's size from the graph.
    "id past the table": (
        InferRequest("lookup", {"INPUT0": np.full((1, 3), LOOKUP_ROWS + 40, np.int64)}),
        InvalidInputError,
    ),
    "queue timeout": (
        InferRequest("impatient", {"INPUT0": X, "INPUT1": X}),
        DeadlineExceededError,
    ),
    "model that failed to load": (InferRequest("broken", {"INPUT0": X}), ServerUnavailableError),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_stream_error_has_the_unary_call_s_class_and_code(
    server: RunningServer, case: str
) -> None:
    request, expected = CASES[case]
    with Client(server.address, timeout=30) as client:
        with pytest.raises(InferenceServerError) as unary:
            client.infer(
                request.model_name,
                request.inputs,
                version=request.model_version,
                cast=False,  # as the stream sends them: the server's own checks
            )
        good = InferRequest("simple", {"INPUT0": X, "INPUT1": X}, request_id="good")
        bad = dataclasses.replace(request, request_id="bad")
        results = {r.id: r for r in client.stream_infer([good, bad])}
    assert type(unary.value) is expected
    error = results["bad"].error
    assert error is not None
    assert type(error) is expected, f"{error!r} ({error.message})"
    assert error.code == unary.value.code != grpc.StatusCode.UNKNOWN
    assert error.message == unary.value.message
    assert results["good"].ok  # the stream went on


def test_an_error_from_another_server_keeps_the_base_class() -> None:
    """Triton sends text only: no code to go by, so UNKNOWN (whatever the text says)."""
    answer = pb.ModelStreamInferResponse(
        error_message="input 'x' has datatype FP64 but model 'm' expects FP32",
        infer_response=pb.ModelInferResponse(model_name="m", id="3"),
    )
    error = stream_result(answer).error
    assert type(error) is InferenceServerError and error.code == grpc.StatusCode.UNKNOWN
    assert error.message.startswith("input 'x'")


def test_the_broken_model_failed_to_load(server: RunningServer) -> None:
    """It is there and UNAVAILABLE (a missing one would be NOT_FOUND)."""
    with Client(server.address, timeout=30) as client:
        states = {(m.name, m.state) for m in client.repository_index()}
    assert ("broken", "UNAVAILABLE") in states
