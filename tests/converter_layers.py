"""Small real Keras models around each preprocessing layer a served model may start with.

Issue 10: ``keras.layers.Normalization`` did not convert (its adapted mean and
variance reached tf2onnx as graph inputs). Each builder here puts one
preprocessing layer (adapted on generated data, or given its constants) in
front of a tiny head; the weights stay as initialised (zero training steps):
what is checked is that the layer's constants and lookups survive
conversion. ``LAYERS`` maps a case name to (builder, input maker);
``REFUSED`` holds the layers the converter refuses by name, with a builder.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from tests.converter_models import _keras

INTEGER_KEYS = [12, 36, 42, 1138, 4000]
STRING_KEYS = ["red", "green", "blue", "violet"]
BOUNDARIES = [-1.0, 0.0, 0.5, 2.0]
CATEGORIES = 9
IMAGE = (12, 12, 3)

Inputs = dict[str, np.ndarray]


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _tabular(rng: np.random.Generator, batch: int) -> Inputs:
    return {"features": (rng.standard_normal((batch, 4)) * 3 + 5).astype("float32")}


def _image(rng: np.random.Generator, batch: int) -> Inputs:
    return {"image": rng.uniform(0, 255, (batch, *IMAGE)).astype("float32")}


def _integer_ids(rng: np.random.Generator, batch: int) -> Inputs:
    """Known keys and unknown ones (the OOV index must come out the same)."""
    values = np.asarray([*INTEGER_KEYS, 7, -5, 99999])
    return {"ids": rng.choice(values, size=(batch, 3)).astype("int64")}


def _words(rng: np.random.Generator, batch: int) -> Inputs:
    values = np.asarray([*STRING_KEYS, "mauve", ""], dtype=object)
    return {"colours": np.asarray(rng.choice(values, size=(batch, 3)), dtype=object)}


def _categories(rng: np.random.Generator, batch: int) -> Inputs:
    return {"category": rng.integers(0, CATEGORIES, size=(batch, 3)).astype("int32")}


def _measurements(rng: np.random.Generator, batch: int) -> Inputs:
    return {"measurements": rng.uniform(-2.5, 3.0, size=(batch, 3)).astype("float32")}


def _audio(rng: np.random.Generator, batch: int) -> Inputs:
    return {"audio": rng.standard_normal((batch, 256, 1)).astype("float32")}


def _dense_head(keras: Any, x: Any, name: str = "score") -> Any:
    return keras.layers.Dense(1, name=name)(keras.layers.Flatten()(x))


def _image_head(keras: Any, x: Any) -> Any:
    x = keras.layers.Conv2D(2, 3)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.layers.Dense(2, name="score")(x)


def normalization_adapted() -> Any:
    keras = _keras()
    keras.utils.set_random_seed(21)
    layer = keras.layers.Normalization()
    layer.adapt(_tabular(_rng(21), 64)["features"])
    inputs = keras.Input(shape=(4,), name="features")
    return keras.Model(inputs, _dense_head(keras, layer(inputs)), name="normalization")


def normalization_fixed() -> Any:
    keras = _keras()
    keras.utils.set_random_seed(22)
    layer = keras.layers.Normalization(mean=[5.0, 4.0, 6.0, 5.5], variance=[9.0, 4.0, 1.0, 16.0])
    inputs = keras.Input(shape=(4,), name="features")
    return keras.Model(inputs, _dense_head(keras, layer(inputs)), name="normalization_fixed")


def _image_model(name: str, *layers: Any) -> Any:
    keras = _keras()
    keras.utils.set_random_seed(23)
    inputs = keras.Input(shape=IMAGE, name="image")
    x = inputs
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, _image_head(keras, x), name=name)


def rescaling() -> Any:
    return _image_model("rescaling", _keras().layers.Rescaling(1 / 127.5, offset=-1.0))


def center_crop() -> Any:
    return _image_model("center_crop", _keras().layers.CenterCrop(8, 8))


def resizing() -> Any:
    return _image_model("resizing", _keras().layers.Resizing(7, 9))


def image_augmentation() -> Any:
    """Every augmentation layer a training model commonly carries: no-ops at inference
    (RandomCrop there crops the centre), so the served model must compute what Keras
    computes with training=False."""
    layers = _keras().layers
    return _image_model(
        "augmentation",
        layers.RandomFlip(),
        layers.RandomRotation(0.1),
        layers.RandomZoom(0.1),
        layers.RandomTranslation(0.1, 0.1),
        layers.RandomContrast(0.2),
        layers.RandomBrightness(0.2, value_range=(0, 255)),
        layers.RandomCrop(10, 10),
    )


def discretization() -> Any:
    keras = _keras()
    keras.utils.set_random_seed(24)
    inputs = keras.Input(shape=(3,), name="measurements")
    buckets = keras.layers.Discretization(bin_boundaries=BOUNDARIES)(inputs)
    x = keras.layers.CategoryEncoding(len(BOUNDARIES) + 1, output_mode="multi_hot")(buckets)
    return keras.Model(inputs, _dense_head(keras, x), name="discretization")


def discretization_adapted() -> Any:
    keras = _keras()
    keras.utils.set_random_seed(25)
    layer = keras.layers.Discretization(num_bins=5)
    layer.adapt(_measurements(_rng(25), 64)["measurements"])
    inputs = keras.Input(shape=(3,), name="measurements")
    x = keras.layers.Embedding(5, 2)(layer(inputs))
    return keras.Model(inputs, _dense_head(keras, x), name="discretization_adapted")


def category_encoding() -> Any:
    keras = _keras()
    keras.utils.set_random_seed(26)
    inputs = keras.Input(shape=(3,), dtype="int32", name="category")
    x = keras.layers.CategoryEncoding(CATEGORIES, output_mode="count")(inputs)
    return keras.Model(inputs, _dense_head(keras, x), name="category_encoding")


def integer_lookup() -> Any:
    keras = _keras()
    keras.utils.set_random_seed(27)
    lookup = keras.layers.IntegerLookup(vocabulary=INTEGER_KEYS)
    inputs = keras.Input(shape=(3,), dtype="int64", name="ids")
    x = keras.layers.Embedding(lookup.vocabulary_size(), 2)(lookup(inputs))
    return keras.Model(inputs, _dense_head(keras, x), name="integer_lookup")


def integer_lookup_multi_hot() -> Any:
    keras = _keras()
    keras.utils.set_random_seed(28)
    lookup = keras.layers.IntegerLookup(output_mode="multi_hot")
    lookup.adapt(np.asarray(INTEGER_KEYS * 2).reshape(-1, 2))
    inputs = keras.Input(shape=(3,), dtype="int64", name="ids")
    return keras.Model(inputs, _dense_head(keras, lookup(inputs)), name="integer_multi_hot")


def string_lookup() -> Any:
    keras = _keras()
    keras.utils.set_random_seed(29)
    lookup = keras.layers.StringLookup()
    lookup.adapt(np.asarray(STRING_KEYS * 2, dtype=object).reshape(-1, 2))
    inputs = keras.Input(shape=(3,), dtype="string", name="colours")
    x = keras.layers.Embedding(lookup.vocabulary_size(), 2)(lookup(inputs))
    return keras.Model(inputs, _dense_head(keras, x), name="string_lookup")


def string_lookup_count() -> Any:
    keras = _keras()
    keras.utils.set_random_seed(30)
    lookup = keras.layers.StringLookup(vocabulary=STRING_KEYS, output_mode="count")
    inputs = keras.Input(shape=(3,), dtype="string", name="colours")
    return keras.Model(inputs, _dense_head(keras, lookup(inputs)), name="string_count")


def stft_spectrogram() -> Any:
    keras = _keras()
    keras.utils.set_random_seed(31)
    inputs = keras.Input(shape=(256, 1), name="audio")
    x = keras.layers.STFTSpectrogram(frame_length=32, frame_step=16, fft_length=32)(inputs)
    return keras.Model(inputs, _dense_head(keras, x), name="stft")


LAYERS: dict[str, tuple[Callable[[], Any], Callable[[np.random.Generator, int], Inputs]]] = {
    "normalization_adapted": (normalization_adapted, _tabular),
    "normalization_fixed": (normalization_fixed, _tabular),
    "rescaling": (rescaling, _image),
    "center_crop": (center_crop, _image),
    "resizing": (resizing, _image),
    "image_augmentation": (image_augmentation, _image),
    "discretization": (discretization, _measurements),
    "discretization_adapted": (discretization_adapted, _measurements),
    "category_encoding": (category_encoding, _categories),
    "integer_lookup": (integer_lookup, _integer_ids),
    "integer_lookup_multi_hot": (integer_lookup_multi_hot, _integer_ids),
    "string_lookup": (string_lookup, _words),
    "string_lookup_count": (string_lookup_count, _words),
    "stft_spectrogram": (stft_spectrogram, _audio),
}


def make_inputs(case: str, batch: int, seed: int = 321) -> Inputs:
    """Inputs the converter never saw, in the values the case's layer distinguishes."""
    return LAYERS[case][1](_rng(seed), batch)


def _text_vectorization(keras: Any) -> Any:
    # output_mode="int" converts (tests/test_text_model.py); multi_hot is refused.
    layer = keras.layers.TextVectorization(max_tokens=20, output_mode="multi_hot")
    layer.adapt(["a good film", "a bad film"])
    inputs = keras.Input(shape=(1,), dtype="string", name="text")
    return keras.Model(inputs, keras.layers.Dense(1, name="score")(layer(inputs)))


def _hashing(keras: Any) -> Any:
    inputs = keras.Input(shape=(3,), dtype="int64", name="ids")
    x = keras.layers.Embedding(16, 2)(keras.layers.Hashing(16)(inputs))
    return keras.Model(inputs, _dense_head(keras, x))


def _hashed_crossing(keras: Any) -> Any:
    a = keras.Input(shape=(1,), dtype="int64", name="a")
    b = keras.Input(shape=(1,), dtype="int64", name="b")
    x = keras.layers.HashedCrossing(8, output_mode="one_hot")((a, b))
    return keras.Model([a, b], keras.layers.Dense(1, name="score")(x))


def _mel_spectrogram(keras: Any) -> Any:
    inputs = keras.Input(shape=(256,), name="audio")
    x = keras.layers.MelSpectrogram(
        fft_length=32, sequence_stride=16, num_mel_bins=4, sampling_rate=8000
    )(inputs)
    return keras.Model(inputs, _dense_head(keras, x))


REFUSED: dict[str, Callable[[Any], Any]] = {
    "TextVectorization": _text_vectorization,
    "Hashing": _hashing,
    "HashedCrossing": _hashed_crossing,
    "MelSpectrogram": _mel_spectrogram,
}
