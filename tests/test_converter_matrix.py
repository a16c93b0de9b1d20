"""A matrix of real architectures: converted, served by a real server, answering like Keras.

Issue 23. Each case of tests/converter_matrix.py (keras.applications CNNs with
``weights=None``, keras_hub backbones with random weights, exact GELU, CELU,
a BiLSTM + TimeDistributed tagger) is converted (``onnxserve convert`` on its
.keras file for the cases marked ``cli``, the Python API for the others),
served by ``onnxserve serve`` and asked over gRPC at batch 1 and an odd size;
every answer is within 1e-4 of Keras. One test per case, each with its own
repository and server, so that pytest-xdist spreads them over its workers.

For the text backbones: config.pbtxt declares the token ids' range (the
vocabulary) and the padding mask's 0..1, the server refuses ids outside it,
and concurrent requests of one sequence length are batched together (the
server merges only equal non-batch shapes) while requests of two lengths
each get their own answer.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import text_format

from onnxserve.layout import input_range_key
from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.protocol import grpc_service_pb2_grpc as pb_grpc
from onnxserve.protocol import model_config_pb2 as mc
from tests import converter_fixtures as fx
from tests.converter_matrix import MATRIX, VOCABULARY, Case, keras_outputs, make_inputs
from tests.support.server import RunningServer
from tests.test_converter_serving import SERVING_ATOL, infer

pytestmark = pytest.mark.slow

MAX_BATCH_SIZE = 8
# Long enough for requests fired together to meet in the queue on a busy machine.
QUEUE_DELAY_US = 50_000


def _cli_convert(model_file: Path, repository: Path, name: str) -> str:
    done = fx.run_convert_cli(
        str(model_file), "--repository", str(repository), "--name", name,
        "--max-batch-size", str(MAX_BATCH_SIZE),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    # Only the converter's own lines: no TensorFlow/onnxruntime C++ log lines, no colours.
    for noise in ("\x1b[", "I0000", "E0000", "W0000", "[E:onnxruntime", "single_machine.cc"):
        assert noise not in done.stderr, done.stderr[-3000:]
    return done.stdout


def _convert(case: Case, model: Any, repository: Path, name: str, tmp_path: Path) -> None:
    if case.cli:
        model_file = tmp_path / f"{name}.keras"
        model.save(model_file)
        out = _cli_convert(model_file, repository, name)
        assert f"'{name}' version 1" in out and "max abs" in out
    else:
        from onnxserve.converter import convert

        convert(model, repository, name, max_batch_size=MAX_BATCH_SIZE, progress=lambda _: None)
    # A queue delay, as a user would set for throughput, so that the batching is seen.
    path = repository / name / "config.pbtxt"
    config = text_format.Parse(path.read_text(), mc.ModelConfig())
    assert config.HasField("dynamic_batching") and config.max_batch_size == MAX_BATCH_SIZE
    config.dynamic_batching.max_queue_delay_microseconds = QUEUE_DELAY_US
    path.write_text(text_format.MessageToString(config))


def _named(stub: pb_grpc.GRPCInferenceServiceStub, name: str, inputs: dict[str, np.ndarray]):  # type: ignore[no-untyped-def]
    """The inputs under the served model's input names (an image model's one input is
    named after its Keras InputLayer)."""
    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name=name), timeout=30)
    served = [t.name for t in metadata.inputs]
    if list(inputs) == [""]:
        assert len(served) == 1
        return {served[0]: inputs[""]}, [t.name for t in metadata.outputs]
    assert sorted(served) == sorted(inputs)
    return inputs, [t.name for t in metadata.outputs]


def _assert_close(got: dict[str, np.ndarray], want: Any, outputs: list[str]) -> None:
    expected = want if isinstance(want, dict) else {outputs[0]: want}
    assert sorted(got) == sorted(expected) == sorted(outputs)
    for key, value in expected.items():
        assert got[key].shape == value.shape, key
        np.testing.assert_allclose(got[key], value, rtol=0, atol=SERVING_ATOL, err_msg=key)


def _batch_sizes(stub: pb_grpc.GRPCInferenceServiceStub, name: str) -> dict[int, int]:
    (stats,) = stub.ModelStatistics(pb.ModelStatisticsRequest(name=name), timeout=30).model_stats
    return {b.batch_size: b.compute_infer.count for b in stats.batch_stats}


def _check_text_backbone(
    stub: pb_grpc.GRPCInferenceServiceStub, repository: Path, name: str, model: Any, case: Case
) -> None:
    config = text_format.Parse((repository / name / "config.pbtxt").read_text(), mc.ModelConfig())
    assert config.parameters[input_range_key("token_ids")].string_value == f"0,{VOCABULARY - 1}"
    assert config.parameters[input_range_key("padding_mask")].string_value == "0,1"
    if case.segments:
        assert config.parameters[input_range_key("segment_ids")].string_value == "0,1"
    bad = make_inputs(case, 1, seed=5)
    bad["token_ids"][0, 0] = VOCABULARY
    with pytest.raises(grpc.RpcError) as refused:
        infer(stub, name, bad)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"0 to {VOCABULARY - 1}" in refused.value.details()

    # Single-row requests of two lengths, fired together: each answered like Keras, and
    # those of one length merged into batches.
    rows = [make_inputs(case, 1, seed=100 + i, length=(10, 14)[i % 2]) for i in range(16)]
    before = _batch_sizes(stub, name)
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda row: infer(stub, name, row), rows))
    outputs = sorted(answers[0])
    for row, answer in zip(rows, answers, strict=True):
        _assert_close(answer, keras_outputs(model, row), outputs)
    after = _batch_sizes(stub, name)
    grown = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    assert sum(size * count for size, count in grown.items()) == 16
    assert any(size > 1 and count for size, count in grown.items()), grown


@pytest.mark.parametrize("name", list(MATRIX))
def test_architecture_converts_serves_and_answers_like_keras(name: str, tmp_path: Path) -> None:
    case = MATRIX[name]
    if case.hub:
        pytest.importorskip("keras_hub", reason="keras_hub is a test dependency (make test)")
    model = case.build()
    repository = tmp_path / "repository"
    _convert(case, model, repository, name, tmp_path)
    with RunningServer(repository) as server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for batch in (1, 3):
            inputs = make_inputs(case, batch, seed=batch)
            named, outputs = _named(stub, name, inputs)
            _assert_close(infer(stub, name, named), keras_outputs(model, inputs), outputs)
        if case.kind == "tokens":
            _check_text_backbone(stub, repository, name, model, case)
