"""Signals that arrive before the server's own handlers are in place.

``onnxserve serve`` spends its first seconds importing (grpc, numpy,
onnxruntime: 1 to 4 s on a busy 2-core machine) before the event loop exists
to handle signals. Python's default for SIGHUP is to die (exit 129, as an
orchestrator sending SIGHUP to re-read tokens then saw), and a SIGTERM then
left no log line. So the command line installs :func:`hold` first thing: the
three signals are remembered, and the server, once its handlers are in
place, acts on them (:func:`take`): a stop asked for before start-up ends the
process at once with 0, a SIGHUP is moot (the token file is read at start-up).
"""

from __future__ import annotations

import signal
from types import FrameType

#: The signals the server handles: stop (TERM, INT) and re-read tokens (HUP).
HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
STOPS = frozenset({signal.SIGTERM, signal.SIGINT})

_pending: list[int] = []


def _remember(signum: int, frame: FrameType | None) -> None:
    _pending.append(signum)


def hold() -> None:
    """From now until the server's own handlers: remember these signals, do not die of them."""
    for signum in HANDLED:
        signal.signal(signum, _remember)


def take() -> list[int]:
    """The signals remembered so far (and forget them)."""
    taken = list(_pending)
    _pending.clear()
    return taken


def stop_pending() -> bool:
    """Whether a stop signal arrived early (it stays pending for the next :func:`take`)."""
    return any(signum in STOPS for signum in _pending)
