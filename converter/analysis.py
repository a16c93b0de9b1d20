"""What a Keras model says about its inputs and its recurrent layers, read from its layer graph.

Computed once per conversion and used twice: for the ranges declared in
config.pbtxt (``parameters { key: "onnxserve.input_range.<input>" ... }``) and
for the representative check inputs of the verify step, so that the inputs the
conversion is checked on and the inputs the server will accept are one fact.

From each model input the graph is followed forward through layers and ops
that only move values around (Reshape, Flatten, slicing, cast, concatenation,
nested models; see ``_PASS_THROUGH``) to the first layer that gives the values
a meaning. What each such consumer accepts:

- ``Embedding(input_dim)``: ids ``0 .. input_dim-1``, with ``mask_zero`` too
  (0 is then padding, still a valid id). Outside, TensorFlow fails on the CPU
  and ONNX Gather fails or reads another row: a real contract.
- ``CategoryEncoding(num_tokens)``: ``0 .. num_tokens-1``. Keras drops other
  values silently, so they could never have meant anything.
- ``IntegerLookup`` / ``StringLookup`` with ``invert=True``: indices
  ``0 .. vocabulary_size-1``.
- ``IntegerLookup`` (forward): no range. Any integer is valid: values outside
  the vocabulary map to the OOV index, which is what the layer is for, and a
  vocabulary is a set, not a range. Its keys (a StringLookup's strings too)
  are kept for the check inputs (known keys and, when the layer has OOV
  indices, unknown ones). With ``num_oov_indices=0`` Keras raises on unknown
  keys through an assertion that tf2onnx drops (the ONNX model maps them to
  the table's default instead), so the check inputs keep to known keys there.
- A keras_hub ``TokenAndPositionEmbedding`` (any layer whose ``token_embedding``
  is an Embedding): that embedding's ids, as for the Embedding itself.
- A tensor passed as ``padding_mask=``, ``decoder_padding_mask=`` or
  ``attention_mask=`` (keras_hub's transformer layers take the backbone's
  ``padding_mask`` input so): ``0..1``.
  Keras reads any non-zero value as 1, so other values never meant anything
  else; declaring 0..1 lets the server refuse what is surely a mistake (ids
  sent as the mask).
- ``Discretization``: no range (every number falls in a bucket); its bin
  boundaries are kept so that the check inputs fall in every bucket.
- Anything else (Dense, arithmetic, Lambda...): no statement, and the walk
  stops there, since after arithmetic a later Embedding's range no longer
  says anything about the model input.

Several consumers of one input: the ranges are intersected (an id must suit
every consumer). Keras has no public API for the layer graph; this reads
``Operation._inbound_nodes`` and the nodes' tensors, as Keras' own
serialisation does, and a model it cannot read simply gets no ranges.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "UNCONVERTIBLE_LAYERS",
    "InputFacts",
    "LoopCause",
    "input_facts",
    "loop_causes",
    "masking_value",
    "unconvertible_layers",
    "walk_layers",
]

# Keras layers that tf2onnx cannot turn into operators onnxruntime runs (each tried with
# Keras 3.15 / tf2onnx 1.17: the TensorFlow ops named stay unconverted), and what to do.
UNCONVERTIBLE_LAYERS: dict[str, str] = {
    "TextVectorization": (
        "it standardizes and splits text with TensorFlow string ops (StaticRegexReplace, "
        "StringSplitV2) whose tf2onnx translations do not reproduce Keras. The converter "
        "rebuilds a TextVectorization that is the first layer of a .keras model (string "
        "input); convert the .keras file, or tokenize in the client and give the model "
        "token ids (an integer Input feeding the Embedding)"
    ),
    "Hashing": (
        "it hashes with TensorFlow's StringToHashBucketFast, which ONNX lacks. Hash in the "
        "client and give the model the bucket ids"
    ),
    "HashedCrossing": (
        "it crosses features with TensorFlow's SparseCross, which ONNX lacks. Cross and hash "
        "in the client and give the model the bucket ids"
    ),
    "MelSpectrogram": (
        "its FFT leaves complex-number ops (Real, Imag) that tf2onnx cannot convert. "
        "Compute the spectrogram in the client, or use STFTSpectrogram, which converts"
    ),
}

# Keras layers and ops (by class name, from keras' own modules) that only move values around.
_PASS_THROUGH = frozenset(
    {
        "Cast",
        "Concatenate",
        "ConvertToTensor",
        "Copy",
        "Cropping1D",
        "Cropping2D",
        "ExpandDims",
        "Flatten",
        "Flip",
        "GetItem",
        "Identity",
        "MoveAxis",
        "Permute",
        "Ravel",
        "Repeat",
        "RepeatVector",
        "Reshape",
        "Slice",
        "Split",
        "Squeeze",
        "Stack",
        "StopGradient",
        "SwapAxes",
        "Tile",
        "Transpose",
        "Unstack",
    }
)

Range = tuple[int | None, int | None]
# Keywords under which a layer takes a 0/1 mask (keras_hub's transformer encoders take the
# backbone's padding_mask input as padding_mask=, its decoders (GPT-2) as
# decoder_padding_mask=, Keras' attention layers attention_mask=).
_MASK_KEYWORDS = frozenset({"padding_mask", "decoder_padding_mask", "attention_mask"})


@dataclass(frozen=True)
class InputFacts:
    """What the layers fed by one model input accept (see the module docstring).

    ``valid_range`` holds inclusive bounds (None: unbounded on that side) or is
    None when no consumer restricts the values; ``reasons`` names the layers
    behind it, for the report. ``lookup_keys`` (ints or strings; ``lookup_oov``
    when unknown keys are valid too) and ``boundaries`` shape the check inputs
    only. ``masked``: an Embedding with mask_zero reads 0 as
    padding, so check inputs are padded sequences.
    """

    valid_range: Range | None = None
    reasons: tuple[str, ...] = ()
    lookup_keys: tuple[int | str, ...] = ()
    lookup_oov: bool = True
    boundaries: tuple[float, ...] = ()
    masked: bool = False


@dataclass(frozen=True)
class LoopCause:
    """A layer setting that makes tf2onnx emit an ONNX Loop, and what avoids it.

    ``layer`` is the Keras name of the layer whose Loop it explains: the ONNX
    Loop nodes carry it in their names (``model/<layer>_N/.../while_loop``),
    which is how the export step tells which layer produced which Loop.
    ``recurrent`` is False for a Loop over time steps that is not a recurrent
    layer's (a TimeDistributed that could not be folded into the batch).
    """

    text: str
    remedy: str
    layer: str = ""
    recurrent: bool = True


def walk_layers(layer: Any) -> Iterator[Any]:
    """Every layer inside ``layer`` (nested models, Bidirectional/TimeDistributed wrappers)."""
    seen: set[int] = set()
    stack = [layer]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for attr in ("layers", "_layers"):
            children = getattr(current, attr, None)
            if isinstance(children, (list, tuple)):
                stack.extend(children)
        for attr in ("forward_layer", "backward_layer", "layer", "cell"):
            child = getattr(current, attr, None)
            if child is not None and hasattr(child, "name") and hasattr(child, "weights"):
                stack.append(child)


def unconvertible_layers(model: Any, allowed: Sequence[Any] = ()) -> list[str]:
    """One sentence per layer of a kind in :data:`UNCONVERTIBLE_LAYERS`, naming it and why;
    ``allowed`` layers are converted another way (a TextVectorization front)."""
    skip = {id(layer) for layer in allowed}
    return [
        f"layer '{layer.name}' ({kind}) cannot be converted: {UNCONVERTIBLE_LAYERS[kind]}"
        for layer in walk_layers(model)
        for kind in [type(layer).__name__]
        if kind in UNCONVERTIBLE_LAYERS
        and type(layer).__module__.startswith("keras.")
        and id(layer) not in skip
    ]


def _is_model(operation: Any) -> bool:
    import keras

    return isinstance(operation, keras.Model)


def _operations(model: Any) -> Iterator[Any]:
    """The operations of a model's graph, nested models' graphs included."""
    for operation in getattr(model, "operations", None) or getattr(model, "layers", []):
        yield operation
        if _is_model(operation) and operation is not model:
            yield from _operations(operation)


def _consumers(model: Any) -> dict[int, list[tuple[Any, Any, int]]]:
    """id(tensor) -> [(operation, node, position of the tensor among the node's inputs)]."""
    consumers: dict[int, list[tuple[Any, Any, int]]] = {}
    for operation in _operations(model):
        for node in getattr(operation, "_inbound_nodes", None) or []:
            for position, tensor in enumerate(getattr(node, "input_tensors", None) or []):
                consumers.setdefault(id(tensor), []).append((operation, node, position))
    return consumers


def _meaningful_consumers(
    tensor: Any, consumers: dict[int, list[Any]]
) -> Iterator[tuple[Any, str | None]]:
    """The first layers after ``tensor`` that are not pass-through (see ``_PASS_THROUGH``),
    each with the keyword the tensor was passed under (None when positional)."""
    stack, seen = [tensor], set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for operation, node, position in consumers.get(id(current), []):
            if _is_model(operation):
                inner = list(getattr(operation, "inputs", None) or [])
                if position < len(inner):
                    stack.append(inner[position])
            elif type(operation).__name__ in _PASS_THROUGH and type(
                operation
            ).__module__.startswith("keras."):
                stack.extend(getattr(node, "output_tensors", None) or [])
            else:
                yield operation, _keyword(node, current)


def _keyword(node: Any, tensor: Any) -> str | None:
    kwargs = getattr(getattr(node, "arguments", None), "kwargs", None) or {}
    return next((key for key, value in kwargs.items() if value is tensor), None)


def _intersect(ranges: Sequence[Range]) -> Range:
    lows = [low for low, _ in ranges if low is not None]
    highs = [high for _, high in ranges if high is not None]
    return (max(lows) if lows else None, min(highs) if highs else None)


def _facts(consumers: Sequence[tuple[Any, str | None]]) -> InputFacts:
    import keras

    ranges: list[Range] = []
    reasons: list[str] = []
    keys: list[int | str] = []
    oov = True
    boundaries: list[float] = []
    masked = False
    for layer, keyword in consumers:
        embedding = getattr(layer, "token_embedding", None)  # keras_hub's token + position
        if keyword in _MASK_KEYWORDS:
            ranges.append((0, 1))
            reasons.append(f"{keyword} of '{layer.name}'")
        elif isinstance(layer, keras.layers.Embedding):
            ranges.append((0, int(layer.input_dim) - 1))
            reasons.append(f"Embedding '{layer.name}' (input_dim {layer.input_dim})")
            masked = masked or bool(getattr(layer, "mask_zero", False))
        elif isinstance(embedding, keras.layers.Embedding):
            ranges.append((0, int(embedding.input_dim) - 1))
            reasons.append(
                f"{type(layer).__name__} '{layer.name}' (vocabulary {embedding.input_dim})"
            )
            masked = masked or bool(getattr(embedding, "mask_zero", False))
        elif isinstance(layer, keras.layers.CategoryEncoding):
            ranges.append((0, int(layer.num_tokens) - 1))
            reasons.append(f"CategoryEncoding '{layer.name}' (num_tokens {layer.num_tokens})")
        elif isinstance(layer, (keras.layers.IntegerLookup, keras.layers.StringLookup)):
            kind = type(layer).__name__
            if layer.invert:
                size = int(layer.vocabulary_size())
                ranges.append((0, size - 1))
                reasons.append(f"{kind} '{layer.name}' (invert, {size} indices)")
            else:
                vocabulary = layer.get_vocabulary(include_special_tokens=False)
                keys.extend(
                    str(k) if isinstance(layer, keras.layers.StringLookup) else int(k)
                    for k in vocabulary
                )
                oov = oov and int(layer.num_oov_indices) > 0
        elif isinstance(layer, keras.layers.Discretization):
            boundaries.extend(float(b) for b in layer.bin_boundaries or [])
    return InputFacts(
        valid_range=_intersect(ranges) if ranges else None,
        reasons=tuple(reasons),
        lookup_keys=tuple(sorted(set(keys), key=str)),
        lookup_oov=oov,
        boundaries=tuple(sorted(set(boundaries))),
        masked=masked,
    )


def input_facts(model: Any, tensors: Sequence[Any]) -> list[InputFacts]:
    """For each model input tensor, what the layers it feeds accept."""
    consumers = _consumers(model)
    return [_facts(list(_meaningful_consumers(tensor, consumers))) for tensor in tensors]


def masking_value(model: Any) -> float | None:
    """The mask_value of the model's Masking layer, if it has one."""
    import keras

    for layer in walk_layers(model):
        if isinstance(layer, keras.layers.Masking):
            return float(layer.mask_value)
    return None


_UNMASK = (
    "drop the mask (pad with 0 and let the model learn to ignore the padding, or bucket "
    "requests by length)"
)


def loop_causes(model: Any) -> list[LoopCause]:
    """Layer settings that make tf2onnx emit an ONNX Loop instead of a fused LSTM op,
    one or more per recurrent layer (each naming it)."""
    import keras

    layers = list(walk_layers(model))
    rnns = [layer for layer in layers if isinstance(layer, keras.layers.RNN)]
    causes: list[LoopCause] = []
    if not rnns:
        return causes
    masks = [
        f"Embedding '{layer.name}' with mask_zero=True"
        for layer in layers
        if isinstance(layer, keras.layers.Embedding) and getattr(layer, "mask_zero", False)
    ]
    masks += [
        f"Masking layer '{layer.name}'"
        for layer in layers
        if isinstance(layer, keras.layers.Masking)
    ]
    for layer in rnns:
        cell = getattr(layer, "cell", layer)
        name = layer.name
        if masks:
            causes.append(
                LoopCause(
                    "masking (" + ", ".join(masks) + f") feeds the recurrent layer '{name}'",
                    _UNMASK,
                    name,
                )
            )
        if isinstance(layer, keras.layers.GRU):
            causes.append(LoopCause(f"GRU layer '{name}'", "use an LSTM layer instead", name))
        elif isinstance(layer, keras.layers.SimpleRNN):
            causes.append(LoopCause(f"SimpleRNN layer '{name}'", "use an LSTM layer instead", name))
        elif not isinstance(layer, keras.layers.LSTM):
            causes.append(
                LoopCause(
                    f"recurrent layer '{name}' ({type(layer).__name__})",
                    "use a keras.layers.LSTM layer instead",
                    name,
                )
            )
        if float(getattr(cell, "recurrent_dropout", 0.0) or 0.0) > 0:
            causes.append(
                LoopCause(
                    f"recurrent_dropout={cell.recurrent_dropout} in '{name}'",
                    "set recurrent_dropout=0 (dropout between layers works instead)",
                    name,
                )
            )
        activation = getattr(getattr(cell, "recurrent_activation", None), "__name__", "")
        if "hard_sigmoid" in activation:
            causes.append(
                LoopCause(
                    f"hard_sigmoid recurrent activation in '{name}'",
                    "keep the default recurrent_activation='sigmoid'",
                    name,
                )
            )
    return causes
