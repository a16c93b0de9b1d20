"""What ``onnxserve convert`` prints: its own lines only, the libraries' with --verbose.

Issue 23: on a failure, onnxruntime's C++ error lines (with terminal colour
codes) and TensorFlow's and tf2onnx's log lines came before the converter's
message. They are kept out now (converter/logs.py) unless --verbose. The
environment of these runs leaves TF_CPP_MIN_LOG_LEVEL unset, as a user's
shell does, so TensorFlow's start-up and grappler lines are really written.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests import converter_fixtures as fx
from tests.converter_models import _keras

pytestmark = pytest.mark.slow

# Lines of the converter's own: stage lines, their indented details, the error.
_OWN = ("[", "  ", "onnxserve convert: ", "(nothing was written")


def _argmax_model(path: Path) -> Path:
    """keras.ops.argmax compiles to Bitcast with the TensorFlow backend: tf2onnx logs an
    ERROR line per op and the converter refuses the model."""
    keras = _keras()
    inputs = keras.Input(shape=(4,), name="x")
    scores = keras.layers.Dense(3)(inputs)
    keras.Model(inputs, {"label": keras.ops.argmax(scores, axis=-1)}).save(path)
    return path


_convert = fx.run_convert_cli


def test_failure_output_holds_only_the_converters_lines(tmp_path: Path) -> None:
    model = _argmax_model(tmp_path / "argmax.keras")
    command = [str(model), "--repository", str(tmp_path / "repo"), "--name", "m"]
    quiet = _convert(*command)
    assert quiet.returncode == 1
    lines = [line for line in quiet.stderr.splitlines() if line.strip()]
    assert lines[-2].startswith("onnxserve convert: error: ") and "Bitcast" in lines[-2]
    assert "--verbose shows the libraries' own log lines" in lines[-1]
    strangers = [line for line in lines if not line.startswith(_OWN)]
    assert strangers == [], quiet.stderr
    assert "\x1b[" not in quiet.stderr
    assert not (tmp_path / "repo").exists()

    loud = _convert(*command, "--verbose")
    assert loud.returncode == 1
    assert "is not supported" in loud.stderr  # tf2onnx's own ERROR line
    assert "--verbose shows" not in loud.stderr


@pytest.mark.parametrize("verbose", [False, True])
def test_library_output_catches_file_descriptor_2_only(
    verbose: bool, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """What C++ code writes to file descriptor 2 is caught (and logged at DEBUG without
    its colour codes); Python's stderr and logging still reach the terminal."""
    import logging

    from onnxserve.converter.logs import LIBRARY_LOGGER, library_output

    handler = logging.StreamHandler(sys.stderr)
    logger = logging.getLogger("onnxserve.test_output")
    logger.addHandler(handler)
    try:
        with caplog.at_level(logging.DEBUG, logger=LIBRARY_LOGGER), library_output(verbose):
            os.write(2, b"\x1b[1;31m2026 [E:onnxruntime:, executor.cc:1] failed\x1b[m\n")
            print("[3/5 0.1s] exporting", file=sys.stderr)
            logger.warning("a converter warning")
    finally:
        logger.removeHandler(handler)
    err = capfd.readouterr().err
    assert "[3/5 0.1s] exporting" in err and "a converter warning" in err
    caught = [r.getMessage() for r in caplog.records if r.name == LIBRARY_LOGGER]
    if verbose:
        assert "[E:onnxruntime" in err and caught == []
    else:
        assert "onnxruntime" not in err
        assert caught == ["2026 [E:onnxruntime:, executor.cc:1] failed"]
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"
