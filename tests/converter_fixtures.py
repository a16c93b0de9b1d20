"""Shared, lazily built test models for the converter tests (one build per test process).

pytest-xdist runs each worker in its own process, so a per-process cache is a
session cache; the models are built only when a test first asks for them.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from tests import converter_layers, converter_models
from tests.converter_models import LENGTH, VOCABULARY


@functools.cache
def trained(family: str) -> Any:
    """The Keras model of a family (tests/converter_models.py) or of a preprocessing-layer
    case (tests/converter_layers.py)."""
    if family in converter_layers.LAYERS:
        return converter_layers.LAYERS[family][0]()
    return converter_models.FAMILIES[family]()


@functools.cache
def _folder() -> Path:
    return Path(tempfile.mkdtemp(prefix="onnxserve-converter-models-"))


@functools.cache
def saved(family: str, fmt: str = "keras") -> Path:
    """The family's model saved as .keras, .h5, or a SavedModel (model.export)."""
    model = trained(family)
    if fmt == "saved_model":
        path = _folder() / f"{family}_saved_model"
        model.export(str(path), verbose=False)
    else:
        path = _folder() / f"{family}.{fmt}"
        model.save(path)
    return path


def keras_outputs(family: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """Keras' own answer for named inputs, keyed like the ONNX outputs are."""
    model = trained(family)
    struct = getattr(model, "_inputs_struct", None)
    import tensorflow as tf

    # String arrays (object dtype) go in as string tensors; numbers as they are.
    tensors = {k: tf.constant(v) if v.dtype == object else v for k, v in inputs.items()}
    if isinstance(struct, dict):
        result = model(tensors, training=False)
    else:
        values = list(tensors.values())
        result = model(values[0] if len(values) == 1 else values, training=False)
    if isinstance(result, dict):
        return {k: np.asarray(v) for k, v in result.items()}
    return {model.layers[-1].name: np.asarray(result)}


# family -> (inputs {name: (config type, dims)}, outputs {name: (config type, dims)}, loop?)
# None as a name means "the Keras name of that tensor" (Sequential models name them).
EXPECTED: dict[str, tuple[dict[str, Any], dict[str, Any], bool]] = {
    "seed_lstm": ({None: ("TYPE_FP32", [-1])}, {None: ("TYPE_FP32", [1])}, False),
    "cnn": ({"image": ("TYPE_FP32", [16, 16, 3])}, {"probabilities": ("TYPE_FP32", [3])}, False),
    "gru": ({"tokens": ("TYPE_INT32", [LENGTH])}, {"positive": ("TYPE_FP32", [1])}, True),
    "bidirectional_lstm": (
        {"tokens": ("TYPE_INT32", [LENGTH])},
        {"positive": ("TYPE_FP32", [1])},
        False,
    ),
    "conv1d_text": ({"tokens": ("TYPE_INT32", [LENGTH])}, {"positive": ("TYPE_FP32", [1])}, False),
    "attention": (
        {"tokens": ("TYPE_INT32", [LENGTH])},
        {"probabilities": ("TYPE_FP32", [2])},
        False,
    ),
    "multi_io": (
        {"tokens": ("TYPE_INT32", [LENGTH]), "features": ("TYPE_FP32", [4])},
        {
            "score": ("TYPE_FP32", [1]),
            "logits": ("TYPE_FP32", [3]),
            "label": ("TYPE_INT32", [1]),
        },
        False,
    ),
    "masked_lstm": (
        {"tokens": ("TYPE_INT32", [LENGTH])},
        {"positive": ("TYPE_FP32", [1])},
        True,
    ),
}


def expected_io(family: str) -> tuple[dict[str, Any], dict[str, Any], bool]:
    inputs, outputs, loop = EXPECTED[family]
    model = trained(family)
    if None in inputs:
        inputs = {model.inputs[0]._keras_history.operation.name: inputs[None]}
    if None in outputs:
        outputs = {model.layers[-1].name: outputs[None]}
    return inputs, outputs, loop


def make_inputs(family: str, batch: int, seed: int = 123, length: int = LENGTH) -> dict[str, Any]:
    """Inputs the converter never saw: ids in the vocabulary, zero-padded for the masked model."""
    rng = np.random.default_rng(seed)
    inputs, _, _ = expected_io(family)
    arrays: dict[str, Any] = {}
    for name, (data_type, dims) in inputs.items():
        dtype = {"TYPE_FP32": np.float32, "TYPE_INT32": np.int32}[data_type]
        shape = [batch, *(length if d == -1 else d for d in dims)]
        if name == "features" or name == "image":
            arrays[name] = rng.random(shape).astype(dtype)
        else:
            ids = rng.integers(1, VOCABULARY, size=shape)
            if family == "masked_lstm":
                ids[:, rng.integers(2, LENGTH) :] = 0
            arrays[name] = ids.astype(dtype)
    return arrays


def run_convert_cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """``onnxserve convert`` in a subprocess, GPUs hidden, with TF_CPP_MIN_LOG_LEVEL unset
    as in a user's shell (so that TensorFlow's C++ lines are really written)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    return subprocess.run(
        [sys.executable, "-m", "onnxserve", "convert", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
