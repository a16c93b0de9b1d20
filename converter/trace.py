"""Trace step: a loaded model becomes a ``tf.function`` with an explicit input signature.

Why a tf.function and not ``tf2onnx.convert.from_keras``: from_keras breaks on
Keras 3 Sequential models (tf2onnx issue 2448), while tracing the model's call
with explicit ``tf.TensorSpec``s works for every model, lets us choose the ONNX
input names (the Keras input names) and, by returning a dict, the output names
(the Keras output names or dict keys) instead of 'Identity:0'.

The batch dimension is always dynamic. The sequence dimension (axis 1) of
token and ``(batch, time, features)`` inputs is made dynamic too when the
traced function really runs at another length ("where the model allows"); a
model that flattens the sequence into a Dense layer keeps its fixed length.

Inputs are numbers, booleans or strings (a StringLookup's input, BYTES on the
wire). What each input accepts is read from the layer graph once
(:mod:`onnxserve.converter.analysis`) and travels in :class:`InputInfo`. A
SavedModel is traced through its signature by
:mod:`onnxserve.converter.trace_saved_model`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxserve.converter.analysis import (
    InputFacts,
    LoopCause,
    input_facts,
    loop_causes,
    masking_value,
    walk_layers,
)
from onnxserve.converter.environment import import_tensorflow
from onnxserve.converter.errors import ExportError, UnsupportedModelError, first_line
from onnxserve.converter.load import LoadedModel
from onnxserve.converter.time_distributed import time_distributed_calls
from onnxserve.converter.xla_conv import plain_grouped_convolutions

__all__ = ["InputInfo", "TracedModel", "trace_model"]

Arrays = Mapping[str, np.ndarray]

# The dtype name of string inputs (TensorFlow's; numpy has none: they are object arrays).
STRING = "string"
# The sequence length used for generated inputs where the model declares none.
DEFAULT_SEQUENCE_LENGTH = 16
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.\-]")


@dataclass(frozen=True)
class InputInfo:
    """One model input as traced.

    ``shape`` is the traced shape (None = dynamic, axis 0 is the batch);
    ``example_shape`` is a concrete shape (without batch) for generated check
    inputs. ``facts`` is what the layers the input feeds accept (see
    :mod:`onnxserve.converter.analysis`): its ``valid_range`` is declared in
    config.pbtxt for integer inputs and bounds the generated check values.
    ``guessed_range`` bounds generated ids where no range is known but an
    Embedding may still read the input (a SavedModel's embedding table, an
    integer input whose path to an Embedding could not be followed): a guess
    for the check inputs only, never declared. ``padded`` is set when the
    model masks padding (Embedding mask_zero=True on token ids, a Masking layer
    on ``(batch, time, features)`` inputs), so that check inputs are padded
    sequences (ids 0, or time steps of ``pad_value``) and the masking is
    exercised.
    """

    name: str
    dtype: str
    shape: tuple[int | None, ...]
    example_shape: tuple[int, ...]
    facts: InputFacts = field(default_factory=InputFacts)
    guessed_range: tuple[int, int] | None = None
    padded: bool = False
    pad_value: float = 0.0

    @property
    def dynamic_sequence(self) -> bool:
        return len(self.shape) >= 2 and self.shape[1] is None

    @property
    def integer(self) -> bool:
        return is_integer(self.dtype)

    @property
    def declared_range(self) -> tuple[int | None, int | None] | None:
        """The range config.pbtxt declares: integer inputs only (the convention's bounds
        are integers; a float input carrying ids keeps none)."""
        return self.facts.valid_range if self.integer else None

    @property
    def id_range(self) -> tuple[int, int] | None:
        """Inclusive bounds of generated check values, if the input carries ids."""
        known = self.facts.valid_range
        if known is not None and known[0] is not None and known[1] is not None:
            return (known[0], known[1])
        return self.guessed_range


@dataclass
class TracedModel:
    """The traced function and what the later steps need to know about it.

    ``reference`` computes the original model's outputs (Keras, or the
    SavedModel's signature) for a dict of numpy inputs: the ground truth the
    ONNX model is checked against. ``loop_causes`` lists the layer settings
    that make recurrent layers unfusable in ONNX (reported if a Loop appears).
    """

    function: Any
    input_signature: list[Any]
    inputs: list[InputInfo]
    output_names: list[str]
    reference: Callable[[Arrays], dict[str, np.ndarray]]
    loop_causes: list[LoopCause] = field(default_factory=list)
    source_kind: str = "keras"
    #: The Keras model's weights (variables); none for a SavedModel.
    variables: list[Any] = field(default_factory=list)


def trace_model(loaded: LoadedModel, *, dynamic_sequence: bool = True) -> TracedModel:
    """Trace a loaded model; see the module docstring for the choices made."""
    if loaded.keras_model is not None:
        return _trace_keras(loaded.keras_model, dynamic_sequence)
    from onnxserve.converter.trace_saved_model import trace_saved_model

    return trace_saved_model(loaded.saved_model)


# ---------------------------------------------------------------- Keras models


def input_dtype(name: str, dtype: str) -> str:
    """The numpy name of an input's dtype, or STRING; UnsupportedModelError for others."""
    if dtype == STRING:
        return STRING
    try:
        kind = np.dtype(dtype).kind
    except TypeError:  # 'bfloat16', ...: no plain numpy equivalent
        kind = ""
    if kind not in "biuf":
        raise UnsupportedModelError(
            f"input {name!r} has dtype {dtype}; inputs must be numbers, booleans or strings"
        )
    return np.dtype(dtype).name


def is_integer(dtype: str) -> bool:
    return dtype != STRING and np.dtype(dtype).kind in "iu"


def clean_name(name: str, fallback: str) -> str:
    """An ONNX/protocol friendly tensor name; Keras' automatic names become ``fallback``."""
    name = name.split(":")[0]
    if not name or name.startswith("keras_tensor"):
        return fallback
    return _NAME_CHARS.sub("_", name)


def dedupe(names: Sequence[str]) -> list[str]:
    result: list[str] = []
    for name in names:
        candidate, n = name, 1
        while candidate in result:
            n += 1
            candidate = f"{name}_{n}"
        result.append(candidate)
    return result


def _guessed_ranges(
    model: Any, dtypes: Sequence[str], facts: Sequence[InputFacts]
) -> list[tuple[int, int] | None]:
    """Check-input bounds for integer inputs the analysis found nothing about.

    Without them an integer input that reaches an Embedding along a path the
    analysis cannot follow (a Lambda, arithmetic) would get ids the table
    lacks, and the check would fail inside TensorFlow. The smallest table
    keeps every generated id valid; nothing is declared from it.
    """
    import keras

    sizes = [
        int(layer.input_dim)
        for layer in walk_layers(model)
        if isinstance(layer, keras.layers.Embedding)
    ]
    return [
        (0, min(sizes) - 1) if sizes and fact == InputFacts() and is_integer(dtype) else None
        for dtype, fact in zip(dtypes, facts, strict=True)
    ]


def _trace_keras(model: Any, dynamic_sequence: bool) -> TracedModel:
    tf = import_tensorflow()

    struct = getattr(model, "_inputs_struct", None)
    if isinstance(struct, dict):
        keys = [str(k) for k in struct]
        tensors = list(struct.values())
        call_kind = "dict"
        names = [clean_name(k, f"input_{i}") for i, k in enumerate(keys)]
    else:
        tensors = list(model.inputs)
        keys = []
        call_kind = (
            "single" if len(tensors) == 1 and not isinstance(struct, (list, tuple)) else "list"
        )
        default = ["input"] if len(tensors) == 1 else [f"input_{i}" for i in range(len(tensors))]
        names = [clean_name(_input_layer_name(t), default[i]) for i, t in enumerate(tensors)]
    names = dedupe(names)

    declared: list[tuple[int | None, ...]] = []
    dtypes: list[str] = []
    for name, tensor in zip(names, tensors, strict=False):
        dtypes.append(input_dtype(name, str(tensor.dtype)))
        shape = tuple(tensor.shape)
        declared.append((None, *shape[1:]))
    facts = input_facts(model, tensors)
    guesses = _guessed_ranges(model, dtypes, facts)
    mask_value = masking_value(model)
    planned = [
        InputInfo(
            name=name,
            dtype=dtype,
            shape=shape,
            example_shape=example_shape_of(shape),
            facts=fact,
            guessed_range=guess,
            padded=fact.masked or (len(shape) == 3 and mask_value is not None),
            pad_value=mask_value or 0.0,
        )
        for name, dtype, shape, fact, guess in zip(
            names, dtypes, declared, facts, guesses, strict=True
        )
    ]

    def arguments(values: Sequence[Any]) -> Any:
        if call_kind == "dict":
            return dict(zip(keys, values, strict=False))
        if call_kind == "single":
            return values[0]
        return list(values)

    output_names: list[str] = []

    def flatten(result: Any) -> dict[str, Any]:
        if isinstance(result, dict):
            raw = [str(k) for k in result]
            values = list(result.values())
        elif isinstance(result, (list, tuple)):
            values = list(result)
            raw = _keras_output_names(model, len(values))
        else:
            values = [result]
            raw = _keras_output_names(model, 1)
        cleaned = dedupe([clean_name(n, f"output_{i}") for i, n in enumerate(raw)])
        return dict(zip(cleaned, values, strict=False))

    def build(shapes: Sequence[tuple[int | None, ...]]) -> tuple[Any, list[Any]]:
        specs = [
            tf.TensorSpec(shape, tf.as_dtype(dtype), name=name)
            for name, dtype, shape in zip(names, dtypes, shapes, strict=False)
        ]

        def call(*values: Any) -> dict[str, Any]:
            # Only the traced graph is rewritten; Keras' eager answers stay Keras'.
            with time_distributed_calls(model) as causes, plain_grouped_convolutions():
                result = flatten(model(arguments(values), training=False))
            time_distributed_causes[:] = causes
            return result

        return tf.function(call, input_signature=specs, autograph=False), specs

    time_distributed_causes: list[LoopCause] = []

    def eager(values: Sequence[Any]) -> Any:
        tensors_in = [
            tf.constant(v, dtype=tf.as_dtype(d)) for v, d in zip(values, dtypes, strict=True)
        ]
        return model(arguments(tensors_in), training=False)

    candidates = [
        i
        for i, info in enumerate(planned)
        if len(info.shape) in (2, 3)
        and info.shape[1] is not None
        and (len(info.shape) == 3 or info.id_range is not None or info.integer)
    ]
    with _generic_rnn_kernels(model):
        function, specs, shapes = _trace_with_fallback(
            build, eager, planned, candidates, dynamic_sequence
        )

    probe = function.get_concrete_function().structured_outputs
    output_names.extend(probe.keys())

    inputs = [
        dataclasses.replace(info, shape=tuple(shape))
        for info, shape in zip(planned, shapes, strict=True)
    ]

    def reference(values: Arrays) -> dict[str, np.ndarray]:
        tensors_in = [tf.constant(values[i.name], dtype=tf.as_dtype(i.dtype)) for i in inputs]
        result = flatten(model(arguments(tensors_in), training=False))
        return {k: np.asarray(v) for k, v in result.items()}

    return TracedModel(
        function=function,
        input_signature=list(specs or []),
        inputs=inputs,
        output_names=output_names,
        reference=reference,
        loop_causes=loop_causes(model) + time_distributed_causes,
        source_kind="keras",
        variables=list(model.weights),
    )


def _trace_with_fallback(
    build: Callable[[Sequence[tuple[int | None, ...]]], tuple[Any, list[Any]]],
    eager: Callable[[list[np.ndarray]], Any],
    planned: Sequence[InputInfo],
    candidates: Sequence[int],
    dynamic_sequence: bool,
) -> tuple[Any, list[Any], list[tuple[int | None, ...]]]:
    """Trace with dynamic sequence dims if the model allows them, else as declared."""
    declared = [info.shape for info in planned]
    shapes = list(declared)
    function: Any = None
    specs: Any = None
    if dynamic_sequence and candidates:
        relaxed = [
            (None, None, *shape[2:]) if i in candidates else shape
            for i, shape in enumerate(declared)
        ]
        try:
            function, specs = build(relaxed)
            function.get_concrete_function()
            _probe(function, eager, planned, relaxed)
            shapes = relaxed
        except Exception:
            function = specs = None
    if function is None:
        try:
            function, specs = build(shapes)
            function.get_concrete_function()
        except Exception as exc:
            raise ExportError(f"tracing the Keras model failed: {first_line(exc)}") from exc
    return function, list(specs or []), shapes


@contextlib.contextmanager
def _generic_rnn_kernels(model: Any) -> Iterator[None]:
    """Trace LSTM/GRU layers with Keras' generic kernels, never cuDNN's.

    Keras picks the cuDNN kernel at trace time whenever TensorFlow sees a GPU,
    and tf2onnx cannot convert CudnnRNNV3. Hiding GPUs before TensorFlow is
    imported is the main defence; this one covers an in-memory model whose
    TensorFlow already initialised a GPU. On a CPU the generic kernel is what
    Keras uses anyway, so the traced graph is the same.
    """
    changed = []
    for layer in walk_layers(model):
        if getattr(layer, "use_cudnn", False) in ("auto", True):
            changed.append((layer, layer.use_cudnn))
            layer.use_cudnn = False
    try:
        yield
    finally:
        for layer, value in changed:
            layer.use_cudnn = value


def _input_layer_name(tensor: Any) -> str:
    """The name of the InputLayer behind a model input ('tokens' for Input(name='tokens')).

    Not the tensor's own name: an in-memory model's input tensors are called
    'keras_tensor_N' while the same model loaded from a file has them named
    after their InputLayer, and the ONNX names must not depend on that.
    """
    history = getattr(tensor, "_keras_history", None)
    operation = getattr(history, "operation", None)
    return str(getattr(operation, "name", "") or getattr(tensor, "name", ""))


def _keras_output_names(model: Any, count: int) -> list[str]:
    """The Keras names of the model's outputs (the layers that produce them)."""
    names = list(getattr(model, "output_names", None) or [])
    if len(names) != count:
        names = []
        for tensor in getattr(model, "outputs", None) or []:
            history = getattr(tensor, "_keras_history", None)
            operation = getattr(history, "operation", None) or (history[0] if history else None)
            names.append(getattr(operation, "name", "") or "")
    if len(names) != count:
        names = ["output"] if count == 1 else [f"output_{i}" for i in range(count)]
    return names


def example_shape_of(declared: tuple[int | None, ...]) -> tuple[int, ...]:
    return tuple(DEFAULT_SEQUENCE_LENGTH if d is None else int(d) for d in declared[1:])


def _probe(
    function: Any,
    eager: Callable[[list[np.ndarray]], Any],
    planned: Sequence[InputInfo],
    relaxed: Sequence[tuple[int | None, ...]],
) -> None:
    """Run Keras and the relaxed function at a length the model was not built with.

    Tracing alone is not proof: TensorFlow defers some shape checks (a Dense
    after Flatten traces fine with an unknown length and fails at run time).
    And Keras itself must accept the length (a functional model built on
    ``Input(shape=(12,))`` refuses others), or the ONNX model would accept
    inputs that Keras calls invalid and that could not be checked against it.
    """
    from onnxserve.converter.inputs import generate

    values = []
    for info, shape in zip(planned, relaxed, strict=True):
        example = list(info.example_shape)
        if len(shape) >= 2 and shape[1] is None and info.shape[1] is not None:
            example[0] = int(info.shape[1]) + 3
        values.append(generate(info, 2, np.random.default_rng(1), tuple(example)))
    eager(values)
    function(*values)
