"""``onnxserve infer`` against the real protocol server: inputs from files and JSON, outputs."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from onnxserve.cli import main
from onnxserve.client.cli import format_outputs, parse_input
from onnxserve.settings import SettingsError
from tests.support.server import RunningServer

A = np.arange(32, dtype=np.float32).reshape(2, 16)
B = np.full((2, 16), 0.25, np.float32)
SIMPLE = {"INPUT0": ("FP32", (-1, 16)), "INPUT1": ("FP32", (-1, 16))}


def test_json_inputs_take_the_declared_datatype_and_batch_dimension() -> None:
    name, array = parse_input("INPUT0=" + json.dumps(list(range(16))), SIMPLE)
    assert name == "INPUT0"
    assert array.dtype == np.float32 and array.shape == (1, 16)
    _, text = parse_input('t=["a", "é"]', {"t": ("BYTES", (-1, 2))})
    assert text.dtype == object and text.shape == (1, 2)
    _, undeclared = parse_input("x=[1, 2]", {})
    assert undeclared.dtype == np.int64 and undeclared.shape == (2,)


def test_input_files(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", A.astype(np.float16))
    (tmp_path / "b.json").write_text(json.dumps(B.tolist()))
    _, from_npy = parse_input(f"INPUT0={tmp_path / 'a.npy'}", SIMPLE)
    assert from_npy.dtype == np.float32  # cast like JSON: float16 -> float32 changes nothing
    np.testing.assert_array_equal(from_npy, A)
    _, from_json = parse_input(f"INPUT1={tmp_path / 'b.json'}", SIMPLE)
    np.testing.assert_array_equal(from_json, B)


INTS = {"ids": ("INT32", (-1, 3)), "small": ("INT8", (-1, 2)), "x": ("FP32", (-1, 2))}


def test_npy_files_and_json_are_cast_alike_and_lossy_casts_are_refused(tmp_path: Path) -> None:
    """Issue 10: a float64 .npy was refused while JSON was cast, and 1.7 became INT32 1."""
    np.save(tmp_path / "f64.npy", np.array([[0.5, 2.0]]))
    _, array = parse_input(f"x={tmp_path / 'f64.npy'}", INTS)
    assert array.dtype == np.float32 and array.tolist() == [[0.5, 2.0]]
    np.save(tmp_path / "whole.npy", np.array([1.0, 2.0, 3.0]))
    _, ids = parse_input(f"ids={tmp_path / 'whole.npy'}", INTS)
    assert ids.dtype == np.int32 and ids.tolist() == [[1, 2, 3]]  # batch dim added too
    np.save(tmp_path / "frac.npy", np.array([1.0, 1.7, 3.0]))
    for spec, words in (
        ("ids=[1, 1.7, 3]", "value 1.7 at [1] would become 1; give INT32 values"),
        (f"ids={tmp_path / 'frac.npy'}", "value 1.7 at [1] would become 1"),
        ("small=[1, 300]", "value 300 at [1] would become 44; give INT8 values"),
        ("x=[1e39, 0]", "value 1e+39 at [0] would become inf"),
        ('x=["a", "b"]', "takes FP32, not <U1"),
        ("x=[[1, 2], [3]]", "not an array of values"),
    ):
        with pytest.raises(SettingsError, match=re.escape(words)):
            parse_input(spec, INTS)


def test_files_that_are_not_arrays_are_named(tmp_path: Path) -> None:
    (tmp_path / "image.npy").write_bytes(b"\x89PNG\r\n\x1a\n not numpy")
    with pytest.raises(SettingsError, match=r"image\.npy is not a \.npy file"):
        parse_input(f"x={tmp_path / 'image.npy'}", INTS)
    (tmp_path / "data.txt").write_text("1 2\n")
    with pytest.raises(SettingsError, match=r"data\.txt is neither a \.npy nor a \.json file"):
        parse_input(f"x={tmp_path / 'data.txt'}", INTS)
    with pytest.raises(SettingsError, match="the model has no input 'text'; its inputs are ids"):
        parse_input('text=["great film"]', INTS)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("INPUT0", "NAME=VALUE"),
        ("=[1]", "NAME=VALUE"),
        ("INPUT0=missing.npy", "does not exist"),
        ("INPUT0=missing.json", "does not exist"),
        ("INPUT0=[1, 2", "inline JSON"),
        ('INPUT0=["x"]', "takes FP32"),
    ],
)
def test_bad_input_specs_say_what_is_wrong(spec: str, words: str) -> None:
    with pytest.raises(SettingsError, match=words):
        parse_input(spec, SIMPLE)


def test_json_output_form_decodes_bytes_and_half_floats() -> None:
    import ml_dtypes

    out = io.StringIO()
    format_outputs(
        {
            "s": np.array([b"ok", b"\xff"], dtype=object),
            "h": np.array([[0.5, -1.0]], dtype=ml_dtypes.bfloat16),
        },
        "json",
        out,
    )
    document = json.loads(out.getvalue())
    assert document["s"] == {"datatype": "BYTES", "shape": [2], "data": ["ok", "base64:/w=="]}
    assert document["h"] == {"datatype": "BF16", "shape": [1, 2], "data": [[0.5, -1.0]]}


def test_infer_prints_json_outputs(
    protocol_server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.save(tmp_path / "a.npy", A)
    code = main(
        [
            "infer",
            "simple",
            "--url",
            protocol_server.address,
            "--input",
            f"INPUT0={tmp_path / 'a.npy'}",
            "--input",
            "INPUT1=" + json.dumps(B.tolist()),
            "--format",
            "json",
            "--save-dir",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    assert set(document) == {"OUTPUT0", "OUTPUT1"}
    assert document["OUTPUT0"]["datatype"] == "FP32"
    assert document["OUTPUT0"]["shape"] == [2, 16]
    np.testing.assert_array_equal(np.array(document["OUTPUT0"]["data"], np.float32), A + B)
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "OUTPUT1.npy"), A - B)


def test_infer_reads_the_url_from_the_environment_and_filters_outputs(
    protocol_server: RunningServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ONNXSERVE_INFER_URL", protocol_server.address)
    row = json.dumps([1.0] * 16)
    code = main(
        ["infer", "simple", "--input", f"INPUT0={row}", "--input", f"INPUT1={row}",
         "--output", "OUTPUT1"]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.startswith("OUTPUT1 FP32 [1, 16]\n")
    assert "OUTPUT0" not in printed
    assert "[[0., 0., 0." in printed


def test_infer_reads_settings_from_a_toml_file(
    protocol_server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "onnxserve.toml"
    config.write_text(f'[infer]\nurl = "{protocol_server.address}"\nformat = "json"\n')
    code = main(
        ["infer", "identity_bytes", "--config", str(config), "--input",
         'INPUT0=[["a", "b", "c", "d"]]']
    )  # fmt: skip
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    assert document["OUTPUT0"]["data"] == [["a", "b", "c", "d"]]


def test_server_errors_exit_1_with_the_code_and_message(
    protocol_server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["infer", "no_such_model", "--url", protocol_server.address, "--input", "x=[1]"])
    assert code == 1
    assert "[NOT_FOUND]" in capsys.readouterr().err
    code = main(["infer", "simple", "--url", protocol_server.address, "--input", "INPUT0=[1]"])
    assert code == 1
    assert "[INVALID_ARGUMENT]" in capsys.readouterr().err


def test_a_token_over_plaintext_is_a_usage_error(protocol_server: RunningServer) -> None:
    with pytest.raises(SystemExit) as info:
        main(["infer", "simple", "--url", protocol_server.address, "--token", "t",
              "--input", "INPUT0=[1]"])  # fmt: skip
    assert info.value.code == 2


def test_the_installed_command_runs(protocol_server: RunningServer) -> None:
    row = json.dumps([2.0] * 16)
    result = subprocess.run(
        [sys.executable, "-m", "onnxserve", "infer", "simple", "--url", protocol_server.address,
         "--input", f"INPUT0={row}", "--input", f"INPUT1={row}", "--format", "json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["OUTPUT0"]["data"] == [[4.0] * 16]


def test_infer_a_given_version_and_an_unknown_one(
    protocol_server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    row = json.dumps([3.0] * 16)
    base = ["infer", "simple_config", "--url", protocol_server.address,
            "--input", f"INPUT0={row}", "--input", f"INPUT1={row}", "--format", "json"]  # fmt: skip
    assert main([*base, "--model-version", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["OUTPUT0"]["data"] == [[6.0] * 16]
    assert main([*base, "--model-version", "7"]) == 1
    assert "[NOT_FOUND]" in capsys.readouterr().err


def test_a_repeated_input_is_refused(
    protocol_server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    row = json.dumps([1.0] * 16)
    with pytest.raises(SystemExit) as info:
        main(["infer", "simple", "--url", protocol_server.address, "--input", f"INPUT0={row}",
              "--input", f"INPUT1={row}", "--input", f"INPUT0={row}"])  # fmt: skip
    assert info.value.code == 2
    assert "--input INPUT0 is given twice" in capsys.readouterr().err


def test_a_closed_pipe_ends_quietly(protocol_server: RunningServer) -> None:
    """Issue 10: `onnxserve infer ... | head` ended in a BrokenPipeError traceback."""
    row = json.dumps([2.0] * 16)
    process = subprocess.Popen(
        [sys.executable, "-m", "onnxserve", "infer", "simple", "--url", protocol_server.address,
         "--input", f"INPUT0={row}", "--input", f"INPUT1={row}", "--format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the reader is gone before the first line is written
    stderr = process.stderr.read().decode()
    process.stderr.close()
    assert process.wait(timeout=60) == 141  # 128 + SIGPIPE, as `yes | head` leaves `yes`
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


def test_infer_without_inputs_names_the_model_s_inputs(
    protocol_server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["infer", "simple", "--url", protocol_server.address])
    assert info.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "'simple' takes INPUT0 (FP32 [-1, 16]), INPUT1 (FP32 [-1, 16])" in err
    assert "--input INPUT0=values.json" in err


def test_infer_says_when_it_added_the_batch_dimension(
    protocol_server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    row = json.dumps([1.0] * 16)
    code = main(["infer", "simple", "--url", protocol_server.address, "--input",
                 f"INPUT0={row}", "--input", f"INPUT1={json.dumps([[1.0] * 16])}"])  # fmt: skip
    assert code == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("OUTPUT0 FP32 [1, 16]\n")
    notes = [line for line in captured.err.splitlines() if "batch dimension" in line]
    assert notes == [
        "onnxserve infer: input 'INPUT0': added a batch dimension of 1 to the value's shape "
        "[16] (the model takes [-1, 16]): sent as [1, 16]"
    ]


def test_models_lists_what_is_served_with_its_state(
    protocol_server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "--url", protocol_server.address]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["MODEL", "VERSION", "STATE", "REASON"]
    assert ["simple", "1", "READY"] in [line.split() for line in lines]
    assert ["simple_config", "2", "READY"] in [line.split() for line in lines]
    assert main(["models", "--url", protocol_server.address, "--format", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {"name": "fixed", "version": "1", "state": "READY", "reason": ""} in listed


def test_describe_shows_inputs_outputs_ranges_and_batching(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.support.models import add_sub_model, identity_model, write_config

    identity_model(tmp_path / "ids" / "1" / "model.onnx", "INT32")
    write_config(
        tmp_path / "ids",
        'parameters { key: "onnxserve.input_range.INPUT0" value { string_value: "0,999" } }\n'
        "dynamic_batching { max_queue_delay_microseconds: 100 }\n",
    )
    add_sub_model(tmp_path / "fixed" / "1" / "model.onnx", batch_dim=2)
    with RunningServer(tmp_path) as server:
        assert main(["describe", "ids", "--url", server.address]) == 0
        text = capsys.readouterr().out
        assert main(["describe", "fixed", "--url", server.address]) == 0
        fixed = capsys.readouterr().out
        assert main(["describe", "ids", "--url", server.address, "--format", "json"]) == 0
        document = json.loads(capsys.readouterr().out)
        assert main(["describe", "idz", "--url", server.address]) == 1
        missing = capsys.readouterr().err
    lines = [line.split() for line in text.splitlines()]
    assert ["INPUT0", "INT32", "[-1,", "4]", "values", "0..999"] in lines
    assert ["OUTPUT0", "INT32", "[-1,", "4]"] in lines
    assert "max_batch_size 64: the first dimension (-1) is the batch" in text
    assert "dynamic batching: max queue delay 100 us" in text
    assert "instances: 1 on KIND_AUTO" in text
    assert "providers CPUExecutionProvider" in text
    assert "not batched (max_batch_size 0)" in fixed and "[2, 16]" in fixed
    assert document["inputs"] == [
        {"name": "INPUT0", "datatype": "INT32", "shape": [-1, 4], "range": "0..999"}
    ]
    assert document["max_batch_size"] == 64
    assert "[NOT_FOUND] model 'idz' is not served: the models served are 'fixed', 'ids'" in missing
