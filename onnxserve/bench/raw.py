"""The raw onnxruntime baseline: the served model file, timed in this process.

A server's figures mean little on their own (they move with the machine); the
same model run directly through ``InferenceSession.run`` in the same run gives
the floor for latency (batch 1) and the ceiling for throughput (the best
batch). The session uses onnxruntime's defaults, as a service that embedded
the model would, and runs while the server is idle.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from onnxserve.bench.results import RawPoint, RawResult
from onnxserve.bench.workload import ModelInfo, WorkloadError, build_inputs
from onnxserve.layout import version_folders
from onnxserve.server.model_files import opset_domains
from onnxserve.sessions import CPU_PROVIDER, SessionError, create_session, needs_extensions

log = logging.getLogger(__name__)

__all__ = ["find_model_file", "measure_raw"]

# Each batch size: this many untimed runs first (allocations, kernel choice).
_WARMUP_RUNS = 3
_MIN_RUNS = 5
# Each batch size is timed in this many chunks and the fastest chunk is
# reported: on a machine shared with other work, interference only ever slows
# a chunk down, so the fastest is the closest to the model's own cost (this
# makes the baseline, and so every ratio to it, conservative).
_CHUNKS = 5


def find_model_file(repository: Path, model: str, version: str, info: ModelInfo) -> Path:
    """``<repository>/<model>/<version>/<default_model_filename>``; the highest
    numeric version the server reports when ``version`` is empty."""
    folder = repository / model
    if not version:
        served = [v for v in info.versions if v.isdigit()]
        candidates = served or [str(v) for v in version_folders(folder)]
        if not candidates:
            raise WorkloadError(f"no numeric version folder under {folder}")
        version = max(candidates, key=int)
    path = folder / version / info.default_model_filename
    if not path.is_file():
        raise WorkloadError(f"model file {path} does not exist")
    return path


def _session(model_file: Path, device: str, threads: int) -> object:
    import onnxruntime as ort

    cuda = "CUDAExecutionProvider"
    wants_cuda = device == "cuda" or (device == "auto" and cuda in ort.get_available_providers())
    providers = [cuda, CPU_PROVIDER] if wants_cuda else [CPU_PROVIDER]
    # A CUDA provider whose libraries are missing is reported by the provider
    # list below (the table says which ran), not by pages of loader noise on
    # stderr; errors that stop the session still raise.
    try:
        session = create_session(
            model_file,
            providers,
            intra_op_threads=threads,
            quiet_providers=True,
            custom_ops=needs_extensions(opset_domains(model_file)),
        )
    except SessionError as exc:
        raise WorkloadError(f"onnxruntime cannot load {model_file.name}: {exc}") from None
    if device == "cuda" and cuda not in session.get_providers():
        raise WorkloadError("--raw-device cuda: onnxruntime could not use CUDA here")
    return session


def measure_raw(
    model_file: Path,
    info: ModelInfo,
    batch_sizes: Sequence[int],
    *,
    seconds: float = 1.0,
    device: str = "auto",
    threads: int = 0,
    int_range: Sequence[int] = (),
    seed: int = 0,
    progress: Callable[[str, float], None] | None = None,
) -> RawResult:
    """Time ``session.run`` at each batch size for about ``seconds`` each (the
    fastest of five chunks; see ``_CHUNKS``).

    Inputs are random within the same ranges as the requests. Non-batchable
    models are timed at their one shape only (reported as batch 1).
    """
    session = _session(model_file, device, threads)
    names = {i.name for i in session.get_inputs()}  # type: ignore[attr-defined]
    missing = [spec.name for spec in info.inputs if spec.name not in names]
    if missing:
        raise WorkloadError(
            f"{model_file} has no input(s) {', '.join(missing)}: is it the served model?"
        )
    sizes = sorted(set(batch_sizes)) if info.batchable else [1]
    batch_info = info
    if info.batchable and max(sizes) > info.max_batch_size:
        # The raw session is not bound by the server's max_batch_size.
        from dataclasses import replace

        batch_info = replace(info, max_batch_size=max(sizes))
    points = []
    run = session.run  # type: ignore[attr-defined]
    for index, batch in enumerate(sizes):
        feeds = build_inputs(batch_info, batch, "random", int_range=int_range, seed=seed, count=1)
        for _ in range(_WARMUP_RUNS):
            run(None, feeds[0])
        chunks: list[np.ndarray] = []
        chunk_seconds = seconds / _CHUNKS
        for chunk in range(_CHUNKS):
            times: list[int] = []
            started = time.perf_counter_ns()
            deadline = started + int(chunk_seconds * 1e9)
            while True:
                t0 = time.perf_counter_ns()
                run(None, feeds[0])
                t1 = time.perf_counter_ns()
                times.append(t1 - t0)
                if t1 >= deadline and len(times) >= _MIN_RUNS:
                    break
            chunks.append(np.asarray(times, dtype=np.float64) / 1e6)
            if progress is not None:
                progress(
                    f"raw onnxruntime, batch {batch}",
                    (index + (chunk + 1) / _CHUNKS) / len(sizes),
                )
        means = [float(c.mean()) for c in chunks]
        best = chunks[int(np.argmin(means))]
        points.append(
            RawPoint(
                batch=batch,
                runs=int(best.size),
                mean_ms=float(best.mean()),
                p50_ms=float(np.percentile(best, 50)),
                p99_ms=float(np.percentile(best, 99)),
                samples_per_s=batch * 1000.0 / float(best.mean()),
                chunk_means_ms=tuple(means),
            )
        )
        log.debug("raw onnxruntime batch %d: chunk means %s ms", batch, means)
    return RawResult(
        model_file=str(model_file),
        providers=tuple(session.get_providers()),  # type: ignore[attr-defined]
        intra_op_threads=threads,
        points=tuple(points),
    )
