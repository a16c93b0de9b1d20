"""The parts of Python models that need no server: pb_utils, the frames, the checks at load."""

from __future__ import annotations

import json
import os
import pickle
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from onnxserve.protocol import model_config_pb2 as mc
from onnxserve.server.config import parse_config_text
from onnxserve.server.ensemble import complete_ensemble_config
from onnxserve.server.errors import ConfigError
from onnxserve.server.python_models import pb_utils
from onnxserve.server.python_models.ipc import Channel, ChannelClosed
from onnxserve.server.python_models.model import complete_python_config, model_config_json
from onnxserve.server.python_models.requirements import unmet_requirements


def _pair(restricted: bool = True) -> tuple[Channel, Channel]:
    left, right = socket.socketpair()
    return Channel(left), Channel(right, restricted=restricted)


def test_frames_carry_arrays_out_of_band_and_back_writable() -> None:
    sender, receiver = _pair()
    big = np.arange(3_000_000, dtype=np.float32).reshape(1000, 3000)  # 12 MB: several sends
    words = np.array([b"a", b"", "grüße".encode()], dtype=object)
    message = ("result", [("ok", {"x": big, "w": words})], 123)
    thread = threading.Thread(target=sender.send, args=(message,))
    thread.start()
    kind, outcomes, elapsed = receiver.receive()
    thread.join()
    assert (kind, elapsed) == ("result", 123)
    outputs = outcomes[0][1]
    np.testing.assert_array_equal(outputs["x"], big)
    assert outputs["x"].flags.writeable
    assert outputs["w"].tolist() == words.tolist()


def test_the_server_reads_no_frame_that_names_other_code() -> None:
    sender, receiver = _pair(restricted=True)

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, ("echo pwned",))

    sender.send(("result", Evil()))
    with pytest.raises(ChannelClosed, match="could not be read"):
        receiver.receive()


def test_a_closed_peer_is_channel_closed() -> None:
    sender, receiver = _pair()
    sender.close()
    with pytest.raises(ChannelClosed):
        receiver.receive()


def test_pb_utils_speaks_triton() -> None:
    config = {"input": [{"name": "A", "data_type": "TYPE_FP32"}], "output": []}
    assert pb_utils.get_input_config_by_name(config, "A") == {"name": "A", "data_type": "TYPE_FP32"}
    assert pb_utils.get_output_config_by_name(config, "A") is None
    assert pb_utils.triton_string_to_numpy("TYPE_INT64") is np.int64
    assert pb_utils.triton_to_numpy_type(11) is np.float32
    assert pb_utils.numpy_to_triton_type(np.int32) == 8
    request = pb_utils.InferenceRequest(
        model_name="m", inputs=[pb_utils.Tensor("A", np.ones(2))], requested_output_names=["B"]
    )
    assert pb_utils.get_input_tensor_by_name(request, "A").shape() == [2]
    assert request.model_version() == -1
    error = pb_utils.TritonError("no", pb_utils.TritonError.INVALID_ARG)
    response = pb_utils.InferenceResponse(error=error)
    assert response.has_error() and response.error().code() == 3
    framed = pb_utils.serialize_byte_tensor(np.array([b"ab", b"c"], dtype=object))
    assert pb_utils.deserialize_bytes_tensor(framed.tobytes()).tolist() == [b"ab", b"c"]
    with pytest.raises(pb_utils.TritonModelException, match="only be made while the model runs"):
        request.exec()
    with pytest.raises(pb_utils.TritonModelException, match="decoupled"):
        request.get_response_sender()


def test_auto_complete_config_fills_in_and_refuses_conflicts() -> None:
    declared = {
        "name": "m",
        "max_batch_size": 0,
        "input": [{"name": "A", "data_type": "TYPE_INVALID", "dims": []}],
    }
    config = pb_utils.ModelConfig(json.dumps(declared))
    config.add_input({"name": "A", "data_type": "TYPE_FP32", "dims": [4]})
    config.add_output({"name": "B", "data_type": "TYPE_FP32", "dims": [4]})
    config.set_max_batch_size(8)
    config.set_dynamic_batching()
    done = config.as_dict()
    assert done["input"] == [{"name": "A", "data_type": "TYPE_FP32", "dims": [4]}]
    assert done["output"][0]["name"] == "B" and done["max_batch_size"] == 8
    assert done["dynamic_batching"] == {}
    with pytest.raises(ValueError, match="declares input 'A' as TYPE_FP32"):
        config.add_input({"name": "A", "data_type": "TYPE_INT64", "dims": [4]})
    with pytest.raises(ValueError, match="missing 'dims'"):
        config.add_output({"name": "C", "data_type": "TYPE_FP32"})
    with pytest.raises(ValueError, match="max_batch_size 8, but auto_complete_config"):
        config.set_max_batch_size(4)


def test_model_config_json_has_every_field_and_numbers_for_int64() -> None:
    config = complete_python_config(
        parse_config_text(
            'backend: "python" max_batch_size: 4 input [{ name: "A" data_type: TYPE_FP32 '
            'dims: [2, -1] }] output [{ name: "B" data_type: TYPE_STRING dims: [1] }]',
            "m",
        ),
        "m",
    )
    data = json.loads(model_config_json(config))
    assert data["input"][0]["dims"] == [2, -1]
    assert data["input"][0]["data_type"] == "TYPE_FP32"
    assert data["max_batch_size"] == 4
    assert data["output"][0]["label_filename"] == ""  # defaults are present, as in Triton
    assert data["instance_group"][0]["name"] == "m_0"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('backend: "python" max_batch_size: 2', "must declare its inputs and outputs"),
        (
            'backend: "python" input [{ name: "A" dims: [1] }] output [{ name: "B" '
            "data_type: TYPE_FP32 dims: [1] }]",
            "needs a data_type",
        ),
        (
            'backend: "python" input [{ name: "A" data_type: TYPE_FP32 }] output [{ name: "B" '
            "data_type: TYPE_FP32 dims: [1] }]",
            "needs dims",
        ),
        (
            'backend: "python" input [{ name: "A" data_type: TYPE_FP32 dims: [1] }] output '
            '[{ name: "B" data_type: TYPE_FP32 dims: [1] }] instance_group [{ kind: KIND_GPU }]',
            "runs on the CPU",
        ),
    ],
)
def test_python_configs_say_what_is_missing(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        complete_python_config(parse_config_text(text, "m"), "m")


def test_an_ensemble_has_no_scheduler_of_its_own() -> None:
    text = (
        'platform: "ensemble" max_batch_size: 2 input [{ name: "A" data_type: TYPE_FP32 '
        'dims: [1] }] output [{ name: "B" data_type: TYPE_FP32 dims: [1] }] '
        'instance_group [{ count: 2 }] ensemble_scheduling { step [{ model_name: "x" }] }'
    )
    with pytest.raises(ConfigError, match="no instance_group"):
        complete_ensemble_config(parse_config_text(text, "e"), "e")


def test_requirements_are_checked_never_installed() -> None:
    text = (
        "numpy>=1\n# a comment\nnumpy<1 ; python_version < '3'\nnot-installed-dist\nnumpy<1\n-r x"
    )
    unmet = unmet_requirements(text)
    assert unmet[0] == "not-installed-dist (not installed)"
    assert unmet[1].startswith("numpy<1 (") and "is installed" in unmet[1]
    assert "options are not read" in unmet[2]
    assert len(unmet) == 3


def test_restricted_frames_still_carry_numpy_scalars_and_dtypes() -> None:
    sender, receiver = _pair()
    sender.send((np.float32(1.5), np.dtype("int64"), bytearray(b"x"), mc.TYPE_FP32))
    scalar, dtype, raw, number = receiver.receive()
    assert scalar == np.float32(1.5) and dtype == np.dtype("int64")
    assert raw == bytearray(b"x") and number == mc.TYPE_FP32
    assert pickle.HIGHEST_PROTOCOL >= 5


def test_allow_python_load_needs_explicit_mode(tmp_path: Path) -> None:
    from onnxserve.server.settings import ServerSettings
    from onnxserve.settings import SettingsError

    with pytest.raises(SettingsError, match="needs --model-control-mode explicit"):
        ServerSettings(model_repository=tmp_path, allow_python_load=True)
    ServerSettings(model_repository=tmp_path, allow_python_load=True, model_control_mode="explicit")
