"""Repository safety, proven: every file a model reads stays inside the repository.

ONNX external data is the path a model file can point anywhere with
(CVE-2024-27318): locations with ``..``, absolute locations and symlinks out
are refused before onnxruntime opens anything, with reasons that name files
relative to the repository while the other models serve. ``sha256sums`` is
checked before loading. Entries that are not models are reported.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.protocol import grpc_service_pb2_grpc as pb_grpc
from onnxserve.server import model_files
from onnxserve.server.errors import ConfigError
from onnxserve.server.repository import relative_reason
from tests.support.infer_requests import infer_request, outputs_of
from tests.support.models import add_sub_model
from tests.support.server import RunningServer

X = np.ones((1, 16), dtype=np.float32)
WEIGHTS = np.arange(16, dtype=np.float32)


def weighted_model(path: Path, location: str = "weights.bin") -> Path:
    """OUTPUT0 = INPUT0 + W, with W kept in an external data file at ``location``."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["INPUT0", "W"], ["OUTPUT0"])],
        "weighted",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 16])],
        [onnx.numpy_helper.from_array(WEIGHTS, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    if location != "weights.bin":  # point the tensor elsewhere, as a hostile file would
        stored = onnx.load(str(path), load_external_data=False)
        for entry in stored.graph.initializer[0].external_data:
            if entry.key == "location":
                entry.value = location
        path.write_bytes(stored.SerializeToString())
    return path


@pytest.fixture(scope="module")
def hostile_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("hostile")
    root = base / "repository"
    (base / "outside.bin").write_bytes(WEIGHTS.tobytes())
    add_sub_model(root / "good" / "1" / "model.onnx")
    weighted_model(root / "weighted" / "1" / "model.onnx")
    weighted_model(root / "dotdot" / "1" / "model.onnx", "../../../outside.bin")
    weighted_model(root / "absolute" / "1" / "model.onnx", str(base / "outside.bin"))
    linked = weighted_model(root / "linked" / "1" / "model.onnx", "link.bin")
    (linked.parent / "link.bin").symlink_to(base / "outside.bin")
    weighted_model(root / "missing" / "1" / "model.onnx", "nowhere.bin")
    # sha256sums: right, wrong, and one that leaves the external data out.
    for name, listing in (
        ("checked", "{model}  model.onnx\n{weights}  weights.bin\n"),
        ("tampered", "{model}  model.onnx\n{wrong}  weights.bin\n"),
        ("partial", "{model}  model.onnx\n"),
    ):
        model = weighted_model(root / name / "1" / "model.onnx")
        digests = {
            "model": hashlib.sha256(model.read_bytes()).hexdigest(),
            "weights": hashlib.sha256((model.parent / "weights.bin").read_bytes()).hexdigest(),
            "wrong": "0" * 64,
        }
        (model.parent / "sha256sums").write_text(listing.format(**digests))
    # Entries that are not models.
    (root / "model.onnx").write_bytes(b"misplaced")
    (root / "notes.txt").write_text("hello")
    (root / "good" / "v2").mkdir()
    (root / ".cache").mkdir()
    return root


def test_files_outside_the_repository_are_refused_and_the_rest_serve(
    hostile_repository: Path,
) -> None:
    with RunningServer(hostile_repository, require_ready=False) as server:
        with server.channel() as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=30)
            states = {m.name: (m.state, m.reason) for m in index.models}
            for name in ("good", "weighted", "checked"):
                assert states[name] == ("READY", ""), (name, states[name])
            answer = stub.ModelInfer(infer_request("weighted", {"INPUT0": X}), timeout=30)
            np.testing.assert_array_equal(outputs_of(answer)["OUTPUT0"], X + WEIGHTS)
            expected = {
                "dotdot": "keeps its data outside the model repository "
                "(external data location '../../../outside.bin'); refused",
                "absolute": "names an absolute external data location",
                "linked": "keeps its data outside the model repository "
                "(external data location 'link.bin')",
                "missing": "keeps its data in 'nowhere.bin', which is missing",
                "tampered": "'weights.bin' does not match its digest in sha256sums",
                "partial": "sha256sums does not list 'weights.bin'",
            }
            for name, why in expected.items():
                state, reason = states[name]
                assert state == "UNAVAILABLE" and why in reason, (name, reason)
                assert f"model '{name}' version 1" in reason
            assert not stub.ServerReady(pb.ServerReadyRequest(), timeout=30).ready
            with pytest.raises(grpc.RpcError) as refused:
                stub.ModelInfer(infer_request("dotdot", {"INPUT0": X}), timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        log = server.log()
    outside = str(hostile_repository.parent)
    for _, reason in states.values():
        assert outside not in reason and "/etc" not in reason
    assert "skipped 'model.onnx' in the model repository: a file, not a model folder" in log
    assert "skipped 'notes.txt' in the model repository: a file, not a model folder" in log
    assert "skipped 'good/v2' in the model repository: not a version folder" in log
    assert "INFO" in log.split("skipped '.cache'")[0].splitlines()[-1]


def test_an_empty_repository_says_so(tmp_path: Path) -> None:
    with RunningServer(tmp_path) as server:
        pass
    assert "WARNING" in server.log() and "holds no model folders" in server.log()


def test_the_scanner_finds_every_external_tensor_onnx_finds(tmp_path: Path) -> None:
    """Initializers, a Loop body's initializer, a node attribute's tensor and a sparse one."""
    body = helper.make_graph(
        [
            helper.make_node("Add", ["x_in", "inner"], ["x_out"]),
            helper.make_node("Identity", ["c"], ["c_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x_in", TensorProto.FLOAT, [4]),
        ],
        [
            helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x_out", TensorProto.FLOAT, [4]),
        ],
        [onnx.numpy_helper.from_array(np.ones(4, np.float32), "inner")],
    )
    constant = onnx.numpy_helper.from_array(np.full(4, 2.0, np.float32), "constant_value")
    sparse = helper.make_sparse_tensor(
        onnx.numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "sparse_values"),
        onnx.numpy_helper.from_array(np.array([0, 3], np.int64), "sparse_indices"),
        [4],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["k"], value=constant),
            helper.make_node("Loop", ["n", "", "k"], ["y"], body=body),
        ],
        "outer",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [onnx.numpy_helper.from_array(np.array(3, np.int64), "n")],
        sparse_initializer=[sparse],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "model.onnx"
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=False,
        size_threshold=0,
        convert_attribute=True,
    )
    stored = onnx.load(str(path), load_external_data=False)
    # onnx leaves sparse tensors inline: move one's values out by hand.
    values = stored.graph.sparse_initializer[0].values
    values.ClearField("raw_data")
    values.data_location = TensorProto.EXTERNAL
    values.external_data.add(key="location", value="sparse.bin")
    path.write_bytes(stored.SerializeToString())
    expected = sorted(
        [
            (tensor.name, entry.value)
            for tensor in onnx.external_data_helper._get_all_tensors(stored)
            for entry in tensor.external_data
            if entry.key == "location"
        ]
        + [("sparse_values", "sparse.bin")]
    )
    assert len(expected) == 4
    assert sorted(model_files.external_data_locations(path)) == expected
    # A file that is not a protobuf has no locations (onnxruntime refuses it later).
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff" * 64)
    assert model_files.external_data_locations(junk) == []


def test_the_field_numbers_are_onnx_protos() -> None:
    numbers = {
        (message.DESCRIPTOR.name, field.name): field.number
        for message in (
            onnx.ModelProto,
            onnx.GraphProto,
            onnx.NodeProto,
            onnx.AttributeProto,
            onnx.FunctionProto,
            onnx.SparseTensorProto,
            onnx.TensorProto,
            onnx.StringStringEntryProto,
        )
        for field in message.DESCRIPTOR.fields
    }
    assert model_files.CHILDREN[0] == {
        numbers[("ModelProto", "graph")]: 1,
        numbers[("ModelProto", "functions")]: 4,
    }
    assert set(model_files.CHILDREN[1]) == {
        numbers[("GraphProto", f)] for f in ("node", "initializer", "sparse_initializer")
    }
    assert set(model_files.CHILDREN[3]) == {
        numbers[("AttributeProto", f)]
        for f in ("t", "g", "tensors", "graphs", "sparse_tensor", "sparse_tensors")
    }
    assert set(model_files.CHILDREN[4]) == {
        numbers[("FunctionProto", f)] for f in ("node", "attribute_proto")
    }
    assert numbers[("TensorProto", "name")] == model_files.TENSOR_NAME
    assert numbers[("TensorProto", "external_data")] == model_files.TENSOR_EXTERNAL_DATA
    assert numbers[("StringStringEntryProto", "key")] == model_files.ENTRY_KEY
    assert numbers[("StringStringEntryProto", "value")] == model_files.ENTRY_VALUE


def test_onnxruntime_messages_lose_the_servers_paths(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    message = (
        f'External data path validation failed: resolved path: "/etc/passwd" allowed '
        f'directory: "{root}/escape/1" for model {root}/escape/1/model.onnx'
    )
    cleaned = relative_reason(message, root)
    assert str(tmp_path) not in cleaned and "/etc/passwd" not in cleaned
    assert "escape/1/model.onnx" in cleaned
    assert "<a path outside the repository>" in cleaned


def test_checks_refuse_before_loading(tmp_path: Path) -> None:
    model = weighted_model(tmp_path / "m" / "1" / "model.onnx", "../../../../x.bin")
    with pytest.raises(ConfigError, match="outside the model repository"):
        model_files.check_model_files(model, tmp_path.resolve(), "model 'm' version 1")
