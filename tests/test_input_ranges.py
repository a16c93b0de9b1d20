"""Integer input ranges: declared in config.pbtxt or read from the graph, checked at decode.

Models are loaded as the server loads them (real onnxruntime sessions) and
requests are decoded from real ModelInferRequests, so every assertion is
about what a caller would see: the status and its message, or the model's
completed config.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxserve.layout import input_range_key
from onnxserve.server.config import parse_config_text
from onnxserve.server.errors import ConfigError, InvalidInput
from onnxserve.server.inference import decode_request
from onnxserve.server.model import ModelVersion
from tests.support.batching_models import load, lookup_model, pair_model, picky_model
from tests.support.infer_requests import infer_request

BATCHING = "max_batch_size: 8\ndynamic_batching {}\n"


def ranged(key: str, text: str) -> str:
    return f'parameters {{ key: "{key}" value: {{ string_value: "{text}" }} }}\n'


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ranges")
    return {
        "lookup": lookup_model(root / "lookup.onnx"),
        "picky": picky_model(root / "picky.onnx"),
        "pair": pair_model(root / "pair.onnx"),
    }


def decode(model: ModelVersion, ids: np.ndarray) -> None:
    decode_request(infer_request("model", {"ids": ids}), model.signature, "1")


def refusal(model: ModelVersion, ids: np.ndarray) -> str:
    with pytest.raises(InvalidInput) as info:
        decode(model, ids)
    return str(info.value)


def test_a_range_is_inferred_from_a_gather_over_an_initializer(models: dict[str, Path]) -> None:
    model = load(models["lookup"], BATCHING)  # ids -> Cast -> Identity -> Gather(table[50])
    assert model.config.parameters[input_range_key("ids")].string_value == "0,49"
    decode(model, np.array([[0, 49, 7]], dtype=np.int32))
    message = refusal(model, np.array([[1, 2, 3], [4, 50, 6]], dtype=np.int32))
    assert "input 'ids' holds 50 at index (1, 1)" in message
    assert "0 to 49" in message
    assert input_range_key("ids") in message


def test_negative_ids_are_refused_although_onnx_gather_would_take_them(
    models: dict[str, Path],
) -> None:
    model = load(models["lookup"], BATCHING)
    message = refusal(model, np.array([[3, -1, 4]], dtype=np.int32))
    assert "holds -1 at index (0, 1)" in message


def test_a_declared_range_overrides_the_inferred_one(models: dict[str, Path]) -> None:
    model = load(models["lookup"], BATCHING + ranged(input_range_key("ids"), "0,39"))
    assert model.config.parameters[input_range_key("ids")].string_value == "0,39"
    decode(model, np.array([[39]], dtype=np.int32))
    assert "holds 40 at index (0, 0)" in refusal(model, np.array([[40]], dtype=np.int32))


def test_open_ended_ranges_say_which_side_is_bounded(models: dict[str, Path]) -> None:
    model = load(models["lookup"], BATCHING + ranged(input_range_key("ids"), "5,"))
    decode(model, np.array([[5, 1_000_000]], dtype=np.int32))
    assert "at least 5" in refusal(model, np.array([[6, 4]], dtype=np.int32))


def test_no_range_where_the_graph_does_not_say_one(models: dict[str, Path]) -> None:
    picky = load(models["picky"], BATCHING)  # its Gather reads a table the graph computes
    assert not [k for k in picky.config.parameters if k.startswith("onnxserve.input_range")]
    assert picky.signature.input_ranges == {}


@pytest.mark.parametrize(
    ("parameter", "message"),
    [
        (ranged(input_range_key("ids"), "0..49"), "expected '<min>,<max>'"),
        (ranged(input_range_key("ids"), "9,1"), "above its maximum"),
        (ranged(input_range_key("tokens"), "0,9"), "input 'tokens', which the model does not"),
    ],
)
def test_bad_declared_ranges_fail_the_load_with_the_reason(
    models: dict[str, Path], parameter: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load(models["lookup"], BATCHING + parameter)


def test_ranges_on_float_inputs_fail_the_load(models: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="integer inputs only"):
        load(models["pair"], BATCHING + ranged(input_range_key("INPUT0"), "0,9"))


def test_unknown_onnxserve_parameters_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"unknown parameter 'onnxserve\.input_ranges\.ids'"):
        parse_config_text(ranged("onnxserve.input_ranges.ids", "0,9"), "m")
    parse_config_text(ranged("onnxserve.execution_providers", "CPUExecutionProvider"), "m")
