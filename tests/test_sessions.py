"""onnxserve.sessions: the one way the server, the bench and the converter build sessions."""

from __future__ import annotations

from pathlib import Path

import pytest

from onnxserve.sessions import SessionError, create_session
from tests.support.gpu_models import dense_model


def test_errors_name_the_file_never_its_path(tmp_path: Path) -> None:
    broken = tmp_path / "secret" / "folder" / "model.onnx"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not an onnx model")
    with pytest.raises(SessionError) as raised:
        create_session(broken)
    assert "Load model from model.onnx failed" in str(raised.value)
    assert str(tmp_path) not in str(raised.value)


def test_settings_or_prepared_options(tmp_path: Path) -> None:
    import onnxruntime as ort

    path = dense_model(tmp_path / "model.onnx")
    optimized = tmp_path / "optimized.onnx"
    session = create_session(path, graph_optimization="basic", optimized_model_path=optimized)
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert optimized.is_file()
    create_session(path.read_bytes(), options=ort.SessionOptions())
    with pytest.raises(ValueError, match="not both"):
        create_session(path, options=ort.SessionOptions(), intra_op_threads=2)
    with pytest.raises(ValueError, match="basic, extended, all"):
        create_session(path, graph_optimization="max")
