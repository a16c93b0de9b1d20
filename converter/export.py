"""Export step: the traced function becomes an ONNX model with readable names.

tf2onnx's ``from_function`` does the conversion. Afterwards the dynamic
dimensions it names 'unk__N' are renamed ('batch', 'sequence', ...), ops that
tf2onnx could not convert (it leaves them in the graph and only logs) are
turned into an :class:`UnsupportedModelError`, and ONNX Loops (recurrent layers
that could not become fused LSTM ops) are found so the user can be told.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx

from onnxserve.converter.analysis import UNCONVERTIBLE_LAYERS, LoopCause
from onnxserve.converter.errors import ExportError, UnsupportedModelError
from onnxserve.converter.external import (
    DEFAULT_THRESHOLD_BYTES,
    ExternalWeight,
    attach_external,
    plan_external,
    stateless_function,
)
from onnxserve.converter.handlers import captured_tables, custom_op_handlers
from onnxserve.converter.trace import TracedModel

__all__ = [
    "ExportedModel",
    "export_onnx",
    "iter_nodes",
    "loop_warning",
    "loop_warnings",
    "name_dimensions",
]

log = logging.getLogger(__name__)

# Domains onnxruntime runs without extra libraries.
_RUNNABLE_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")
_LOOP_OPS = ("Loop", "Scan")
# TensorFlow ops that only the layers of UNCONVERTIBLE_LAYERS emit.
_OP_LAYERS = {
    "StaticRegexReplace": "TextVectorization",
    "StringSplitV2": "TextVectorization",
    "StringToHashBucketFast": "Hashing",
    "SparseCross": "HashedCrossing",
    "Real": "MelSpectrogram",
    "Imag": "MelSpectrogram",
}


@dataclass
class ExportedModel:
    """The ONNX model and what was noticed while making it.

    ``external``: the weights kept out of the graph (see
    :mod:`onnxserve.converter.external`); ``model`` then names them as
    external data, which :func:`~onnxserve.converter.external.write_staged`
    writes. Empty for a model that is one self-contained file.
    """

    model: onnx.ModelProto
    loop_nodes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    external: list[ExternalWeight] = field(default_factory=list)


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


def export_onnx(
    traced: TracedModel, *, opset: int = 17, external_above_bytes: int = DEFAULT_THRESHOLD_BYTES
) -> ExportedModel:
    """Convert the traced function with tf2onnx and tidy the result (``opset`` as
    :class:`~onnxserve.converter.settings.ConvertOptions` checked it).

    Weights totalling more than ``external_above_bytes`` are kept out of the
    graph as external data (:mod:`onnxserve.converter.external`).
    """
    external = plan_external(traced.variables, external_above_bytes)
    function = traced.function
    if external:
        function = stateless_function(function, traced.input_signature, external)
    try:
        model = _convert_function(function, opset)
    except Exception as exc:
        text = str(exc)
        if "Cudnn" in text:
            raise ExportError(
                "the graph uses cuDNN kernels (CudnnRNN), which ONNX cannot express. A "
                "SavedModel exported on a machine with a GPU has them baked in: convert the "
                '.keras file instead, or export with CUDA_VISIBLE_DEVICES="" set'
            ) from exc
        if "larger than 2GB" in text:
            raise ExportError(
                "the graph holds more than 2 GiB of constants, the limit of a protobuf file: "
                + (
                    "lower --external-data-above-mib so that more weights go to external data"
                    if traced.source_kind == "keras"
                    else "a SavedModel's weights cannot be kept out of the graph; convert the "
                    ".keras file (or the keras.Model) instead, which writes them as external data"
                )
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
    if external:
        exported.external = attach_external(model, external)
    exported.warnings.extend(loop_warnings(loops, traced.loop_causes))
    return exported


def _convert_function(function: Any, opset: int) -> onnx.ModelProto:
    """tf2onnx on the traced function, with the signature's tensors as the only graph inputs.

    ``tf2onnx.convert.from_function`` (1.17) declares every non-resource input
    of the concrete function a graph input. Those include the tensors the
    function captured by value: a Keras layer that keeps its weights as plain
    tensors rather than variables (Normalization's mean and variance after
    ``adapt()`` or given fixed, a lookup layer's vocabulary, any
    ``keras.ops.convert_to_tensor`` constant) is traced as a placeholder fed
    from the capture, and the ONNX model then demands those constants as inputs
    ("Required inputs ['.../Sub/y:0', ...] are missing"). Here the same three
    steps run with the inputs named explicitly: the concrete function's own
    arguments (never its captures) are inputs; variables and captured tensors
    alike are frozen into constants by ``convert_variables_to_constants_v2``
    (inside ``tf_loader.from_function``) and become ONNX initializers.
    """
    import tensorflow as tf
    import tf2onnx
    from tf2onnx import tf_loader

    concrete = function.get_concrete_function()
    captured = {id(t) for t in concrete.graph.internal_captures}
    inputs = [t.name for t in concrete.inputs if t.dtype != tf.resource and id(t) not in captured]
    outputs = [t.name for t in concrete.outputs if t.dtype != tf.resource]
    renames = tf2onnx.convert.tensor_names_from_structed(concrete, inputs, outputs)
    tf_logger = logging.getLogger("tensorflow")
    level = tf_logger.level
    # from_graph_def runs TF1's convert_variables_to_constants on the already frozen graph
    # (a no-op) and TensorFlow logs a deprecation notice for it: nothing a user can act on.
    tf_logger.setLevel(logging.ERROR)
    try:
        with tf.device("/cpu:0"):
            graph_def = tf_loader.from_function(concrete, inputs, outputs)
            handlers = custom_op_handlers(captured_tables(concrete, graph_def))
        model, _ = tf2onnx.convert.from_graph_def(
            graph_def,
            name=concrete.name,
            input_names=inputs,
            output_names=outputs,
            opset=opset,
            tensors_to_rename=renames,
            custom_op_handlers=handlers,
        )
    finally:
        tf_logger.setLevel(level)
    return model


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
        layers = sorted({_OP_LAYERS[op] for op in unsupported if op in _OP_LAYERS})
        if layers:  # a SavedModel has no layers to refuse by name before tracing
            hint += "".join(
                f" (keras.layers.{layer} emits these: {UNCONVERTIBLE_LAYERS[layer]})"
                for layer in layers
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


def _owner(node_name: str, causes: Sequence[LoopCause]) -> str:
    """The layer, among the causes', that produced a Loop node ('' when none matches).

    Node names hold the Keras layers' name scopes, made unique by TensorFlow
    with a suffix ('time_distributed' is traced as 'time_distributed_1'); the
    innermost matching scope wins (a TimeDistributed over a GRU: the GRU), and
    within a scope the exact name, then the longest ('gru_2' over 'gru' + '_2').
    """
    best = ""
    layers = {cause.layer for cause in causes if cause.layer}
    for part in node_name.split("/")[:-1]:
        matches = [layer for layer in layers if re.fullmatch(rf"{re.escape(layer)}(_\d+)?", part)]
        if matches:
            best = max(matches, key=lambda layer: (layer == part, len(layer)))
    return best


def loop_warnings(loops: Sequence[str], causes: Sequence[LoopCause]) -> list[str]:
    """One warning per group of Loop nodes, naming the layer(s) that produced them."""
    owners: dict[str, list[str]] = {}
    for node in loops:
        owners.setdefault(_owner(node, causes), []).append(node)
    warnings: list[str] = []
    recurrent = [c for c in causes if c.layer in owners and c.recurrent]
    if recurrent:
        count = sum(len(owners[layer]) for layer in {c.layer for c in recurrent})
        warnings.append(loop_warning(recurrent, count))
    for cause in causes:
        if cause.layer in owners and not cause.recurrent:
            warnings.append(_time_distributed_warning(cause, len(owners[cause.layer])))
    if "" in owners:
        # 'model_1/<layer>_N/...': the model's layer the Loop sits in.
        scopes = sorted({"/".join(node.split("/")[:2]) for node in owners[""]})
        warnings.append(loop_warning([], len(owners[""]), scopes))
    return warnings


def _time_distributed_warning(cause: LoopCause, count: int) -> str:
    return (
        f"{count} part(s) of the model became an ONNX Loop over the time steps: {cause.text}. "
        "The answers are the same (checked against Keras), but the wrapped layer runs once "
        "per time step instead of once per batch, which costs in proportion to the "
        f"sequence length. To avoid it, {cause.remedy}."
    )


def loop_warning(causes: Sequence[LoopCause], count: int, scopes: Sequence[str] = ()) -> str:
    """The plain-words warning for recurrent layers that became ONNX Loops: which layers,
    why, when it matters, and what to change (one remedy per cause found). ``scopes``
    names where Loops came from that no known cause explains."""
    if causes:
        why = "because of " + "; ".join(c.text for c in causes)
        remedies = list(dict.fromkeys(c.remedy for c in causes))
        fix = "To get the fused operator, " + "; ".join(remedies) + ", and retrain."
    else:
        where = f"in {', '.join(repr(s) for s in scopes)} " if scopes else ""
        why = (
            f"{where}(masking, GRU, recurrent_dropout or a non-default recurrent activation "
            "are the usual causes)"
        )
        fix = (
            "To get the fused operator use plain LSTM layers without masking or "
            "recurrent_dropout, with the default activations, and retrain."
        )
    return (
        f"{count} recurrent part(s) of the model became a generic ONNX Loop {why}. tf2onnx "
        "fuses only plain Keras LSTM layers into ONNX's LSTM operator; anything else runs "
        "its cell one time step at a time through the graph. The answers are the same, but "
        "on a CPU a Loop measured 3-5x slower than a fused LSTM for single requests (about "
        "1.5-2x at batch 32). That matters when serving is latency-bound (small batches, "
        "per-request deadlines); for throughput-bound serving with large batches the cost is "
        f"smaller and keeping the model as it is can be right. {fix}"
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
