"""Models and helpers for the dynamic batcher's tests.

- ``pair_model``: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 with a
  variable second dimension, so every row's answer is known and requests of
  different lengths exist (they must never be merged).
- ``spin_model``: OUTPUT0 = INPUT0, after an ONNX Loop that runs max(SPIN)
  times (a few microseconds each): a request can hold a model instance busy
  for as long as a test needs, inside onnxruntime, in a server process.
- ``lookup_model``: an Embedding-like Gather over an initializer table (row r
  holds r), reached from an INT32 ``ids`` input through Cast and Identity:
  the server infers the ids' range from the graph.
- ``picky_model``: fails in onnxruntime for chosen input values that
  validation cannot know about: an index ``IDX`` into a table the graph
  computes (out of bounds: onnxruntime's INVALID_ARGUMENT) and a Reshape to
  ``max(R)`` columns (R other than 4: onnxruntime's FAIL).
- :class:`Gate`: holds a loaded model's instances busy in-process, around the
  real onnxruntime run, so queue states are reached deterministically.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxserve.server.config import parse_config_text
from onnxserve.server.model import LoadOptions, ModelVersion, load_model_version

OPSET = 17


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def pair_model(path: Path) -> Path:
    """Add and subtract two FP32 inputs of shape [batch, n] (n free)."""
    shape: list[str | int] = ["batch", "n"]
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "pair",
        [
            helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, shape),
            helper.make_tensor_value_info("INPUT1", TensorProto.FLOAT, shape),
        ],
        [
            helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, shape),
            helper.make_tensor_value_info("OUTPUT1", TensorProto.FLOAT, shape),
        ],
    )
    return _save(graph, path)


def spin_model(path: Path) -> Path:
    """OUTPUT0 = INPUT0 ([batch, 4] FP32) after max(SPIN) ([batch, 1] INT64) loop turns."""
    size = 32
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["state_in", "weight"], ["product"]),
            helper.make_node("Tanh", ["product"], ["state_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "spin_body",
        [
            helper.make_tensor_value_info("turn", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("state_in", TensorProto.FLOAT, [size, size]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [size, size]),
        ],
    )
    weight = helper.make_tensor(
        "weight", TensorProto.FLOAT, [size, size], (np.eye(size) * 0.5).ravel().tolist()
    )
    start = helper.make_tensor("start", TensorProto.FLOAT, [size, size], [1.0] * size * size)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMax", ["SPIN"], ["turns"], keepdims=0),
            helper.make_node("Loop", ["turns", "always", "start"], ["final"], body=body),
            helper.make_node("ReduceSum", ["final"], ["total"], keepdims=0),
            helper.make_node("Mul", ["total", "zero"], ["nothing"]),
            helper.make_node("Add", ["INPUT0", "nothing"], ["OUTPUT0"]),
        ],
        "spin",
        [
            helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("SPIN", TensorProto.INT64, ["batch", 1]),
        ],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 4])],
        [
            weight,
            start,
            helper.make_tensor("always", TensorProto.BOOL, [], [True]),
            helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        ],
    )
    return _save(graph, path)


def lookup_model(path: Path, rows: int = 50) -> Path:
    """OUTPUT0[b, n] = 4 * ids[b, n]: each id picks a row of 4 copies of itself."""
    table = np.repeat(np.arange(rows, dtype=np.float32)[:, None], 4, axis=1)
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["ids"], ["ids64"], to=TensorProto.INT64),
            helper.make_node("Identity", ["ids64"], ["indices"]),
            helper.make_node("Gather", ["table", "indices"], ["vectors"]),
            helper.make_node("ReduceSum", ["vectors", "last"], ["OUTPUT0"], keepdims=0),
        ],
        "lookup",
        [helper.make_tensor_value_info("ids", TensorProto.INT32, ["batch", "n"])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", "n"])],
        [
            helper.make_tensor("table", TensorProto.FLOAT, [rows, 4], table.ravel().tolist()),
            helper.make_tensor("last", TensorProto.INT64, [1], [2]),
        ],
    )
    return _save(graph, path)


def picky_model(path: Path) -> Path:
    """OUTPUT0 = X reshaped to [batch, max(R)]; OUTPUT1[b] = row IDX[b] of a computed table.

    X is [batch, 4] FP32, IDX and R are [batch, 1] INT64. With R = 4 and IDX
    within 0..9 every row is answered (OUTPUT0 = X, OUTPUT1[b, 0] = 10 * IDX[b]
    in all 4 columns); R = 5 makes the Reshape fail, IDX = 10 or more the Gather.
    """
    table = np.repeat(np.arange(10, dtype=np.float32)[:, None] * 10, 4, axis=1)
    graph = helper.make_graph(
        [
            helper.make_node("Shape", ["X"], ["shape"]),
            helper.make_node("Slice", ["shape", "zero1", "one1"], ["rows"]),
            helper.make_node("ReduceMax", ["R"], ["widest"], keepdims=0),
            helper.make_node("Unsqueeze", ["widest", "zero1"], ["width"]),
            helper.make_node("Concat", ["rows", "width"], ["target"], axis=0),
            helper.make_node("Reshape", ["X", "target"], ["OUTPUT0"]),
            helper.make_node("Add", ["table", "nothing"], ["computed"]),
            helper.make_node("Gather", ["computed", "IDX"], ["OUTPUT1"]),
        ],
        "picky",
        [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("IDX", TensorProto.INT64, ["batch", 1]),
            helper.make_tensor_value_info("R", TensorProto.INT64, ["batch", 1]),
        ],
        [
            helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("OUTPUT1", TensorProto.FLOAT, ["batch", 1, 4]),
        ],
        [
            helper.make_tensor("table", TensorProto.FLOAT, [10, 4], table.ravel().tolist()),
            helper.make_tensor("nothing", TensorProto.FLOAT, [], [0.0]),
            helper.make_tensor("zero1", TensorProto.INT64, [1], [0]),
            helper.make_tensor("one1", TensorProto.INT64, [1], [1]),
        ],
    )
    return _save(graph, path)


def picky_inputs(value: float, index: int = 1, width: int = 4) -> dict[str, np.ndarray]:
    """One row for the picky model: X filled with ``value``; good unless told otherwise."""
    return {
        "X": np.full((1, 4), value, dtype=np.float32),
        "IDX": np.array([[index]], dtype=np.int64),
        "R": np.array([[width]], dtype=np.int64),
    }


def load(path: Path, config_text: str, name: str = "model") -> ModelVersion:
    """Load a model version as the server does, on the CPU with one thread."""
    config = parse_config_text(config_text, name)
    return load_model_version(name, 1, path, config, LoadOptions("cpu", 1, False))


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class Gate:
    """Make a real model's ``execute`` wait until the test opens the gate.

    Every run is recorded (its feeds, in execution order) and announced on
    ``started``; onnxruntime itself still runs, after the gate opens. This is
    how a test holds the model's instances busy without guessing at timings.
    """

    def __init__(self, model: ModelVersion, per_run: bool = False) -> None:
        self._real = model.execute
        self.open = threading.Event()
        # per_run: run i waits for run_gates[i] instead of ``open``.
        self.per_run = per_run
        self.run_gates = [threading.Event() for _ in range(64)]
        self.started = threading.Semaphore(0)
        self.runs: list[dict[str, np.ndarray]] = []
        self.threads: list[str] = []  # the thread each run ran on
        self._lock = threading.Lock()
        model.execute = self._execute  # type: ignore[method-assign]

    def _execute(
        self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        with self._lock:
            index = len(self.runs)
            self.runs.append({name: np.array(array) for name, array in feeds.items()})
            self.threads.append(threading.current_thread().name)
        self.started.release()
        gate = self.run_gates[index] if self.per_run else self.open
        if not gate.is_set() and _in_event_loop():
            raise RuntimeError(
                "a closed gate would block the event loop: the batcher ran this batch inline"
            )
        if not gate.wait(timeout=60):
            raise TimeoutError("the test never opened the gate")
        return self._real(feeds, output_names)

    def wait_started(self, count: int = 1, timeout: float = 30.0) -> None:
        """Block until ``count`` more runs have reached the gate."""
        for _ in range(count):
            if not self.started.acquire(timeout=timeout):
                raise TimeoutError("no run reached the gate")

    @property
    def batch_sizes(self) -> list[int]:
        return [int(next(iter(run.values())).shape[0]) for run in self.runs]
