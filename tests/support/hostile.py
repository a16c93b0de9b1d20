"""What the hostile-client tests share: their models, raw-bytes calls and memory readings."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
from onnx import TensorProto, helper

from onnxserve.protocol import grpc_service_pb2 as pb
from tests.support.models import OPSET, _save, identity_model, write_config

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
#: Elements of big_output's answer per request: 4 MB of FP32.
BIG_OUTPUT_WIDTH = 1_000_000


def text_shape_model(model_dir: Path) -> Path:
    """OUTPUT0 = Shape(INPUT0): a BYTES input of any length in, its length out (INT64 [1])."""
    graph = helper.make_graph(
        [helper.make_node("Shape", ["INPUT0"], ["OUTPUT0"])],
        "text_shape",
        [helper.make_tensor_value_info("INPUT0", TensorProto.STRING, ["n"])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.INT64, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    _save(model, model_dir / "1" / "model.onnx")
    write_config(
        model_dir,
        f"""
name: "{model_dir.name}"
platform: "onnxruntime_onnx"
max_batch_size: 0
input [ {{ name: "INPUT0" data_type: TYPE_STRING dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_INT64 dims: [ 1 ] }} ]
""",
    )
    return model_dir


def big_output_model(path: Path) -> Path:
    """OUTPUT0 = INPUT0 ([batch, 1] FP32) tiled to [batch, BIG_OUTPUT_WIDTH]: 4 MB answers."""
    repeats = helper.make_tensor("repeats", TensorProto.INT64, [2], [1, BIG_OUTPUT_WIDTH])
    graph = helper.make_graph(
        [helper.make_node("Tile", ["INPUT0", "repeats"], ["OUTPUT0"])],
        "big_output",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", BIG_OUTPUT_WIDTH])],
        initializer=[repeats],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    return _save(model, path)


def build_hostile_repository(root: Path) -> Path:
    """text_shape, any_fp32 (identity, [batch, -1, -1]) and big_output."""
    text_shape_model(root / "text_shape")
    identity_model(root / "any_fp32" / "1" / "model.onnx", "FP32", ("batch", "a", "b"))
    big_output_model(root / "big_output" / "1" / "model.onnx")
    return root


def raw_call(channel: grpc.Channel) -> grpc.UnaryUnaryMultiCallable:
    """ModelInfer taking the request's serialized bytes (one buffer for many calls)."""
    answer = pb.ModelInferResponse.FromString
    return channel.unary_unary(INFER_METHOD, request_serializer=None, response_deserializer=answer)


def bytes_request(model: str, raw: bytes, count: int) -> bytes:
    """A serialized ModelInferRequest of one raw BYTES input of ``count`` elements."""
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="INPUT0", datatype="BYTES", shape=[count])
    request.raw_input_contents.append(raw)
    return request.SerializeToString()


def alternating_bytes(count: int) -> bytes:
    """``count`` framed elements, empty and "a" in turn: the general framing path's worst case."""
    pair = b"\x00\x00\x00\x00" + b"\x01\x00\x00\x00a"
    return pair * (count // 2) + (b"\x00\x00\x00\x00" if count % 2 else b"")


def peak_rss(pid: int) -> int:
    """The process's peak resident memory since the last reset_peak_rss, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc status")


def reset_peak_rss(pid: int) -> None:
    """Reset the kernel's peak-RSS mark (VmHWM) of a process to its current RSS."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def ones(rows: int) -> np.ndarray:
    return np.ones((rows, 1), dtype=np.float32)
