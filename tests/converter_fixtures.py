"""Shared, lazily built test models for the converter tests (one build per test process).

pytest-xdist runs each worker in its own process, so a per-process cache is a
session cache; the models are built only when a test first asks for them.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

from tests import converter_models


@functools.cache
def trained(family: str) -> Any:
    """The trained Keras model of a family (see tests/converter_models.py)."""
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
    import numpy as np

    model = trained(family)
    struct = getattr(model, "_inputs_struct", None)
    if isinstance(struct, dict):
        result = model(dict(inputs), training=False)
    else:
        values = list(inputs.values())
        result = model(values[0] if len(values) == 1 else values, training=False)
    if isinstance(result, dict):
        return {k: np.asarray(v) for k, v in result.items()}
    return {model.layers[-1].name: np.asarray(result)}
