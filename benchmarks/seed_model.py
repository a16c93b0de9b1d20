"""The benchmark's own seed model: the article's token-id sentiment LSTM, built once.

The benchmark measures servers on the seed's model as the article builds it::

    Embedding(1000, 32) -> LSTM(128, return_sequences=True) -> LSTM(128)
    -> Dense(1, sigmoid)

on int32 token ids of length 50 (input ``tokens``), one sample per request. The
sentiment example in ``build/model_repository`` no longer has that shape (it
takes sentences: its TextVectorization is inside the model), so the benchmark
does not depend on it: :func:`ensure_bench_repository` builds this model once
into ``build/bench_repository`` (Keras, trained for one step on generated ids
so the weights are not the initial ones, converted with onnxserve's converter
with the example's ``max_batch_size: 64`` and ``dynamic_batching { }``) and
reuses it while its recipe is unchanged. The weights do not matter for the
figures, only the graph does: the same ops on the same shapes.

:func:`onnx_seed_lstm` writes the same graph shape straight with onnx.helper
(tiny random weights, no TensorFlow), for the tests of the benchmark.

    python -m benchmarks.seed_model [--force]    # build (or check) build/bench_repository
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BENCH_REPOSITORY = ROOT / "build" / "bench_repository"
MODEL_NAME = "seed_lstm"
INPUT_NAME = "tokens"
OUTPUT_NAME = "score"
SEQUENCE = 50
LSTM_HIDDEN = 128
VOCABULARY = 1000
EMBEDDING = 32
MAX_BATCH_SIZE = 64
MARKER = ".complete"
#: What the cached model is made from: a change here (or in this file) rebuilds it.
RECIPE = {
    "model": f"Embedding({VOCABULARY}, {EMBEDDING}) -> LSTM({LSTM_HIDDEN}, return_sequences) "
    f"-> LSTM({LSTM_HIDDEN}) -> Dense(1, sigmoid)",
    "input": f"{INPUT_NAME} int32 [batch, {SEQUENCE}]",
    "training": "one step of Adam on 32 generated sequences, seed 7",
    "max_batch_size": MAX_BATCH_SIZE,
}

Say = Callable[[str], None]


def keras_seed_lstm(
    vocabulary: int = VOCABULARY,
    embedding: int = EMBEDDING,
    units: int = LSTM_HIDDEN,
    length: int = SEQUENCE,
    seed: int = 7,
    threads: int | None = 2,
) -> object:
    """The article's classifier on token ids, trained for one step: a ``keras.Model``.

    No ``mask_zero`` (masking turns the ONNX LSTMs into a slower Loop; the
    article's model has none either).
    """
    from onnxserve.examples.common import import_keras

    keras = import_keras(threads, seed)
    model = keras.Sequential(
        [
            keras.Input(shape=(length,), dtype="int32", name=INPUT_NAME),
            keras.layers.Embedding(vocabulary, embedding),
            keras.layers.LSTM(units, return_sequences=True),
            keras.layers.LSTM(units),
            keras.layers.Dense(1, activation="sigmoid", name=OUTPUT_NAME),
        ],
        name=MODEL_NAME,
    )
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, vocabulary, size=(32, length)).astype("int32")
    labels = rng.integers(0, 2, size=(32, 1)).astype("float32")
    model.compile(optimizer="adam", loss="binary_crossentropy")
    model.fit(tokens, labels, epochs=1, batch_size=len(tokens), verbose=0)
    return model


def onnx_seed_lstm(
    path: Path, hidden: int = LSTM_HIDDEN, length: int | str = SEQUENCE, vocabulary: int = 10
) -> Path:
    """Two stacked ONNX LSTMs over embedded tokens: the seed's graph shape, tiny weights.

    Written with onnx.helper (no TensorFlow): tokens int32 [batch, length] ->
    positive float32 [batch, hidden].
    """
    import onnx
    from onnx import TensorProto, helper

    embed, rng = 4, np.random.default_rng(0)

    def weights(name: str, shape: list[int]) -> onnx.TensorProto:
        return helper.make_tensor(
            name, TensorProto.FLOAT, shape, rng.random(int(np.prod(shape))).tolist()
        )

    nodes = [
        helper.make_node("Gather", ["table", "tokens"], ["embedded"]),
        helper.make_node("Transpose", ["embedded"], ["seq"], perm=[1, 0, 2]),
        helper.make_node("LSTM", ["seq", "W1", "R1"], ["y1"], hidden_size=hidden),
        helper.make_node("Squeeze", ["y1", "axis1"], ["h1"]),
        helper.make_node("LSTM", ["h1", "W2", "R2"], ["", "last"], hidden_size=hidden),
        helper.make_node("Squeeze", ["last", "axis0"], ["positive"]),
    ]
    graph = helper.make_graph(
        nodes,
        "seed",
        [helper.make_tensor_value_info("tokens", TensorProto.INT32, ["batch", length])],
        [helper.make_tensor_value_info("positive", TensorProto.FLOAT, ["batch", hidden])],
        initializer=[
            weights("table", [vocabulary, embed]),
            weights("W1", [1, 4 * hidden, embed]),
            weights("R1", [1, 4 * hidden, hidden]),
            weights("W2", [1, 4 * hidden, hidden]),
            weights("R2", [1, 4 * hidden, hidden]),
            helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
            helper.make_tensor("axis0", TensorProto.INT64, [1], [0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_seed(repository: Path, say: Say = print) -> None:
    """Build :func:`keras_seed_lstm` and convert it into ``repository/seed_lstm/1``.

    The converter writes ``max_batch_size: 64`` and ``dynamic_batching { }``, as
    it does for the sentiment example; the sequence stays 50 long (the
    article's ``input_length``), so the config says ``dims: 50``.
    """
    from onnxserve.converter import convert

    convert(
        keras_seed_lstm(),
        repository,
        MODEL_NAME,
        version=1,
        max_batch_size=MAX_BATCH_SIZE,
        dynamic_sequence=False,
        progress=say,
    )


def recipe_fingerprint() -> str:
    """SHA-256 over :data:`RECIPE` and this file: what a cached build is compared with."""
    digest = hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()


def is_current(repository: Path) -> bool:
    """Whether ``repository`` holds a complete build of this recipe."""
    try:
        record = json.loads((repository / MARKER).read_text("utf-8"))
    except (OSError, ValueError):
        return False
    entry = repository / MODEL_NAME
    return (
        isinstance(record, dict)
        and record.get("fingerprint") == recipe_fingerprint()
        and (entry / "config.pbtxt").is_file()
        and (entry / "1" / "model.onnx").is_file()
    )


def ensure_bench_repository(
    repository: Path = BENCH_REPOSITORY,
    *,
    force: bool = False,
    write: Callable[[Path, Say], None] = write_seed,
    say: Say = print,
) -> Path:
    """``repository`` holding the seed model (built when missing or stale): its path.

    ``write`` writes the entry into a staging folder beside ``repository``,
    which is moved into place whole, with the marker written before the move,
    so an interrupted build is never taken for a complete one.
    """
    if not force and is_current(repository):
        return repository
    say(f"building the benchmark's seed model into {repository} (once; about a minute)")
    repository.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{repository.name}-", dir=repository.parent))
    try:
        write(staging, say)
        (staging / MARKER).write_text(
            json.dumps({"fingerprint": recipe_fingerprint(), "recipe": RECIPE}, indent=2) + "\n"
        )
        if repository.exists():
            shutil.rmtree(repository)
        staging.rename(repository)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    say(f"{repository / MODEL_NAME} is built")
    return repository


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=BENCH_REPOSITORY)
    parser.add_argument("--force", action="store_true", help="Build again even if current")
    args = parser.parse_args(argv)
    current = not args.force and is_current(args.repository)
    ensure_bench_repository(args.repository, force=args.force)
    if current:
        print(f"{args.repository / MODEL_NAME} is up to date (--force rebuilds it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
