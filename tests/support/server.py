"""Start a real ``onnxserve serve`` process on a free loopback port for a test.

Tests talk to the server the way users do: over gRPC, from another process's
point of view. The server's log is kept so a failing test can show it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc

from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.protocol import grpc_service_pb2_grpc as pb_grpc


def rest_served() -> bool:
    """Whether servers the suite starts answer REST (the native front end is built)."""
    from onnxserve.server.native import native_available

    return native_available()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_serving(
    process: subprocess.Popen[bytes],
    address: str,
    timeout: float,
    log: Callable[[], str],
    metadata: Sequence[tuple[str, str]] = (),
) -> None:
    """Until the server at ``address`` is ready; at once if ``process`` exits first.

    A server that cannot start (a port in use, a bad setting) exits within a
    second or two: that is reported with its log then, not after ``timeout``.
    """
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{log()}")
            try:
                if stub.ServerReady(pb.ServerReadyRequest(), timeout=1, metadata=metadata).ready:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"server not ready after {timeout}s:\n{log()}")


class RunningServer:
    """One server process; use as a context manager or call start()/stop()."""

    def __init__(
        self,
        repository: Path,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        startup_timeout: float = 120.0,
        require_ready: bool = True,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        server_name: str | None = None,
        cwd: Path | None = None,
        http: bool = False,
    ) -> None:
        self.repository = Path(repository)
        self.extra_args = list(extra_args)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # The REST port: off unless a test asks for it (8000, its default, would collide).
        self.http_port = free_port() if http else 0
        self.http_address = f"127.0.0.1:{self.http_port}"
        self.startup_timeout = startup_timeout
        # False: start() returns once every model has been tried, ready or not
        # (for repositories that hold broken models on purpose).
        self.require_ready = require_ready
        # How start() reaches a server that speaks TLS or wants a token.
        self.credentials = credentials
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.channel_options = (
            [("grpc.ssl_target_name_override", server_name)] if server_name else []
        )
        # Metrics and REST off unless a test asks for them (a fixed port would collide); by
        # environment rather than flag, so that a revision from before the flag
        # starts too (benchmarks/contestants.py runs earlier ones).
        self._env = {
            **os.environ,
            "CUDA_VISIBLE_DEVICES": "",
            "ONNXSERVE_METRICS_PORT": "0",
            "ONNXSERVE_HTTP_PORT": str(self.http_port),
            **(env or {}),
        }
        # Where the process runs: python -m puts it first on sys.path.
        self.cwd = cwd
        # Kept open for the life of the process it logs; closed in stop().
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115
            prefix="onnxserve-", suffix=".log", delete=False
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RunningServer:
        cmd = [
            sys.executable,
            "-m",
            "onnxserve",
            "serve",
            "--model-repository",
            str(self.repository),
            "--host",
            "127.0.0.1",
            "--grpc-port",
            str(self.port),
            *self.extra_args,
        ]
        self.process = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self._env, cwd=self.cwd
        )
        try:
            self.wait_ready()
        except BaseException:
            self.stop()  # a server that never got ready must not outlive the test
            raise
        return self

    def channel(self) -> grpc.Channel:
        """A channel to the server, with the TLS settings it was started with."""
        if self.credentials is None:
            return grpc.insecure_channel(self.address)
        return grpc.secure_channel(self.address, self.credentials, self.channel_options)

    def _started(self, stub: pb_grpc.GRPCInferenceServiceStub) -> bool:
        if self.require_ready:
            ready = stub.ServerReady(pb.ServerReadyRequest(), timeout=1, metadata=self.metadata)
            return bool(ready.ready)
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=1, metadata=self.metadata)
        return all(model.state != "LOADING" for model in index.models)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        with self.channel() as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"server exited with {self.process.returncode}:\n{self.log()}"
                    )
                try:
                    if self._started(stub):
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        raise TimeoutError(f"server not started after {self.startup_timeout}s:\n{self.log()}")

    def log(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (the server drains), then SIGKILL after ``timeout``; the exit code."""
        try:
            if self.process is None or self.process.poll() is not None:
                return None if self.process is None else self.process.returncode
            self.process.terminate()
            try:
                return self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                return self.process.wait()
        finally:
            self._log.close()

    def __enter__(self) -> RunningServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
