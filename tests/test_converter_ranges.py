"""Declared input ranges (issue 9): what the converter reads from the Keras layer graph.

An integer input that reaches an Embedding (or a CategoryEncoding, or an
inverted lookup) through value-preserving ops gets its valid range written
into config.pbtxt as ``onnxserve.input_range.<input>``, shown in the report,
and used for the converter's own check inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format

from onnxserve.layout import input_range_key, parse_input_range
from onnxserve.protocol import model_config_pb2 as mc
from tests import converter_fixtures as fx
from tests.converter_models import LENGTH, VOCABULARY

pytestmark = pytest.mark.slow


def declared(config_path: Path) -> dict[str, tuple[int | None, int | None]]:
    """The ranges a written config.pbtxt declares, read back with the layout module."""
    config = text_format.Parse(config_path.read_text(), mc.ModelConfig())
    found = {}
    for tensor in config.input:
        parameter = config.parameters.get(input_range_key(tensor.name))
        if parameter is not None:
            found[tensor.name] = parse_input_range(parameter.string_value)
    assert len(found) == sum(1 for key in config.parameters if "input_range" in key)
    return found


def seed_like_lstm() -> Any:
    """The seed's sentiment model as the example trains it: int32 'tokens', Embedding(1000)."""
    import keras

    keras.utils.set_random_seed(41)
    return keras.Sequential(
        [
            keras.Input(shape=(LENGTH,), dtype="int32", name="tokens"),
            keras.layers.Embedding(1000, 8),
            keras.layers.LSTM(8),
            keras.layers.Dense(1, activation="sigmoid", name="score"),
        ]
    )


def test_seed_lstm_declares_its_vocabulary(tmp_path: Path) -> None:
    from onnxserve.converter import convert

    lines: list[str] = []
    report = convert(seed_like_lstm(), tmp_path, "seed", max_batch_size=8, progress=lines.append)
    assert declared(report.config_path) == {"tokens": (0, 999)}
    assert 'string_value: "0,999"' in report.config_path.read_text()
    assert "input 'tokens': values 0..999, from Embedding" in "\n".join(lines)
    assert "valid values 0..999 (declared in config.pbtxt)" in report.format()
    assert report.inputs[0].valid_range == (0, 999)
    # The check inputs come from the same fact: ids within it, spread over it.
    ids = np.concatenate([c.inputs["tokens"].ravel() for c in report.checks])
    assert ids.min() >= 0 and ids.max() <= 999 and ids.max() > 500


def test_two_integer_inputs_get_one_entry_each_and_a_float_input_none(tmp_path: Path) -> None:
    import keras

    from onnxserve.converter import convert

    keras.utils.set_random_seed(42)
    words = keras.Input(shape=(5,), dtype="int32", name="words")
    country = keras.Input(shape=(1,), dtype="int64", name="country")
    features = keras.Input(shape=(3,), name="features")
    # 'country' reaches its Embedding through a slice, a cast and a Reshape.
    country_ids = keras.layers.Reshape((1,))(keras.ops.cast(country[:, :1], "int32"))
    x = keras.layers.Concatenate()(
        [
            keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(500, 4)(words)),
            keras.layers.Flatten()(keras.layers.Embedding(30, 2)(country_ids)),
            features,
        ]
    )
    model = keras.Model([words, country, features], keras.layers.Dense(1, name="score")(x))
    report = convert(model, tmp_path, "two", max_batch_size=4)
    assert declared(report.config_path) == {"words": (0, 499), "country": (0, 29)}
    assert {i.name: i.valid_range for i in report.inputs} == {
        "words": (0, 499),
        "country": (0, 29),
        "features": None,
    }


def test_multi_io_family_declares_only_its_token_input(tmp_path: Path) -> None:
    from onnxserve.converter import convert

    report = convert(fx.saved("multi_io"), tmp_path, "multi", max_batch_size=4)
    assert declared(report.config_path) == {"tokens": (0, VOCABULARY - 1)}


def _facts(model: Any) -> list[Any]:
    from onnxserve.converter.analysis import input_facts

    return input_facts(model, model.inputs)


def test_analysis_follows_pass_through_ops_and_intersects_consumers() -> None:
    import keras

    layers = keras.layers
    ids = keras.Input(shape=(4,), dtype="int32", name="ids")
    inner_in = keras.Input(shape=(2, 2), dtype="int32")
    inner = keras.Model(inner_in, layers.Embedding(50, 3, mask_zero=True)(inner_in))
    nested = inner(layers.Reshape((2, 2))(ids))  # inside a nested model
    counted = layers.CategoryEncoding(20, output_mode="count")(ids)  # a second consumer
    model = keras.Model(ids, layers.Concatenate()([layers.Flatten()(nested), counted]))
    (fact,) = _facts(model)
    assert fact.valid_range == (0, 19)  # the intersection of 0..49 and 0..19
    assert fact.masked  # mask_zero: 0 is padding, and still a valid id
    assert len(fact.reasons) == 2


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        # An IntegerLookup maps any integer (unknown ones to the OOV index): no range.
        (lambda k, x: k.layers.IntegerLookup(vocabulary=[3, 7])(x), None),
        # Its inverse takes indices.
        (lambda k, x: k.layers.IntegerLookup(vocabulary=[3, 7], invert=True)(x), (0, 2)),
        # After arithmetic the Embedding's range says nothing about the model input.
        (lambda k, x: k.layers.Embedding(10, 2)(x + 1), None),
        # A Dense layer takes any number.
        (lambda k, x: k.layers.Dense(2)(k.ops.cast(x, "float32")), None),
    ],
)
def test_analysis_declares_nothing_it_cannot_stand_behind(build: Any, expected: Any) -> None:
    import keras

    ids = keras.Input(shape=(3,), dtype="int64", name="ids")
    (fact,) = _facts(keras.Model(ids, build(keras, ids)))
    assert fact.valid_range == expected
