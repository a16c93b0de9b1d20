"""A one-line progress bar on stderr, with no dependency.

On a terminal the line is redrawn in place; elsewhere (CI logs, pipes) only a
line per finished phase is written, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]

_WIDTH = 24


class Progress:
    """Redraws at most every ``interval`` seconds; ``done`` ends the line."""

    def __init__(
        self, enabled: bool = True, stream: TextIO | None = None, interval: float = 0.2
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = enabled and self.stream.isatty()
        self.interval = interval
        self._last = 0.0
        self._drawn = False

    def update(self, label: str, fraction: float, detail: str = "") -> None:
        """Show ``label`` at ``fraction`` (0..1) of its phase, plus a detail text."""
        if not self.tty:
            return
        now = time.monotonic()
        if now - self._last < self.interval and fraction < 1.0:
            return
        self._last = now
        fraction = min(max(fraction, 0.0), 1.0)
        filled = round(fraction * _WIDTH)
        bar = "#" * filled + "." * (_WIDTH - filled)
        line = f"\r[{bar}] {fraction * 100:5.1f}% {label}"
        if detail:
            line += f"  {detail}"
        self.stream.write(line.ljust(100)[:120])
        self.stream.flush()
        self._drawn = True

    def done(self, message: str) -> None:
        """Finish the phase with one permanent line."""
        if not self.enabled:
            return
        if self._drawn:
            self.stream.write("\r" + " " * 120 + "\r")
            self._drawn = False
        self.stream.write(message + "\n")
        self.stream.flush()
