"""The servers the benchmark compares, each started on a free loopback port, and their CPU time.

- ``onnxserve``: this checkout's ``onnxserve serve`` (tests/support/server.py);
- ``before``: the same command from another git revision of this repository,
  unpacked with ``git archive`` under ``build/bench-before/<commit>`` and run
  with this environment's packages, so one run measures a change before and
  after it;
- ``empty``: benchmarks/empty_server.py, an empty ModelInfer on raw bytes and
  the default event loop (the Python gRPC stack's floor), and ``empty-asyncio``,
  the same on the generated classes and asyncio's loop (the floor before the
  front end's work);
- ``triton``: real Triton (benchmarks/triton_peer.py), skipped with a note
  where it cannot be installed.

The CPU a server spends is read from /proc (Linux): the process and every
process below it (--workers, Triton's python-backend stub), kernel time
included.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.protocol import grpc_service_pb2_grpc as pb_grpc
from onnxserve.protocol import model_config_pb2 as mc
from tests.support.server import RunningServer, free_port

if TYPE_CHECKING:
    from benchmarks.triton_peer import TritonSettings

ROOT = Path(__file__).resolve().parent.parent
PEERS = ("triton", "empty", "empty-asyncio")
_EMPTY_ARGS = {
    "empty": ["--handler", "bytes"],
    "empty-asyncio": ["--handler", "protobuf", "--event-loop", "asyncio"],
}
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class Running:
    """A started contestant: where to call it and which process tree to charge."""

    address: str
    pid: int
    # False for the empty handler, which serves ModelInfer only.
    model_server: bool = True
    # The HTTP/REST port's address (None: the contestant has none).
    http_address: str | None = None


def process_tree_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` and its descendants; None without /proc."""
    proc = Path("/proc")
    if not (proc / str(pid) / "stat").exists():
        return None
    parents: dict[int, int] = {}
    seconds: dict[int, float] = {}
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended meanwhile
        child = int(stat.parent.name)
        parents[child] = int(fields[1])
        seconds[child] = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    tree = {pid}
    grew = True
    while grew:
        found = {child for child, parent in parents.items() if parent in tree} - tree
        grew = bool(found)
        tree |= found
    return sum(seconds.get(member, 0.0) for member in tree)


def revision_tree(revision: str, build: Path) -> Path:
    """``revision`` of this repository unpacked as an importable ``onnxserve`` package.

    The checkout maps client/, server/ and converter/ into the package
    (pyproject's package-dir); the unpacked copy puts them there. Returns the
    folder to put on PYTHONPATH; kept under ``build`` and reused.
    """
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{revision}^{{commit}}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if commit.returncode != 0:
        raise SystemExit(f"--before {revision}: not a commit of this repository")
    sha = commit.stdout.strip()
    site = build / sha[:12] / "site"
    if (site / "onnxserve" / "server").is_dir():
        return site
    unpacked = build / sha[:12] / "tree"
    unpacked.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile() as archive:
        subprocess.run(["git", "-C", str(ROOT), "archive", sha], stdout=archive, check=True)
        archive.seek(0)
        with tarfile.open(fileobj=archive) as tar:
            if hasattr(tarfile, "data_filter"):  # Python 3.10.12+, 3.11.4+
                tar.extractall(unpacked, filter="data")
            else:  # pragma: no cover - our own repository's archive
                tar.extractall(unpacked)
    package = site / "onnxserve"
    site.mkdir(parents=True, exist_ok=True)
    (unpacked / "onnxserve").rename(package)
    for part in ("client", "server", "converter"):
        if (unpacked / part).is_dir():
            (unpacked / part).rename(package / part)
    return site


@contextlib.contextmanager
def onnxserve(
    repository: Path,
    server_args: Sequence[str],
    site: Path | None = None,
    log: Path | None = None,
) -> Iterator[Running]:
    """``onnxserve serve``: this checkout's, or the package tree at ``site``.

    Raises SystemExit, with the server's log, as soon as every model was tried
    and some did not load; ``log``: where its log is copied when it stops.
    """
    env = {"PYTHONPATH": str(site)} if site is not None else {}
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        # The launcher hides GPUs unless told which (benchmarks/gpu_check.sh tells it).
        env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
    # Not the checkout's root as the working directory: python -m would import
    # its onnxserve/ before PYTHONPATH's.
    with tempfile.TemporaryDirectory() as cwd:
        server = RunningServer(
            repository, server_args, env=env, cwd=Path(cwd), startup_timeout=180,
            require_ready=False, http=True,
        )  # fmt: skip
        try:
            with server:
                assert server.process is not None
                with server.channel() as channel:
                    stub = pb_grpc.GRPCInferenceServiceStub(channel)
                    if not stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready:
                        raise SystemExit(f"onnxserve did not get ready:\n{server.log()[-3000:]}")
                yield Running(server.address, server.process.pid, http_address=server.http_address)
        finally:
            if log is not None:
                log.parent.mkdir(parents=True, exist_ok=True)
                log.write_text(server.log())


@contextlib.contextmanager
def empty(kind: str) -> Iterator[Running]:
    """benchmarks/empty_server.py, ``kind`` one of ``empty`` and ``empty-asyncio``."""
    address = f"127.0.0.1:{free_port()}"
    script = Path(__file__).with_name("empty_server.py")
    process = subprocess.Popen(
        [sys.executable, str(script), address, *_EMPTY_ARGS[kind]],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        if line != "ready":
            raise SystemExit(f"the empty gRPC server did not start: {line}")
        yield Running(address, process.pid, model_server=False)
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextlib.contextmanager
def triton(
    model_file: Path, served: mc.ModelConfig, settings: TritonSettings, log: Path
) -> Iterator[Running]:
    from benchmarks.triton_peer import running_triton

    with running_triton(model_file, served, settings, log) as served_triton:
        address, pid, http_address = served_triton
        yield Running(address, pid, http_address=http_address)
