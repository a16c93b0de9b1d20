"""TimeDistributed through the converter (issue 23): the layer on [batch*time, ...], no Loop.

A per-time-step layer (Dense, Conv*, normalization, activation, dropout, or a
model of those) is exported as one call on the folded batch, checked by the
converter against Keras' own TimeDistributed at batch 1, an odd size and
max_batch_size (64 here: the size at which the pfor Loop used to fail). Any
other wrapped layer becomes an ONNX Loop over the time steps only where the
time axis is dynamic, one that runs, and the warning names it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from onnxserve.converter.analysis import LoopCause
from onnxserve.converter.export import loop_warnings
from tests.converter_models import _keras

MAX_BATCH = 64


def _ops(path: Path) -> Counter[str]:
    import onnx

    from onnxserve.converter.export import iter_nodes

    return Counter(node.op_type for node in iter_nodes(onnx.load(str(path)).graph))


def _convert(model: Any, tmp_path: Path) -> Any:
    from onnxserve.converter import convert

    report = convert(model, tmp_path, "td", max_batch_size=MAX_BATCH, progress=lambda _: None)
    assert [c.batch_size for c in report.checks][:3] == [1, 5, MAX_BATCH]
    assert all(c.passed for c in report.checks) and report.max_abs_difference <= 1e-5
    return report


@pytest.mark.slow
def test_per_time_step_layers_fold_into_the_batch_without_a_loop(tmp_path: Path) -> None:
    keras = _keras()
    keras.utils.set_random_seed(3)
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(40, 6)(tokens)
    x = keras.layers.TimeDistributed(keras.layers.Dense(8, activation="relu"))(x)
    x = keras.layers.TimeDistributed(keras.layers.LayerNormalization())(x)
    x = keras.layers.TimeDistributed(keras.layers.Dropout(0.5))(x)
    x = keras.layers.TimeDistributed(keras.layers.Dense(3))(x)
    frames = keras.Input(shape=(4, 8, 8, 2), name="frames")  # (time, height, width, channels)
    cnn = keras.Sequential(
        [
            keras.layers.Conv2D(3, 3, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.GlobalAveragePooling2D(),
        ]
    )
    y = keras.layers.TimeDistributed(cnn)(frames)
    model = keras.Model([tokens, frames], [x, y])
    report = _convert(model, tmp_path)
    assert report.loop_nodes == [] and report.warnings == []
    ops = _ops(report.model_path)
    assert ops["Loop"] == 0 and ops["Conv"] == 1  # one Conv on [batch*time, ...], not 4
    assert ops["MatMul"] == 2


@pytest.mark.slow
def test_an_unknown_wrapped_layer_loops_over_time_and_the_warning_names_it(
    tmp_path: Path,
) -> None:
    keras = _keras()

    class Shift(keras.layers.Layer):  # not a Keras layer: not known to be per time step
        def call(self, x: Any) -> Any:
            return x * 2.0 + 1.0

        def compute_output_shape(self, shape: Any) -> Any:
            return shape

    keras.utils.set_random_seed(4)
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(40, 6)(tokens)
    x = keras.layers.Bidirectional(keras.layers.LSTM(4, return_sequences=True))(x)
    x = keras.layers.TimeDistributed(Shift(name="shift"), name="shifted")(x)
    report = _convert(keras.Model(tokens, x), tmp_path)
    assert len(report.loop_nodes) == 1
    (warning,) = report.warnings
    assert "TimeDistributed layer 'shifted' over 'shift' (Shift)" in warning
    assert "recurrent" not in warning.split(".")[0]


def test_loop_warnings_name_the_layer_behind_each_loop() -> None:
    causes = [
        LoopCause("GRU layer 'gru'", "use an LSTM layer instead", "gru"),
        LoopCause("TimeDistributed layer 'td' over 'x' (X)", "wrap Dense", "td", False),
    ]
    loops = [
        "model_1/gru_1/while_loop",
        "model_1/td_2/map/while_loop",
        "model_1/mystery_1/while_loop",
    ]
    recurrent, over_time, unknown = loop_warnings(loops, causes)
    assert recurrent.startswith("1 recurrent part(s)") and "GRU layer 'gru'" in recurrent
    assert "TimeDistributed layer 'td'" in over_time and "wrap Dense" in over_time
    assert "'model_1/mystery_1'" in unknown
    # TensorFlow's unique-scope suffix is read as the layer's, never a longer name's.
    assert loop_warnings(["m/gru_2_1/while_loop"], causes) == loop_warnings(
        ["m/gru_2_1/while_loop"], []
    )
    both = [*causes, LoopCause("GRU layer 'gru_2'", "use an LSTM layer instead", "gru_2")]
    (named,) = loop_warnings(["m/gru_2/while_loop"], both)
    assert "GRU layer 'gru_2'" in named and "GRU layer 'gru';" not in named
