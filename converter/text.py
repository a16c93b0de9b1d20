"""Text in: a Keras model that starts with TextVectorization becomes one ONNX model taking BYTES.

The model is cut after its ``TextVectorization`` layer. The network behind it
(token ids in, the model's outputs out) goes through the ordinary pipeline
(trace, tf2onnx, the numeric check); the layer itself is not traced but
rebuilt here as an ONNX subgraph in front of it, from its settings and
vocabulary, because tracing it leaves TensorFlow string ops whose tf2onnx
translations answer wrongly (tensorflow-onnx issue 1886) or not at all. The
subgraph does what Keras 3.15 does (``text_vectorization.py``, ``_preprocess``
and ``call``), one fact per step, each checked here over every Unicode code
point against TensorFlow (tests/test_text_model.py):

- ``lower``: ``tf.strings.lower`` without an encoding lowercases ASCII only
  ("ÉCOLE" -> "École"). ONNX StringNormalizer with ``locale="C"`` does exactly
  that; onnxruntime-extensions' StringLower lowercases all of Unicode, which
  Keras does not.
- ``strip_punctuation``: Keras' regex ``[!"#$%&()\\*\\+,-\\./:;<=>?@\\[\\\\\\]^_`{|}~']``
  replaced by "" with RE2 (``tf.strings.regex_replace``); onnxruntime-extensions'
  StringRegexReplace is RE2 too. Standard ONNX has no regex replace.
- ``whitespace`` split: ``tf.strings.split`` splits on runs of the six ASCII
  whitespace characters only (not U+00A0, U+3000, ...) and drops empty tokens;
  ONNX's own StringSplit splits on ' ' alone, so onnxruntime-extensions'
  StringRegexSplitWithOffsets with ``([ \\t\\n\\v\\f\\r]+)`` is used.
- ``character`` split: ``tf.strings.unicode_split(..., "UTF-8")``, one token
  per code point: the same op with ``(.)`` kept as tokens.
- lookup: Keras' vocabulary with the mask token "" at 0 and the OOV token at
  1 (TextVectorization has one OOV index): an ai.onnx.ml LabelEncoder with
  default 1.
- ``output_sequence_length``: the first L tokens, zero-padded: row and
  position of every token from the split's row offsets, then ScatterND into
  zeros of ``(batch, L)``.

One difference is known and not checked: onnxruntime-extensions' regex ops
end a string at a NUL character ("a\\x00b c" becomes "a"), where TensorFlow
keeps it; sentences holding U+0000 are tokenized differently.

Settings this cannot reproduce are refused, with the reason, before anything
is traced: a callable standardize or split, ``split=None``, output modes other
than "int" (multi_hot, count, tf_idf), ngrams, ragged or sparse output, and a
missing ``output_sequence_length`` (the padded length would then depend on the
longest sentence in a batch, so a sentence's answer would depend on the other
callers' sentences the server batches it with).

Parity on text decides, not a successful export (:mod:`onnxserve.converter.text_check`): the
token ids of the ONNX subgraph must equal the layer's on the training
sentences when given and on :data:`HARD_SENTENCES`, and the whole model's
outputs must match Keras on them, at batch 1 and in mixed-length batches;
otherwise nothing is written and the message names the sentence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxserve.converter.errors import UnsupportedModelError, VerificationError, first_line

__all__ = [
    "HARD_SENTENCES",
    "PUNCTUATION_PATTERN",
    "TextFront",
    "attach_front",
    "find_text_front",
    "front_model",
]

#: Keras' DEFAULT_STRIP_REGEX (keras/src/layers/preprocessing/text_vectorization.py).
PUNCTUATION_PATTERN = r'[!"#$%&()\*\+,-\./:;<=>?@\[\\\]^_`{|}~\']'
#: The whitespace TensorFlow's StringSplitV2 splits on (sep=""), as one RE2 group.
WHITESPACE_PATTERN = "([ \t\n\x0b\x0c\r]+)"
CHARACTER_PATTERN = "(.)"
#: The domains and versions the subgraph imports.
CONTRIB_DOMAIN, CONTRIB_VERSION = "ai.onnx.contrib", 1
ML_DOMAIN, ML_VERSION = "ai.onnx.ml", 2
#: ScatterElements with reduction="add" (the row of each token) needs opset 16.
MIN_TEXT_OPSET = 16
TOKEN_IDS = "token_ids"
_SUPPORTED_STANDARDIZE = (None, "lower_and_strip_punctuation", "lower", "strip_punctuation")
_LOWER = ("lower", "lower_and_strip_punctuation")
_STRIP = ("strip_punctuation", "lower_and_strip_punctuation")

#: Sentences every text conversion is checked on, besides the user's.
HARD_SENTENCES: tuple[str, ...] = (
    "",
    " ",
    "   \t  \n ",
    "!!!",
    "...?!,;:",
    "Don't STOP believing!",
    "MiXeD CaSe WoRdS",
    "ÉCOLE école Straße İstanbul ΣΑΣ",
    "naïve café résumé",
    "emoji 😀 and 👍🏽 here 🎉",
    "tabs\tand\nnewlines\r\nand\x0bvertical\x0cfeeds",
    "non-breaking\u00a0space and ideographic\u3000space",
    "zzqxj unknownword blorfish",
    "the " * 40 + "end",
    "a" * 300,
    "word,punctuation.inside-words(and)brackets[ok]",
    "中文 日本語 한국어 العربية",
)


@dataclass(frozen=True)
class TextFront:
    """A model's TextVectorization layer and the network behind it.

    ``input_index`` is the model input the layer reads (a string tensor of
    shape ``input_shape`` without the batch: () or (1,)); ``network`` is a
    keras.Model taking the layer's int64 token ids (batch, ``sequence_length``)
    in place of that input, the other inputs as they were.
    """

    layer: Any
    input_index: int
    input_shape: tuple[int, ...]
    standardize: str | None
    split: str
    sequence_length: int
    vocabulary: tuple[str, ...]
    network: Any

    @property
    def needs_extensions(self) -> bool:
        return True  # the split always; the punctuation regex too

    def describe(self) -> str:
        return (
            f"TextVectorization '{self.layer.name}' (standardize {self.standardize}, split "
            f"{self.split}, {len(self.vocabulary)} tokens, output_sequence_length "
            f"{self.sequence_length})"
        )


def _refusal(layer: Any, reason: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"layer '{layer.name}' (TextVectorization) cannot be converted: {reason}. The "
        "converter rebuilds TextVectorization(output_mode='int') with standardize "
        "'lower_and_strip_punctuation', 'lower', 'strip_punctuation' or None, split "
        "'whitespace' or 'character' and an output_sequence_length; otherwise tokenize "
        "in the client and give the model token ids"
    )


def _check_settings(layer: Any) -> None:
    """UnsupportedModelError naming the first setting that cannot be reproduced."""
    standardize = layer._standardize
    split = layer._split
    if callable(standardize):
        raise _refusal(layer, f"its standardize is a custom callable ({_name(standardize)})")
    if standardize not in _SUPPORTED_STANDARDIZE:
        raise _refusal(layer, f"standardize={standardize!r} is unknown")
    if callable(split):
        raise _refusal(layer, f"its split is a custom callable ({_name(split)})")
    if split is None:
        raise _refusal(
            layer, "split=None makes each whole sentence one token (use a StringLookup for that)"
        )
    if split not in ("whitespace", "character"):
        raise _refusal(layer, f"split={split!r} is unknown")
    mode = layer._output_mode
    if mode != "int":
        raise _refusal(
            layer,
            f"output_mode={mode!r} (only 'int' is reproduced: 'multi_hot', 'count' and "
            "'tf_idf' are not)",
        )
    if layer._ngrams is not None:
        raise _refusal(layer, f"ngrams={layer._ngrams_arg!r} (ngrams are not reproduced)")
    if layer._ragged:
        raise _refusal(layer, "ragged=True (ONNX tensors are dense)")
    if getattr(layer._lookup_layer, "sparse", False):
        raise _refusal(layer, "sparse=True (ONNX tensors are dense)")
    if layer._output_sequence_length is None:
        raise _refusal(
            layer,
            "it has no output_sequence_length, so it pads to the longest sentence of each "
            "batch and a sentence's answer would depend on the sentences batched with it; "
            "set output_sequence_length",
        )
    if str(layer._encoding).lower().replace("-", "") != "utf8":
        raise _refusal(layer, f"encoding={layer._encoding!r} (requests are UTF-8)")
    if int(layer.vocabulary_size()) <= 2:
        raise _refusal(layer, "it has no vocabulary (adapt() it or give one)")


def _name(value: Any) -> str:
    return str(getattr(value, "__name__", None) or type(value).__name__)


def _text_layers(model: Any) -> list[Any]:
    import keras

    from onnxserve.converter.analysis import walk_layers

    return [
        layer for layer in walk_layers(model) if isinstance(layer, keras.layers.TextVectorization)
    ]


def find_text_front(model: Any) -> TextFront | None:
    """The model's TextVectorization front, None if it has none; UnsupportedModelError
    (writing nothing) for a setting or a place in the model that cannot be reproduced."""
    import keras

    layers = _text_layers(model)
    if not layers:
        return None
    if len(layers) > 1:
        names = ", ".join(f"'{layer.name}'" for layer in layers)
        raise UnsupportedModelError(
            f"the model has {len(layers)} TextVectorization layers ({names}); the converter "
            "handles one, as the first layer after a string input"
        )
    layer = layers[0]
    _check_settings(layer)
    inputs = list(model.inputs)
    if isinstance(model, keras.Sequential):
        if model.layers[0] is not layer:
            raise _refusal(layer, "it is not the first layer of the Sequential model")
        index = 0
    else:
        nodes = list(getattr(layer, "_inbound_nodes", None) or [])
        sources = [t for node in nodes for t in node.input_tensors]
        matches = [i for i, t in enumerate(inputs) if any(t is s for s in sources)]
        if len(nodes) != 1 or len(sources) != 1 or len(matches) != 1:
            raise _refusal(layer, "it does not read a model input directly (it must come first)")
        index = matches[0]
    source = inputs[index]
    if str(source.dtype) != "string":
        raise _refusal(layer, f"its input has dtype {source.dtype}, not string")
    shape = tuple(source.shape)[1:]
    if shape not in ((), (1,)):
        raise _refusal(
            layer, f"its input has shape {tuple(source.shape)}; one sentence per row needs (1,)"
        )
    length = int(layer._output_sequence_length)
    try:
        network = _network(model, layer, index, length)
    except ValueError as exc:  # e.g. the text input feeds other layers too
        raise _refusal(
            layer, f"the model after it cannot be cut from the text input ({first_line(exc)})"
        ) from exc
    vocabulary = tuple(str(token) for token in layer.get_vocabulary(include_special_tokens=True))
    return TextFront(
        layer=layer,
        input_index=index,
        input_shape=shape,
        standardize=layer._standardize,
        split=layer._split,
        sequence_length=length,
        vocabulary=vocabulary,
        network=network,
    )


def _network(model: Any, layer: Any, index: int, length: int) -> Any:
    """The model from token ids on: the same layers (and weights) after the text layer."""
    import keras

    if isinstance(model, keras.Sequential):
        ids = keras.Input(shape=(length,), dtype="int64", name="token_ids")
        x = ids
        for inner in model.layers[1:]:
            x = inner(x)
        return keras.Model(ids, x, name=f"{model.name}_network")
    ids = layer._inbound_nodes[0].output_tensors[0]
    inputs = [ids if i == index else t for i, t in enumerate(model.inputs)]
    struct = getattr(model, "_inputs_struct", None)
    if isinstance(struct, dict):
        keys = list(struct)
        return keras.Model(dict(zip(keys, inputs, strict=True)), model.outputs)
    if len(inputs) == 1 and not isinstance(struct, (list, tuple)):
        return keras.Model(inputs[0], model.outputs if len(model.outputs) > 1 else model.output)
    return keras.Model(inputs, model.outputs)


# ------------------------------------------------------------------ the ONNX subgraph


def _front_nodes(front: TextFront, text: str, ids: str, prefix: str) -> list[Any]:
    """The nodes from the string tensor ``text`` to the int64 ``ids`` (batch, L)."""
    from onnx import TensorProto, helper

    def name(part: str) -> str:
        return f"{prefix}{part}"

    def constant(part: str, value: Any, dtype: Any = None) -> Any:
        array = np.asarray(value, dtype=dtype)
        if array.dtype.kind in "OU":
            tensor = helper.make_tensor(
                name(part),
                TensorProto.STRING,
                array.shape,
                [str(v).encode("utf-8") for v in array.reshape(-1)],
            )
        else:
            tensor = helper.make_tensor(
                name(part),
                helper.np_dtype_to_tensor_dtype(array.dtype),
                array.shape,
                array.reshape(-1).tolist(),
            )
        return helper.make_node("Constant", [], [name(part)], value=tensor, name=name(part))

    def node(op: str, inputs: list[str], outputs: list[str], domain: str = "", **attrs: Any) -> Any:
        return helper.make_node(
            op, inputs, outputs, name=name(outputs[0].removeprefix(prefix)), domain=domain, **attrs
        )

    nodes = [
        constant("flat_shape", [-1], np.int64),
        node("Reshape", [text, name("flat_shape")], [name("sentences")]),
    ]
    current = name("sentences")
    if front.standardize in _LOWER:
        nodes.append(
            node(
                "StringNormalizer",
                [current],
                [name("lowered")],
                case_change_action="LOWER",
                locale="C",
            )
        )
        current = name("lowered")
    if front.standardize in _STRIP:
        nodes += [
            constant("punctuation", PUNCTUATION_PATTERN, object),
            constant("nothing", "", object),
            node(
                "StringRegexReplace",
                [current, name("punctuation"), name("nothing")],
                [name("stripped")],
                domain=CONTRIB_DOMAIN,
                global_replace=1,
            ),
        ]
        current = name("stripped")
    if front.split == "whitespace":
        pattern, keep = WHITESPACE_PATTERN, ""
    else:
        pattern, keep = CHARACTER_PATTERN, CHARACTER_PATTERN
    vocabulary = list(front.vocabulary)
    nodes += [
        constant("split_pattern", pattern, object),
        constant("keep_pattern", keep, object),
        node(
            "StringRegexSplitWithOffsets",
            [current, name("split_pattern"), name("keep_pattern")],
            [name("tokens"), name("begins"), name("ends"), name("row_splits")],
            domain=CONTRIB_DOMAIN,
        ),
        node(
            "LabelEncoder",
            [name("tokens")],
            [name("token_index")],
            domain=ML_DOMAIN,
            keys_strings=vocabulary,
            values_int64s=list(range(len(vocabulary))),
            default_int64=1,  # Keras' OOV index
        ),
        # The row of each token: a 1 where each row after the first starts, summed up.
        constant("zero", [0], np.int64),
        constant("one", [1], np.int64),
        constant("minus_one", [-1], np.int64),
        node("Shape", [name("tokens")], [name("count")]),
        node("Add", [name("count"), name("one")], [name("count_plus_one")]),
        node(
            "ConstantOfShape",
            [name("count_plus_one")],
            [name("no_marks")],
            value=helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
        ),
        node(
            "Slice",
            [name("row_splits"), name("one"), name("minus_one"), name("zero")],
            [name("row_starts")],
        ),
        node("Shape", [name("row_starts")], [name("row_starts_count")]),
        node(
            "ConstantOfShape",
            [name("row_starts_count")],
            [name("ones")],
            value=helper.make_tensor("one", TensorProto.INT64, [1], [1]),
        ),
        node(
            "ScatterElements",
            [name("no_marks"), name("row_starts"), name("ones")],
            [name("marks")],
            axis=0,
            reduction="add",
        ),
        node("CumSum", [name("marks"), name("zero_scalar")], [name("cumulative")]),
        node("Slice", [name("cumulative"), name("zero"), name("count")], [name("rows")]),
        # The position of each token in its row, kept where it is below L.
        node("Squeeze", [name("count"), name("zero")], [name("count_scalar")]),
        node(
            "Range", [name("zero_scalar"), name("count_scalar"), name("one_scalar")], [name("flat")]
        ),
        node("Gather", [name("row_splits"), name("rows")], [name("row_begin")], axis=0),
        node("Sub", [name("flat"), name("row_begin")], [name("positions")]),
        node("Less", [name("positions"), name("length")], [name("kept")]),
        node("Unsqueeze", [name("rows"), name("minus_one")], [name("rows_column")]),
        node("Unsqueeze", [name("positions"), name("minus_one")], [name("positions_column")]),
        node(
            "Concat",
            [name("rows_column"), name("positions_column")],
            [name("coordinates")],
            axis=1,
        ),
        node("Compress", [name("coordinates"), name("kept")], [name("kept_coordinates")], axis=0),
        node("Compress", [name("token_index"), name("kept")], [name("kept_index")], axis=0),
        node("Shape", [name("sentences")], [name("batch")]),
        node("Concat", [name("batch"), name("length_1d")], [name("ids_shape")], axis=0),
        node(
            "ConstantOfShape",
            [name("ids_shape")],
            [name("padding")],
            value=helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
        ),
        node("ScatterND", [name("padding"), name("kept_coordinates"), name("kept_index")], [ids]),
    ]
    nodes[:0] = [
        constant("zero_scalar", 0, np.int64),
        constant("one_scalar", 1, np.int64),
        constant("length", front.sequence_length, np.int64),
        constant("length_1d", [front.sequence_length], np.int64),
    ]
    return nodes


def _opsets(existing: Sequence[Any], opset: int) -> list[Any]:
    from onnx import helper

    versions = {entry.domain: entry.version for entry in existing}
    versions[""] = max(versions.get("", opset), opset)
    versions[ML_DOMAIN] = max(versions.get(ML_DOMAIN, ML_VERSION), ML_VERSION)
    versions[CONTRIB_DOMAIN] = CONTRIB_VERSION
    return [helper.make_opsetid(domain, version) for domain, version in sorted(versions.items())]


def _text_input(name: str, shape: tuple[int, ...]) -> Any:
    from onnx import TensorProto, helper

    return helper.make_tensor_value_info(name, TensorProto.STRING, ["batch", *shape])


def front_model(front: TextFront, text_name: str, opset: int) -> Any:
    """The subgraph alone: sentences in, token ids out (for the token check)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        _front_nodes(front, text_name, TOKEN_IDS, "text/"),
        "text_vectorization",
        [_text_input(text_name, front.input_shape)],
        [
            helper.make_tensor_value_info(
                TOKEN_IDS, TensorProto.INT64, ["batch", front.sequence_length]
            )
        ],
    )
    return helper.make_model(graph, opset_imports=_opsets([], opset), ir_version=8)


def attach_front(network: Any, front: TextFront, ids_name: str, text_name: str) -> Any:
    """The network's ONNX model with the subgraph in front: ``ids_name`` (its token id
    input) replaced by the string input ``text_name``."""
    import onnx

    if text_name in {v.name for v in network.graph.input if v.name != ids_name}:
        raise VerificationError(f"the text input name {text_name!r} is taken by another input")
    model = onnx.ModelProto()
    model.CopyFrom(network)
    graph = model.graph
    internal = f"text/{ids_name}"
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == ids_name:
                node.input[i] = internal
    for output in graph.output:
        if output.name == ids_name:  # ids passed straight through: keep them an output
            graph.node.append(onnx.helper.make_node("Identity", [internal], [ids_name]))
    position = next(i for i, v in enumerate(graph.input) if v.name == ids_name)
    inputs = list(graph.input)
    inputs[position] = _text_input(text_name, front.input_shape)
    del graph.input[:]
    graph.input.extend(inputs)
    nodes = _front_nodes(front, text_name, internal, "text/") + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    imports = _opsets(list(model.opset_import), opset)
    del model.opset_import[:]
    model.opset_import.extend(imports)
    return model
