"""This process's resident memory, from /proc: what the converter reports per step and the
server per model.

Linux only (``/proc/self/status``); elsewhere the figures fall back to
``resource.getrusage`` (peak only) or are None. Resident memory counts the
pages of memory-mapped files a process has touched (``RssFile``) as well as
its own allocations (``RssAnon``), so a model whose external data
onnxruntime maps shows the weights it has read, not the file's size.

:func:`reset_peak` writes 5 to ``/proc/self/clear_refs``, which resets the
kernel's high-water mark (``VmHWM``) to the current resident size: that is
how one step's own peak is measured rather than the process's since start.
Light: no third-party imports, no side effects at import.
"""

from __future__ import annotations

import resource
import sys
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
    "reset_peak",
    "resident_bytes",
]

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_RESET_PEAK = "5"  # clear_refs: reset the peak resident set size (Linux 4.0 and later)


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
    """The resident high-water mark (VmHWM; since start or the last :func:`reset_peak`)."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if not peak:
        return None
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # bytes on macOS


def reset_peak() -> bool:
    """Reset the high-water mark to the current resident size; False where the kernel can't."""
    try:
        _CLEAR_REFS.write_text(_RESET_PEAK)
    except OSError:
        return False
    return True


@dataclass
class MemorySpan:
    """What one measured stretch of work took: seconds, resident memory before, after, peak.

    ``peak_bytes`` is the peak within the span where the high-water mark could be
    reset at its start, else the process's peak so far (``peak_is_span`` False).
    """

    seconds: float = 0.0
    before_bytes: int | None = None
    after_bytes: int | None = None
    peak_bytes: int | None = None
    peak_is_span: bool = False

    @property
    def growth_bytes(self) -> int | None:
        """Resident memory the span added and kept (after minus before)."""
        if self.before_bytes is None or self.after_bytes is None:
            return None
        return self.after_bytes - self.before_bytes


@contextmanager
def measure(*, reset: bool = True) -> Iterator[MemorySpan]:
    """Time the block and record resident memory around it (the peak within it with ``reset``).

    Resetting the high-water mark is process-wide: a caller that also wants the
    process's peak since start must read it before. The server's model loads
    leave it alone (``reset=False``): loads may overlap, and the process peak
    is what an operator sizes a pod by.
    """
    span = MemorySpan(before_bytes=resident_bytes())
    span.peak_is_span = reset and reset_peak()
    started = time.monotonic()
    try:
        yield span
    finally:
        span.seconds = time.monotonic() - started
        span.after_bytes = resident_bytes()
        span.peak_bytes = peak_resident_bytes()


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
