"""ONNX models whose answers depend on known positions, for the explanation tests.

Each is a real ONNX graph (onnx.helper) served by a real server, and each has
an answer a correct attribution must find:

- ``token_counts``: INT32 token ids ``[-1, 12]`` -> counts of each id
  (TfIdfVectorizer, TF mode) -> a linear layer: the score is
  ``sum(TOKEN_WEIGHTS[id])`` over the row, so the positions holding the
  weighted ids matter and the others do not.
- ``text_counts``: the same over the words of a BYTES sentence ``[-1, 1]``
  (StringSplit on whitespace, then TfIdfVectorizer over strings);
  ``text_counts_flat`` takes the sentences as ``[-1]`` and has no config.pbtxt.
- ``region_mean``: FP32 images ``[-1, 8, 8]`` -> the mean of rows 2:4 and
  columns 4:6 (a 2x2 patch): only those four pixels count.
- ``columns``: FP32 rows ``[-1, 6]`` -> ``3 * x[1] - 2 * x[4]``.

All four are batchable with ``max_batch_size: 8`` (small, so that an
explanation needs many requests).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.support.models import write_config

__all__ = [
    "COLUMN_WEIGHTS",
    "MAX_BATCH",
    "REGION",
    "TOKEN_LENGTH",
    "TOKEN_WEIGHTS",
    "WORD_WEIGHTS",
    "build_explain_repository",
]

MAX_BATCH = 8
TOKEN_LENGTH = 12
VOCABULARY = 20
#: Only these ids move the score; every other id weighs 0.
TOKEN_WEIGHTS = {5: 2.0, 9: -1.5}
WORD_WEIGHTS = {"good": 2.0, "bad": -1.5}
#: rows, columns of the pixels region_mean averages.
REGION = (slice(2, 4), slice(4, 6))
COLUMN_WEIGHTS = np.array([0.0, 3.0, 0.0, 0.0, -2.0, 0.0], np.float32)
OPSET = 20


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def _config(root: Path, name: str, inputs: str, outputs: str) -> None:
    write_config(
        root / name,
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {MAX_BATCH}\n'
        f"input [ {inputs} ]\noutput [ {outputs} ]\ndynamic_batching {{ }}\n",
    )


def _counts_then_linear(
    counts_input: str, pool: dict[str, object], weights: np.ndarray
) -> list[onnx.NodeProto]:
    return [
        helper.make_node(
            "TfIdfVectorizer",
            [counts_input],
            ["counts"],
            mode="TF",
            min_gram_length=1,
            max_gram_length=1,
            max_skip_count=0,
            ngram_counts=[0],
            ngram_indexes=list(range(len(weights))),
            **pool,
        ),
        helper.make_node("MatMul", ["counts", "weights"], ["score"]),
    ]


def token_counts(root: Path) -> None:
    ids = list(range(1, VOCABULARY))
    weights = np.array([[TOKEN_WEIGHTS.get(i, 0.0)] for i in ids], np.float32)
    graph = helper.make_graph(
        _counts_then_linear("tokens", {"pool_int64s": ids}, weights),
        "token_counts",
        [helper.make_tensor_value_info("tokens", TensorProto.INT32, ["batch", TOKEN_LENGTH])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])],
        initializer=[numpy_helper.from_array(weights, "weights")],
    )
    _save(graph, root / "token_counts" / "1" / "model.onnx")
    _config(
        root,
        "token_counts",
        f'{{ name: "tokens" data_type: TYPE_INT32 dims: [ {TOKEN_LENGTH} ] }}',
        '{ name: "score" data_type: TYPE_FP32 dims: [ 1 ] }',
    )


def text_counts(root: Path, name: str = "text_counts", flat: bool = False) -> None:
    """``flat``: the sentence is the whole row (``[-1]``) rather than its one element."""
    words = [*sorted(WORD_WEIGHTS), "movie", "plot", "the", "was"]
    weights = np.array([[WORD_WEIGHTS.get(w, 0.0)] for w in words], np.float32)
    nodes = [
        helper.make_node("StringSplit", ["text"], ["pieces", "piece_counts"]),
        helper.make_node("Reshape", ["pieces", "flat"], ["words"]),
        *_counts_then_linear("words", {"pool_strings": words}, weights),
    ]
    graph = helper.make_graph(
        nodes,
        name,
        [
            helper.make_tensor_value_info(
                "text", TensorProto.STRING, ["batch", *([] if flat else [1])]
            )
        ],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])],
        initializer=[
            numpy_helper.from_array(weights, "weights"),
            numpy_helper.from_array(np.array([0, -1], np.int64), "flat"),
        ],
    )
    _save(graph, root / name / "1" / "model.onnx")
    if flat:
        return  # no config.pbtxt: the server fills it in from the ONNX file
    _config(
        root,
        name,
        '{ name: "text" data_type: TYPE_STRING dims: [ 1 ] }',
        '{ name: "score" data_type: TYPE_FP32 dims: [ 1 ] }',
    )


def region_mean(root: Path) -> None:
    rows, cols = REGION
    starts = np.array([rows.start, cols.start], np.int64)
    ends = np.array([rows.stop, cols.stop], np.int64)
    graph = helper.make_graph(
        [
            helper.make_node("Slice", ["image", "starts", "ends", "axes"], ["region"]),
            helper.make_node("ReduceMean", ["region", "axes"], ["mean"], keepdims=0),
            helper.make_node("Unsqueeze", ["mean", "last"], ["score"]),
        ],
        "region_mean",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 8, 8])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])],
        initializer=[
            numpy_helper.from_array(starts, "starts"),
            numpy_helper.from_array(ends, "ends"),
            numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
            numpy_helper.from_array(np.array([1], np.int64), "last"),
        ],
    )
    _save(graph, root / "region_mean" / "1" / "model.onnx")
    _config(
        root,
        "region_mean",
        '{ name: "image" data_type: TYPE_FP32 dims: [ 8, 8 ] }',
        '{ name: "score" data_type: TYPE_FP32 dims: [ 1 ] }',
    )


def columns(root: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["row", "weights"], ["score"])],
        "columns",
        [helper.make_tensor_value_info("row", TensorProto.FLOAT, ["batch", 6])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])],
        initializer=[numpy_helper.from_array(COLUMN_WEIGHTS.reshape(6, 1), "weights")],
    )
    _save(graph, root / "columns" / "1" / "model.onnx")
    _config(
        root,
        "columns",
        '{ name: "row" data_type: TYPE_FP32 dims: [ 6 ] }',
        '{ name: "score" data_type: TYPE_FP32 dims: [ 1 ] }',
    )


def build_explain_repository(root: Path) -> Path:
    """The four models above in one repository."""
    for build in (token_counts, text_counts, region_mean, columns):
        build(root)
    text_counts(root, "text_counts_flat", flat=True)
    return root
