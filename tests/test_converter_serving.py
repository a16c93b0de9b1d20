"""Converted models served by ``onnxserve serve`` answer like Keras over gRPC (within 1e-4).

Every model family of issue 4 is converted from its .keras file (and the seed
model also from a SavedModel) into one repository with the ``onnxserve
convert`` pipeline, with a representative few of the preprocessing-layer
models of issue 10 (tests/converter_layers.py: numbers, integer and string
lookups, buckets, category counts); a real server process loads that
repository as is, and ModelInfer requests with raw tensor contents (BYTES for
strings) are compared with Keras.
"""

from __future__ import annotations

from collections.abc import Iterator
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
from onnxserve.protocol.codec import array_to_raw, datatype_of, raw_to_array
from tests import converter_fixtures as fx
from tests import converter_layers
from tests.converter_fixtures import EXPECTED, expected_io, make_inputs
from tests.converter_models import VOCABULARY
from tests.support.server import RunningServer

pytestmark = pytest.mark.slow

SERVING_ATOL = 1e-4
SAVED_MODEL_NAME = "seed_lstm_saved_model"
SERVED_LAYERS = (
    "normalization_adapted",
    "integer_lookup",
    "string_lookup",
    "discretization",
    "category_encoding",
)


@pytest.fixture(scope="module")
def served_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from onnxserve.converter import convert

    repository = tmp_path_factory.mktemp("converted_repository")
    for family in EXPECTED:
        convert(fx.saved(family), repository, family, max_batch_size=8)
    convert(fx.saved("seed_lstm", "saved_model"), repository, SAVED_MODEL_NAME, max_batch_size=8)
    for case in SERVED_LAYERS:
        convert(fx.saved(case), repository, case, max_batch_size=8)
    return repository


@pytest.fixture(scope="module")
def stub(served_repository: Path) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with RunningServer(served_repository) as server, grpc.insecure_channel(server.address) as ch:
        yield pb_grpc.GRPCInferenceServiceStub(ch)


def infer(
    stub: pb_grpc.GRPCInferenceServiceStub, model: str, inputs: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    request = pb.ModelInferRequest(model_name=model)
    for name, array in inputs.items():
        request.inputs.add(name=name, datatype=datatype_of(array), shape=list(array.shape))
        request.raw_input_contents.append(array_to_raw(array))
    response = stub.ModelInfer(request, timeout=60)
    return {
        out.name: raw_to_array(raw, out.datatype, list(out.shape))
        for out, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


def assert_close_to_keras(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert set(got) == set(want)
    for name, expected in want.items():
        assert got[name].dtype == expected.dtype, name
        assert got[name].shape == expected.shape, name
        np.testing.assert_allclose(got[name], expected, rtol=0, atol=SERVING_ATOL, err_msg=name)


@pytest.mark.parametrize("family", list(EXPECTED))
def test_served_family_answers_like_keras(
    stub: pb_grpc.GRPCInferenceServiceStub, served_repository: Path, family: str
) -> None:
    inputs_spec, outputs_spec, _ = expected_io(family)
    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name=family), timeout=30)
    assert {t.name for t in metadata.inputs} == set(inputs_spec)
    assert {t.name for t in metadata.outputs} == set(outputs_spec)
    # The server serves the config.pbtxt the converter wrote, as written.
    served = stub.ModelConfig(pb.ModelConfigRequest(name=family), timeout=30).config
    written = text_format.Parse(
        (served_repository / family / "config.pbtxt").read_text(), mc.ModelConfig()
    )
    assert served.max_batch_size == written.max_batch_size == 8
    assert served.HasField("dynamic_batching")
    for side in ("input", "output"):
        assert sorted((t.name, t.data_type, list(t.dims)) for t in getattr(served, side)) == sorted(
            (t.name, t.data_type, list(t.dims)) for t in getattr(written, side)
        )
    for batch in (1, 3, 8):
        inputs = make_inputs(family, batch, seed=1000 + batch)
        assert_close_to_keras(infer(stub, family, inputs), fx.keras_outputs(family, inputs))


@pytest.mark.parametrize("case", SERVED_LAYERS)
def test_served_preprocessing_layer_answers_like_keras(
    stub: pb_grpc.GRPCInferenceServiceStub, case: str
) -> None:
    for batch in (1, 6):
        inputs = converter_layers.make_inputs(case, batch, seed=2000 + batch)
        assert_close_to_keras(infer(stub, case, inputs), fx.keras_outputs(case, inputs))


def test_served_config_carries_the_declared_input_range(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    served = stub.ModelConfig(pb.ModelConfigRequest(name="category_encoding"), timeout=30).config
    key = input_range_key("category")
    assert served.parameters[key].string_value == f"0,{converter_layers.CATEGORIES - 1}"
    tokens = stub.ModelConfig(pb.ModelConfigRequest(name="multi_io"), timeout=30).config
    assert tokens.parameters[input_range_key("tokens")].string_value.startswith("0,")
    assert input_range_key("features") not in tokens.parameters


def test_served_seed_model_under_concurrent_single_requests(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    """Requests the server may batch together each get their own row of Keras' answer."""
    inputs = make_inputs("seed_lstm", 16, seed=7)
    want = fx.keras_outputs("seed_lstm", inputs)
    (name,) = inputs
    rows = [{name: inputs[name][i : i + 1]} for i in range(16)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda row: infer(stub, "seed_lstm", row), rows))
    got = {key: np.concatenate([a[key] for a in answers]) for key in want}
    assert_close_to_keras(got, want)


def test_served_seed_model_from_saved_model(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    inputs = make_inputs("seed_lstm", 5, seed=11)
    want = next(iter(fx.keras_outputs("seed_lstm", inputs).values()))
    got = infer(stub, SAVED_MODEL_NAME, {"input": next(iter(inputs.values()))})
    assert_close_to_keras(got, {"output_0": want})


@pytest.mark.parametrize(("bad_id", "position"), [(-1, (2, 5)), (VOCABULARY, (0, 0))])
def test_converted_embedding_refuses_out_of_range_ids_alone(
    stub: pb_grpc.GRPCInferenceServiceStub, bad_id: int, position: tuple[int, int]
) -> None:
    """Issue 9 end to end: the converter's declared range, enforced by the server.

    Keras would refuse a negative id and onnxruntime would count it from the
    end of the table; the server refuses both kinds with the range, while the
    good calls sent with it are answered like Keras.
    """
    good = make_inputs("multi_io", 1, seed=31)
    want = fx.keras_outputs("multi_io", good)
    bad = make_inputs("multi_io", 3, seed=32)
    bad["tokens"][position] = bad_id

    def call(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray] | grpc.RpcError:
        try:
            return infer(stub, "multi_io", inputs)
        except grpc.RpcError as exc:
            return exc

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(call, [good] * 8 + [bad] + [good] * 8))
    refused = answers.pop(8)
    assert isinstance(refused, grpc.RpcError)
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    message = refused.details()
    assert f"input 'tokens' holds {bad_id} at index {position}" in message
    assert f"0 to {VOCABULARY - 1}" in message
    for answer in answers:
        assert not isinstance(answer, grpc.RpcError), answer
        assert_close_to_keras(answer, want)
