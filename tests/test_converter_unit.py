"""Converter parts that need neither TensorFlow nor Keras: fast, not marked slow.

The repository writer, config building, label agreement and the CLI's
lightness are checked on small ONNX graphs built by hand.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper

from onnxserve.converter.errors import RepositoryError
from onnxserve.converter.repository import build_config, existing_versions, write_entry
from onnxserve.converter.variants import label_agreement
from onnxserve.converter.verify import check_batch_sizes, compare_outputs
from onnxserve.layout import input_range_key, parse_input_range
from onnxserve.protocol import model_config_pb2 as mc


def tiny_model(width: int = 3, out_type: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """y = cast(x * 2): inputs [batch, sequence, width] float, output of out_type."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", width])
    y = helper.make_tensor_value_info("y", out_type, ["batch", "sequence", width])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["m"]),
        helper.make_node("Cast", ["m"], ["y"], to=out_type),
    ]
    graph = helper.make_graph(nodes, "tiny", [x], [y], [two])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_build_config_drops_the_batch_dim_and_maps_types() -> None:
    config = build_config(tiny_model(out_type=TensorProto.INT64), "tiny", 16)
    assert config.platform == "onnxruntime_onnx" and config.backend == "onnxruntime"
    assert config.max_batch_size == 16 and config.HasField("dynamic_batching")
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("x", mc.TYPE_FP32, [-1, 3])
    ]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        ("y", mc.TYPE_INT64, [-1, 3])
    ]
    text = text_format.MessageToString(config)
    assert "dynamic_batching {\n}" in text and 'platform: "onnxruntime_onnx"' in text


def test_build_config_declares_input_ranges_as_triton_parameters() -> None:
    """One model-level parameter per ranged input, in the layout module's convention."""
    config = build_config(tiny_model(), "tiny", 4, input_ranges={"x": (0, 999)})
    assert dict(config.parameters) == {
        input_range_key("x"): mc.ModelParameter(string_value="0,999")
    }
    assert parse_input_range(config.parameters[input_range_key("x")].string_value) == (0, 999)
    text = text_format.MessageToString(config)
    assert 'key: "onnxserve.input_range.x"' in text and 'string_value: "0,999"' in text
    # Triton's own parser (the same message type) reads it back unchanged.
    assert text_format.Parse(text, mc.ModelConfig()) == config
    # An open side stays empty; no bound at all declares nothing.
    assert (
        build_config(tiny_model(), "t", 4, input_ranges={"x": (5, None)})
        .parameters[input_range_key("x")]
        .string_value
        == "5,"
    )
    assert not build_config(tiny_model(), "t", 4, input_ranges={"x": (None, None)}).parameters
    assert not build_config(tiny_model(), "t", 4).parameters
    with pytest.raises(RepositoryError, match="'nope', which is no input"):
        build_config(tiny_model(), "t", 4, input_ranges={"nope": (0, 1)})


def test_a_new_version_with_other_input_ranges_is_refused(tmp_path: Path) -> None:
    """All versions share config.pbtxt: a range it declares must hold for the new one too."""
    model = tiny_model()
    write_entry(tmp_path, "ids", model, build_config(model, "ids", 4, input_ranges={"x": (0, 9)}))
    same = build_config(model, "ids", 4, input_ranges={"x": (0, 9)})
    assert write_entry(tmp_path, "ids", model, same).version == 2
    for other in ({"x": (0, 19)}, {}):
        with pytest.raises(RepositoryError, match="input ranges"):
            write_entry(tmp_path, "ids", model, build_config(model, "ids", 4, input_ranges=other))
    assert existing_versions(tmp_path / "ids") == [1, 2]
    # A config written before ranges existed declares none and accepts a version with some.
    write_entry(tmp_path, "old", model, build_config(model, "old", 4))
    ranged = build_config(model, "old", 4, input_ranges={"x": (0, 9)})
    assert write_entry(tmp_path, "old", model, ranged).version == 2
    assert "input_range" not in (tmp_path / "old" / "config.pbtxt").read_text()


def test_write_entry_versions_atomic_and_never_overwrites(tmp_path: Path) -> None:
    model = tiny_model()
    config = build_config(model, "tiny", 8)
    first = write_entry(tmp_path, "tiny", model, config)
    second = write_entry(tmp_path, "tiny", model, config)
    assert (first.version, second.version) == (1, 2)
    assert existing_versions(tmp_path / "tiny") == [1, 2]
    assert onnx.load(str(second.model_path)).graph.name == "tiny"
    with pytest.raises(RepositoryError, match="never overwritten"):
        write_entry(tmp_path, "tiny", model, config, version=2)
    # No staging folders left behind, hidden or not.
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]
    # A different signature is refused and writes nothing.
    other = tiny_model(width=4)
    with pytest.raises(RepositoryError, match="other inputs/outputs"):
        write_entry(tmp_path, "tiny", other, build_config(other, "tiny", 8))
    assert existing_versions(tmp_path / "tiny") == [1, 2]


def test_write_entry_adds_a_config_to_a_folder_without_one(tmp_path: Path) -> None:
    (tmp_path / "tiny" / "3").mkdir(parents=True)
    model = tiny_model()
    entry = write_entry(tmp_path, "tiny", model, build_config(model, "tiny", 8))
    assert entry.version == 4 and entry.config_written
    assert text_format.Parse(entry.config_path.read_text(), mc.ModelConfig()).name == "tiny"


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "../up", "x" * 129, "sp ace"])
def test_bad_model_names_are_refused(tmp_path: Path, name: str) -> None:
    model = tiny_model()
    with pytest.raises(RepositoryError, match="not valid"):
        write_entry(tmp_path, name, model, build_config(model, "x", 8))
    assert list(tmp_path.iterdir()) == []


def test_check_batch_sizes() -> None:
    assert check_batch_sizes(64) == [1, 5, 64]
    assert check_batch_sizes(4) == [1, 3, 4]
    assert check_batch_sizes(2) == [1, 2]
    assert check_batch_sizes(1) == [1]


def test_compare_outputs_uses_allclose_and_reports_relative_differences() -> None:
    ref = {"y": np.array([[1.0, 0.0, -2.0]], np.float32)}
    close = compare_outputs({"y": ref["y"] + 5e-6}, ref, rtol=1e-5, atol=1e-5)[0]
    assert close.within_tolerance and close.max_abs == pytest.approx(5e-6, rel=1e-2)
    far = compare_outputs({"y": ref["y"] * 1.001}, ref, rtol=1e-5, atol=1e-5)[0]
    assert not far.within_tolerance and far.max_rel == pytest.approx(1e-3, rel=1e-2)
    missing = compare_outputs({}, ref, rtol=1e-5, atol=1e-5)[0]
    assert not missing.within_tolerance
    other_dtype = compare_outputs({"y": ref["y"].astype(np.float64)}, ref, rtol=1e-5, atol=1e-5)
    assert not other_dtype[0].within_tolerance


def test_label_agreement() -> None:
    probs = np.array([[0.1, 0.9], [0.8, 0.2], [0.4, 0.6]])
    assert label_agreement(probs, probs) == 1.0
    assert label_agreement(probs[:, ::-1], probs) == 0.0
    sigmoid = np.array([[0.2], [0.7], [0.55]])
    assert label_agreement(np.array([[0.3], [0.6], [0.45]]), sigmoid) == pytest.approx(2 / 3)
    assert label_agreement(np.array([[3.0], [-1.0]]), np.array([[2.0], [-1.5]])) is None
    assert label_agreement(np.array([1, 2, 3]), np.array([1, 2, 4])) == pytest.approx(2 / 3)


def test_convert_help_imports_no_tensorflow() -> None:
    code = (
        "import sys; from onnxserve.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('tensorflow', 'keras', 'tf2onnx', 'onnx', 'onnxruntime') "
        "if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ
    )
    assert done.stdout.strip() == "[]"
    helped = subprocess.run(
        [sys.executable, "-m", "onnxserve", "convert", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for flag in (
        "--repository",
        "--name",
        "--version",
        "--opset",
        "--max-batch-size",
        "--optimize",
        "--quantize",
        "--fp16",
        "--unsafe-deserialization",
    ):
        assert flag in helped.stdout
    # The flag says what it does: it runs code from the model file.
    assert "RUNS PYTHON CODE" in " ".join(helped.stdout.split())


def test_concurrent_writers_get_distinct_versions(tmp_path: Path) -> None:
    """Writers racing on one name each get their own version; none is lost or overwritten."""
    from concurrent.futures import ThreadPoolExecutor

    model = tiny_model()
    config = build_config(model, "race", 8)
    with ThreadPoolExecutor(8) as pool:
        entries = list(pool.map(lambda _: write_entry(tmp_path, "race", model, config), range(12)))
    assert sorted(e.version for e in entries) == list(range(1, 13))
    assert existing_versions(tmp_path / "race") == list(range(1, 13))
    assert sum(e.config_written for e in entries) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["race"]


def test_a_write_that_fails_midway_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk-full error after half the model bytes: no model folder, no staging folder."""
    from onnxserve.converter import repository

    def half_then_fail(path: Path, data: bytes) -> None:
        path.write_bytes(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(repository, "_write_file", half_then_fail)
    model = tiny_model()
    with pytest.raises(RepositoryError, match="No space left"):
        write_entry(tmp_path, "tiny", model, build_config(model, "tiny", 8))
    assert list(tmp_path.iterdir()) == []


def test_cli_without_tensorflow_says_which_extra_to_install(tmp_path: Path) -> None:
    """On a client-only install (TensorFlow absent) the command explains, not a traceback."""
    model = tmp_path / "model.keras"
    model.write_bytes(b"not read")
    code = (
        "import sys; sys.modules['tensorflow'] = None; "
        "from onnxserve.cli import main; "
        f"sys.exit(main(['convert', {str(model)!r}, '--repository', "
        f"{str(tmp_path / 'repo')!r}, '--name', 'm']))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert "pip install 'onnxserve[convert]'" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"opset": 12}, "--opset 12 is not supported; use 13 to 18"),
        ({"max_batch_size": 0}, "--max-batch-size must be 1 or more"),
        ({"version": 0}, "--version must be 1 or more"),
        ({"quantize": "int4"}, "--quantize 'int4': use none or int8"),
        ({"quantize": "int8", "fp16": True}, "exclude each other"),
        ({"min_agreement": 1.5}, "--min-agreement must be within 0 and 1"),
    ],
)
def test_convert_options_are_checked_once_for_api_and_cli(
    options: dict[str, object], message: str, tmp_path: Path
) -> None:
    """One validation (ConvertOptions) serves convert() and `onnxserve convert`."""
    from onnxserve.converter import ConversionError, convert
    from onnxserve.converter.settings import ConvertOptions
    from onnxserve.settings import SettingsError

    with pytest.raises(ConversionError, match=message) as raised:
        convert("never-loaded.keras", tmp_path, "m", **options)
    assert isinstance(raised.value, SettingsError)
    assert not (tmp_path / "m").exists()
    assert ConvertOptions().opset == 17  # convert()'s defaults are the settings' defaults


def test_convert_refuses_an_unknown_option(tmp_path: Path) -> None:
    from onnxserve.converter import convert

    with pytest.raises(TypeError, match="max_batch"):
        convert("never-loaded.keras", tmp_path, "m", max_batch=4)


def test_cli_names_the_flag_of_a_bad_option(tmp_path: Path) -> None:
    model = tmp_path / "model.keras"
    model.write_bytes(b"not read")
    result = subprocess.run(
        [sys.executable, "-m", "onnxserve", "convert", str(model), "--repository",
         str(tmp_path / "repo"), "--name", "m", "--opset", "99"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "--opset 99 is not supported" in result.stderr
    assert "Traceback" not in result.stderr


def _convert_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "onnxserve", "convert", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_cli_says_what_is_wrong_with_a_file_that_is_not_a_keras_model(tmp_path: Path) -> None:
    """Found before TensorFlow loads; Keras itself says "File not found" for a text .keras."""
    text = tmp_path / "notamodel.keras"
    text.write_text("hello\n")
    zipped = tmp_path / "model.h5"
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("config.json", "{}")
    hdf5 = tmp_path / "legacy.keras"
    hdf5.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    empty = tmp_path / "empty.keras"
    empty.write_bytes(b"")
    cases = {
        text: "is not a Keras model: a .keras file is a zip archive (as model.save('model.keras') "
        "writes it) and this one is not; it holds text: 'hello'",
        zipped: "is a zip archive (a Keras .keras model?) named .h5: rename it to .keras",
        hdf5: "is an HDF5 file (a legacy Keras .h5 model?) named .keras",
        empty: "is empty (0 bytes)",
    }
    for path, expected in cases.items():
        done = _convert_cli(str(path), "--repository", str(tmp_path / "repo"))
        assert done.returncode == 1, done.stderr
        assert expected in " ".join(done.stderr.split()), done.stderr
        assert "File not found" not in done.stderr
    assert not (tmp_path / "repo").exists()


def test_cli_answers_an_onnx_file_with_where_to_copy_it(tmp_path: Path) -> None:
    model = tmp_path / "scorer.onnx"
    model.write_bytes(b"onnx")
    repo = tmp_path / "repo"
    (repo / "scorer" / "1").mkdir(parents=True)
    done = _convert_cli(str(model), "--repository", str(repo))
    assert done.returncode == 2
    message = " ".join(done.stderr.split())
    assert "is an ONNX model already, which onnxserve serves as it is" in message
    assert f"copy it to {repo}/scorer/2/ as model.onnx" in message  # the next version


def test_convert_names_the_model_after_its_file_by_default(tmp_path: Path) -> None:
    from onnxserve.converter.settings import ConvertSettings

    settings = ConvertSettings(model=tmp_path / "digits.keras", repository=tmp_path)
    assert settings.name == "digits"
    saved = ConvertSettings(model=tmp_path / "exported", repository=tmp_path, name="x")
    assert saved.name == "x"
