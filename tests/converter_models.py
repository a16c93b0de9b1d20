"""Small real Keras models, one per family the converter must handle, for the tests.

Each builder makes the architecture with tiny layers, trains it for one step
on generated data (so the weights are not the initial ones), and returns the
model. Sizes are small so the whole converter suite stays within minutes on
two cores; the architectures are those of the families named in issue 4.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from onnxserve.converter.environment import import_tensorflow

VOCABULARY = 120
LENGTH = 12


def _keras() -> Any:
    tf = import_tensorflow()
    try:  # few threads: the test machines have two cores shared by everything
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # TensorFlow already initialised its thread pools
    import keras

    return keras


def _fit(model: Any, x: Any, y: Any, loss: Any) -> Any:
    model.compile(optimizer="adam", loss=loss)
    model.fit(x, y, epochs=1, batch_size=len(y) if not isinstance(y, dict) else 16, verbose=0)
    return model


def _tokens(rng: np.random.Generator, n: int = 16, dtype: str = "int32") -> np.ndarray:
    return rng.integers(1, VOCABULARY, size=(n, LENGTH)).astype(dtype)


def _binary(rng: np.random.Generator, n: int = 16) -> np.ndarray:
    return rng.integers(0, 2, size=(n, 1)).astype("float32")


def seed_lstm() -> Any:
    """The seed's sentiment model: Embedding -> LSTM(seq) -> LSTM -> Dense(1, sigmoid).

    Built the way the seed builds it: a Sequential without an Input layer,
    given its input shape by fit() on int32 token ids (Keras then records a
    float32 input whose batch dimension is the fit batch size). Only the seed's
    ``input_length=`` is left out: Keras 3 ignores it with a deprecation
    warning. Units are 16 instead of 128 to keep the tests fast.
    """
    keras = _keras()
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.layers.Embedding(VOCABULARY, 8),
            keras.layers.LSTM(16, return_sequences=True),
            keras.layers.LSTM(16),
            keras.layers.Dense(1, activation="sigmoid"),
        ],
        name="sentiment",
    )
    rng = np.random.default_rng(1)
    return _fit(model, _tokens(rng), _binary(rng), "binary_crossentropy")


def cnn() -> Any:
    """A small image classifier: Conv2D -> MaxPool -> Conv2D -> GAP -> Dense(softmax)."""
    keras = _keras()
    keras.utils.set_random_seed(2)
    inputs = keras.Input(shape=(16, 16, 3), name="image")
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="cnn")
    rng = np.random.default_rng(2)
    x_train = rng.random((16, 16, 16, 3)).astype("float32")
    y_train = keras.utils.to_categorical(rng.integers(0, 3, 16), 3)
    return _fit(model, x_train, y_train, "categorical_crossentropy")


def gru() -> Any:
    """Embedding -> GRU -> Dense(sigmoid), on int32 token ids."""
    keras = _keras()
    keras.utils.set_random_seed(3)
    inputs = keras.Input(shape=(LENGTH,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(VOCABULARY, 8)(inputs)
    x = keras.layers.GRU(8)(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="positive")(x)
    model = keras.Model(inputs, outputs, name="gru")
    rng = np.random.default_rng(3)
    return _fit(model, _tokens(rng), _binary(rng), "binary_crossentropy")


def bidirectional_lstm() -> Any:
    """Embedding -> Bidirectional(LSTM) -> Dense(sigmoid)."""
    keras = _keras()
    keras.utils.set_random_seed(4)
    inputs = keras.Input(shape=(LENGTH,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(VOCABULARY, 8)(inputs)
    x = keras.layers.Bidirectional(keras.layers.LSTM(8))(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="positive")(x)
    model = keras.Model(inputs, outputs, name="bilstm")
    rng = np.random.default_rng(4)
    return _fit(model, _tokens(rng), _binary(rng), "binary_crossentropy")


def conv1d_text() -> Any:
    """Embedding -> Conv1D -> GlobalMaxPooling1D -> Dense(sigmoid)."""
    keras = _keras()
    keras.utils.set_random_seed(5)
    inputs = keras.Input(shape=(LENGTH,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(VOCABULARY, 8)(inputs)
    x = keras.layers.Conv1D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalMaxPooling1D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="positive")(x)
    model = keras.Model(inputs, outputs, name="conv1d")
    rng = np.random.default_rng(5)
    return _fit(model, _tokens(rng), _binary(rng), "binary_crossentropy")


def attention() -> Any:
    """A self-attention block: Embedding -> MultiHeadAttention + residual -> LayerNorm."""
    keras = _keras()
    keras.utils.set_random_seed(6)
    inputs = keras.Input(shape=(LENGTH,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(VOCABULARY, 16)(inputs)
    attended = keras.layers.MultiHeadAttention(num_heads=2, key_dim=8)(x, x)
    x = keras.layers.LayerNormalization()(keras.layers.Add()([x, attended]))
    x = keras.layers.GlobalAveragePooling1D()(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="attention")
    rng = np.random.default_rng(6)
    y = keras.utils.to_categorical(rng.integers(0, 2, 16), 2)
    return _fit(model, _tokens(rng), y, "categorical_crossentropy")


def multi_io() -> Any:
    """Named inputs of two dtypes (int32 tokens, float32 features) and dict outputs of
    two dtypes (float32 score and logits, an int32 label from a threshold).

    Not keras.ops.argmax: with the TensorFlow backend it compiles to Bitcast,
    which ONNX lacks (the unsupported-op test uses exactly that).
    """
    keras = _keras()
    keras.utils.set_random_seed(7)
    tokens = keras.Input(shape=(LENGTH,), dtype="int32", name="tokens")
    features = keras.Input(shape=(4,), dtype="float32", name="features")
    x = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(VOCABULARY, 8)(tokens))
    x = keras.layers.Concatenate()([x, keras.layers.Dense(8, activation="relu")(features)])
    score = keras.layers.Dense(1, activation="sigmoid", name="score")(x)
    logits = keras.layers.Dense(3, name="logits")(x)
    trained = keras.Model(
        {"tokens": tokens, "features": features}, {"score": score, "logits": logits}
    )
    rng = np.random.default_rng(7)
    data = {"tokens": _tokens(rng), "features": rng.standard_normal((16, 4)).astype("float32")}
    targets = {"score": _binary(rng), "logits": rng.standard_normal((16, 3)).astype("float32")}
    trained.compile(optimizer="adam", loss={"score": "binary_crossentropy", "logits": "mse"})
    trained.fit(data, targets, epochs=1, batch_size=16, verbose=0)
    label = keras.ops.cast(keras.ops.greater(score, 0.5), "int32")
    return keras.Model(
        {"tokens": tokens, "features": features},
        {"score": score, "logits": logits, "label": label},
        name="multi_io",
    )


def masked_lstm() -> Any:
    """Embedding(mask_zero=True) -> LSTM -> Dense(sigmoid): becomes an ONNX Loop."""
    keras = _keras()
    keras.utils.set_random_seed(8)
    inputs = keras.Input(shape=(LENGTH,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(VOCABULARY, 8, mask_zero=True)(inputs)
    x = keras.layers.LSTM(8)(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="positive")(x)
    model = keras.Model(inputs, outputs, name="masked_lstm")
    rng = np.random.default_rng(8)
    tokens = _tokens(rng)
    tokens[:, LENGTH // 2 :] = 0  # padded sequences, as the mask is meant for
    return _fit(model, tokens, _binary(rng), "binary_crossentropy")


FAMILIES: dict[str, Callable[[], Any]] = {
    "seed_lstm": seed_lstm,
    "cnn": cnn,
    "gru": gru,
    "bidirectional_lstm": bidirectional_lstm,
    "conv1d_text": conv1d_text,
    "attention": attention,
    "multi_io": multi_io,
    "masked_lstm": masked_lstm,
}
