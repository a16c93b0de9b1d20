"""Grouped convolutions traced as one plain Conv op, not as an XLA-compiled function call.

Keras 3's TensorFlow backend runs grouped convolutions (``Conv2D(groups=N)``,
ConvNeXt's depthwise 7x7 convolutions among them) and channels-first 3-D
convolutions inside a nested ``tf.function(jit_compile=True)``, because
TensorFlow's CPU kernels cannot run them. Traced into the converter's
function, that nested function stays a ``StatefulPartitionedCall`` (XLA
functions are never inlined) that tf2onnx cannot convert: ConvNeXtTiny failed
with 18 of them. ONNX's Conv has a ``group`` attribute and tf2onnx sets it
from the kernel's shape, so while the converter traces, these convolutions
are written as the plain ``tf.nn.convolution`` that the XLA function wraps.

Only the traced graph changes: Keras' own answers (the reference the ONNX
model is checked against) still go through XLA. TensorFlow cannot run the
traced graph on a CPU for such a model, which the converter never needs: the
probe of a dynamic sequence length then fails and the length stays as built.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["plain_grouped_convolutions"]


@contextlib.contextmanager
def plain_grouped_convolutions() -> Iterator[None]:
    """While active, Keras' TensorFlow ``conv`` builds ``tf.nn.convolution`` directly."""
    import tensorflow as tf
    from keras.src.backend.tensorflow import nn

    keras_conv = nn.conv

    def conv(
        inputs: Any,
        kernel: Any,
        strides: Any = 1,
        padding: str = "valid",
        data_format: Any = None,
        dilation_rate: Any = 1,
    ) -> Any:
        channels_first = nn.backend.standardize_data_format(data_format) == "channels_first"
        channels = inputs.shape[1] if channels_first else inputs.shape[-1]
        if channels == kernel.shape[-2] and not (channels_first and len(inputs.shape) == 5):
            return keras_conv(inputs, kernel, strides, padding, data_format, dilation_rate)
        return tf.nn.convolution(
            inputs,
            kernel,
            strides,
            padding.upper(),
            data_format=nn._convert_data_format(data_format, len(inputs.shape)),
            dilations=dilation_rate,
        )

    nn.conv = conv
    try:
        yield
    finally:
        nn.conv = keras_conv
