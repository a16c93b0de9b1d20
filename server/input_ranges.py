"""The valid values of a model's integer inputs: declared in config.pbtxt or read from the graph.

A token id outside an embedding table makes onnxruntime's Gather fail, and in
a merged batch that failure would be every request's; a negative id is worse:
ONNX Gather counts it from the end of the table and silently answers with
another token's row. So the server checks integer inputs against a range at
decode time, before a request can share a batch with anyone
(``onnxserve.server.inference``), and answers INVALID_ARGUMENT naming the
value, its position and the range.

Where a range comes from, per input:

- declared: the model-level parameter ``onnxserve.input_range.<input>`` =
  ``"<min>,<max>"`` (inclusive, either side may be empty; key and syntax in
  :mod:`onnxserve.layout`), which the converter writes for Keras Embedding
  inputs and anyone may write by hand. A malformed one, or one on an unknown
  or non-integer input, fails the model's load.
- inferred, where no range is declared: an integer input that feeds a Gather
  over a constant table directly (the table an initializer or a Constant
  node, the indices the input itself or the input through Cast, Identity,
  Reshape, Unsqueeze, Squeeze or Flatten) may hold ``0 .. N-1``, N the
  table's size along the gather axis; several such Gathers: the smallest N.
  ONNX itself would take ``-N .. -1`` too, but an id is an index into the
  table as Keras (and every tokenizer) means it, from 0: a negative id is a
  caller's bug that would be answered with the wrong row, so it is refused.

The effective ranges are written into the completed config's parameters, so
ModelConfig shows them to clients (the bench draws its random inputs from
them). Reading the graph needs the ``onnx`` package (in the server extra);
without it no range is inferred and the server says so once per model.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from onnxserve.layout import (
    INPUT_RANGE_PREFIX,
    format_input_range,
    input_range_key,
    parse_input_range,
)
from onnxserve.protocol import model_config_pb2 as mc
from onnxserve.protocol.datatypes import config_to_protocol
from onnxserve.server.errors import ConfigError
from onnxserve.server.model_files import graph_bytes_without_weights

log = logging.getLogger(__name__)

InputRange = tuple[int | None, int | None]

INTEGER_DATATYPES = frozenset(
    {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
)
# Ops that hand their first input's values on unchanged (indices may pass through them).
_VALUE_PRESERVING_OPS = frozenset(
    {"Cast", "Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten"}
)


def declared_ranges(config: mc.ModelConfig) -> dict[str, InputRange]:
    """The ``onnxserve.input_range.*`` parameters of a config with its inputs listed.

    Raises ConfigError for a malformed range or one on an input that is not
    an integer input of the model.
    """
    datatypes = {tensor.name: config_to_protocol(tensor.data_type) for tensor in config.input}
    ranges: dict[str, InputRange] = {}
    for key, value in config.parameters.items():
        if not key.startswith(INPUT_RANGE_PREFIX):
            continue
        name = key[len(INPUT_RANGE_PREFIX) :]
        if name not in datatypes:
            raise ConfigError(
                f"model '{config.name}': parameter {key} is for input '{name}', which the model "
                f"does not have (its inputs: {', '.join(datatypes) or 'none'})"
            )
        if datatypes[name] not in INTEGER_DATATYPES:
            raise ConfigError(
                f"model '{config.name}': parameter {key}: input '{name}' is "
                f"{datatypes[name]}; ranges apply to integer inputs only"
            )
        try:
            ranges[name] = parse_input_range(value.string_value)
        except ValueError as exc:
            raise ConfigError(f"model '{config.name}': parameter {key}: {exc}") from None
    return ranges


def complete_ranges(config: mc.ModelConfig, model_path: Path) -> dict[str, InputRange]:
    """Check the declared ranges, infer the others from the graph, write all into ``config``.

    ``config`` is a completed config (its inputs listed with their types).
    Returns the effective ranges by input name.
    """
    ranges = declared_ranges(config)
    undeclared = [
        tensor.name
        for tensor in config.input
        if tensor.name not in ranges and config_to_protocol(tensor.data_type) in INTEGER_DATATYPES
    ]
    inferred = graph_ranges(model_path, undeclared, config.name) if undeclared else {}
    for name, (low, high) in inferred.items():
        config.parameters[input_range_key(name)].string_value = format_input_range(low, high)
        log.info(
            "model '%s': input '%s' feeds a lookup table of %d rows: ids outside 0 to %d are "
            "refused",
            config.name,
            name,
            (high or 0) + 1,
            high,
        )
    return {**inferred, **ranges}


def graph_ranges(model_path: Path, inputs: Iterable[str], model_name: str) -> dict[str, InputRange]:
    """Ranges of ``inputs`` that index a constant table directly (see the module docstring)."""
    try:
        import onnx
    except ImportError:
        log.warning(
            "model '%s': the onnx package is not installed, so integer input ranges are not "
            "read from the graph (install onnxserve[server], or declare %s<input>)",
            model_name,
            INPUT_RANGE_PREFIX,
        )
        return {}
    # The graph without its weights (never the whole file, inline weights included, in memory).
    try:
        model = onnx.ModelProto.FromString(graph_bytes_without_weights(model_path))
    except Exception as exc:  # onnxruntime loaded it, so this is unexpected: keep serving
        log.warning("model '%s': its graph could not be read for input ranges: %s", model_name, exc)
        return {}
    return _table_ranges(model.graph, set(inputs))


def _table_ranges(graph: Any, inputs: set[str]) -> dict[str, InputRange]:
    tables = {tensor.name: tuple(tensor.dims) for tensor in graph.initializer}
    producers: dict[str, Any] = {}
    for node in graph.node:
        for output in node.output:
            producers[output] = node
        if node.op_type == "Constant" and node.output:
            for attribute in node.attribute:
                if attribute.name == "value":
                    tables[node.output[0]] = tuple(attribute.t.dims)
    rows: dict[str, int] = {}
    for node in graph.node:
        if node.op_type != "Gather" or len(node.input) < 2 or node.input[0] not in tables:
            continue
        source = _source_input(node.input[1], producers, inputs)
        if source is None:
            continue
        dims = tables[node.input[0]]
        axis = _axis(node)
        if not dims or not -len(dims) <= axis < len(dims):
            continue
        size = int(dims[axis])
        rows[source] = min(size, rows.get(source, size))
    return {name: (0, size - 1) for name, size in rows.items() if size > 0}


def _source_input(tensor: str, producers: Mapping[str, Any], inputs: set[str]) -> str | None:
    """The model input whose values reach ``tensor`` unchanged, if any."""
    seen = set()
    while tensor not in inputs:
        node = producers.get(tensor)
        if node is None or node.op_type not in _VALUE_PRESERVING_OPS or tensor in seen:
            return None
        seen.add(tensor)
        tensor = node.input[0]
    return tensor


def _axis(node: Any) -> int:
    for attribute in node.attribute:
        if attribute.name == "axis":
            return int(attribute.i)
    return 0
