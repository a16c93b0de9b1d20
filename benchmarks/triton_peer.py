"""Real Triton as the benchmark's peer: its environment, its model repository, its process.

Triton 2.51 runs here without Docker: the PyTriton wheel (``.venv-triton``,
built from benchmarks/triton/requirements.txt by ``make triton-env``) bundles
the ``tritonserver`` binary and its python backend. The python backend runs
``benchmarks/triton/model.py``, onnxruntime on each batch of the same
model.onnx onnxserve serves, behind Triton's C++ gRPC front end and dynamic
batcher. By default it runs as a Triton user would set it up for throughput
(TritonSettings): onnxruntime's own thread count and spinning, one instance,
``max_queue_delay_microseconds: 2000``; the benchmark's ``--triton`` variants
sweep threads, spinning, instances and the delay in the same run.

What it takes to start it (checked 2026-11-30, see
../shared/reference/triton-peer.md): the stub process of the python backend is
looked for only beside libtriton_python.so, so a backend folder is assembled
from the wheel's library and the stub for this Python version;
LD_LIBRARY_PATH puts the base interpreter's libpython first (the stub's
libpython must match the venv's standard library), then the wheel's own
libraries; the venv's ``bin`` goes first on PATH so that the stub's Python
finds numpy and onnxruntime. The stub is a child process: Triton runs in its
own process group and the whole group is stopped.

    python -m benchmarks.triton_peer   (what `make triton-env` runs: build .venv-triton)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import grpc
from google.protobuf import text_format

from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.protocol import grpc_service_pb2_grpc as pb_grpc
from onnxserve.protocol import model_config_pb2 as mc
from tests.support.requirements_venv import RequirementsVenv
from tests.support.server import free_port

ROOT = Path(__file__).resolve().parent.parent
FOLDER = Path(__file__).resolve().parent / "triton"
VENV = ROOT / ".venv-triton"
ENV = RequirementsVenv(VENV, FOLDER / "requirements.txt")
# An environment of one's own with the same packages (used as it is, never rebuilt).
OWN_VENV = "ONNXSERVE_TRITON_VENV"
# Triton's dynamic batcher for the comparison: what a Triton user would configure.
QUEUE_DELAY_US = 2000
_SETTING_KEYS = ("threads", "spinning", "instances", "delay")
_READY_TIMEOUT_S = 120.0

# Asked of the peer environment's Python: where the wheel's parts are.
_LAYOUT_PROBE = """
import json, sys, sysconfig
from pathlib import Path
import pytriton
root = Path(pytriton.__file__).parent / "tritonserver"
print(json.dumps({
    "tritonserver": str(root / "bin" / "tritonserver"),
    "backend": str(root / "backends" / "python"),
    "stub": str(root / "python_backend_stubs" / f"{sys.version_info[0]}.{sys.version_info[1]}"
                / "triton_python_backend_stub"),
    "caches": str(root / "caches"),
    "libs": str(root.parent.parent / "nvidia_pytriton.libs"),
    "libdir": sysconfig.get_config_var("LIBDIR"),
}))
"""


class PeerUnavailable(RuntimeError):
    """Triton cannot run here; the message says why (the benchmark skips the peer)."""


@dataclass(frozen=True)
class TritonLayout:
    """Where the parts of the wheel's Triton are."""

    tritonserver: Path
    backend: Path
    stub: Path
    caches: Path
    libs: Path
    libdir: Path


def ensure_environment() -> Path:
    """The peer environment's Python: $ONNXSERVE_TRITON_VENV as it is, else .venv-triton,
    built if missing or stale; raises PeerUnavailable when it cannot be."""
    if not sys.platform.startswith("linux"):
        raise PeerUnavailable("the PyTriton wheel that bundles Triton exists for Linux only")
    own = os.environ.get(OWN_VENV)
    if own:
        python = Path(own) / "bin" / "python"
        if not python.exists():
            raise PeerUnavailable(f"{OWN_VENV}={own} has no bin/python")
        return python
    try:
        return ENV.ensure()
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or exc.stdout or "").strip().splitlines()[-3:]
        raise PeerUnavailable(
            f"installing Triton (nvidia-pytriton) into {VENV} failed: {' '.join(detail)}"
        ) from None
    except subprocess.TimeoutExpired:
        raise PeerUnavailable(f"installing Triton into {VENV} took too long") from None


def layout(python: Path) -> TritonLayout:
    result = subprocess.run(
        [str(python), "-c", _LAYOUT_PROBE], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise PeerUnavailable(f"the Triton environment is broken: {result.stderr.strip()[-300:]}")
    found = TritonLayout(**{k: Path(v) for k, v in json.loads(result.stdout).items()})
    if not found.stub.exists():
        raise PeerUnavailable(f"PyTriton has no python-backend stub for this Python ({found.stub})")
    return found


@dataclass(frozen=True)
class TritonSettings:
    """How the Triton peer runs; the defaults are onnxruntime's and a Triton user's own.

    Measured 2026-12-01 on the 2-core machine (h2load, 64 concurrent calls): one
    intra-op thread without spinning served 3,869-4,272 requests/s, onnxruntime's
    defaults 5,688-6,086, so the peer is never tuned down to onnxserve's choice.
    """

    # onnxruntime intra-op threads in model.py; 0: onnxruntime's default (the cores).
    threads: int = 0
    # onnxruntime's intra-op spinning; None: its default (on).
    spinning: bool | None = None
    # instance_group count (KIND_CPU): batches Triton runs at once.
    instances: int = 1
    # dynamic_batching max_queue_delay_microseconds.
    delay_us: int = QUEUE_DELAY_US

    @classmethod
    def parse(cls, text: str) -> TritonSettings:
        """``default`` or ``threads=1,spinning=off,instances=2,delay=500``; ValueError if bad."""
        values: dict[str, object] = {}
        for item in (part.strip() for part in text.split(",")):
            if not item or item == "default":
                continue
            key, sep, value = item.partition("=")
            if not sep or key not in _SETTING_KEYS:
                raise ValueError(
                    f"Triton setting {item!r}: expected one of {', '.join(_SETTING_KEYS)}=VALUE"
                )
            if key == "spinning":
                if value not in ("on", "off"):
                    raise ValueError(f"Triton setting spinning={value}: expected on or off")
                values["spinning"] = value == "on"
            elif not value.isdigit() or (key == "instances" and int(value) < 1):
                raise ValueError(f"Triton setting {key}={value}: expected a whole number")
            else:
                values["delay_us" if key == "delay" else key] = int(value)
        return cls(**values)  # type: ignore[arg-type]

    @property
    def is_default(self) -> bool:
        return self == TritonSettings()

    def name(self) -> str:
        """The contestant's name: ``triton``, or ``triton threads=1,instances=2``."""
        changed = []
        if self.threads:
            changed.append(f"threads={self.threads}")
        if self.spinning is not None:
            changed.append(f"spinning={'on' if self.spinning else 'off'}")
        if self.instances != 1:
            changed.append(f"instances={self.instances}")
        if self.delay_us != QUEUE_DELAY_US:
            changed.append(f"delay={self.delay_us}")
        return "triton" + (f" {','.join(changed)}" if changed else "")

    def describe(self) -> str:
        """What the report says of this contestant's settings."""
        threads = f"{self.threads}" if self.threads else "onnxruntime's default (the cores)"
        spinning = {None: "onnxruntime's default (on)", True: "on", False: "off"}[self.spinning]
        return (
            f"python backend running onnxruntime: intra-op threads {threads}, spinning "
            f"{spinning}; {self.instances} instance(s); dynamic batcher, max queue delay "
            f"{self.delay_us} us"
        )


def triton_config(served: mc.ModelConfig, settings: TritonSettings) -> mc.ModelConfig:
    """The peer's config: onnxserve's completed config's tensors, on the python backend."""
    config = mc.ModelConfig(
        name=served.name, backend="python", max_batch_size=served.max_batch_size
    )
    for tensor in served.input:
        config.input.add(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
    for tensor in served.output:
        config.output.add(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
    config.dynamic_batching.max_queue_delay_microseconds = settings.delay_us
    config.instance_group.add(count=settings.instances, kind=mc.ModelInstanceGroup.KIND_CPU)
    config.parameters["intra_op_thread_count"].string_value = str(settings.threads)
    if settings.spinning is not None:
        config.parameters["allow_spinning"].string_value = "1" if settings.spinning else "0"
    return config


def write_repository(folder: Path, model_file: Path, config: mc.ModelConfig) -> Path:
    """A Triton model repository: config.pbtxt, 1/model.py and 1/model.onnx."""
    model = folder / "repository" / config.name
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(text_format.MessageToString(config))
    shutil.copy(FOLDER / "model.py", model / "1" / "model.py")
    shutil.copy(model_file, model / "1" / "model.onnx")
    return model.parent


def _backends(folder: Path, found: TritonLayout) -> Path:
    """The backend folder Triton is pointed at: the python backend beside its stub."""
    python = folder / "backends" / "python"
    python.mkdir(parents=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy(found.backend / name, python / name)
    shutil.copy(found.stub, python / "triton_python_backend_stub")
    return python.parent


def _environment(python: Path, found: TritonLayout) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH")}
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        [str(found.libdir), str(found.libs), env.get("LD_LIBRARY_PATH", "")]
    ).rstrip(os.pathsep)
    env["PATH"] = os.pathsep.join([str(python.parent), env.get("PATH", "")])
    env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def _wait_ready(address: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = log.read_text(errors="replace")[-1500:]
                raise PeerUnavailable(f"tritonserver exited with {process.returncode}:\n{tail}")
            with contextlib.suppress(grpc.RpcError):
                if stub.ServerReady(pb.ServerReadyRequest(), timeout=1).ready:
                    return
            time.sleep(0.2)
    raise PeerUnavailable(f"tritonserver was not ready after {_READY_TIMEOUT_S:.0f} s; see {log}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to Triton's process group (it and the python-backend stub), then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class ServedTriton(NamedTuple):
    """A Triton process: its gRPC address, its pid, its HTTP/REST address."""

    address: str
    pid: int
    http_address: str


@contextlib.contextmanager
def running_triton(
    model_file: Path, served: mc.ModelConfig, settings: TritonSettings, log: Path
) -> Iterator[ServedTriton]:
    """Triton serving ``model_file`` on loopback ports: (gRPC address, process id, HTTP address)."""
    with tempfile.TemporaryDirectory(prefix="onnxserve-triton-") as scratch:
        folder = Path(scratch)
        repository = write_repository(folder, model_file, triton_config(served, settings))
        with serving_repository(repository, log) as running:
            yield running


@contextlib.contextmanager
def serving_repository(repository: Path, log: Path) -> Iterator[ServedTriton]:
    """Triton serving a model repository of python-backend models: (gRPC address, pid,
    HTTP address).

    Raises PeerUnavailable where Triton cannot run here.
    """
    python = ensure_environment()
    found = layout(python)
    with tempfile.TemporaryDirectory(prefix="onnxserve-triton-") as scratch:
        folder = Path(scratch)
        grpc_port, http_port = free_port(), free_port()
        command = [
            str(found.tritonserver),
            f"--model-repository={repository}",
            f"--backend-directory={_backends(folder, found)}",
            f"--cache-directory={found.caches}",
            f"--backend-config=python,shm-region-prefix-name=onnxserve-{uuid.uuid4().hex[:12]}",
            "--backend-config=python,shm-default-byte-size=4194304",
            "--backend-config=python,shm-growth-byte-size=1048576",
            f"--grpc-port={grpc_port}",
            f"--http-port={http_port}",
            f"--metrics-port={free_port()}",
            "--allow-gpu-metrics=false",
            "--pinned-memory-pool-byte-size=0",
        ]
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as out:
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=_environment(python, found),
                start_new_session=True,
            )  # fmt: skip
            try:
                address = f"127.0.0.1:{grpc_port}"
                _wait_ready(address, process, log)
                yield ServedTriton(address, process.pid, f"127.0.0.1:{http_port}")
            finally:
                _stop(process)


def main() -> int:
    try:
        python = ensure_environment()
        layout(python)
    except PeerUnavailable as exc:
        print(f"Triton peer unavailable: {exc}", file=sys.stderr)
        return 1
    print(f"Triton environment ready: {python}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
