"""The server's side of one Python model instance: its process and the frames to it.

:class:`StubProcess` starts ``python -m onnxserve.server.python_models.stub``
with one end of a socket pair, initializes the model, runs batches and answers
the BLS calls the model makes while a batch runs. Everything here blocks: it
runs on the model's instance threads (never on the event loop), one batch per
process at a time.

A process that exits (a segfault in a C extension, ``os._exit``, the kernel's
OOM killer) closes its socket: the batch it was running fails with
:class:`StubCrashed`, whose message says how the process ended, and the caller
(:mod:`.model`) starts another. The server reads frames from a model process
with the restricted unpickler (:mod:`.ipc`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from onnxserve.server.python_models.ipc import Channel, ChannelClosed, pack, unpack

log = logging.getLogger(__name__)

STUB_MODULE = "onnxserve.server.python_models.stub"
# How long finalize() may take before the process is killed.
FINALIZE_TIMEOUT_S = 10.0

# (call id, request fields, reply(outputs, error message, error code)) -> None
BlsHandler = Callable[[int, dict[str, Any], Callable[[Any, Any, int], None]], None]


# How the model's process writes its log lines: as the server's own handler does.
LOG_FORMAT_VARIABLE = "ONNXSERVE_PYTHON_MODEL_LOG_FORMAT"


def _log_format() -> str:
    from onnxserve.server.logs import JsonFormatter

    handlers = logging.getLogger().handlers
    json_log = any(isinstance(h.formatter, JsonFormatter) for h in handlers)
    return "json" if json_log else "text"


class StubCrashed(Exception):
    """The model's process ended while it was asked something; the message says how."""


class StubProcess:
    """One model instance in its own process."""

    def __init__(self, model_name: str, instance_name: str) -> None:
        self.model_name = model_name
        self.instance_name = instance_name
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # No bytecode written into the (read-only) repository, where it would also
        # change the version's fingerprint and make a polling server reload it.
        env = {
            **os.environ,
            "ONNXSERVE_MODEL": instance_name,
            "PYTHONDONTWRITEBYTECODE": "1",
            LOG_FORMAT_VARIABLE: _log_format(),
        }
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", STUB_MODULE, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env=env,
            )
        finally:
            theirs.close()
        self._channel = Channel(ours, restricted=True)

    @property
    def pid(self) -> int:
        return self._process.pid

    def _ended(self) -> str:
        """How the process ended (waits a moment for it to be reaped)."""
        try:
            code = self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            code = self._process.wait()
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"killed by {name}"
        return f"exited with code {code}"

    def _receive(self) -> Any:
        try:
            return self._channel.receive()
        except ChannelClosed:
            raise StubCrashed(f"its process {self._ended()}") from None

    def _send(self, message: Any) -> None:
        try:
            self._channel.send(message)
        except ChannelClosed:
            raise StubCrashed(f"its process {self._ended()}") from None

    def auto_complete(self, model_file: Path, config_json: str) -> str | None:
        """The config (JSON) the model's ``auto_complete_config`` returns; None without one.

        Raises StubCrashed, or ValueError with the model's error message.
        """
        self._send(("auto_complete", str(model_file), config_json))
        reply = self._receive()
        if reply[0] == "error":
            raise ValueError(str(reply[1]))
        return None if reply[1] is None else str(reply[1])

    def initialize(self, model_file: Path, args: dict[str, str]) -> str | None:
        """Import model.py and run ``initialize(args)``; the error message, or None."""
        self._send(("initialize", str(model_file), args))
        reply = self._receive()
        return None if reply[0] == "ok" else str(reply[1])

    def execute(self, requests: list[dict[str, Any]], bls: BlsHandler) -> tuple[Any, ...]:
        """Run one batch; ``("result", outcomes, execute_ns)`` or ``("raised", message)``.

        BLS calls the model makes meanwhile go to ``bls`` with a function that
        sends their answer (from any thread).
        """
        self._send(("execute", requests))
        while True:
            message = self._receive()
            if message[0] != "bls":
                return tuple(message)
            _, call, fields = message
            fields["inputs"] = unpack(fields["inputs"])
            bls(call, fields, self._bls_replier(call))

    def _bls_replier(self, call: int) -> Callable[[Any, Any, int], None]:
        def reply(outputs: Any, error: Any, code: int) -> None:
            with contextlib.suppress(ChannelClosed):  # the process died meanwhile
                packed = pack(outputs) if outputs is not None else None
                self._channel.send(("bls_response", call, packed, error, code))

        return reply

    def finalize(self) -> None:
        """Ask the model to finalize, then make sure the process is gone."""
        try:
            if self._process.poll() is None:
                self._channel.set_timeout(FINALIZE_TIMEOUT_S)
                self._send(("finalize",))
                started = time.monotonic()
                reply = self._receive()
                if reply[0] == "finalized" and reply[1]:
                    log.warning("python model %s: %s", self.instance_name, reply[1])
                self._process.wait(
                    timeout=max(0.1, FINALIZE_TIMEOUT_S - time.monotonic() + started)
                )
        except (StubCrashed, subprocess.TimeoutExpired):
            pass
        finally:
            self.kill()

    def kill(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._channel.close()
