"""The Keras -> ONNX converter on real Keras models, real tf2onnx and real onnxruntime.

Every family of issue 4 is trained for one step, saved as .keras, converted
into a temporary repository and checked here independently of the converter's
own verification: names, named dims, config.pbtxt, and onnxruntime's answers
against Keras on inputs the converter never saw.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format

from onnxserve.protocol import model_config_pb2 as mc
from tests import converter_fixtures as fx
from tests.converter_fixtures import EXPECTED, expected_io, make_inputs
from tests.converter_models import LENGTH

pytestmark = pytest.mark.slow


def run_onnx(path: Path, inputs: dict[str, Any]) -> dict[str, Any]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs), strict=True))


def read_config(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def assert_matches_keras(family: str, model_path: Path, batch: int, atol: float = 1e-5) -> float:
    inputs = make_inputs(family, batch)
    got = run_onnx(model_path, inputs)
    want = fx.keras_outputs(family, inputs)
    assert set(got) == set(want)
    worst = 0.0
    for name, expected in want.items():
        assert got[name].dtype == expected.dtype, name
        assert got[name].shape == expected.shape, name
        np.testing.assert_allclose(got[name], expected, rtol=1e-5, atol=atol, err_msg=name)
        worst = max(worst, float(np.max(np.abs(got[name].astype(np.float64) - expected))))
    return worst


@pytest.mark.parametrize("family", list(EXPECTED))
def test_family_converts_from_keras_file(family: str, tmp_path: Path) -> None:
    from onnxserve.converter import convert

    lines: list[str] = []
    report = convert(fx.saved(family), tmp_path, family, max_batch_size=8, progress=lines.append)
    inputs, outputs, loop = expected_io(family)

    # Files in Triton's layout.
    assert report.version == 1
    assert report.model_path == tmp_path / family / "1" / "model.onnx"
    assert report.model_path.is_file() and report.config_path.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [family]  # no staging left behind
    assert report.size_bytes == report.model_path.stat().st_size

    # config.pbtxt: what the server loads as is.
    config = read_config(tmp_path / family / "config.pbtxt")
    assert config.name == family
    assert config.platform == "onnxruntime_onnx" and config.backend == "onnxruntime"
    assert config.max_batch_size == 8
    assert config.HasField("dynamic_batching")
    assert {i.name: (mc.DataType.Name(i.data_type), list(i.dims)) for i in config.input} == inputs
    assert {o.name: (mc.DataType.Name(o.data_type), list(o.dims)) for o in config.output} == outputs

    # ONNX graph: names and named dims.
    import onnx

    model = onnx.load(str(report.model_path))
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch", value.name
        if inputs[value.name][1] == [-1]:
            assert dims[1].dim_param == "sequence"
    for value in model.graph.output:
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch", value.name
    assert not any(
        p.dim_param.startswith("unk__")
        for v in model.graph.input
        for p in v.type.tensor_type.shape.dim
    )

    # The converter's own check: within 1e-5 at batch 1, an odd size and the max.
    assert [c.batch_size for c in report.checks][:3] == [1, 5, 8]
    assert report.max_abs_difference <= 1e-5
    assert all(c.passed for c in report.checks)

    # Independently: onnxruntime on the written file vs Keras, new inputs, odd batch.
    assert_matches_keras(family, report.model_path, batch=3)

    # Loops are reported when (and only when) they are there.
    assert bool(report.loop_nodes) == loop
    assert any("ONNX Loop" in w for w in report.warnings) == loop
    if loop:
        assert "3-5x slower" in report.warnings[0]
        cause = {"gru": "GRU layer 'gru'", "masked_lstm": "with mask_zero=True"}[family]
        assert cause in report.warnings[0]
    # Progress was shown, stage by stage, numbered without gaps (no variant step here),
    # and the report names what was written.
    assert [line.split("]")[0].split()[0] for line in lines if line.startswith("[")] == [
        f"[{n}/5" for n in range(1, 6)
    ]
    text = report.format()
    assert str(report.model_path) in text and "max abs" in text


def test_sequential_seed_model_gets_a_dynamic_sequence_length(tmp_path: Path) -> None:
    """The seed model accepts other lengths in Keras, so the ONNX model does too."""
    from onnxserve.converter import convert

    model = fx.trained("seed_lstm")
    report = convert(model, tmp_path, "seed", max_batch_size=4)
    assert any(c.sequence_length == LENGTH + 3 for c in report.checks)
    # Tracing forces Keras' generic (non-cuDNN) LSTM kernels and then restores the setting.
    assert [layer.use_cudnn for layer in model.layers if hasattr(layer, "use_cudnn")] == [
        "auto",
        "auto",
    ]
    inputs = make_inputs("seed_lstm", 2, length=LENGTH * 2)
    got = run_onnx(report.model_path, inputs)
    want = fx.keras_outputs("seed_lstm", inputs)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)


def test_functional_model_with_fixed_length_keeps_it(tmp_path: Path) -> None:
    """A functional model on Input(shape=(12,)) refuses other lengths in Keras: kept fixed."""
    from onnxserve.converter import convert

    report = convert(fx.trained("conv1d_text"), tmp_path, "conv", max_batch_size=4)
    assert report.inputs[0].onnx_shape == ("batch", LENGTH)
    assert all(c.sequence_length is None for c in report.checks)


def test_masking_layer_on_frames_is_checked_on_padded_sequences(tmp_path: Path) -> None:
    """A Masking layer (not only mask_zero) becomes a Loop; the check pads with mask_value."""
    import keras

    from onnxserve.converter import convert

    keras.utils.set_random_seed(9)
    frames = keras.Input(shape=(6, 3), name="frames")
    x = keras.layers.LSTM(4)(keras.layers.Masking(mask_value=-1.0)(frames))
    model = keras.Model(frames, keras.layers.Dense(2, name="out")(x))
    report = convert(model, tmp_path, "frames", max_batch_size=8)
    assert report.loop_nodes and "Masking layer" in report.warnings[0]
    padded_steps = np.all(report.checks[-1].inputs["frames"] == -1.0, axis=-1)
    assert padded_steps.any() and not padded_steps[:, 0].any()
    rng = np.random.default_rng(5)
    values = rng.standard_normal((4, 6, 3)).astype(np.float32)
    values[:2, 3:] = -1.0
    got = run_onnx(report.model_path, {"frames": values})["out"]
    np.testing.assert_allclose(got, np.asarray(model(values)), rtol=1e-5, atol=1e-5)


def test_seed_model_from_saved_model(tmp_path: Path) -> None:
    from onnxserve.converter import convert

    report = convert(fx.saved("seed_lstm", "saved_model"), tmp_path, "seed", max_batch_size=8)
    assert [i.name for i in report.inputs] == ["input"]  # Keras' 'keras_tensor' renamed
    assert [o.name for o in report.outputs] == ["output_0"]  # the serving signature's name
    assert report.inputs[0].onnx_shape == ("batch", LENGTH)
    assert report.max_abs_difference <= 1e-5
    inputs = make_inputs("seed_lstm", 5)
    want = next(iter(fx.keras_outputs("seed_lstm", inputs).values()))
    got = run_onnx(report.model_path, {"input": next(iter(inputs.values()))})["output_0"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_seed_model_from_legacy_h5(tmp_path: Path) -> None:
    from onnxserve.converter import convert

    report = convert(fx.saved("seed_lstm", "h5"), tmp_path, "seed_h5", max_batch_size=4)
    assert report.max_abs_difference <= 1e-5
    assert_matches_keras("seed_lstm", report.model_path, batch=3)


def test_same_name_twice_gives_versions_1_and_2_and_never_overwrites(tmp_path: Path) -> None:
    from onnxserve.converter import RepositoryError, convert

    model = fx.trained("cnn")
    first = convert(model, tmp_path, "cnn", max_batch_size=4)
    config_before = first.config_path.read_bytes()
    model_before = first.model_path.read_bytes()
    second = convert(model, tmp_path, "cnn", max_batch_size=4)
    assert (first.version, second.version) == (1, 2)
    assert sorted(p.name for p in (tmp_path / "cnn").iterdir()) == ["1", "2", "config.pbtxt"]
    assert first.config_written and not second.config_written
    assert first.config_path.read_bytes() == config_before
    with pytest.raises(RepositoryError, match="never overwritten"):
        convert(model, tmp_path, "cnn", version=1, max_batch_size=4)
    assert first.model_path.read_bytes() == model_before
    third = convert(model, tmp_path, "cnn", version=7, max_batch_size=4)
    assert third.model_path == tmp_path / "cnn" / "7" / "model.onnx"
    # A different signature under the same name is refused: versions share config.pbtxt.
    with pytest.raises(RepositoryError, match="other inputs/outputs"):
        convert(model, tmp_path, "cnn", max_batch_size=16)
    assert sorted(p.name for p in (tmp_path / "cnn").iterdir()) == ["1", "2", "7", "config.pbtxt"]
    assert [p.name for p in tmp_path.iterdir()] == ["cnn"]


def test_failed_check_writes_nothing(tmp_path: Path) -> None:
    """With a zero tolerance the LSTM's 1e-7 differences fail the check: nothing is written."""
    from onnxserve.converter import VerificationError, convert

    with pytest.raises(VerificationError, match="does not match the Keras model"):
        convert(fx.trained("seed_lstm"), tmp_path / "repo", "seed", rtol=0.0, atol=0.0)
    assert not (tmp_path / "repo").exists()


def test_unsupported_operation_is_a_clear_error_and_writes_nothing(tmp_path: Path) -> None:
    """keras.ops.argmax compiles to Bitcast with the TensorFlow backend: ONNX has none."""
    import keras

    from onnxserve.converter import UnsupportedModelError, convert

    inputs = keras.Input(shape=(4,), name="x")
    scores = keras.layers.Dense(3)(inputs)
    model = keras.Model(inputs, {"label": keras.ops.argmax(scores, axis=-1)})
    with pytest.raises(UnsupportedModelError, match="Bitcast") as caught:
        convert(model, tmp_path, "argmax")
    assert "argmax" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_output_without_a_batch_axis_is_refused(tmp_path: Path) -> None:
    """An output summed over the batch cannot be split per request by the server."""
    import keras

    from onnxserve.converter import VerificationError, convert

    inputs = keras.Input(shape=(3,), name="x")
    scores = keras.layers.Dense(2, name="scores")(inputs)
    model = keras.Model(inputs, {"scores": scores, "total": keras.ops.sum(scores, axis=0)})
    with pytest.raises(VerificationError, match=r"'total'.*not the batch"):
        convert(model, tmp_path, "total")
    assert list(tmp_path.iterdir()) == []


def test_string_input_layer_is_a_clear_error(tmp_path: Path) -> None:
    """A TextVectorization the converter cannot rebuild (no output_sequence_length: the
    padded length would depend on the batch) is refused by name, with the reason."""
    import keras

    from onnxserve.converter import UnsupportedModelError, convert

    text = keras.Input(shape=(1,), dtype="string", name="text")
    vectorize = keras.layers.TextVectorization(max_tokens=20)
    vectorize.adapt(["good film", "bad film"])
    model = keras.Model(text, keras.layers.Dense(1)(keras.layers.Embedding(20, 2)(vectorize(text))))
    with pytest.raises(UnsupportedModelError, match=r"TextVectorization.*output_sequence_length"):
        convert(model, tmp_path, "text")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.keras", "does not exist"),
        (lambda d: _write(d / "notes.txt", b"hello"), "not a Keras model"),
        (lambda d: _write(d / "garbage.keras", b"not a zip file"), "a .keras file is a zip"),
        (lambda d: _write(d / "garbage.h5", b"not an HDF5 file"), "a .h5 file is an HDF5"),
        (lambda d: _mkdir(d / "empty_dir"), "not a TensorFlow SavedModel"),
    ],
)
def test_bad_model_paths_are_clear_errors(tmp_path: Path, make: Any, message: str) -> None:
    from onnxserve.converter import ModelLoadError, convert

    source = tmp_path / "sources"
    source.mkdir()
    with pytest.raises(ModelLoadError, match=message):
        convert(make(source), tmp_path / "repo", "bad")
    assert not (tmp_path / "repo").exists()


def test_not_a_keras_model_object(tmp_path: Path) -> None:
    from onnxserve.converter import ModelLoadError, convert

    with pytest.raises(ModelLoadError, match=r"expected a keras\.Model"):
        convert(object(), tmp_path, "bad")
    assert list(tmp_path.iterdir()) == []


def test_subclassed_model_gets_told_how_to_wrap_it(tmp_path: Path) -> None:
    import keras

    from onnxserve.converter import ModelLoadError, convert

    class Scorer(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x: Any) -> Any:
            return self.dense(x)

    scorer = Scorer()
    scorer(np.zeros((1, 3), np.float32))
    with pytest.raises(ModelLoadError, match="no symbolic inputs"):
        convert(scorer, tmp_path, "scorer")
    # The advice works: wrapped in a functional model it converts.
    inputs = keras.Input(shape=(3,), name="x")
    report = convert(keras.Model(inputs, scorer(inputs)), tmp_path, "scorer", max_batch_size=4)
    assert [i.name for i in report.inputs] == ["x"]
    assert report.max_abs_difference <= 1e-5


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def test_int8_quantization_is_judged_on_label_agreement(tmp_path: Path) -> None:
    import onnx

    from onnxserve.converter import convert

    report = convert(
        fx.trained("seed_lstm"),
        tmp_path,
        "seed_int8",
        max_batch_size=8,
        quantize="int8",
        min_agreement=0.9,
    )
    assert report.variant is not None
    assert report.variant.description == "int8 dynamic quantization"
    assert report.variant.agreement is not None and report.variant.agreement >= 0.9
    assert 0 < report.variant.max_abs < 0.1  # changed, but not by much
    ops = {n.op_type for n in onnx.load(str(report.model_path)).graph.node}
    assert ops & {"DynamicQuantizeLSTM", "DynamicQuantizeLinear", "MatMulInteger"}
    assert "label agreement" in report.format()


def test_int8_failure_on_a_gru_loop_is_a_clear_error_and_writes_nothing(tmp_path: Path) -> None:
    """onnxruntime's quantizer rejects the GRU's Loop (outer-scope tensors in its body)."""
    from onnxserve.converter import ConversionError, convert

    with pytest.raises(ConversionError, match=r"int8 dynamic quantization failed.*ONNX Loop"):
        convert(fx.trained("gru"), tmp_path / "repo", "gru", max_batch_size=4, quantize="int8")
    assert not (tmp_path / "repo").exists()


def test_fp16_keeps_float32_inputs_and_outputs(tmp_path: Path) -> None:
    import onnx

    from onnxserve.converter import convert

    report = convert(fx.trained("cnn"), tmp_path, "cnn16", max_batch_size=8, fp16=True)
    assert report.variant is not None and report.variant.agreement is not None
    assert report.variant.agreement >= 0.99
    model = onnx.load(str(report.model_path))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    config = read_config(report.config_path)
    assert [mc.DataType.Name(i.data_type) for i in config.input] == ["TYPE_FP32"]
    got = run_onnx(report.model_path, make_inputs("cnn", 4))
    assert got["probabilities"].dtype == np.float32


def test_extended_optimization_stays_within_serving_tolerance(tmp_path: Path) -> None:
    from onnxserve.converter import convert

    report = convert(
        fx.trained("attention"), tmp_path, "attention", max_batch_size=8, optimize="extended"
    )
    assert report.variant is not None
    assert report.variant.description == "extended optimization"
    assert report.variant.max_abs <= 1e-4
    assert_matches_keras("attention", report.model_path, batch=5, atol=1e-4)


def test_quantize_and_fp16_together_are_refused_before_any_work(tmp_path: Path) -> None:
    from onnxserve.converter import ConversionError, convert

    with pytest.raises(ConversionError, match="exclude each other"):
        convert(tmp_path / "does-not-matter.keras", tmp_path, "x", quantize="int8", fp16=True)
    assert list(tmp_path.iterdir()) == []


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, "-m", "onnxserve", "convert", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


# TensorFlow's C++ start-up lines (TF_CPP_MIN_LOG_LEVEL does not silence them in 2.21).
_TENSORFLOW_NOISE = (
    "oneDNN",
    "cpu_feature_guard",
    "absl::InitializeLog",
    "To enable the following",
)


def test_cli_converts_twice_and_refuses_bad_input(tmp_path: Path) -> None:
    model = tmp_path / "text.keras"
    shutil.copy(fx.saved("conv1d_text"), model)
    repo = tmp_path / "repo"
    config = tmp_path / "convert.toml"
    config.write_text("[convert]\nmax_batch_size = 4\nopset = 17\n")
    for expected_version, name in ((1, ["--name", "text"]), (2, [])):
        # Without --name, the model is named after its file (text.keras: text).
        done = _cli(str(model), "--repository", str(repo), *name, "--config", str(config))
        assert done.returncode == 0, done.stderr
        assert f"'text' version {expected_version}" in done.stdout
        assert "[4/5" in done.stderr and "max abs" in done.stdout
        noise = [
            line for line in done.stderr.splitlines() if any(n in line for n in _TENSORFLOW_NOISE)
        ]
        assert not noise, noise
    assert read_config(repo / "text" / "config.pbtxt").max_batch_size == 4
    assert sorted(p.name for p in (repo / "text").iterdir()) == ["1", "2", "config.pbtxt"]

    missing = _cli(
        str(tmp_path / "nope.keras"), "--repository", str(tmp_path / "r2"), "--name", "x"
    )
    assert missing.returncode == 1
    assert "does not exist" in missing.stderr and "nothing was written" in missing.stderr
    assert not (tmp_path / "r2").exists()

    again = _cli(str(model), "--repository", str(repo), "--name", "text", "--version", "2")
    assert again.returncode == 1 and "never overwritten" in again.stderr
    assert sorted(p.name for p in (repo / "text").iterdir()) == ["1", "2", "config.pbtxt"]
