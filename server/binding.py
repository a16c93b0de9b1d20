"""IO binding: one copy to the device per batch, one copy back, buffers reused; CUDA graphs.

``InferenceSession.run`` with host arrays allocates device memory for every
input of every run and copies each output back through a fresh host array.
On CUDA the runtime instead keeps device input buffers per set of input
shapes (so per padded batch size once the batcher pads to
``allowed_batch_sizes``), copies each merged host batch into them once, lets
onnxruntime write the outputs into device memory from its arena, and copies
each output back once. The batcher keeps handing host arrays in and getting
host arrays out.

With CUDA graphs (``enable_cuda_graph``), one graph is captured per padded
batch size at load: its inputs and outputs are device buffers whose
addresses never change (a graph replays the addresses it captured), the run
option ``gpu_graph_id`` names the graph (the padded batch size itself; 0 is
onnxruntime's own), and every other run says ``-1`` so that onnxruntime
neither captures nor replays it. onnxruntime may not replay graphs from two
threads at once, so graph runs are serialised.

The same code runs with ``device="cpu"`` (onnxruntime binds CPU OrtValues the
same way); the tests use that for the mechanics, and the GPU tests check
parity and replay on CUDA. The server binds only on CUDA: on the CPU it keeps
plain ``run``, which copies nothing.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxserve.server.accelerators import GRAPH_ID_RUN_OPTION

# Sets of input shapes whose device buffers are kept (least recently used
# dropped first): variable-length inputs must not pin device memory forever.
MAX_SHAPE_SETS = 16
NO_GRAPH = "-1"

ShapeKey = tuple[tuple[str, tuple[int, ...], str], ...]


def shape_key(feeds: Mapping[str, np.ndarray]) -> ShapeKey:
    """What decides whether two batches can share input buffers: names, shapes, dtypes."""
    return tuple(sorted((name, array.shape, array.dtype.str) for name, array in feeds.items()))


@dataclass
class BufferSet:
    """Device input buffers of one shape set, bound to one IOBinding (used by one run at a time)."""

    key: ShapeKey
    binding: Any  # onnxruntime.IOBinding
    inputs: dict[str, Any]  # name -> OrtValue on the device
    outputs: tuple[str, ...]  # bound output names, in binding order
    fixed_outputs: dict[str, Any] | None = None  # graph sets: name -> OrtValue

    @property
    def input_pointers(self) -> dict[str, int]:
        return {name: value.data_ptr() for name, value in self.inputs.items()}


def quiet_run_options(graph_id: str | None = None) -> Any:
    """Run options without onnxruntime's own per-run error log (failures are logged once,
    by the batch executor), naming the CUDA graph to replay when ``graph_id`` is given."""
    import onnxruntime as ort

    options = ort.RunOptions()
    options.log_severity_level = 4
    if graph_id is not None:
        options.add_run_config_entry(GRAPH_ID_RUN_OPTION, graph_id)
    return options


class BoundRunner:
    """Runs one onnxruntime session through IO binding on one device."""

    def __init__(
        self,
        session: Any,
        device: str = "cuda",
        device_id: int = 0,
        *,
        graphs: bool = False,
        max_shape_sets: int = MAX_SHAPE_SETS,
    ) -> None:
        import onnxruntime as ort

        self._ort = ort
        self._session = session
        self.device = device
        self.device_id = device_id
        self._max_shape_sets = max_shape_sets
        self._free: OrderedDict[tuple[ShapeKey, tuple[str, ...]], list[BufferSet]] = OrderedDict()
        self._pool_lock = threading.Lock()
        self.buffer_sets_created = 0
        # gpu_graph_id -1 on every run that is not a graph's: with graphs on,
        # a run without an id would be captured as graph 0 on host addresses.
        self._plain_options = quiet_run_options(NO_GRAPH if graphs else None)
        self._graphs: dict[int, tuple[BufferSet, Any]] = {}
        self._graph_lock = threading.Lock()
        self._all_outputs = tuple(node.name for node in session.get_outputs())

    @property
    def graph_sizes(self) -> tuple[int, ...]:
        return tuple(sorted(self._graphs))

    def graph_buffers(self, batch_size: int) -> BufferSet:
        return self._graphs[batch_size][0]

    def run(self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str]) -> list[np.ndarray]:
        """Copy the inputs in, run, copy the requested outputs out (new host arrays)."""
        first = next(iter(feeds.values()), None)
        if self._graphs and first is not None and first.ndim:
            graph = self._graphs.get(int(first.shape[0]))
            if graph is not None and graph[0].key == shape_key(feeds):
                return self._replay(graph, feeds, output_names)
        outputs = tuple(output_names)
        buffers = self._acquire(feeds, outputs)
        try:
            return self._run(buffers, feeds, self._plain_options)
        finally:
            self._release(buffers)

    def capture(self, batch_size: int, feeds: Mapping[str, np.ndarray]) -> None:
        """Capture the graph of one padded batch size from a sample batch (zeros will do).

        A first run without a graph finds the outputs' shapes; fixed device
        buffers are then bound for every output, and the run with the graph id
        lets onnxruntime run the graph's warm-up runs, capture it and replay it.
        """
        if batch_size < 1:
            raise ValueError("graph ids start at 1 (0 is onnxruntime's own)")
        ort = self._ort
        probe = self._acquire(feeds, self._all_outputs)
        try:
            shapes = [(value.shape(), value.numpy().dtype) for value in self._run_raw(probe, feeds)]
        finally:
            self._release(probe)
        buffers = self._new_buffers(feeds, self._all_outputs, bind_outputs=False)
        fixed = {}
        for name, (shape, dtype) in zip(self._all_outputs, shapes, strict=True):
            value = ort.OrtValue.ortvalue_from_shape_and_type(
                shape, dtype, self.device, self.device_id
            )
            buffers.binding.bind_ortvalue_output(name, value)
            fixed[name] = value
        buffers.fixed_outputs = fixed
        options = quiet_run_options(str(batch_size))
        with self._graph_lock:
            self._run(buffers, feeds, options)
            self._graphs[batch_size] = (buffers, options)

    def _replay(
        self,
        graph: tuple[BufferSet, Any],
        feeds: Mapping[str, np.ndarray],
        output_names: Sequence[str],
    ) -> list[np.ndarray]:
        buffers, options = graph
        with self._graph_lock:
            results = dict(zip(buffers.outputs, self._run(buffers, feeds, options), strict=True))
        return [results[name] for name in output_names]

    def _run(
        self, buffers: BufferSet, feeds: Mapping[str, np.ndarray], options: Any
    ) -> list[np.ndarray]:
        self._copy_in(buffers, feeds)
        self._session.run_with_iobinding(buffers.binding, options)
        # One device-to-host copy per output, into new host arrays that the
        # batcher may slice and hand out while the next batch runs.
        return list(buffers.binding.copy_outputs_to_cpu())

    def _run_raw(self, buffers: BufferSet, feeds: Mapping[str, np.ndarray]) -> list[Any]:
        self._copy_in(buffers, feeds)
        self._session.run_with_iobinding(buffers.binding, self._plain_options)
        return list(buffers.binding.get_outputs())

    @staticmethod
    def _copy_in(buffers: BufferSet, feeds: Mapping[str, np.ndarray]) -> None:
        for name, value in buffers.inputs.items():
            value.update_inplace(np.ascontiguousarray(feeds[name]))

    def _acquire(self, feeds: Mapping[str, np.ndarray], outputs: tuple[str, ...]) -> BufferSet:
        pool_key = (shape_key(feeds), outputs)
        with self._pool_lock:
            free = self._free.get(pool_key)
            if free:
                self._free.move_to_end(pool_key)
                return free.pop()
        return self._new_buffers(feeds, outputs, bind_outputs=True)

    def _release(self, buffers: BufferSet) -> None:
        pool_key = (buffers.key, buffers.outputs)
        with self._pool_lock:
            self._free.setdefault(pool_key, []).append(buffers)
            self._free.move_to_end(pool_key)
            while len(self._free) > self._max_shape_sets:
                self._free.popitem(last=False)  # its device memory goes with its OrtValues

    def _new_buffers(
        self, feeds: Mapping[str, np.ndarray], outputs: tuple[str, ...], *, bind_outputs: bool
    ) -> BufferSet:
        ort = self._ort
        binding = self._session.io_binding()
        inputs = {}
        for name, array in feeds.items():
            value = ort.OrtValue.ortvalue_from_shape_and_type(
                array.shape, array.dtype, self.device, self.device_id
            )
            binding.bind_ortvalue_input(name, value)
            inputs[name] = value
        if bind_outputs:
            # onnxruntime allocates outputs on the device from its arena: no
            # guess at output shapes, and no allocation from the driver per run.
            for name in outputs:
                binding.bind_output(name, self.device, self.device_id)
        self.buffer_sets_created += 1
        return BufferSet(shape_key(feeds), binding, inputs, outputs)
