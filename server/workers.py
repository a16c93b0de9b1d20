"""``--workers N``: several server processes sharing one gRPC port.

One Python process spends most of a core on the gRPC stack at a few thousand
small calls per second, which caps a fast model's throughput long before the
model is the limit. N processes, each a complete server (its own event loop,
models and batchers) bound to the same port with SO_REUSEPORT, let the kernel
spread client connections over them. The parent only supervises: it forwards
SIGTERM/SIGINT so every worker drains as a single server would (and SIGHUP,
to re-read the token file), and if one worker dies the others are stopped
too, so that an orchestrator restarts the whole pod instead of it serving at a
fraction of its capacity (a worker that exits non-zero at start-up, as
``--exit-on-error`` asks, fails the whole server the same way). So does a
worker whose event loop stops beating (SIGSTOP, a deadlock) for
``--worker-stall-timeout-s``: it is killed, since the kernel keeps routing new
connections to it. Workers die with the supervisor (PR_SET_PDEATHSIG, and
their own check of their parent), and ignore signals until their handlers are
in place (they remember them: ``early_signals``). The workers
also listen on private Unix sockets, where they ask each other for statistics
(onnxserve.server.peers), so ModelStatistics and /metrics (served by worker 0)
describe the whole server.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from onnxserve.server import early_signals
from onnxserve.server.logs import configure_logging
from onnxserve.server.peers import WorkerPeers
from onnxserve.server.settings import ServerSettings

log = logging.getLogger(__name__)

# How often the parent looks for a worker that exited or is stuck.
_POLL_S = 0.2
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


RunOne = Callable[[ServerSettings, WorkerPeers], int]


def peer_addresses(folder: Path, count: int) -> list[str]:
    """The Unix sockets the workers ask each other for statistics on."""
    return [f"unix:{folder / f'worker-{index}.sock'}" for index in range(count)]


def run_workers(settings: ServerSettings, run_one: RunOne) -> int:
    """Start ``settings.workers`` processes running ``run_one``; the pod's exit code."""
    # mkdtemp: a fresh folder only this user can enter, for the workers' sockets.
    folder = Path(tempfile.mkdtemp(prefix="onnxserve-"))
    try:
        return _supervise(settings, run_one, peer_addresses(folder, settings.workers))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _supervise(settings: ServerSettings, run_one: RunOne, addresses: list[str]) -> int:
    context = multiprocessing.get_context("spawn")  # no inherited threads or gRPC state
    # Filled in once every worker has started: worker 0 reports their process metrics.
    pids = context.Array("l", settings.workers, lock=False)
    heartbeats = context.Array("d", settings.workers, lock=False)
    workers = [
        context.Process(
            target=_worker_main,
            args=(settings, run_one, _peers_of(addresses, index, pids, heartbeats)),
            name=f"onnxserve-{index}",
        )
        for index in range(settings.workers)
    ]
    stopping = False
    failed_code: int | None = None

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        _signal_all(workers, signal.SIGTERM)  # each worker drains

    def forward(signum: int, frame: FrameType | None) -> None:
        _signal_all(workers, signum)

    handlers = {signal.SIGTERM: stop, signal.SIGINT: stop, signal.SIGHUP: forward}
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        if any(signum in early_signals.STOPS for signum in early_signals.take()):
            log.info("stopped before start-up: a stop signal arrived while starting")
            return 0
        for index, worker in enumerate(workers):
            # Started with the signals blocked (the mask survives exec), until its handlers.
            with _blocking(handlers):
                worker.start()
            pids[index] = worker.pid or 0
        log.info("started %d server processes sharing port %d", len(workers), settings.grpc_port)
        watch = _StallWatch(settings.worker_stall_timeout_s)
        while not stopping and all(w.exitcode is None for w in workers):
            time.sleep(_POLL_S)
            stuck = watch.stuck(workers, heartbeats)
            if stuck is not None and not stopping:
                stuck.kill()  # SIGKILL works on a stopped process too
                stuck.join(5)
        if not stopping:
            failed = next(w for w in workers if w.exitcode is not None)
            failed_code = failed.exitcode or 1
            if failed_code < 0:  # killed by a signal: report it as a shell would
                failed_code = 128 - failed_code
            log.error(
                "server process %s exited with %s; stopping the others", failed.name, failed_code
            )
            stop(signal.SIGTERM, None)
        deadline = time.monotonic() + settings.grace_period_s + 10
        while any(w.exitcode is None for w in workers) and time.monotonic() < deadline:
            # Again to a worker still starting (no heartbeat yet): one still importing
            # ignores, and so loses, a SIGTERM. Not to the others: once a worker's event
            # loop has closed, SIGTERM's default (death) is back.
            starting = [w for i, w in enumerate(workers) if not heartbeats[i]]
            _signal_all(starting, signal.SIGTERM)
            for worker in workers:
                worker.join(_POLL_S / len(workers))
        for worker in workers:
            if worker.exitcode is None:
                worker.kill()
                worker.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failed_code is not None:
        return failed_code
    # A worker ended by the SIGTERM asked of it (it can land once its event loop has
    # closed and SIGTERM's default is back) stopped as asked.
    codes = [w.exitcode for w in workers if w.exitcode and w.exitcode != -signal.SIGTERM]
    code = codes[0] if codes else 0
    return 128 - code if code < 0 else code


def _signal_all(workers: list[multiprocessing.process.BaseProcess], signum: int) -> None:
    for worker in workers:
        if worker.pid is not None and worker.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signum)


@contextlib.contextmanager
def _blocking(handlers: dict[int, Any]) -> Iterator[None]:
    """The signals blocked while a worker is forked: one arriving then waits (in the
    supervisor, and in the worker, which inherits the mask and unblocks it once
    its early handlers are in place), instead of being lost or killing it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, set(handlers))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, set(handlers))


class _StallWatch:
    """Finds a worker whose event loop has not beaten for ``timeout_s`` (stuck or stopped).

    Each worker's loop writes time.monotonic() (one clock for every process)
    to its heartbeat every HEARTBEAT_S, loading included (loading runs on
    threads). Before its first beat (imports), only a stopped process state
    (SIGSTOP: 'T' in /proc) counts, timed from when it was first seen.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._stopped_since: dict[int, float] = {}

    def stuck(
        self, workers: list[multiprocessing.process.BaseProcess], heartbeats: Any
    ) -> multiprocessing.process.BaseProcess | None:
        now = time.monotonic()
        for index, worker in enumerate(workers):
            if worker.pid is None or worker.exitcode is not None:
                continue
            state = _process_state(worker.pid)
            if state.startswith("T"):
                since = self._stopped_since.setdefault(index, now)
            else:
                self._stopped_since.pop(index, None)
                since = now
            beat = heartbeats[index]
            silent = now - beat if beat else now - since
            if silent >= self.timeout_s:
                log.error(
                    "server process %s (pid %d) has not run its event loop for %.1f s "
                    "(process state %s; --worker-stall-timeout-s %.1f): killing it and "
                    "stopping the server, so that it restarts whole",
                    worker.name,
                    worker.pid,
                    silent,
                    state or "unknown",
                    self.timeout_s,
                )
                return worker
        return None


def _process_state(pid: int) -> str:
    """The process's state from /proc ('S (sleeping)', 'T (stopped)', ...); '' elsewhere."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _peers_of(addresses: list[str], index: int, pids: object, heartbeats: object) -> WorkerPeers:
    others = tuple(a for i, a in enumerate(addresses) if i != index)
    return WorkerPeers(
        index=index,
        own_address=addresses[index],
        peer_addresses=others,
        pids=pids,
        heartbeats=heartbeats,
        parent_pid=os.getpid(),
    )


def _die_with_parent(parent_pid: int) -> None:
    """Ask the kernel for SIGTERM when the supervisor dies (Linux), and check it is alive.

    Without it, a supervisor killed with SIGKILL left its workers serving for
    ever, holding the port and the metrics port against the next start.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    if os.getppid() != parent_pid:  # it died before the prctl
        os.kill(os.getpid(), signal.SIGTERM)


def _worker_main(settings: ServerSettings, run_one: RunOne, peers: WorkerPeers) -> None:
    # Until the server's own handlers are in place, signals are remembered, not fatal.
    early_signals.hold()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, set(early_signals.HANDLED))
    _die_with_parent(peers.parent_pid)
    configure_logging(
        settings.log_level, settings.log_format, multiprocessing.current_process().name
    )
    raise SystemExit(run_one(settings, peers))
