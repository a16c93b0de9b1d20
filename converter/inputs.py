"""Representative check inputs: what the ONNX model is compared with Keras on.

Random floats are fine for images and features, but an Embedding given ids
outside its vocabulary reads garbage (TensorFlow clips or errors, ONNX Gather
errors), so inputs with a known range (see :mod:`onnxserve.converter.analysis`:
the same range config.pbtxt declares) get integers within it, whatever the
input's dtype (Keras 3 Sequential text models often take float32 ids). For a
model that masks padding (mask_zero=True) the ids are zero-padded sequences of
random lengths, and for a Masking layer the tail time steps hold its
mask_value, so that the masking is what gets checked. An input feeding an
IntegerLookup gets the lookup's keys mixed with unknown values (when the
layer has OOV indices), and one feeding a Discretization values spread over
every bucket, so the check exercises the tables rather than their defaults.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from onnxserve.converter.trace import STRING

if TYPE_CHECKING:
    from onnxserve.converter.trace import InputInfo

__all__ = ["generate", "generate_batch"]

# Integer inputs that feed no Embedding get small non-negative values.
_DEFAULT_INTEGER_RANGE = 10


def generate(
    info: InputInfo,
    batch: int,
    rng: np.random.Generator,
    example_shape: tuple[int, ...] | None = None,
) -> np.ndarray:
    """One input array of ``batch`` rows with the input's dtype and example shape."""
    shape = (batch, *(example_shape if example_shape is not None else info.example_shape))
    facts = info.facts
    if info.dtype == STRING:
        return _strings(facts.lookup_keys, facts.lookup_oov, shape, rng)
    dtype = np.dtype(info.dtype)
    if info.id_range is not None:
        first, last = info.id_range
        low = first + 1 if info.padded and last > first else first
        ids = rng.integers(low, last + 1, size=shape)
        if info.padded and len(shape) >= 2 and shape[1] > 1:
            # Padded sequences: each row keeps a random number (>= 1) of leading tokens.
            lengths = rng.integers(1, shape[1] + 1, size=shape[0])
            ids[np.arange(shape[1])[None, :] >= lengths[:, None]] = 0
        return ids.astype(dtype)
    if facts.lookup_keys:
        keys = np.asarray(facts.lookup_keys, dtype=np.int64)
        if facts.lookup_oov:  # values outside the vocabulary too, which map to the OOV index
            unknown = [keys.max() + 1, keys.max() + 7, *([-3] if dtype.kind == "i" else [])]
            keys = np.concatenate([keys, unknown])
        return rng.choice(keys, size=shape).astype(dtype)
    if facts.boundaries:
        edges = np.asarray(facts.boundaries, dtype=np.float64)
        spread = max(float(edges[-1] - edges[0]), 1.0)
        values = rng.uniform(edges[0] - spread / 4, edges[-1] + spread / 4, size=shape)
        return (np.round(values) if dtype.kind in "iu" else values).astype(dtype)
    if dtype.kind == "f" and info.padded and len(shape) == 3 and shape[1] > 1:
        # Padded frame sequences: the tail time steps hold the Masking layer's mask_value.
        frames = rng.standard_normal(shape)
        lengths = rng.integers(1, shape[1] + 1, size=shape[0])
        frames[np.arange(shape[1])[None, :] >= lengths[:, None]] = info.pad_value
        return frames.astype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        return rng.integers(0, _DEFAULT_INTEGER_RANGE, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def _strings(
    keys: tuple[int | str, ...], oov: bool, shape: tuple[int, ...], rng: np.random.Generator
) -> np.ndarray:
    """String check values (an object array of str, as onnxruntime takes them): a
    StringLookup's keys, with unknown strings where the lookup has OOV indices."""
    words = [str(k) for k in keys] or [f"w{n}" for n in range(20)]
    if oov or not keys:
        words += ["never-seen-before", ""]
    return np.asarray(rng.choice(np.asarray(words, dtype=object), size=shape), dtype=object)


def generate_batch(
    inputs: list[InputInfo], batch: int, seed: int, sequence_length: int | None = None
) -> dict[str, np.ndarray]:
    """Check inputs for every model input; ``sequence_length`` overrides dynamic sequence dims."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for info in inputs:
        example = info.example_shape
        if sequence_length is not None and info.dynamic_sequence:
            example = (sequence_length, *example[1:])
        arrays[info.name] = generate(info, batch, rng, example)
    return arrays
