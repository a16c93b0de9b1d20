"""Every Keras 3 built-in activation and layer, each in a one-layer model, for the sweep test.

Issue 23: exact GELU (Erfc) and CELU (Expm1) were refused only when a user
tried them. ``ACTIVATIONS`` lists every public function of keras.activations;
``LAYERS`` builds every public class of keras.layers that can stand in a model
by itself, with small arguments; ``NOT_SWEPT`` says for each of the others why
it is not here (covered by another test, refused by name, not a layer of its
own). The sweep test fails on a Keras class or activation found in none of
them, so that a new one is looked at, and each one that does not convert must
be in ``tests.test_converter_sweep.EXPECTED_REFUSALS`` with its reason: the
next refusal is a choice.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

# Every public keras.activations function of Keras 3.15 (the sweep test checks the list).
ACTIVATIONS = (
    "celu", "elu", "exponential", "gelu", "glu", "hard_shrink", "hard_sigmoid", "hard_silu",
    "hard_swish", "hard_tanh", "leaky_relu", "linear", "log_sigmoid", "log_softmax", "mish",
    "relu", "relu6", "selu", "sigmoid", "silu", "soft_shrink", "softmax", "softplus",
    "softsign", "sparse_plus", "sparse_sigmoid", "sparsemax", "squareplus", "swish", "tanh",
    "tanh_shrink", "threshold",
)  # fmt: skip
# keras.activations members that are not activations.
NOT_ACTIVATIONS = frozenset({"deserialize", "get", "serialize"})
# Activations that need an input whose last axis they can split or normalise.
_ACTIVATION_SHAPE = (6,)

# Input shapes (without the batch) by kind.
SHAPES: dict[str, tuple[int, ...]] = {
    "vector": (8,),
    "sequence": (6, 4),
    "image": (8, 8, 3),
    "volume": (4, 4, 4, 2),
    "frames": (3, 6, 4),  # (time, steps, channels): ConvLSTM1D
    "video": (3, 6, 6, 2),  # ConvLSTM2D
    "video3d": (2, 4, 4, 4, 2),  # ConvLSTM3D
    "audio": (256, 1),
}

Builder = Callable[[Any], Any]  # keras -> keras.Model


def activation_names(keras: Any) -> list[str]:
    return sorted(
        name
        for name in dir(keras.activations)
        if not name.startswith("_")
        and name not in NOT_ACTIVATIONS
        and callable(getattr(keras.activations, name))
    )


def layer_classes(keras: Any) -> dict[type, set[str]]:
    """Public keras.layers classes, each with its public names (AvgPool2D is AveragePooling2D)."""
    names: dict[type, set[str]] = {}
    for name in sorted(dir(keras.layers)):
        value = getattr(keras.layers, name)
        if inspect.isclass(value) and issubclass(value, keras.layers.Layer):
            names.setdefault(value, set()).add(name)
    return names


def unlisted_layers(keras: Any) -> list[str]:
    """Public layer classes in neither LAYERS nor NOT_SWEPT (a new Keras layer, say)."""
    listed = set(LAYERS) | set(NOT_SWEPT)
    return sorted(min(names) for names in layer_classes(keras).values() if not names & listed)


def _model(keras: Any, kind: str, make: Callable[[Any], Any], dtype: str = "float32") -> Any:
    inputs = keras.Input(shape=SHAPES[kind], dtype=dtype, name="x")
    return keras.Model(inputs, make(inputs))


def one_layer(kind: str, factory: Callable[[Any], Any], dtype: str = "float32") -> Builder:
    """A model of one layer on an input of ``kind``."""
    return lambda keras: _model(keras, kind, lambda x: factory(keras)(x), dtype)


def two_inputs(
    factory: Callable[[Any], Any], kind: str = "vector", as_list: bool = True
) -> Builder:
    """A merging or attention layer on two inputs of one kind."""

    def build(keras: Any) -> Any:
        a = keras.Input(shape=SHAPES[kind], name="a")
        b = keras.Input(shape=SHAPES[kind], name="b")
        layer = factory(keras)
        return keras.Model([a, b], layer([a, b]) if as_list else layer(a, b))

    return build


def activation_model(name: str) -> Builder:
    """Activation(name) on a vector; an activation with required arguments (threshold)
    gets them through a partial, as a user would pass it."""

    def build(keras: Any) -> Any:
        function = getattr(keras.activations, name)
        needed = _REQUIRED_ARGUMENTS.get(name)
        activation = functools.partial(function, **needed) if needed else name
        return _model_of_shape(keras, _ACTIVATION_SHAPE, keras.layers.Activation(activation))

    return build


# Activations whose arguments have no defaults.
_REQUIRED_ARGUMENTS: dict[str, dict[str, float]] = {
    "threshold": {"threshold": 0.5, "default_value": -1.0}
}


def _model_of_shape(keras: Any, shape: tuple[int, ...], layer: Any) -> Any:
    inputs = keras.Input(shape=shape, name="x")
    return keras.Model(inputs, layer(inputs))


def _layers() -> dict[str, Builder]:
    def k(name: str, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        return lambda keras: getattr(keras.layers, name)(*args, **kwargs)

    cases: dict[str, Builder] = {
        "ActivityRegularization": one_layer("vector", k("ActivityRegularization")),
        "Add": two_inputs(k("Add")),
        "AdditiveAttention": two_inputs(k("AdditiveAttention"), "sequence"),
        "AlphaDropout": one_layer("vector", k("AlphaDropout", 0.2)),
        "Attention": two_inputs(k("Attention"), "sequence"),
        "Average": two_inputs(k("Average")),
        "BatchNormalization": one_layer("image", k("BatchNormalization")),
        "Bidirectional": one_layer(
            "sequence", lambda keras: keras.layers.Bidirectional(keras.layers.LSTM(3))
        ),
        "CategoryEncoding": one_layer("vector", k("CategoryEncoding", 10), dtype="int32"),
        "Concatenate": two_inputs(k("Concatenate")),
        "Dense": one_layer("vector", k("Dense", 3)),
        "Dot": two_inputs(k("Dot", axes=1)),
        "Dropout": one_layer("vector", k("Dropout", 0.5)),
        "ELU": one_layer("vector", k("ELU")),
        "EinsumDense": one_layer("vector", k("EinsumDense", "ab,bc->ac", output_shape=3)),
        "Embedding": one_layer("vector", k("Embedding", 10, 3), dtype="int32"),
        "Flatten": one_layer("image", k("Flatten")),
        "GRU": one_layer("sequence", k("GRU", 3)),
        "GaussianDropout": one_layer("vector", k("GaussianDropout", 0.2)),
        "GaussianNoise": one_layer("vector", k("GaussianNoise", 0.2)),
        "GroupNormalization": one_layer("image", k("GroupNormalization", groups=3)),
        "GroupQueryAttention": two_inputs(
            k("GroupQueryAttention", head_dim=2, num_query_heads=2, num_key_value_heads=1),
            "sequence",
            as_list=False,
        ),
        "Identity": one_layer("vector", k("Identity")),
        "LSTM": one_layer("sequence", k("LSTM", 3)),
        "LayerNormalization": one_layer("sequence", k("LayerNormalization")),
        "LeakyReLU": one_layer("vector", k("LeakyReLU")),
        "Masking": one_layer("sequence", k("Masking")),
        "Maximum": two_inputs(k("Maximum")),
        "Minimum": two_inputs(k("Minimum")),
        "MultiHeadAttention": two_inputs(
            k("MultiHeadAttention", num_heads=2, key_dim=2), "sequence", as_list=False
        ),
        "Multiply": two_inputs(k("Multiply")),
        "Normalization": one_layer("vector", k("Normalization", mean=1.0, variance=4.0)),
        "PReLU": one_layer("vector", k("PReLU")),
        "Permute": one_layer("sequence", k("Permute", (2, 1))),
        "RMSNormalization": one_layer("sequence", k("RMSNormalization")),
        "RNN": one_layer("sequence", lambda keras: keras.layers.RNN(keras.layers.SimpleRNNCell(3))),
        "ReLU": one_layer("vector", k("ReLU", max_value=1.0)),
        "RepeatVector": one_layer("vector", k("RepeatVector", 3)),
        "Reshape": one_layer("vector", k("Reshape", (4, 2))),
        "ReversibleEmbedding": one_layer("vector", k("ReversibleEmbedding", 10, 3), dtype="int32"),
        "STFTSpectrogram": one_layer(
            "audio", k("STFTSpectrogram", frame_length=32, frame_step=16, fft_length=32)
        ),
        "SimpleRNN": one_layer("sequence", k("SimpleRNN", 3)),
        "Softmax": one_layer("vector", k("Softmax")),
        "SpectralNormalization": one_layer(
            "vector", lambda keras: keras.layers.SpectralNormalization(keras.layers.Dense(3))
        ),
        "StackedRNNCells": one_layer(
            "sequence",
            lambda keras: keras.layers.RNN(
                keras.layers.StackedRNNCells([keras.layers.LSTMCell(3), keras.layers.GRUCell(3)])
            ),
        ),
        "Subtract": two_inputs(k("Subtract")),
        "TimeDistributed": one_layer(
            "sequence", lambda keras: keras.layers.TimeDistributed(keras.layers.Dense(3))
        ),
        "UnitNormalization": one_layer("vector", k("UnitNormalization")),
        "ConvLSTM1D": one_layer("frames", k("ConvLSTM1D", 2, 3)),
        "ConvLSTM2D": one_layer("video", k("ConvLSTM2D", 2, 3)),
        "ConvLSTM3D": one_layer("video3d", k("ConvLSTM3D", 2, 3)),
        "Discretization": one_layer("vector", k("Discretization", bin_boundaries=[0.0, 1.0])),
        "Rescaling": one_layer("image", k("Rescaling", 1 / 255.0, offset=-1.0)),
        "Resizing": one_layer("image", k("Resizing", 4, 6)),
        "CenterCrop": one_layer("image", k("CenterCrop", 4, 4)),
        "AutoContrast": one_layer("image", k("AutoContrast", value_range=(0, 255))),
        "Solarization": one_layer("image", k("Solarization", addition_factor=0.2)),
        "ContrastLimitedAdaptiveHistogramEqualization": one_layer(
            "image",
            k(
                "ContrastLimitedAdaptiveHistogramEqualization",
                value_range=(0, 255),
                tile_grid_size=(2, 2),
            ),
        ),
    }
    for rank, kind in ((1, "sequence"), (2, "image"), (3, "volume")):
        d = f"{rank}D"
        cases[f"Conv{d}"] = one_layer(kind, k(f"Conv{d}", 2, 3))
        cases[f"Conv{d}Transpose"] = one_layer(kind, k(f"Conv{d}Transpose", 2, 3))
        cases[f"Cropping{d}"] = one_layer(kind, k(f"Cropping{d}", 1))
        cases[f"ZeroPadding{d}"] = one_layer(kind, k(f"ZeroPadding{d}", 1))
        cases[f"UpSampling{d}"] = one_layer(kind, k(f"UpSampling{d}", 2))
        cases[f"SpatialDropout{d}"] = one_layer(kind, k(f"SpatialDropout{d}", 0.5))
        for pool in ("MaxPooling", "AveragePooling"):
            cases[f"{pool}{d}"] = one_layer(kind, k(f"{pool}{d}", 2))
            cases[f"Global{pool}{d}"] = one_layer(kind, k(f"Global{pool}{d}"))
        for pool in ("AdaptiveAveragePooling", "AdaptiveMaxPooling"):
            cases[f"{pool}{d}"] = one_layer(kind, k(f"{pool}{d}", 2))
        if rank < 3:
            cases[f"DepthwiseConv{d}"] = one_layer(kind, k(f"DepthwiseConv{d}", 3))
            cases[f"SeparableConv{d}"] = one_layer(kind, k(f"SeparableConv{d}", 2, 3))
    # Grouped convolutions (ConvNeXt's depthwise 7x7s are Conv2D(groups=channels)).
    cases["Conv2D_grouped"] = lambda keras: _model_of_shape(
        keras, (8, 8, 4), keras.layers.Conv2D(4, 3, groups=2)
    )
    # Random augmentation layers: in inference (what is served) most are the identity.
    for name, args in {
        "RandomBrightness": (0.2,),
        "RandomColorDegeneration": (0.2,),
        "RandomColorJitter": (),
        "RandomContrast": (0.2,),
        "RandomCrop": (4, 4),
        "RandomElasticTransform": (),
        "RandomErasing": (),
        "RandomFlip": (),
        "RandomGaussianBlur": (),
        "RandomGrayscale": (),
        "RandomHue": (0.2,),
        "RandomInvert": (),
        "RandomPerspective": (),
        "RandomPosterization": (4,),
        "RandomRotation": (0.2,),
        "RandomSaturation": (0.2,),
        "RandomSharpness": (0.2,),
        "RandomShear": (0.2,),
        "RandomTranslation": (0.2, 0.2),
        "RandomZoom": (0.2,),
        "AugMix": (),
        "CutMix": (),
        "MixUp": (),
        "RandAugment": (),
    }.items():
        cases[name] = one_layer("image", k(name, *args))
    return cases


LAYERS: dict[str, Builder] = _layers()

# Public keras.layers classes not swept one by one, and why.
NOT_SWEPT: dict[str, str] = {
    "InputLayer": "every model has one",
    "Activation": "swept once per activation (ACTIVATIONS)",
    "Layer": "the base class",
    "Wrapper": "the base class of Bidirectional and TimeDistributed (both swept)",
    "Lambda": "tests/test_converter_layers.py converts a Lambda layer",
    "IntegerLookup": "tests/converter_layers.py: integer_lookup, integer_lookup_multi_hot",
    "StringLookup": "tests/converter_layers.py: string_lookup, string_lookup_count",
    "TextVectorization": "refused by name (tests/test_converter_layers.py)",
    "Hashing": "refused by name (tests/test_converter_layers.py)",
    "HashedCrossing": "refused by name (tests/test_converter_layers.py)",
    "MelSpectrogram": "refused by name (tests/test_converter_layers.py)",
    "GRUCell": "a cell: runs inside RNN (StackedRNNCells is swept with one)",
    "LSTMCell": "a cell: runs inside RNN (StackedRNNCells is swept with one)",
    "SimpleRNNCell": "a cell: runs inside RNN (swept)",
    "FlaxLayer": "wraps JAX code: JAX backend only",
    "JaxLayer": "wraps JAX code: JAX backend only",
    "TorchModuleWrapper": "wraps PyTorch code: PyTorch backend only",
    "TFSMLayer": "wraps a SavedModel: the converter takes SavedModels directly",
    "Pipeline": "a sequence of preprocessing layers, each swept",
    "MaxNumBoundingBoxes": "reshapes bounding-box dicts of the training input pipeline",
    "Equalization": (
        "Keras 3.15 cannot build a model around it: its output 'is part of a cycle' "
        "(keras.src.ops.function), before conversion is reached"
    ),
}


def make_inputs(model: Any, batch: int, seed: int = 5) -> list[np.ndarray]:
    """Inputs for each model input: ids 0..9 for integer inputs, images in 0..255."""
    rng = np.random.default_rng(seed)
    arrays = []
    for tensor in model.inputs:
        shape = (batch, *tensor.shape[1:])
        if "int" in str(tensor.dtype):
            arrays.append(rng.integers(0, 10, size=shape).astype(str(tensor.dtype)))
        elif len(shape) == 4 and shape[-1] == 3:
            arrays.append(rng.uniform(0, 255, size=shape).astype("float32"))
        else:
            arrays.append(rng.standard_normal(shape).astype("float32"))
    return arrays
