"""Keras preprocessing layers and Lambda layers through the converter (issue 10).

Each preprocessing layer a served model may start with is converted and
checked by the converter against Keras, then independently here: only the
model's own inputs are ONNX graph inputs (the layer's constants are
initializers), and onnxruntime on the written file answers like Keras on new
inputs. Layers that cannot be converted are refused by name before tracing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests import converter_fixtures as fx
from tests.converter_layers import (
    BOUNDARIES,
    INTEGER_KEYS,
    LAYERS,
    REFUSED,
    STRING_KEYS,
    make_inputs,
)

pytestmark = pytest.mark.slow


def run_onnx(path: Path, inputs: dict[str, Any]) -> dict[str, Any]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs), strict=True))


def graph_inputs(path: Path) -> list[str]:
    import onnx

    return [value.name for value in onnx.load(str(path)).graph.input]


@pytest.mark.parametrize("case", list(LAYERS))
def test_preprocessing_layer_converts_and_answers_like_keras(case: str, tmp_path: Path) -> None:
    from onnxserve.converter import convert

    report = convert(fx.trained(case), tmp_path, case, max_batch_size=4)
    inputs = make_inputs(case, 5)
    assert graph_inputs(report.model_path) == list(inputs)  # constants are not inputs
    assert all(c.passed for c in report.checks) and report.max_abs_difference <= 1e-5
    got = run_onnx(report.model_path, inputs)
    want = fx.keras_outputs(case, inputs)
    assert set(got) == set(want)
    for name, expected in want.items():
        np.testing.assert_allclose(got[name], expected, rtol=1e-5, atol=1e-5, err_msg=name)


def test_check_inputs_exercise_the_lookups_and_buckets(tmp_path: Path) -> None:
    """The converter's own check inputs hit the tables' keys (and unknown values, which
    map to the OOV index) and every bucket, not only the defaults."""
    from onnxserve.converter import convert

    ids = convert(fx.trained("integer_lookup"), tmp_path, "ids", max_batch_size=8)
    values = np.concatenate([c.inputs["ids"].ravel() for c in ids.checks])
    assert set(INTEGER_KEYS) <= set(values.tolist())
    assert not np.isin(values, INTEGER_KEYS).all()
    words = convert(fx.trained("string_lookup"), tmp_path, "words", max_batch_size=8)
    strings = {str(v) for c in words.checks for v in c.inputs["colours"].ravel()}
    assert set(STRING_KEYS) <= strings and strings - set(STRING_KEYS)
    assert [i.data_type for i in words.inputs] == ["TYPE_STRING"]
    buckets = convert(fx.trained("discretization"), tmp_path, "buckets", max_batch_size=8)
    measured = np.concatenate([c.inputs["measurements"].ravel() for c in buckets.checks])
    assert set(np.digitize(measured, BOUNDARIES).tolist()) == set(range(len(BOUNDARIES) + 1))


@pytest.mark.parametrize("fmt", ["keras", "h5", "saved_model"])
def test_normalization_converts_from_every_file_format(fmt: str, tmp_path: Path) -> None:
    """The issue's report: adapted Normalization failed from .keras, .h5 and SavedModel."""
    from onnxserve.converter import convert

    report = convert(fx.saved("normalization_adapted", fmt), tmp_path, "norm", max_batch_size=4)
    (name,) = graph_inputs(report.model_path)
    features = make_inputs("normalization_adapted", 3)["features"]
    (got,) = run_onnx(report.model_path, {name: features}).values()
    (want,) = fx.keras_outputs("normalization_adapted", {"features": features}).values()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_string_lookup_from_a_saved_model(tmp_path: Path) -> None:
    """A SavedModel's lookup table sits inside the restored function; it is found there."""
    from onnxserve.converter import convert

    report = convert(fx.saved("string_lookup", "saved_model"), tmp_path, "w", max_batch_size=4)
    inputs = make_inputs("string_lookup", 4)
    (name,) = graph_inputs(report.model_path)
    (got,) = run_onnx(report.model_path, {name: inputs["colours"]}).values()
    (want,) = fx.keras_outputs("string_lookup", inputs).values()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layer", list(REFUSED))
def test_unconvertible_layer_is_refused_by_name_before_tracing(layer: str, tmp_path: Path) -> None:
    import keras

    from onnxserve.converter import UnsupportedModelError, convert

    lines: list[str] = []
    with pytest.raises(UnsupportedModelError) as caught:
        convert(REFUSED[layer](keras), tmp_path / "repo", "m", progress=lines.append)
    message = str(caught.value)
    assert f"({layer}) cannot be converted" in message and "client" in message
    assert not any("tracing" in line for line in lines)
    assert not (tmp_path / "repo").exists()


def test_unconvertible_layer_in_a_saved_model_is_named_by_its_ops(tmp_path: Path) -> None:
    """A SavedModel has no layers to check up front; tf2onnx's leftover ops name the layer."""
    import keras

    from onnxserve.converter import UnsupportedModelError, convert

    exported = tmp_path / "hashing"
    REFUSED["Hashing"](keras).export(str(exported), verbose=False)
    with pytest.raises(UnsupportedModelError, match=r"StringToHashBucketFast.*layers\.Hashing"):
        convert(exported, tmp_path / "repo", "m")
    assert not (tmp_path / "repo").exists()


def _lambda_model(tmp_path: Path) -> tuple[Any, Path]:
    import keras

    inputs = keras.Input(shape=(3,), name="x")
    shifted = keras.layers.Lambda(lambda t: t * 2.0 + 1.0)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, name="score")(shifted))
    path = tmp_path / "lambda.keras"
    model.save(path)
    return model, path


def test_lambda_layer_needs_unsafe_deserialization_and_says_so(tmp_path: Path) -> None:
    from onnxserve.converter import ModelLoadError, convert

    model, path = _lambda_model(tmp_path)
    with pytest.raises(ModelLoadError) as caught:
        convert(path, tmp_path / "repo", "lam")
    message = str(caught.value)
    assert "--unsafe-deserialization" in message and "safe_mode=False" in message
    assert "runs Python code" in message and "onnxserve.converter.convert(model" in message
    assert not (tmp_path / "repo").exists()
    # The two ways out the message names both work.
    report = convert(path, tmp_path / "repo", "lam", unsafe_deserialization=True)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(
        run_onnx(report.model_path, {"x": x})["score"], np.asarray(model(x)), rtol=1e-5, atol=1e-5
    )
    assert convert(model, tmp_path / "repo", "lam_in_memory").max_abs_difference <= 1e-5


def test_cli_unsafe_deserialization_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The flag, from the command line through the settings to Keras' safe_mode (in-process:
    the same parser and handler as the ``onnxserve`` executable, without a second TensorFlow
    start-up)."""
    from onnxserve.cli import main

    _, path = _lambda_model(tmp_path)
    command = ["convert", str(path), "--repository", str(tmp_path / "repo"), "--name", "lam"]
    assert main(command) == 1
    assert "--unsafe-deserialization" in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()
    assert main([*command, "--unsafe-deserialization"]) == 0
    assert "'lam' version 1" in capsys.readouterr().out
