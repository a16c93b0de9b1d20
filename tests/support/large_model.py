"""Build a Keras model with a given size of weights, for the large-model tests and figures.

Run as a process of its own (``python -m tests.support.large_model OUT --weights-mb 2300``)
so that the test's own process never holds the weights: it writes
``OUT/large.keras``, and ``OUT/expected.npz`` with check inputs and Keras'
outputs for them (the ground truth a served answer is compared with), and
prints one JSON line: the weight bytes and this process's peak memory.

The model: token ids -> Embedding (almost all of the weights) -> average ->
Dense, the Dense trained for one step of SGD on random data. The table is
held out of that step: Keras' optimizers densify an Embedding's sparse
gradient, which for a 2.3 GB table made this builder peak at 12.7 GB
(measured). It is built as zeros (the converter's lean loading, so that its
uniform initializer does not leave 3x the table behind) and filled with
random rows a chunk at a time.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

SEQUENCE = 16
WIDTH = 256
CLASSES = 8
CHECK_BATCH = 4


def rows_for(weight_bytes: int) -> int:
    """Embedding rows that make the model's weights about ``weight_bytes``."""
    return max(2, weight_bytes // (WIDTH * 4))


def build(out: Path, weight_bytes: int) -> dict[str, int]:
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    import keras
    import tensorflow as tf

    from onnxserve.converter.lean_load import lean_loading
    from onnxserve.memory import peak_resident_bytes

    keras.utils.set_random_seed(7)
    rows = rows_for(weight_bytes)
    with lean_loading():  # variables start as zeros
        tokens = keras.Input(shape=(SEQUENCE,), dtype="int32", name="tokens")
        x = keras.layers.Embedding(rows, WIDTH, name="table")(tokens)
        x = keras.layers.GlobalAveragePooling1D()(x)
        scores = keras.layers.Dense(CLASSES, name="scores")(x)
        model = keras.Model(tokens, scores)
    table = model.get_layer("table")
    generator = np.random.default_rng(7)
    step = 1 << 16
    for start in range(0, rows, step):
        stop = min(start + step, rows)
        tf.raw_ops.ResourceStridedSliceAssign(
            ref=table.embeddings.value.handle,
            begin=[start, 0],
            end=[stop, WIDTH],
            strides=[1, 1],
            value=generator.uniform(-0.05, 0.05, (stop - start, WIDTH)).astype(np.float32),
        )
    table.trainable = False
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    train = generator.integers(0, rows, size=(32, SEQUENCE)).astype(np.int32)
    model.fit(train, generator.random((32, CLASSES)).astype(np.float32), epochs=1, verbose=0)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "large.keras")
    # Ids over the whole table, its last row included.
    check = generator.integers(0, rows, size=(CHECK_BATCH, SEQUENCE)).astype(np.int32)
    check[0, 0] = rows - 1
    expected = np.asarray(model(check, training=False))
    np.savez(out / "expected.npz", tokens=check, scores=expected)
    weights = sum(int(np.prod(v.shape)) * 4 for v in model.weights)
    return {"weight_bytes": weights, "rows": rows, "peak_bytes": peak_resident_bytes() or 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--weights-mb", type=float, required=True, help="weights in MB (1e6)")
    args = parser.parse_args()
    print(json.dumps(build(args.out, int(args.weights_mb * 1e6))))


if __name__ == "__main__":
    main()
