"""tf2onnx handlers for the TensorFlow ops of Keras layers that tf2onnx 1.17 lacks.

Passed per conversion through tf2onnx's ``custom_op_handlers`` (nothing is
registered globally):

- ``Bucketize`` (``keras.layers.Discretization``): the bucket index of ``x`` is
  the number of boundaries ``<= x``, so it becomes GreaterOrEqual against the
  boundaries on a new last axis, Cast and ReduceSum. TensorFlow compares
  integer inputs with the float32 boundaries as floats; so does this.
- ``LookupTableFindV2`` (``keras.layers.IntegerLookup`` / ``StringLookup``):
  tf2onnx's own handler needs the table's contents by a ``shared_name`` that
  a traced ``tf.function`` does not carry (the table is a captured resource),
  and supports string<->int64 only. Here the contents are exported from the
  captured table before conversion (:func:`captured_tables`) and the lookup
  becomes an ``ai.onnx.ml`` LabelEncoder (int64 -> int64 or string -> int64,
  with the table's default for keys it lacks, as TensorFlow does).
- ``Erfc`` (exact GELU: ``tf.nn.gelu(approximate=False)``, i.e. Keras'
  ``activation="gelu"``, ConvNeXt, the DistilBERT/RoBERTa/ViT transformers):
  ``erfc(x) = 1 - erf(x)`` with ONNX Erf (opset 9). TensorFlow writes GELU as
  ``0.5 * x * erfc(Neg(x) * (1/sqrt(2)))``; such a negated argument is folded
  (``erfc(-z) = 1 + erf(z)``) into the textbook form
  ``0.5 * x * (1 + erf(x / sqrt(2)))``, which onnxruntime's optimizer
  (extended level and up, the server's default) fuses into one Gelu kernel:
  checked, a Dense(activation="gelu") becomes MatMul + Gelu. ONNX's own Gelu
  operator needs opset 20, past tf2onnx 1.17's 18. Precision: ``1 - erf(x)``
  loses erfc's relative precision where erfc is tiny (x > 3), never more than
  float32's 6e-8 absolutely; GELU multiplies it by x, so a GELU of |x| < 100
  stays within 1e-5 of TensorFlow.
- ``Expm1`` (``activation="celu"``, ``keras.ops.expm1``): ``exp(x) - 1``;
  absolutely within float32's rounding of 1 (6e-8), which is the error that
  matters after CELU's ``max``/``min``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["Tables", "captured_tables", "custom_op_handlers"]

# table placeholder name in the graph -> (keys, values)
Tables = dict[str, tuple[np.ndarray, np.ndarray]]


def captured_tables(concrete: Any, graph_def: Any) -> Tables:
    """The contents of every lookup table the frozen graph reads, by placeholder name.

    A table is a resource the concrete function captured; in the frozen
    ``graph_def`` (nested calls inlined, as a SavedModel's signature has them)
    each ``LookupTableFindV2`` reads it from that capture's placeholder, through
    Identity nodes. The contents are exported from the eager resource behind
    the capture, with the key and value types the lookup declares.
    """
    import tensorflow as tf

    handles = {
        internal.op.name: external
        for external, internal in zip(
            concrete.captured_inputs, concrete.graph.internal_captures, strict=False
        )
        if internal.dtype == tf.resource
    }
    nodes = {node.name: node for node in graph_def.node}
    tables: Tables = {}
    for node in graph_def.node:
        if node.op != "LookupTableFindV2":
            continue
        source = node.input[0].split(":")[0]
        while source in nodes and nodes[source].op == "Identity":
            source = nodes[source].input[0].split(":")[0]
        if source in tables or source not in handles:
            continue
        keys, values = tf.raw_ops.LookupTableExportV2(
            table_handle=handles[source],
            Tkeys=tf.as_dtype(node.attr["Tin"].type),
            Tvalues=tf.as_dtype(node.attr["Tout"].type),
        )
        tables[source] = (keys.numpy(), values.numpy())
    return tables


_SQRT2 = 2.0**0.5
_SQRT_HALF = 0.5**0.5


def custom_op_handlers(tables: Tables) -> dict[str, tuple[Callable[..., Any], list[Any]]]:
    """tf2onnx's ``custom_op_handlers`` argument for one conversion."""

    def lookup(ctx: Any, node: Any, name: str, args: list[Any]) -> None:
        _lookup_table_find(ctx, node, tables)

    def bucketize(ctx: Any, node: Any, name: str, args: list[Any]) -> None:
        _bucketize(ctx, node)

    def erfc(ctx: Any, node: Any, name: str, args: list[Any]) -> None:
        _erfc(ctx, node)

    def expm1(ctx: Any, node: Any, name: str, args: list[Any]) -> None:
        _expm1(ctx, node)

    return {
        "LookupTableFindV2": (lookup, []),
        "Bucketize": (bucketize, []),
        "Erfc": (erfc, []),
        "Expm1": (expm1, []),
    }


def _one(ctx: Any, node: Any, source: str) -> str:
    """A scalar 1 of ``source``'s dtype, as a graph constant."""
    from onnx import helper

    dtype = helper.tensor_dtype_to_np_dtype(ctx.get_dtype(source))
    return ctx.make_const(f"{node.name}/one", np.ones((), dtype=dtype)).output[0]


def _replace(ctx: Any, node: Any, op_type: str, inputs: list[str]) -> None:
    """Replace ``node`` by one ``op_type`` node with the same name, outputs, shape and dtype."""
    outputs = node.output
    shapes, dtypes = [ctx.get_shape(outputs[0])], [ctx.get_dtype(outputs[0])]
    ctx.remove_node(node.name)
    ctx.make_node(op_type, inputs, name=node.name, outputs=outputs, shapes=shapes, dtypes=dtypes)


def _negated_product(ctx: Any, source: str) -> str | None:
    """``z`` where ``source`` is ``-z`` written as a product: ``x * c`` with c a negative
    constant (z = x * -c) or ``Neg(x) * c`` with c positive (z = x * c); else None.

    ``z = x * (1/sqrt(2))`` (GELU's) is written ``x / sqrt(2)``: the form of
    onnxruntime's Gelu fusion pattern.
    """
    producer = ctx.get_node_by_output(source)
    if producer is None or producer.type != "Mul" or len(ctx.find_output_consumers(source)) != 1:
        return None
    for position, other in ((0, 1), (1, 0)):
        factor = producer.inputs[position]
        if not factor.is_const():
            continue
        value = factor.get_tensor_value(as_list=False)
        scale = float(value.reshape(())) if value.size == 1 else 0.0
        operand = producer.inputs[other]
        if scale < 0:
            x = producer.input[other]
        elif scale > 0 and operand is not None and operand.type == "Neg":
            x = operand.input[0]
        else:
            continue
        if abs(abs(scale) - _SQRT_HALF) < 1e-6:
            sqrt2 = ctx.make_const(f"{producer.name}/sqrt2", np.full((), _SQRT2, value.dtype))
            return ctx.make_node("Div", [x, sqrt2.output[0]]).output[0]
        positive = ctx.make_const(f"{producer.name}/negated", np.abs(value)).output[0]
        return ctx.make_node("Mul", [x, positive]).output[0]
    return None


def _erfc(ctx: Any, node: Any) -> None:
    source = node.input[0]
    one = _one(ctx, node, source)
    folded = _negated_product(ctx, source)
    if folded is not None:  # erfc(-z) = 1 + erf(z): the form onnxruntime fuses into Gelu
        erf = ctx.make_node("Erf", [folded]).output[0]
        _replace(ctx, node, "Add", [one, erf])
    else:
        erf = ctx.make_node("Erf", [source]).output[0]
        _replace(ctx, node, "Sub", [one, erf])


def _expm1(ctx: Any, node: Any) -> None:
    source = node.input[0]
    exp = ctx.make_node("Exp", [source]).output[0]
    _replace(ctx, node, "Sub", [exp, _one(ctx, node, source)])


def _bucketize(ctx: Any, node: Any) -> None:
    from onnx import TensorProto
    from tf2onnx.graph_builder import GraphBuilder

    boundaries = np.asarray(node.get_attr_value("boundaries"), dtype=np.float32)
    source = node.input[0]
    source_dtype = ctx.get_dtype(source)
    outputs, shapes, dtypes = node.output, [ctx.get_shape(node.output[0])], [TensorProto.INT32]
    ctx.remove_node(node.name)
    if source_dtype == TensorProto.DOUBLE:
        boundaries = boundaries.astype(np.float64)
    elif source_dtype != TensorProto.FLOAT:
        source = ctx.make_node("Cast", [source], attr={"to": TensorProto.FLOAT}).output[0]
    builder = GraphBuilder(ctx)
    expanded = builder.make_unsqueeze({"data": source, "axes": [-1]})
    limits = ctx.make_const(f"{node.name}/boundaries", boundaries).output[0]
    reached = ctx.make_node("GreaterOrEqual", [expanded, limits]).output[0]
    counted = ctx.make_node("Cast", [reached], attr={"to": TensorProto.INT32}).output[0]
    builder.make_reduce_sum(
        {"data": counted, "axes": [-1], "keepdims": 0, "outputs": outputs},
        name=node.name,
        shapes=shapes,
        dtypes=dtypes,
    )


def _lookup_table_find(ctx: Any, node: Any, tables: Tables) -> None:
    from onnx import TensorProto
    from tf2onnx import constants, utils

    table = node.inputs[0]
    while table.type == "Identity":
        table = table.inputs[0]
    utils.make_sure(
        table.name in tables, "lookup table %s of %s is not a captured table", table.name, node.name
    )
    keys, values = tables[table.name]
    default = node.inputs[2]
    utils.make_sure(default.is_const(), "the default of lookup %s is not a constant", node.name)
    key_dtype, value_dtype = ctx.get_dtype(node.input[1]), ctx.get_dtype(node.output[0])
    utils.make_sure(
        value_dtype == TensorProto.INT64 and key_dtype in (TensorProto.INT64, TensorProto.STRING),
        "only int64 -> int64 and string -> int64 lookup tables are supported (%s)",
        node.name,
    )
    if key_dtype == TensorProto.STRING:
        key_attr = {"keys_strings": [k.decode() if isinstance(k, bytes) else str(k) for k in keys]}
    else:
        key_attr = {"keys_int64s": [int(k) for k in keys]}
    attr = {
        **key_attr,
        "values_int64s": [int(v) for v in values],
        "default_int64": int(np.asarray(default.get_tensor_value(as_list=False)).reshape(())),
    }
    source, outputs = node.input[1], node.output
    shape = ctx.get_shape(node.input[1])
    ctx.remove_node(node.name)
    ctx.make_node(
        "LabelEncoder",
        [source],
        attr=attr,
        name=node.name,
        outputs=outputs,
        shapes=[shape],
        dtypes=[value_dtype],
        domain=constants.AI_ONNX_ML_DOMAIN,
    )
