"""TimeDistributed traced as one call of the wrapped layer, without a Loop where it can be.

Keras 3's ``TimeDistributed.call`` unrolls a Python loop over the time steps
when the time axis is static (one copy of the wrapped layer per step in the
graph) and otherwise calls ``backend.vectorized_map``, which TensorFlow's
``pfor`` turns into a while loop. tf2onnx converts that loop into an ONNX Loop
that onnxruntime fails on (measured with a BiLSTM tagger: "Squeeze ...
Dimension of input 0 must be 1 instead of 0" at batch 64).

A layer that computes each sample on its own gives, on ``[batch, time, ...]``
one time step at a time, what it gives on ``[batch * time, ...]`` in one call;
so while the converter traces, a TimeDistributed whose layer is such a
per-time-step layer (:func:`per_time_step`: Dense, EinsumDense, Embedding,
convolutions, pooling, normalization, activations, dropout and noise, reshaping
and padding layers, recurrent layers, and Sequential/functional models made
only of those) reshapes its input to ``[batch * time, ...]``, calls the layer
once and reshapes back. That holds in inference (``training=False``, as the
converter traces): BatchNormalization then uses its moving statistics, not the
batch's, and dropout and noise layers are the identity.

Any other wrapped layer (a custom layer, a Lambda) keeps Keras' own
implementation where the time axis is static (the unrolled steps, no Loop);
with a dynamic time axis it becomes a ``tf.map_fn`` over the time steps,
which tf2onnx converts into an ONNX Loop that runs (the pfor loop does not).
Such a layer is reported as a :class:`~onnxserve.converter.analysis.LoopCause`
so that the Loop warning names it. The Keras model used as the reference is
left as it is: the verify step compares this tracing with Keras' own
TimeDistributed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from onnxserve.converter.analysis import LoopCause, walk_layers

__all__ = ["PER_TIME_STEP_LAYERS", "per_time_step", "time_distributed_calls"]

# Keras layers (by class name, Keras' own classes only) that compute every sample on its
# own in inference, so that folding time into the batch gives the same answer.
PER_TIME_STEP_LAYERS = frozenset(
    {
        # weights applied per sample
        "Dense",
        "EinsumDense",
        "Embedding",
        "Conv1D",
        "Conv2D",
        "Conv3D",
        "Conv1DTranspose",
        "Conv2DTranspose",
        "Conv3DTranspose",
        "DepthwiseConv1D",
        "DepthwiseConv2D",
        "SeparableConv1D",
        "SeparableConv2D",
        # pooling
        "MaxPooling1D",
        "MaxPooling2D",
        "MaxPooling3D",
        "AveragePooling1D",
        "AveragePooling2D",
        "AveragePooling3D",
        "GlobalMaxPooling1D",
        "GlobalMaxPooling2D",
        "GlobalMaxPooling3D",
        "GlobalAveragePooling1D",
        "GlobalAveragePooling2D",
        "GlobalAveragePooling3D",
        "AdaptiveAveragePooling1D",
        "AdaptiveAveragePooling2D",
        "AdaptiveAveragePooling3D",
        "AdaptiveMaxPooling1D",
        "AdaptiveMaxPooling2D",
        "AdaptiveMaxPooling3D",
        # normalization (BatchNormalization with its moving statistics, in inference)
        "BatchNormalization",
        "LayerNormalization",
        "GroupNormalization",
        "UnitNormalization",
        "RMSNormalization",
        "Normalization",
        "Rescaling",
        # activations
        "Activation",
        "ReLU",
        "LeakyReLU",
        "PReLU",
        "ELU",
        "Softmax",
        # dropout and noise: the identity in inference
        "Dropout",
        "SpatialDropout1D",
        "SpatialDropout2D",
        "SpatialDropout3D",
        "GaussianDropout",
        "GaussianNoise",
        "AlphaDropout",
        "ActivityRegularization",
        # moving values within a sample
        "Identity",
        "Flatten",
        "Reshape",
        "Permute",
        "RepeatVector",
        "Cropping1D",
        "Cropping2D",
        "Cropping3D",
        "ZeroPadding1D",
        "ZeroPadding2D",
        "ZeroPadding3D",
        "UpSampling1D",
        "UpSampling2D",
        "UpSampling3D",
        # recurrent layers run each sequence on its own
        "LSTM",
        "GRU",
        "SimpleRNN",
    }
)


def per_time_step(layer: Any) -> bool:
    """Whether ``layer`` computes each sample on its own (see the module docstring)."""
    import keras

    if isinstance(layer, keras.layers.InputLayer):
        return True
    if isinstance(layer, keras.Model):
        return all(per_time_step(inner) for inner in layer.layers)
    if not type(layer).__module__.startswith("keras."):
        return False
    if isinstance(layer, keras.layers.Bidirectional):
        return per_time_step(layer.forward_layer) and per_time_step(layer.backward_layer)
    if isinstance(layer, keras.layers.TimeDistributed):
        return per_time_step(layer.layer)
    if isinstance(layer, keras.layers.RNN) and getattr(layer, "stateful", False):
        return False
    return type(layer).__name__ in PER_TIME_STEP_LAYERS


def _kwargs(inner: Any, training: Any, mask: Any) -> dict[str, Any]:
    """The keyword arguments Keras' TimeDistributed passes to the wrapped layer's call."""
    kwargs: dict[str, Any] = {}
    if getattr(inner, "_call_has_mask_arg", False) and mask is not None:
        kwargs["mask"] = mask
    if getattr(inner, "_call_has_training_arg", False):
        kwargs["training"] = training
    return kwargs


def _folded_call(tf: Any, inner: Any) -> Any:
    """TimeDistributed's call as ``[batch, time, ...] -> [batch * time, ...] -> layer -> back``."""

    def fold(value: Any) -> Any:
        flat = tf.reshape(value, tf.concat([[-1], tf.shape(value)[2:]], 0))
        flat.set_shape([None, *value.shape[2:]])
        return flat

    def call(inputs: Any, training: Any = None, mask: Any = None) -> Any:
        steps = tf.shape(inputs)[:2]
        folded_mask = None if mask is None else fold(mask)
        outputs = inner.call(fold(inputs), **_kwargs(inner, training, folded_mask))
        result = tf.reshape(outputs, tf.concat([steps, tf.shape(outputs)[1:]], 0))
        result.set_shape([inputs.shape[0], inputs.shape[1], *outputs.shape[1:]])
        return result

    return call


def _looped_call(tf: Any, layer: Any, keras_call: Any) -> Any:
    """Keras' own call on a static time axis; a ``tf.map_fn`` over time on a dynamic one."""
    inner = layer.layer

    def call(inputs: Any, training: Any = None, mask: Any = None) -> Any:
        if inputs.shape[1] is not None:
            return keras_call(inputs, training=training, mask=mask)
        swap = [1, 0, *range(2, len(inputs.shape))]
        steps = tf.transpose(inputs, swap)
        elements = steps if mask is None else (steps, tf.transpose(mask, swap))

        def step(element: Any) -> Any:
            value, step_mask = element if mask is not None else (element, None)
            return inner.call(value, **_kwargs(inner, training, step_mask))

        outputs = tf.map_fn(step, elements, fn_output_signature=_output_dtype(inner, inputs))
        return tf.transpose(outputs, [1, 0, *range(2, len(outputs.shape))])

    return call


def _output_dtype(inner: Any, inputs: Any) -> Any:
    import keras

    try:
        spec = inner.compute_output_spec(
            keras.KerasTensor((None, *inputs.shape[2:]), dtype=inputs.dtype.name)
        )
        return spec.dtype
    except Exception:  # a layer without output-spec inference: assume the input's dtype
        return inputs.dtype


@contextlib.contextmanager
def time_distributed_calls(model: Any) -> Iterator[list[LoopCause]]:
    """While tracing: every TimeDistributed in ``model`` folds time into the batch or, where
    its layer is not per time step, loops with ``tf.map_fn``; yields the LoopCauses of the
    latter (one per such layer; they become ONNX Loops only on a dynamic time axis)."""
    import keras
    import tensorflow as tf

    patched: list[Any] = []
    causes: list[LoopCause] = []
    for layer in walk_layers(model):
        if not isinstance(layer, keras.layers.TimeDistributed):
            continue
        inner = layer.layer
        if per_time_step(inner):
            object.__setattr__(layer, "call", _folded_call(tf, inner))
        else:
            keras_call = type(layer).call.__get__(layer)
            object.__setattr__(layer, "call", _looped_call(tf, layer, keras_call))
            causes.append(
                LoopCause(
                    f"TimeDistributed layer '{layer.name}' over '{inner.name}' "
                    f"({type(inner).__name__}), which the converter cannot tell to compute "
                    "each time step on its own, on a sequence of dynamic length",
                    "wrap only per-time-step Keras layers (Dense, Conv*, normalization, "
                    "activations, dropout, or a model made of them) in TimeDistributed, or "
                    "give the input a fixed length",
                    layer=layer.name,
                    recurrent=False,
                )
            )
        patched.append(layer)
    try:
        yield causes
    finally:
        for layer in patched:
            object.__delattr__(layer, "call")
