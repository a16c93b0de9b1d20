"""This process's resident memory, from /proc: what the converter reports per step and the
server per model.

Linux only (``/proc/self/status``); elsewhere the figures fall back to
``resource.getrusage`` (peak only) or are None. Resident memory counts the
pages of memory-mapped files a process has touched (``RssFile``) as well as
its own allocations (``RssAnon``), so a model whose external data
onnxruntime maps shows the weights it has read, not the file's size.

:func:`measure` finds the peak of a stretch of work by sampling the
resident size on a thread of its own (every 20 ms): resetting the kernel's
high-water mark instead (``/proc/self/clear_refs``) would make the process's
own peak, which ``/usr/bin/time`` and ``getrusage`` report at exit, wrong.
Memory that is allocated and freed within one interval can go unseen; the
large allocations that matter here take longer than that to fill.
Light: no third-party imports, no side effects at import.
"""

from __future__ import annotations

import resource
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "MemorySpan",
    "format_bytes",
    "measure",
    "peak_resident_bytes",
    "resident_bytes",
]

_STATUS = Path("/proc/self/status")
SAMPLE_SECONDS = 0.02


def _status_kib(field: str) -> int | None:
    try:
        text = _STATUS.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def resident_bytes() -> int | None:
    """The resident set size now (VmRSS), or None where /proc is missing."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def peak_resident_bytes() -> int | None:
    """The process's resident high-water mark since it started (VmHWM)."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if not peak:
        return None
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # bytes on macOS


@dataclass
class MemorySpan:
    """What one measured stretch of work took: seconds, resident memory before, after, peak.

    ``peak_bytes`` is the highest resident size sampled within the span (None
    where /proc is missing).
    """

    seconds: float = 0.0
    before_bytes: int | None = None
    after_bytes: int | None = None
    peak_bytes: int | None = None

    @property
    def growth_bytes(self) -> int | None:
        """Resident memory the span added and kept (after minus before)."""
        if self.before_bytes is None or self.after_bytes is None:
            return None
        return self.after_bytes - self.before_bytes


@contextmanager
def measure() -> Iterator[MemorySpan]:
    """Time the block and record resident memory around it and its sampled peak within it."""
    span = MemorySpan(before_bytes=resident_bytes())
    done = threading.Event()
    peak = [span.before_bytes]

    def sample() -> None:
        while not done.wait(SAMPLE_SECONDS):
            now = resident_bytes()
            if now is not None and (peak[0] is None or now > peak[0]):
                peak[0] = now

    sampler = None
    if span.before_bytes is not None:
        sampler = threading.Thread(target=sample, name="onnxserve-memory", daemon=True)
        sampler.start()
    started = time.monotonic()
    try:
        yield span
    finally:
        span.seconds = time.monotonic() - started
        done.set()
        if sampler is not None:
            sampler.join()
        span.after_bytes = resident_bytes()
        values = [v for v in (peak[0], span.after_bytes) if v is not None]
        span.peak_bytes = max(values) if values else None


def format_bytes(n: int | None) -> str:
    """'1.2 GiB', '512 MiB', or '?' for an unknown figure."""
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.2f} GiB"
