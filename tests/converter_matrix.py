"""Real architectures for the converter matrix (issue 23), built small with random weights.

keras.applications models are built with ``weights=None`` (nothing is
downloaded) at 32x32 with 10 classes; keras_hub backbones with their
constructors (random weights, two tiny layers, no preset download). Beside
them the issue's small cases: exact GELU, CELU, and a BiLSTM tagger whose
TimeDistributed(Dense) used to become a failing Loop. ``MATRIX`` maps a name
to a :class:`Case`; ``cli`` cases are converted with ``onnxserve convert`` (a
subprocess on the saved .keras file), the others with the Python API.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tests.converter_models import _keras

IMAGE = (32, 32, 3)
CLASSES = 10
VOCABULARY = 100
MAX_LENGTH = 32
TAGS = 5

Inputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class Case:
    """One architecture: how to build it, what it takes, how it is converted."""

    build: Callable[[], Any]
    kind: str  # "image", "tokens" (keras_hub text backbone), "features", "tagger"
    cli: bool = False
    hub: bool = False
    segments: bool = False  # a segment_ids input (BERT)


def _application(name: str, **kwargs: Any) -> Callable[[], Any]:
    def build() -> Any:
        keras = _keras()
        keras.utils.set_random_seed(23)
        factory = getattr(keras.applications, name)
        return factory(weights=None, input_shape=IMAGE, classes=CLASSES, **kwargs)

    return build


_SMALL_TRANSFORMER = {
    "vocabulary_size": VOCABULARY,
    "num_layers": 2,
    "num_heads": 2,
    "hidden_dim": 16,
    "intermediate_dim": 32,
    "max_sequence_length": MAX_LENGTH,
}


def _hub(name: str, **kwargs: Any) -> Callable[[], Any]:
    def build() -> Any:
        keras = _keras()
        import keras_hub

        keras.utils.set_random_seed(23)
        return getattr(keras_hub.models, name)(**kwargs)

    return build


def dense_gelu() -> Any:
    keras = _keras()
    keras.utils.set_random_seed(24)
    inputs = keras.Input(shape=(8,), name="features")
    x = keras.layers.Dense(16, activation="gelu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, name="scores")(x), name="dense_gelu")


def celu() -> Any:
    keras = _keras()
    keras.utils.set_random_seed(25)
    inputs = keras.Input(shape=(8,), name="features")
    x = keras.layers.Activation("celu", name="celu")(keras.layers.Dense(8)(inputs))
    return keras.Model(inputs, x, name="celu")


def bilstm_tagger() -> Any:
    """Token ids of any length -> BiLSTM -> TimeDistributed(Dense(softmax)): a tag per token."""
    keras = _keras()
    keras.utils.set_random_seed(26)
    inputs = keras.Input(shape=(None,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(VOCABULARY, 8)(inputs)
    x = keras.layers.Bidirectional(keras.layers.LSTM(8, return_sequences=True))(x)
    tags = keras.layers.TimeDistributed(keras.layers.Dense(TAGS, activation="softmax"), name="tags")
    return keras.Model(inputs, tags(x), name="tagger")


MATRIX: dict[str, Case] = {
    "dense_gelu": Case(dense_gelu, "features", cli=True),
    "celu": Case(celu, "features", cli=True),
    "bilstm_tagger": Case(bilstm_tagger, "tagger", cli=True),
    "convnext_tiny": Case(_application("ConvNeXtTiny"), "image", cli=True),
    "mobilenet_v2": Case(_application("MobileNetV2", alpha=0.35), "image"),
    "efficientnet_b0": Case(_application("EfficientNetB0"), "image"),
    "densenet121": Case(_application("DenseNet121"), "image"),
    "distilbert": Case(_hub("DistilBertBackbone", **_SMALL_TRANSFORMER), "tokens", True, True),
    "roberta": Case(_hub("RobertaBackbone", **_SMALL_TRANSFORMER), "tokens", True, True),
    "bert": Case(_hub("BertBackbone", **_SMALL_TRANSFORMER), "tokens", hub=True, segments=True),
    "gpt2": Case(_hub("GPT2Backbone", **_SMALL_TRANSFORMER), "tokens", hub=True),
    "vit": Case(
        _hub(
            "ViTBackbone",
            image_shape=IMAGE,
            patch_size=8,
            num_layers=2,
            num_heads=2,
            hidden_dim=16,
            mlp_dim=32,
        ),
        "image",
        cli=True,
        hub=True,
    ),
}


def make_inputs(case: Case, batch: int, seed: int, length: int = 12) -> Inputs:
    """Inputs the converter never saw: images, features, token ids with a padded tail."""
    rng = np.random.default_rng(seed)
    if case.kind == "image":
        return {"": rng.uniform(0, 255, (batch, *IMAGE)).astype("float32")}
    if case.kind == "features":
        return {"features": rng.standard_normal((batch, 8)).astype("float32")}
    ids = rng.integers(1, VOCABULARY, size=(batch, length)).astype("int32")
    if case.kind == "tagger":
        return {"tokens": ids}
    mask = np.ones((batch, length), dtype="int32")
    for row, kept in enumerate(rng.integers(1, length + 1, size=batch)):
        mask[row, kept:] = 0
        ids[row, kept:] = 0
    inputs = {"token_ids": ids, "padding_mask": mask}
    if case.segments:  # BERT: the second segment starts halfway
        segments = np.zeros((batch, length), dtype="int32")
        segments[:, length // 2 :] = 1
        inputs["segment_ids"] = segments * mask
    return inputs


def keras_outputs(model: Any, inputs: Inputs) -> dict[str, np.ndarray] | np.ndarray:
    """Keras' answer: a dict for dict-output models, else the one array."""
    if list(inputs) == [""] or len(inputs) == 1:
        result = model(next(iter(inputs.values())), training=False)
    else:
        result = model(inputs, training=False)
    if isinstance(result, dict):
        return {k: np.asarray(v) for k, v in result.items()}
    return np.asarray(result)
