"""Export step: the traced function becomes an ONNX model with readable names.

tf2onnx's ``from_function`` does the conversion. Afterwards the dynamic
dimensions it names 'unk__N' are renamed ('batch', 'sequence', ...), ops that
tf2onnx could not convert (it leaves them in the graph and only logs) are
turned into an :class:`UnsupportedModelError`, and ONNX Loops (recurrent layers
that could not become fused LSTM ops) are found so the user can be told.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import onnx

from onnxserve.converter.errors import ExportError, UnsupportedModelError
from onnxserve.converter.settings import MAX_OPSET, MIN_OPSET
from onnxserve.converter.trace import TracedModel

__all__ = ["ExportedModel", "export_onnx", "iter_nodes", "loop_warning", "name_dimensions"]

log = logging.getLogger(__name__)

# Domains onnxruntime runs without extra libraries.
_RUNNABLE_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")
_LOOP_OPS = ("Loop", "Scan")


@dataclass
class ExportedModel:
    """The ONNX model and what was noticed while making it."""

    model: onnx.ModelProto
    loop_nodes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def iter_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of a graph, including those in subgraphs (Loop/If/Scan bodies)."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from iter_nodes(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for sub in attribute.graphs:
                    yield from iter_nodes(sub)


def export_onnx(traced: TracedModel, *, opset: int = 17) -> ExportedModel:
    """Convert the traced function with tf2onnx and tidy the result."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"opset {opset} is not supported; use {MIN_OPSET} to {MAX_OPSET}")
    import tf2onnx

    try:
        model, _ = tf2onnx.convert.from_function(
            traced.function, input_signature=traced.input_signature, opset=opset
        )
    except Exception as exc:
        text = str(exc)
        if "Cudnn" in text:
            raise ExportError(
                "the graph uses cuDNN kernels (CudnnRNN), which ONNX cannot express. A "
                "SavedModel exported on a machine with a GPU has them baked in: convert the "
                '.keras file instead, or export with CUDA_VISIBLE_DEVICES="" set'
            ) from exc
        raise ExportError(
            f"tf2onnx failed: {text.strip().splitlines()[0][:500] if text else exc!r}"
        ) from exc

    _check_supported(model)
    name_dimensions(model, traced)
    loops = [
        node.name or node.op_type for node in iter_nodes(model.graph) if node.op_type in _LOOP_OPS
    ]
    exported = ExportedModel(model=model, loop_nodes=loops)
    if loops:
        exported.warnings.append(loop_warning(traced.loop_causes, len(loops)))
    return exported


def _check_supported(model: onnx.ModelProto) -> None:
    """Refuse ops tf2onnx left unconverted: they have no ONNX schema and would not run."""
    unsupported: dict[str, list[str]] = {}
    for node in iter_nodes(model.graph):
        known = node.domain == "com.microsoft" or onnx.defs.has(node.op_type, node.domain or "")
        if node.domain in _RUNNABLE_DOMAINS and known:
            continue
        unsupported.setdefault(node.op_type, []).append(node.name)
    if unsupported:
        details = "; ".join(
            f"{op} (at {', '.join(sorted(set(_layer_of(n) for n in names))[:3])})"
            for op, names in sorted(unsupported.items())
        )
        hint = ""
        if "Bitcast" in unsupported or "BitwiseAnd" in unsupported:
            hint = (
                " (keras.ops.argmax/argmin compile to Bitcast/BitwiseAnd with the TensorFlow "
                "backend: return the scores and take the argmax in the client)"
            )
        raise UnsupportedModelError(
            f"the model uses TensorFlow operations that have no ONNX equivalent: {details}"
            f"{hint}. Replace the layer(s) that use them, or move that computation out of "
            "the model"
        )


def _layer_of(node_name: str) -> str:
    """'functional_1/odd_1/Svd' -> 'functional_1/odd_1' (the Keras layer path)."""
    head, _, _ = node_name.rpartition("/")
    return head or node_name


def loop_warning(causes: list[str], count: int) -> str:
    """The plain-words warning for recurrent layers that became ONNX Loops."""
    why = (
        "because of: " + "; ".join(causes)
        if causes
        else "(masking, GRU, recurrent_dropout or a non-default recurrent activation are the "
        "usual reasons)"
    )
    return (
        f"{count} recurrent part(s) of the model became a generic ONNX Loop instead of a fused "
        f"LSTM operator {why}. The results are correct, but a Loop runs one time step at a "
        "time through the graph: typically 3-5x slower than a fused LSTM for single requests "
        "(about 1.5-2x at batch 32). For speed: use LSTM layers "
        "without mask_zero/Masking (pad with zeros and let the model learn to ignore them), "
        "with recurrent_dropout=0 and the default activations."
    )


def _dim_params(value: onnx.ValueInfoProto) -> list[Any]:
    return list(value.type.tensor_type.shape.dim) if value.type.HasField("tensor_type") else []


def name_dimensions(model: onnx.ModelProto, traced: TracedModel) -> None:
    """Rename tf2onnx's 'unk__N' dims: 'batch' on axis 0, 'sequence' on dynamic axis 1.

    With several inputs having a dynamic sequence axis each gets its own name
    ('<input>_sequence'), since their lengths need not match. An output dim
    that shares an input's 'unk__N' gets that input's name for it.
    """
    sequences = [i for i in traced.inputs if i.dynamic_sequence]
    renamed: dict[str, str] = {}
    for value in model.graph.input:
        info = next((i for i in traced.inputs if i.name == value.name), None)
        for axis, dim in enumerate(_dim_params(value)):
            if dim.HasField("dim_value"):
                continue
            old = dim.dim_param
            if axis == 0:
                new = "batch"
            elif axis == 1 and info is not None and info.dynamic_sequence:
                new = "sequence" if len(sequences) == 1 else f"{info.name}_sequence"
            else:
                new = f"{value.name}_dim{axis}"
            if old:
                renamed.setdefault(old, new)
            dim.dim_param = new
    for value in model.graph.output:
        for axis, dim in enumerate(_dim_params(value)):
            if dim.HasField("dim_value"):
                continue
            old = dim.dim_param
            if axis == 0:
                new = "batch"
            elif old in renamed:
                new = renamed[old]
            else:
                new = f"{value.name}_dim{axis}"
            dim.dim_param = new
