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
``--exit-on-error`` asks, fails the whole server the same way). The workers
also listen on private Unix sockets, where they ask each other for statistics
(onnxserve.server.peers), so ModelStatistics and /metrics (served by worker 0)
describe the whole server.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from onnxserve.server.logs import configure_logging
from onnxserve.server.peers import WorkerPeers
from onnxserve.server.settings import ServerSettings

log = logging.getLogger(__name__)

# How often the parent looks for a worker that exited.
_POLL_S = 0.2


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
    workers = [
        context.Process(
            target=_worker_main,
            args=(settings, run_one, _peers_of(addresses, index, pids)),
            name=f"onnxserve-{index}",
        )
        for index in range(settings.workers)
    ]
    stopping = False
    failed_code: int | None = None

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.pid is not None and worker.exitcode is None:
                worker.terminate()  # SIGTERM: each worker drains

    def forward(signum: int, frame: FrameType | None) -> None:
        for worker in workers:
            if worker.pid is not None and worker.exitcode is None:
                os.kill(worker.pid, signum)

    handlers = {signal.SIGTERM: stop, signal.SIGINT: stop, signal.SIGHUP: forward}
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        for index, worker in enumerate(workers):
            worker.start()
            pids[index] = worker.pid or 0
        log.info("started %d server processes sharing port %d", len(workers), settings.grpc_port)
        while not stopping and all(w.exitcode is None for w in workers):
            time.sleep(_POLL_S)
        if not stopping:
            failed = next(w for w in workers if w.exitcode is not None)
            failed_code = failed.exitcode or 1
            log.error(
                "server process %s exited with %s; stopping the others", failed.name, failed_code
            )
            stop(signal.SIGTERM, None)
        deadline = time.monotonic() + settings.grace_period_s + 10
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.exitcode is None:
                worker.kill()
                worker.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failed_code is not None:
        return failed_code
    return next((w.exitcode for w in workers if w.exitcode), 0) or 0


def _peers_of(addresses: list[str], index: int, pids: object) -> WorkerPeers:
    others = tuple(a for i, a in enumerate(addresses) if i != index)
    return WorkerPeers(index=index, own_address=addresses[index], peer_addresses=others, pids=pids)


def _worker_main(settings: ServerSettings, run_one: RunOne, peers: WorkerPeers) -> None:
    # Until the server's own handler is in place, a SIGHUP must not end the worker.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    configure_logging(
        settings.log_level, settings.log_format, multiprocessing.current_process().name
    )
    raise SystemExit(run_one(settings, peers))
