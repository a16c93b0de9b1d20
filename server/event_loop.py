"""The event loop a server process runs on: uvloop where it is installed, else asyncio.

Measured on the 2-core development machine with 64 concurrent ModelInfer
calls, an empty grpc.aio handler answered 16 to 39 % more calls per second on
uvloop than on asyncio's own loop in every round (grpc.aio resumes a task per
call several times, and uvloop's loop is written in C). uvloop is in the
server extra; ``auto`` falls back to asyncio where it is missing (it has no
Windows build), and ``--event-loop asyncio`` turns it off.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

EventLoop = Literal["auto", "asyncio", "uvloop"]
T = TypeVar("T")


class EventLoopUnavailable(RuntimeError):
    """The event loop asked for cannot be used here."""


def uses_uvloop(choice: EventLoop) -> bool:
    """Whether ``choice`` means uvloop here; raises EventLoopUnavailable for a missing one."""
    if choice == "asyncio":
        return False
    available = importlib.util.find_spec("uvloop") is not None
    if choice == "uvloop" and not available:
        raise EventLoopUnavailable(
            "--event-loop uvloop: uvloop is not installed (pip install uvloop, or "
            "'onnxserve[server]'); use --event-loop auto or asyncio"
        )
    return available


def run(main: Coroutine[Any, Any, T], choice: EventLoop) -> T:
    """Run ``main`` to completion on the chosen loop (asyncio.run's semantics)."""
    if uses_uvloop(choice):
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


def describe(loop: asyncio.AbstractEventLoop) -> str:
    """The running loop in words, for the start-up log line: 'uvloop 0.23.0' or 'asyncio'."""
    if type(loop).__module__.startswith("uvloop"):
        import uvloop

        return f"uvloop {uvloop.__version__}"
    return "asyncio"
