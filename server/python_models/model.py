"""A loaded Python model version: its config, its instance processes, its batch executor.

A Python model is ``<model>/<version>/model.py`` with ``backend: "python"`` in
config.pbtxt, written against Triton's Python backend API (:mod:`.pb_utils`).
Its inputs and outputs come from config.pbtxt (there is no graph to complete
them from). Each instance of its ``instance_group`` is a process of its own
(:mod:`.process`), so a crash, a leak or the GIL of one model cannot take the
server or the other models down.

The model's requests reach it through the same schedulers as an ONNX model's:
with ``dynamic_batching`` its ``execute`` gets the requests of a batch, as in
Triton (each request keeps its own tensors: nothing is concatenated), without
it one request at a time. :class:`PythonBatchExecutor` takes the place of the
ONNX executor: it sends the batch to a free instance process, answers the BLS
calls the model makes meanwhile (:mod:`onnxserve.server.caller`), and turns
each response into that request's outputs or error:

- a response with ``TritonError(message, code)``: that request fails with the
  message and the status of the code (INVALID_ARG is INVALID_ARGUMENT, ...);
- ``execute`` raising: every request of the batch fails, INTERNAL, with the
  exception's type and message (the traceback goes to the server log);
- the process dying (a segfault, ``os._exit``, the OOM killer): the batch
  fails, INTERNAL, saying how the process ended, and a new process is started
  and initialized. After :data:`MAX_CRASHES` crashes within
  :data:`CRASH_WINDOW_S` the version is given up: it is reported UNAVAILABLE
  with the reason (RepositoryIndex, ModelReady) and its requests get
  UNAVAILABLE, until it is loaded again.

Statistics time a batch's phases as Triton's do: compute_infer is the time
``execute`` took in the model's process, compute_input and compute_output the
rest of the round trip (pickling, the socket, reading the answer back, checking
it): the IPC cost per batch.
"""

from __future__ import annotations

import collections
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format
from google.protobuf.descriptor import FieldDescriptor

from onnxserve.protocol import codec
from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.protocol import model_config_pb2 as mc
from onnxserve.server.batching.executor import BatchExecutor, ExecutedBatch, Outcome
from onnxserve.server.config import check_declared_tensors, complete_defaults, parse_config_text
from onnxserve.server.errors import ConfigError, ModelExecutionError, ModelUnavailable, ServerError
from onnxserve.server.inference import DecodedRequest
from onnxserve.server.model import metadata_of, signature_of
from onnxserve.server.python_models.ipc import pack, unpack
from onnxserve.server.python_models.process import BlsHandler, StubCrashed, StubProcess
from onnxserve.server.statistics import ExecutionTiming, VersionStatistics
from onnxserve.server.triton_errors import error_for_code

log = logging.getLogger(__name__)

BACKEND = "python"
MODEL_FILENAME = "model.py"
MAX_CRASHES = 3
CRASH_WINDOW_S = 60.0


def model_config_json(config: mc.ModelConfig) -> str:
    """``args["model_config"]``: the completed config as JSON, Triton's field names.

    Every field is present (defaults included) and 64-bit integers are numbers,
    as in the JSON Triton hands its Python models.
    """
    data = json_format.MessageToDict(
        config, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    _int64_as_numbers(config.DESCRIPTOR, data)
    return json.dumps(data)


_INT64 = (
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
)


def _int64_as_numbers(descriptor: Any, data: Any) -> None:
    if not isinstance(data, dict):
        return
    for field in descriptor.fields:
        if field.name not in data:
            continue
        value = data[field.name]
        if field.type in _INT64:
            data[field.name] = [int(v) for v in value] if isinstance(value, list) else int(value)
        elif field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                value_field = field.message_type.fields_by_name["value"]
                if value_field.message_type is not None:
                    for item in value.values():
                        _int64_as_numbers(value_field.message_type, item)
            elif isinstance(value, list):
                for item in value:
                    _int64_as_numbers(field.message_type, item)
            else:
                _int64_as_numbers(field.message_type, value)


def complete_python_config(declared: mc.ModelConfig, name: str) -> mc.ModelConfig:
    """The completed config of a Python model; raises ConfigError when it lacks tensors."""
    done = mc.ModelConfig()
    done.CopyFrom(declared)
    done.name = name
    done.backend = BACKEND
    check_declared_tensors(
        done, name, "backend python; or declare them in TritonPythonModel.auto_complete_config"
    )
    if any(g.kind == mc.ModelInstanceGroup.KIND_GPU for g in done.instance_group):
        raise ConfigError(
            f"model '{name}': a Python model runs on the CPU (its code may use a GPU itself); "
            "use instance_group kind KIND_CPU"
        )
    complete_defaults(done, name)
    return done


def spawn(model_name: str, instance_name: str) -> StubProcess:
    try:
        return StubProcess(model_name, instance_name)
    except OSError as exc:
        raise ConfigError(
            f"model '{model_name}': its process could not start ({exc.strerror})"
        ) from None


def auto_complete(
    declared: mc.ModelConfig, name: str, model_file: Path
) -> tuple[mc.ModelConfig, StubProcess]:
    """The config after the model's own ``auto_complete_config`` (Triton runs it at load).

    The model runs in the process that becomes its first instance. What it
    returns is checked as config.pbtxt is (fields, kinds), then completed; a
    model without ``auto_complete_config`` keeps the declared config.
    """
    start = mc.ModelConfig()
    start.CopyFrom(declared)
    start.name = name
    start.backend = BACKEND
    process = spawn(name, f"{name}_0_0")
    try:
        answer = process.auto_complete(model_file, model_config_json(start))
        if answer is None:
            return complete_python_config(start, name), process
        try:
            changed = json_format.ParseDict(json.loads(answer), mc.ModelConfig())
        except (json_format.ParseError, ValueError) as exc:
            raise ConfigError(
                f"model '{name}': auto_complete_config returned a config that does not parse: {exc}"
            ) from None
        checked = parse_config_text(text_format.MessageToString(changed), name)
        return complete_python_config(checked, name), process
    except StubCrashed as exc:
        process.kill()
        raise ConfigError(f"model '{name}': {exc} during auto_complete_config") from None
    except ValueError as exc:  # the model's auto_complete_config raised
        process.kill()
        raise ConfigError(f"model '{name}': {exc}") from None
    except ConfigError:
        process.kill()
        raise


class PythonModel:
    """A servable Python model version (what a ServingVersion holds for it)."""

    cuda_requested = False
    providers: list[str] = []

    def __init__(
        self,
        name: str,
        version: int,
        config: mc.ModelConfig,
        model_file: Path,
        bls: BlsHandler,
    ) -> None:
        self.name = name
        self.version = version
        self.version_label = str(version)
        self.config = config
        self.model_file = model_file
        self.statistics = VersionStatistics()
        self.signature = signature_of(name, config, bytes_as_text=False)
        self.instance_names = [
            f"{group.name}_{index}"
            for group in config.instance_group
            for index in range(group.count)
        ]
        self.instance_count = len(self.instance_names)
        self.bls = bls
        #: Called (from an instance thread) with the reason once the version is given up.
        self.on_failure: Callable[[str], None] | None = None
        self.failed: str | None = None
        self._free: queue.Queue[tuple[str, StubProcess | None]] = queue.Queue()
        self._crashes: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()
        self._all: list[StubProcess] = []

    # -- instances ----------------------------------------------------------------------

    def _args(self, instance_name: str) -> dict[str, str]:
        return {
            "model_config": model_config_json(self.config),
            "model_instance_kind": "CPU",
            "model_instance_name": instance_name,
            "model_instance_device_id": "0",
            "model_repository": str(self.model_file.parent.parent),
            "model_version": self.version_label,
            "model_name": self.name,
        }

    def _start(self, instance_name: str, process: StubProcess | None = None) -> StubProcess:
        """Start (unless given) and initialize one instance process; ConfigError says why."""
        if process is None:
            process = spawn(self.name, instance_name)
        try:
            error = process.initialize(self.model_file, self._args(instance_name))
        except StubCrashed as exc:
            process.kill()
            raise ConfigError(f"model '{self.name}': {exc} during initialize") from None
        if error is not None:
            process.kill()
            raise ConfigError(f"model '{self.name}': {error}")
        with self._lock:
            self._all.append(process)
        return process

    def start(self, first: StubProcess | None = None) -> None:
        """Start every instance (on a worker thread, at load time); ``first``: a process
        already started (the one auto_complete_config ran in) for the first instance."""
        try:
            for index, instance_name in enumerate(self.instance_names):
                given = first if index == 0 else None
                self._free.put((instance_name, self._start(instance_name, given)))
        except ConfigError:
            if first is not None:
                first.kill()
            self.close()
            raise
        log.info(
            "loaded python model '%s' version %d: max_batch_size %d, %d instance process(es)",
            self.name,
            self.version,
            self.config.max_batch_size,
            self.instance_count,
        )

    def checkout(self) -> tuple[str, StubProcess | None]:
        return self._free.get()

    def checkin(self, instance: tuple[str, StubProcess | None]) -> None:
        self._free.put(instance)

    def replace(self, instance_name: str, crashed: StubProcess, how: str) -> StubProcess | None:
        """A process died: start another, or give the version up after too many crashes."""
        crashed.kill()
        with self._lock:
            if crashed in self._all:
                self._all.remove(crashed)
            now = time.monotonic()
            self._crashes.append(now)
            while self._crashes and now - self._crashes[0] > CRASH_WINDOW_S:
                self._crashes.popleft()
            crashes = len(self._crashes)
        if crashes > MAX_CRASHES:
            self._give_up(
                f"its Python process crashed {crashes} times in {CRASH_WINDOW_S:.0f} s "
                f"(last: {how}); load the model again once model.py is fixed"
            )
            return None
        log.error(
            "python model '%s' instance %s: %s; starting a new process",
            self.name,
            instance_name,
            how,
        )
        try:
            return self._start(instance_name)
        except ConfigError as exc:
            self._give_up(f"its Python process crashed ({how}) and could not restart: {exc}")
            return None

    def _give_up(self, reason: str) -> None:
        log.error(
            "python model '%s' version %d is unavailable: %s", self.name, self.version, reason
        )
        self.failed = reason
        if self.on_failure is not None:
            self.on_failure(reason)

    def close(self) -> None:
        """Finalize every instance process and make sure it is gone (blocking)."""
        with self._lock:
            processes, self._all = self._all, []
        for process in processes:
            process.finalize()

    # -- what the servicer and schedulers ask ------------------------------------------

    def metadata(self, versions: Sequence[str]) -> pb.ModelMetadataResponse:
        return metadata_of(self.signature, versions, BACKEND)

    def create_executor(self, padded_rows: Callable[[int], int]) -> BatchExecutor:
        return PythonBatchExecutor(self)


class PythonBatchExecutor(BatchExecutor):
    """Runs a batch's requests through one of the model's instance processes."""

    may_run_inline = False  # a batch waits on another process (and its BLS calls)

    def __init__(self, model: PythonModel) -> None:
        super().__init__(model)  # type: ignore[arg-type]
        self._python = model

    def run(self, requests: Sequence[DecodedRequest]) -> ExecutedBatch:
        """Run the batch; when ``execute`` raised on it, run each request alone.

        As for an ONNX batch (batch isolation), one caller's request that makes
        the model raise does not fail the others it was batched with: only the
        requests that raise on their own fail. A crash is not retried.
        """
        executed, raised = self._run_once(requests)
        if not raised or len(requests) == 1:
            return executed
        parts = [self._run_once([request])[0] for request in requests]
        failed = sum(isinstance(p.outcomes[0], ServerError) for p in parts)
        log.warning(
            "python model '%s' raised on a batch of %d requests (%s); re-run one by one: "
            "%d failed on their own",
            self._python.name,
            len(requests),
            raised,
            failed,
        )
        return ExecutedBatch(
            [p.outcomes[0] for p in parts],
            [p.timings[0] for p in parts],
            [timing for p in parts for timing in p.executions],
            isolated=True,
        )

    def _run_once(self, requests: Sequence[DecodedRequest]) -> tuple[ExecutedBatch, str]:
        """One execute call: the outcomes, and what execute raised ("" when it did not)."""
        model = self._python
        count = len(requests)
        if model.failed is not None:
            unavailable = ModelUnavailable(f"model '{model.name}' is unavailable: {model.failed}")
            return ExecutedBatch.failed(count, unavailable), ""
        started = time.perf_counter_ns()
        payload = [
            {
                "id": r.id,
                "model_name": model.name,
                "inputs": pack(r.inputs),
                "outputs": list(r.output_names),
                "parameters": {},
            }
            for r in requests
        ]
        instance_name, process = model.checkout()
        try:
            if process is None:
                unavailable = ModelUnavailable(
                    f"model '{model.name}' is unavailable: {model.failed}"
                )
                return ExecutedBatch.failed(count, unavailable), ""
            try:
                reply = process.execute(payload, model.bls)
            except StubCrashed as exc:
                process = model.replace(instance_name, process, str(exc))
                crashed = ModelExecutionError(
                    f"model '{model.name}' failed on this batch: {exc} while running it"
                    + ("; a new process was started" if process is not None else "")
                )
                return ExecutedBatch.failed(count, crashed), ""
        finally:
            model.checkin((instance_name, process))
        received = time.perf_counter_ns()
        if reply[0] == "raised":
            raised = ModelExecutionError(f"model '{model.name}' raised in execute: {reply[1]}")
            return ExecutedBatch.failed(count, raised), str(reply[1])
        _, outcomes, execute_ns = reply
        results: list[Outcome] = [
            self._outputs(request, outcome)
            for request, outcome in zip(requests, outcomes, strict=True)
        ]
        done = time.perf_counter_ns()
        rows = sum(r.batch_size for r in requests)
        ipc_ns = max(0, received - started - execute_ns)
        timing = ExecutionTiming(
            rows, ipc_ns // 2, execute_ns, ipc_ns - ipc_ns // 2 + done - received
        )
        timings = [None if isinstance(r, ServerError) else timing for r in results]
        return ExecutedBatch(results, timings, [timing]), ""

    def _outputs(self, request: DecodedRequest, outcome: tuple[Any, ...]) -> Outcome:
        """One response as the request's outputs, checked against the config, or its error."""
        name = self._python.name
        if outcome[0] == "error":
            _, message, code = outcome
            return error_for_code(int(code), str(message))
        produced = unpack(outcome[1])
        outputs = {}
        for output in request.output_names:
            array = produced.get(output)
            if array is None:
                return ModelExecutionError(
                    f"model '{name}' returned no output '{output}' (it returned "
                    f"{', '.join(produced) or 'none'})"
                )
            expected = self._python.signature.outputs[output].datatype
            try:
                datatype = codec.datatype_of(array)
            except codec.CodecError as exc:
                return ModelExecutionError(f"model '{name}' output '{output}': {exc}")
            if datatype != expected:
                return ModelExecutionError(
                    f"model '{name}' returned output '{output}' as {datatype} but its config "
                    f"says {expected}"
                )
            outputs[output] = array
        return outputs
