"""Under ``--log-format json``, every line on the process's stderr is JSON, gRPC core's too.

gRPC core (C++) writes its own lines to file descriptor 2 ("E1201 12:00:00.1
123 ssl_transport_security.cc:1654] Handshake failed ..."), past Python's
logging; so does anything else native (onnxruntime, a crash's last words) and
any stray ``print(..., file=sys.stderr)``. One such line breaks a log shipper
that parses every line as JSON, and a peer that fails TLS handshakes on
purpose can write them at will.

So fd 2 becomes a pipe, read by one daemon thread that writes each line it
gets to the real stderr as a JSON event (logger ``grpc-core`` for lines in
gRPC's ``<L><date> <time> <thread> <file>:<line>] <message>`` form, with
level from ``<L>``, else ``stderr``). Lines that are JSON objects already (a
``--workers`` process's own log, whose stderr is this pipe) pass unchanged.
At most :data:`LINES_PER_SECOND` re-emitted lines a second: beyond, lines are
counted and one event says how many were dropped, so a flood costs the log a
line a second. The logging handler writes to the real stderr directly.

The alternative, ``GRPC_VERBOSITY=NONE``, would hide gRPC's errors from the
operator altogether; they are worth keeping, as JSON.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
import threading
import time
from datetime import datetime, timezone
from typing import TextIO

#: Re-emitted lines per second at most; the rest are counted and reported.
LINES_PER_SECOND = 50
#: A line longer than this is cut (the pipe is read in lines of at most this).
MAX_LINE = 16 * 1024
# gRPC core's glog-style prefix: severity letter, date, time, thread, file:line] message
_GRPC_LINE = re.compile(r"([IWEF])\d{4} [\d:.]+\s+\d+ ([^\]\s]+:\d+)\] ?(.*)")
_LEVELS = {"I": "INFO", "W": "WARNING", "E": "ERROR", "F": "CRITICAL"}

_installed: TextIO | None = None


def real_stderr() -> TextIO:
    """Where the log handler writes: the real stderr once fd 2 is a pipe, else sys.stderr."""
    return _installed if _installed is not None else sys.stderr


def install(worker: str = "") -> TextIO:
    """Turn fd 2 into the re-emitting pipe (once per process); the real stderr."""
    global _installed
    if _installed is not None:
        return _installed
    sys.stderr.flush()
    real_fd = os.dup(2)
    os.set_inheritable(real_fd, False)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)  # fd 2 stays inheritable: children write into the pipe too
    os.close(write_fd)
    real = _text(io.FileIO(real_fd, "w", closefd=True))
    # Python's own stray writes to sys.stderr go through the pipe as well.
    sys.stderr = _text(io.FileIO(2, "w", closefd=False))
    thread = threading.Thread(
        target=_pump, args=(read_fd, real, worker), name="onnxserve-stderr", daemon=True
    )
    thread.start()
    _installed = real
    return real


def _text(raw: io.FileIO) -> TextIO:
    return io.TextIOWrapper(raw, encoding="utf-8", errors="replace", line_buffering=True)


def as_event(line: str, worker: str = "") -> str:
    """One stderr line as a JSON event (a JSON object line is returned as it is)."""
    if line.startswith("{"):
        try:
            if isinstance(json.loads(line), dict):
                return line
        except ValueError:
            pass
    match = _GRPC_LINE.match(line)
    if match:
        level, where, message = _LEVELS[match.group(1)], match.group(2), match.group(3)
        event = {"logger": "grpc-core", "level": level, "message": message, "source": where}
    else:
        event = {"logger": "stderr", "level": "WARNING", "message": line}
    event = {"time": _now(), **event}
    if worker:
        event["worker"] = worker
    return json.dumps(event, ensure_ascii=False)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _pump(read_fd: int, real: TextIO, worker: str) -> None:
    """Read the pipe for the life of the process; write JSON events to the real stderr."""
    window_start = time.monotonic()
    emitted = dropped = 0
    with open(read_fd, "rb", buffering=64 * 1024, closefd=True) as pipe:
        while True:
            raw = pipe.readline(MAX_LINE)
            if not raw:
                return
            now = time.monotonic()
            if now - window_start >= 1.0:
                if dropped:
                    real.write(_dropped(dropped, worker) + "\n")
                window_start, emitted, dropped = now, 0, 0
            if emitted >= LINES_PER_SECOND:
                dropped += 1
                continue
            emitted += 1
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if line:
                real.write(as_event(line, worker) + "\n")


def _dropped(count: int, worker: str) -> str:
    event = {
        "time": _now(),
        "level": "WARNING",
        "logger": "onnxserve.server.stderr_json",
        "message": f"{count} more stderr line(s) in the last second were dropped "
        f"(at most {LINES_PER_SECOND} a second are logged)",
    }
    if worker:
        event["worker"] = worker
    return json.dumps(event)
