"""Small ONNX graphs written with onnx.helper for protocol-level tests.

The protocol tests need models whose answers are known exactly (sum and
difference, identity per datatype); the real Keras models are covered by the
converter's and the examples' tests.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from onnxserve.protocol import model_config_pb2 as mc

OPSET = 17

ONNX_TYPES: dict[str, int] = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BF16": TensorProto.BFLOAT16,
    "BYTES": TensorProto.STRING,
}


def _save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def add_sub_model(path: Path, width: int = 16, batch_dim: str | int = "batch") -> Path:
    """Triton's "simple": OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 (FP32)."""
    shape = [batch_dim, width]
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "add_sub",
        [
            helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, shape),
            helper.make_tensor_value_info("INPUT1", TensorProto.FLOAT, shape),
        ],
        [
            helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, shape),
            helper.make_tensor_value_info("OUTPUT1", TensorProto.FLOAT, shape),
        ],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), path)


def identity_model(path: Path, datatype: str, dims: tuple[int | str, ...] = ("batch", 4)) -> Path:
    """INPUT0 -> OUTPUT0 unchanged, for any protocol datatype."""
    onnx_type = ONNX_TYPES[datatype]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        f"identity_{datatype.lower()}",
        [helper.make_tensor_value_info("INPUT0", onnx_type, list(dims))],
        [helper.make_tensor_value_info("OUTPUT0", onnx_type, list(dims))],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), path)


LOOKUP_ROWS = 10


def lookup_model(path: Path) -> Path:
    """An Embedding-like lookup: OUTPUT0 = table[INPUT0] (INT64 ids, [batch, 3]) over a
    table of LOOKUP_ROWS rows; ids from LOOKUP_ROWS up fail in onnxruntime (INTERNAL)."""
    import numpy as np

    table = helper.make_tensor(
        "table", TensorProto.FLOAT, [LOOKUP_ROWS, 2], np.arange(2 * LOOKUP_ROWS, dtype=np.float32)
    )
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "INPUT0"], ["OUTPUT0"])],
        "lookup",
        [helper.make_tensor_value_info("INPUT0", TensorProto.INT64, ["batch", 3])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 3, 2])],
        initializer=[table],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), path)


def write_config(model_dir: Path, config: mc.ModelConfig | str) -> Path:
    from google.protobuf import text_format

    text = config if isinstance(config, str) else text_format.MessageToString(config)
    path = model_dir / "config.pbtxt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def build_protocol_repository(root: Path) -> Path:
    """The repository most protocol tests share.

    - simple: add/sub, batchable, no config (auto-completed).
    - simple_config: add/sub with a config.pbtxt (max_batch_size 8, two versions, all served).
    - fixed: add/sub with a fixed batch of 2, not batchable.
    - identity_<dtype>: one per protocol datatype, batchable, dims [4].
    """
    add_sub_model(root / "simple" / "1" / "model.onnx")
    for version in (1, 2):
        add_sub_model(root / "simple_config" / str(version) / "model.onnx")
    write_config(
        root / "simple_config",
        """
name: "simple_config"
platform: "onnxruntime_onnx"
max_batch_size: 8
version_policy: { all: {} }
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] }
]
instance_group [ { count: 2 kind: KIND_CPU } ]
""",
    )
    add_sub_model(root / "fixed" / "1" / "model.onnx", batch_dim=2)
    for datatype in ONNX_TYPES:
        identity_model(root / f"identity_{datatype.lower()}" / "1" / "model.onnx", datatype)
    return root
