"""Small ONNX graphs for the GPU path's tests, written with onnx.helper (no TensorFlow).

The GPU machine that runs ``pytest -m gpu`` has no TensorFlow, so the models
are built here from their ops, with fixed random weights: a dense block with
two outputs (one with a symbolic non-batch dim), the seed's shape of LSTM
(Embedding -> LSTM(128) -> Dense(1, sigmoid) on 50 token ids, as one ONNX LSTM
op like tf2onnx writes) and a digits-like CNN (Conv -> Relu -> MaxPool ->
Gemm -> Softmax on 8x8 images).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from tests.support.batching_models import _save

SEQUENCE = 50
VOCABULARY = 1000


def _weights(shape: tuple[int, ...], seed: int, scale: float = 0.2) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def dense_model(path: Path, width: int = 16, hidden: int = 32) -> Path:
    """x [batch, width] -> y = relu(x W + b) [batch, hidden], total = sum(y) [batch, "k"]."""
    weights = [
        numpy_helper.from_array(_weights((width, hidden), 1), "W"),
        numpy_helper.from_array(_weights((hidden,), 2), "b"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["pre"]),
            helper.make_node("Relu", ["pre"], ["y"]),
            helper.make_node("ReduceSum", ["y", "axes"], ["total"], keepdims=1),
        ],
        "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", hidden]),
            # A symbolic non-batch dim: output shapes are found by running.
            helper.make_tensor_value_info("total", TensorProto.FLOAT, ["batch", "k"]),
        ],
        initializer=weights,
    )
    return _save(graph, path)


def lstm_model(path: Path, embedding: int = 32, hidden: int = 128) -> Path:
    """The seed's shape: tokens int32 [batch, 50] -> score [batch, 1]."""
    gates = 4 * hidden
    weights = [
        numpy_helper.from_array(_weights((VOCABULARY, embedding), 3), "embedding"),
        numpy_helper.from_array(_weights((1, gates, embedding), 4, 0.1), "W"),
        numpy_helper.from_array(_weights((1, gates, hidden), 5, 0.1), "R"),
        numpy_helper.from_array(_weights((1, 2 * gates), 6, 0.1), "B"),
        numpy_helper.from_array(_weights((hidden, 1), 7), "dense"),
        numpy_helper.from_array(_weights((1,), 8), "bias"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "axis0"),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["embedding", "tokens"], ["embedded"]),
            helper.make_node("Transpose", ["embedded"], ["steps"], perm=[1, 0, 2]),
            helper.make_node("LSTM", ["steps", "W", "R", "B"], ["", "state"], hidden_size=hidden),
            helper.make_node("Squeeze", ["state", "axis0"], ["last"]),
            helper.make_node("MatMul", ["last", "dense"], ["logit0"]),
            helper.make_node("Add", ["logit0", "bias"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], ["score"]),
        ],
        "seed_lstm",
        [helper.make_tensor_value_info("tokens", TensorProto.INT32, ["batch", SEQUENCE])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])],
        initializer=weights,
    )
    return _save(graph, path)


def conv_model(path: Path, filters: int = 16) -> Path:
    """A digits-like CNN: image [batch, 1, 8, 8] -> probabilities [batch, 10]."""
    weights = [
        numpy_helper.from_array(_weights((filters, 1, 3, 3), 9, 0.3), "kernel"),
        numpy_helper.from_array(_weights((filters,), 10), "kernel_bias"),
        numpy_helper.from_array(_weights((filters * 16, 10), 11, 0.1), "dense"),
        numpy_helper.from_array(_weights((10,), 12), "dense_bias"),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "kernel", "kernel_bias"], ["conv"], pads=[1] * 4),
            helper.make_node("Relu", ["conv"], ["active"]),
            helper.make_node(
                "MaxPool", ["active"], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]
            ),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("Gemm", ["flat", "dense", "dense_bias"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "digits_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])],
        initializer=weights,
    )
    return _save(graph, path)


def sample_inputs(model: str, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Valid random inputs for one of the models above (by its builder's name)."""
    rng = np.random.default_rng(seed)
    if model == "dense":
        return {"x": rng.standard_normal((batch, 16)).astype(np.float32)}
    if model == "lstm":
        return {"tokens": rng.integers(0, VOCABULARY, (batch, SEQUENCE)).astype(np.int32)}
    if model == "conv":
        return {"image": rng.random((batch, 1, 8, 8)).astype(np.float32)}
    raise ValueError(f"unknown model {model}")


BUILDERS = {"dense": dense_model, "lstm": lstm_model, "conv": conv_model}
