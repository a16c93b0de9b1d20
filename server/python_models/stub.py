"""A Python model's own process (Triton's stub): ``python -m ...stub <fd>``.

It imports the version's model.py with ``triton_python_backend_utils``
importable (this package's :mod:`.pb_utils`), then serves the server's frames
(:mod:`.ipc`) on the socket it inherited as ``<fd>``:

- ``("auto_complete", model_file, config_json)`` -> ``("config", json or None)``:
  ``TritonPythonModel.auto_complete_config`` run on the declared config, if defined;
- ``("initialize", model_file, args)`` -> ``("ok",)`` or ``("error", message)``;
- ``("execute", requests)`` -> ``("result", outcomes, execute_ns)``, one outcome
  per request, ``("ok", outputs)`` or ``("error", message, code)``; a model
  whose ``execute`` raised answers ``("raised", message)`` for the batch;
- ``("finalize",)`` -> ``("finalized", message or None)``, then the process exits.

While ``execute`` runs, a BLS call sends ``("bls", call, request)`` and the
server answers ``("bls_response", call, outputs, message, code)``. The main
thread reads the socket itself between batches and while ``exec()`` waits (a
hand-off to a reader thread cost a thread switch per batch); a helper thread
reads only while ``async_exec`` calls are in flight, so several may be out at
once. When the server goes away the socket closes and this process exits: it
never outlives the server.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import inspect
import itertools
import json
import logging
import os
import queue
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from onnxserve.server.python_models import pb_utils
from onnxserve.server.python_models.ipc import Channel, ChannelClosed, pack, unpack
from onnxserve.server.python_models.process import LOG_FORMAT_VARIABLE
from onnxserve.server.python_models.requirements import PACKAGES_FOLDER

log = logging.getLogger("onnxserve.python_model")
MODULE_NAME = "triton_python_backend_utils"


class _Stub:
    """The model's process. Whoever waits for a frame reads the socket (see read_frame)."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._commands: queue.Queue[Any] = queue.Queue()
        self._calls: dict[int, concurrent.futures.Future[pb_utils.InferenceResponse]] = {}
        self._call_ids = itertools.count(1)
        self._lock = threading.Lock()
        # Held by the thread reading the socket: the main thread between batches and
        # during exec(); the helper thread while async_exec calls are in flight.
        self._reading = threading.Lock()
        self._helping = False
        self._model: Any = None
        self._class: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- frames ---------------------------------------------------------------------------

    def _read_one(self) -> None:
        """Read one frame (holding ``_reading``): resolve a BLS call, or queue a command."""
        try:
            message = self._channel.receive()
        except ChannelClosed:
            os._exit(0)  # the server is gone: so is its model
        if message[0] == "bls_response":
            _, call, outputs, error, code = message
            with self._lock:
                future = self._calls.pop(call, None)
            if future is not None:
                future.set_result(_bls_response(outputs, error, code))
        else:
            self._commands.put(message)

    def _read_until(self, done: Any) -> None:
        """Read frames in this thread until ``done()``; another reader may hold the socket."""
        while not done():
            if self._reading.acquire(timeout=0.01):
                try:
                    if not done():
                        self._read_one()
                finally:
                    self._reading.release()

    def next_command(self) -> Any:
        """The main thread between batches: read the socket itself (no thread hand-off)."""
        self._read_until(lambda: not self._commands.empty())
        return self._commands.get_nowait()

    def _help(self) -> None:
        """The helper thread: read while async_exec calls are in flight, then stop."""
        while True:
            with self._lock:
                if not self._calls:
                    self._helping = False
                    return
            self._read_until(lambda: not self._calls or self._commands.qsize() > 0)
            if self._commands.qsize() > 0 and self._calls:
                time.sleep(0.001)  # the main thread takes its command; the calls go on

    def send_bls(self, request: pb_utils.InferenceRequest, wait: bool) -> Any:
        """Send a BLS call; its response (``wait``: exec) or a future of it (async_exec)."""
        future: concurrent.futures.Future[pb_utils.InferenceResponse] = concurrent.futures.Future()
        call = next(self._call_ids)
        inputs = pack({tensor.name(): tensor.as_numpy() for tensor in request.inputs()})
        with self._lock:
            self._calls[call] = future
        self._channel.send(
            (
                "bls",
                call,
                {
                    "model_name": request.model_name(),
                    "model_version": request.model_version(),
                    "inputs": inputs,
                    "outputs": request.requested_output_names(),
                    "request_id": request.request_id(),
                    "timeout_us": request.timeout(),
                },
            )
        )
        if wait:
            self._read_until(future.done)
            return future.result()
        with self._lock:
            start = not self._helping
            self._helping = True
        if start:
            threading.Thread(target=self._help, name="bls-reader", daemon=True).start()
        return future

    # -- commands -------------------------------------------------------------------------

    def serve(self) -> None:
        while True:
            message = self.next_command()
            kind = message[0]
            if kind == "initialize":
                self._channel.send(self._initialize(Path(message[1]), message[2]))
            elif kind == "auto_complete":
                self._channel.send(self._auto_complete(Path(message[1]), message[2]))
            elif kind == "execute":
                self._channel.send(self._execute(message[1]))
            elif kind == "finalize":
                self._channel.send(("finalized", self._finalize()))
                return

    def _import(self, model_file: Path) -> Any:
        """The model's TritonPythonModel class (imported once per process)."""
        if self._class is not None:
            return self._class
        sys.path.insert(0, str(model_file.parent))
        packages = model_file.parent.parent / PACKAGES_FOLDER
        if packages.is_dir():  # the model's own packages (pip install --target)
            sys.path.insert(0, str(packages))
        spec = importlib.util.spec_from_file_location("model", model_file)
        if spec is None or spec.loader is None:
            raise ImportError(f"{model_file.name} cannot be imported")
        module = importlib.util.module_from_spec(spec)
        sys.modules["model"] = module
        spec.loader.exec_module(module)
        model_class = getattr(module, "TritonPythonModel", None)
        if model_class is None:
            raise AttributeError(f"{model_file.name} defines no class TritonPythonModel")
        self._class = model_class
        return model_class

    def _auto_complete(self, model_file: Path, config: str) -> tuple[Any, ...]:
        """Run ``auto_complete_config`` if the model has one: the config it returns, or None."""
        try:
            model_class = self._import(model_file)
            complete = getattr(model_class, "auto_complete_config", None)
            if complete is None:
                return ("config", None)
            result = complete(pb_utils.ModelConfig(config))
            return ("config", json.dumps(result.as_dict()))
        except BaseException as exc:
            log.error("auto_complete_config failed:\n%s", traceback.format_exc())
            return ("error", f"auto_complete_config raised {_describe(exc)}")

    def _initialize(self, model_file: Path, args: dict[str, str]) -> tuple[Any, ...]:
        try:
            self._model = self._import(model_file)()
            initialize = getattr(self._model, "initialize", None)
            if initialize is not None:
                self._call(initialize, args)
            if not hasattr(self._model, "execute"):
                return ("error", "TritonPythonModel has no execute(requests) method")
        except BaseException as exc:  # the model's own code: any failure is its load error
            log.error("initialize failed:\n%s", traceback.format_exc())
            return ("error", f"initialize raised {_describe(exc)}")
        return ("ok",)

    def _call(self, method: Any, *args: Any) -> Any:
        """Call a model method; a coroutine function runs on this process's event loop."""
        if inspect.iscoroutinefunction(method):
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
            return self._loop.run_until_complete(method(*args))
        return method(*args)

    def _execute(self, requests: list[dict[str, Any]]) -> tuple[Any, ...]:
        batch = [
            pb_utils.InferenceRequest(
                model_name=r["model_name"],
                inputs=[
                    pb_utils.Tensor(name, array) for name, array in unpack(r["inputs"]).items()
                ],
                requested_output_names=r["outputs"],
                request_id=r["id"],
                parameters=r["parameters"],
            )
            for r in requests
        ]
        started = time.perf_counter_ns()
        try:
            responses = self._call(self._model.execute, batch)
        except BaseException as exc:
            log.error("execute raised:\n%s", traceback.format_exc())
            return ("raised", _describe(exc))
        elapsed = time.perf_counter_ns() - started
        if not isinstance(responses, list | tuple) or len(responses) != len(batch):
            count = len(responses) if isinstance(responses, list | tuple) else type(responses)
            return (
                "raised",
                f"execute must return a list of one InferenceResponse per request "
                f"({len(batch)}), not {count}",
            )
        return ("result", [_outcome(response) for response in responses], elapsed)

    def _finalize(self) -> str | None:
        finalize = getattr(self._model, "finalize", None)
        if finalize is None:
            return None
        try:
            self._call(finalize)
        except BaseException as exc:
            return f"finalize raised {_describe(exc)}"
        return None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _outcome(response: Any) -> tuple[Any, ...]:
    if not isinstance(response, pb_utils.InferenceResponse):
        return ("error", f"execute returned {type(response).__name__}, not an InferenceResponse", 1)
    error = response.error()
    if error is not None:
        return ("error", error.message(), error.code())
    outputs = {}
    for tensor in response.output_tensors():
        if not isinstance(tensor, pb_utils.Tensor):
            return ("error", f"an output is {type(tensor).__name__}, not a pb_utils.Tensor", 1)
        outputs[tensor.name()] = tensor.as_numpy()
    return ("ok", pack(outputs))


def _bls_response(
    outputs: dict[str, np.ndarray] | None, error: str | None, code: int
) -> pb_utils.InferenceResponse:
    if error is not None:
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(error, code))
    return pb_utils.InferenceResponse(
        [pb_utils.Tensor(name, array) for name, array in unpack(outputs or {}).items()]
    )


def main() -> None:
    sys.dont_write_bytecode = True  # never into the model repository
    from onnxserve.server.logs import configure_logging

    log_format = "json" if os.environ.get(LOG_FORMAT_VARIABLE) == "json" else "text"
    configure_logging("INFO", log_format, worker=os.environ.get("ONNXSERVE_MODEL", ""))
    sock = socket.socket(fileno=int(sys.argv[1]))
    channel = Channel(sock)
    stub = _Stub(channel)
    pb_utils._bls_sender = stub.send_bls
    sys.modules[MODULE_NAME] = pb_utils
    stub.serve()


if __name__ == "__main__":
    main()
