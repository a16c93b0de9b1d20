"""IO binding's mechanics on the CPU: parity with plain run, buffer reuse, graphs' bookkeeping.

onnxruntime binds CPU OrtValues the same way it binds CUDA ones, so the
runner the server uses on CUDA is exercised here with ``device="cpu"``; the
GPU tests (tests/test_gpu.py) repeat parity and replay on CUDA.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from onnxserve.server.binding import BoundRunner, shape_key
from tests.support.gpu_models import BUILDERS, sample_inputs


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("binding_models")
    return {name: build(folder / f"{name}.onnx") for name, build in BUILDERS.items()}


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("model", ["dense", "lstm", "conv"])
def test_bound_runs_match_plain_runs(model_files: dict[str, Path], model: str) -> None:
    session = _session(model_files[model])
    runner = BoundRunner(session, "cpu")
    names = [o.name for o in session.get_outputs()]
    for batch in (1, 5, 8):
        feeds = sample_inputs(model, batch, seed=batch)
        bound = runner.run(feeds, names)
        plain = session.run(names, feeds)
        for got, want in zip(bound, plain, strict=True):
            np.testing.assert_array_equal(got, want)


def test_requested_outputs_come_back_in_the_order_asked(model_files: dict[str, Path]) -> None:
    session = _session(model_files["dense"])
    runner = BoundRunner(session, "cpu")
    feeds = sample_inputs("dense", 3)
    total, y = runner.run(feeds, ["total", "y"])
    (only_total,) = runner.run(feeds, ["total"])
    assert y.shape == (3, 32) and total.shape == (3, 1)
    np.testing.assert_allclose(total[:, 0], y.sum(axis=1), rtol=1e-5)
    np.testing.assert_array_equal(only_total, total)


def test_input_buffers_are_reused_per_shape(model_files: dict[str, Path]) -> None:
    runner = BoundRunner(_session(model_files["dense"]), "cpu")
    first = runner.run(sample_inputs("dense", 8, seed=1), ["y"])[0]
    kept = first.copy()
    second = runner.run(sample_inputs("dense", 8, seed=2), ["y"])[0]
    assert runner.buffer_sets_created == 1  # the same padded size reuses its buffers
    # Results are new host arrays: a later batch in the same buffers leaves them alone.
    np.testing.assert_array_equal(first, kept)
    assert not np.array_equal(first, second)
    runner.run(sample_inputs("dense", 4), ["y"])
    assert runner.buffer_sets_created == 2  # another size, its own buffers
    runner.run(sample_inputs("dense", 8, seed=3), ["y"])
    runner.run(sample_inputs("dense", 4, seed=3), ["y"])
    assert runner.buffer_sets_created == 2


def test_kept_shape_sets_are_bounded(model_files: dict[str, Path]) -> None:
    runner = BoundRunner(_session(model_files["dense"]), "cpu", max_shape_sets=2)
    for batch in (1, 2, 3):
        runner.run(sample_inputs("dense", batch), ["y"])
    assert runner.buffer_sets_created == 3
    runner.run(sample_inputs("dense", 3), ["y"])  # most recent: still kept
    assert runner.buffer_sets_created == 3
    runner.run(sample_inputs("dense", 1), ["y"])  # least recently used: was dropped
    assert runner.buffer_sets_created == 4


def test_concurrent_runs_never_share_buffers(model_files: dict[str, Path]) -> None:
    """Several instance threads on one session: each run gets a buffer set of its own."""
    session = _session(model_files["lstm"])
    runner = BoundRunner(session, "cpu")
    errors: list[str] = []

    def work(seed: int) -> None:
        for step in range(5):
            feeds = sample_inputs("lstm", 4, seed=seed * 100 + step)
            (got,) = runner.run(feeds, ["score"])
            (want,) = session.run(["score"], feeds)
            if not np.array_equal(got, want):
                errors.append(f"thread {seed} step {step}")

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert 1 <= runner.buffer_sets_created <= 4


def test_graph_sets_keep_their_addresses_and_read_new_inputs(model_files: dict[str, Path]) -> None:
    """The bookkeeping of CUDA graphs (fixed buffers per padded size, graph ids), run on the CPU."""
    session = _session(model_files["dense"])
    runner = BoundRunner(session, "cpu", graphs=True)
    for size in (1, 4):
        runner.capture(size, {"x": np.zeros((size, 16), np.float32)})
    assert runner.graph_sizes == (1, 4)
    buffers = runner.graph_buffers(4)
    pointers = buffers.input_pointers
    outputs = {name: value.data_ptr() for name, value in (buffers.fixed_outputs or {}).items()}
    assert set(outputs) == {"y", "total"}  # every output bound, "k" found by running
    created = runner.buffer_sets_created
    for seed in range(3):
        feeds = sample_inputs("dense", 4, seed=seed)
        total, y = runner.run(feeds, ["total", "y"])
        want_y, want_total = session.run(["y", "total"], feeds)
        np.testing.assert_array_equal(y, want_y)
        np.testing.assert_array_equal(total, want_total)
    assert runner.graph_buffers(4).input_pointers == pointers
    assert {n: v.data_ptr() for n, v in buffers.fixed_outputs.items()} == outputs  # type: ignore[union-attr]
    assert runner.buffer_sets_created == created  # replays take no new buffers
    # A size without a graph runs through the pool, outside any graph.
    feeds = sample_inputs("dense", 3)
    np.testing.assert_array_equal(runner.run(feeds, ["y"])[0], session.run(["y"], feeds)[0])
    assert runner.buffer_sets_created == created + 1


def test_graph_ids_start_at_one(model_files: dict[str, Path]) -> None:
    runner = BoundRunner(_session(model_files["dense"]), "cpu", graphs=True)
    with pytest.raises(ValueError, match="graph ids start at 1"):
        runner.capture(0, {"x": np.zeros((0, 16), np.float32)})


def test_shape_key_tells_shapes_and_dtypes_apart() -> None:
    a = {"x": np.zeros((2, 3), np.float32)}
    assert shape_key(a) == shape_key({"x": np.ones((2, 3), np.float32)})
    assert shape_key(a) != shape_key({"x": np.zeros((2, 4), np.float32)})
    assert shape_key(a) != shape_key({"x": np.zeros((2, 3), np.float64)})
