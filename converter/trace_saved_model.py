"""Trace step for a SavedModel directory: its ``serving_default`` signature as a tf.function.

A SavedModel (as ``model.export()`` writes it) cannot be turned back into a
``keras.Model``, so there is no layer graph to analyse: inputs get no declared
ranges, and token-id inputs get check ids below the smallest embedding table
(found by variable name) as a guess for the check only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from onnxserve.converter.environment import import_tensorflow
from onnxserve.converter.errors import ExportError, first_line
from onnxserve.converter.trace import (
    Arrays,
    InputInfo,
    TracedModel,
    clean_name,
    dedupe,
    example_shape_of,
    input_dtype,
    is_integer,
)

__all__ = ["trace_saved_model"]


def trace_saved_model(loaded: Any) -> TracedModel:
    """Trace a restored SavedModel through its serving_default signature."""
    tf = import_tensorflow()
    signature = loaded.signatures["serving_default"]
    _, keyword_specs = signature.structured_input_signature
    original = list(keyword_specs)
    default = ["input"] if len(original) == 1 else [f"input_{i}" for i in range(len(original))]
    names = dedupe([clean_name(n, default[i]) for i, n in enumerate(original)])
    vocab = _saved_model_vocabulary(loaded)
    inputs: list[InputInfo] = []
    specs = []
    for name, key in zip(names, original, strict=False):
        spec = keyword_specs[key]
        dtype = input_dtype(key, spec.dtype.name)
        shape = tuple(spec.shape.as_list())
        token_ids = vocab is not None and (is_integer(dtype) or len(shape) == 2)
        inputs.append(
            InputInfo(
                name=name,
                dtype=dtype,
                shape=shape,
                example_shape=example_shape_of(shape),
                guessed_range=(0, vocab - 1) if vocab is not None and token_ids else None,
            )
        )
        specs.append(tf.TensorSpec(shape, spec.dtype, name=name))
    raw_outputs = list(signature.structured_outputs)
    out_names = dedupe([clean_name(str(n), f"output_{i}") for i, n in enumerate(raw_outputs)])

    def call(*values: Any) -> dict[str, Any]:
        result = signature(**dict(zip(original, values, strict=False)))
        return {new: result[old] for new, old in zip(out_names, raw_outputs, strict=False)}

    function = tf.function(call, input_signature=specs, autograph=False)
    try:
        function.get_concrete_function()
    except Exception as exc:
        raise ExportError(f"tracing the SavedModel failed: {first_line(exc)}") from exc

    def reference(values: Arrays) -> dict[str, np.ndarray]:
        result = signature(
            **{old: tf.constant(values[i.name]) for old, i in zip(original, inputs, strict=False)}
        )
        return {
            new: np.asarray(result[old]) for new, old in zip(out_names, raw_outputs, strict=False)
        }

    return TracedModel(
        function=function,
        input_signature=specs,
        inputs=inputs,
        output_names=out_names,
        reference=reference,
        loop_causes=[],
        source_kind="saved_model",
    )


def _saved_model_vocabulary(loaded: Any) -> int | None:
    """The smallest embedding table's row count, from the SavedModel's variable names."""
    sizes = [
        int(v.shape[0])
        for v in getattr(loaded, "variables", [])
        if "embedding" in v.name.lower() and len(v.shape) == 2
    ]
    return min(sizes) if sizes else None
