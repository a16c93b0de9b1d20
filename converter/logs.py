"""The converter's one place for the log output of the libraries it drives.

TensorFlow (its C++ runtime: grappler's "Starting new session", oneDNN and
absl start-up lines), tf2onnx (a Python logger per pass, one ERROR line per
op it cannot convert) and onnxruntime (C++ lines with terminal colour codes,
e.g. a failing kernel's "[E:onnxruntime:...] Non-zero status code") all write
to the process's standard error. Every one of those facts that a user can act
on reaches them through the converter's own messages (the unsupported-op
error, the verification error); the raw lines only bury them. So while a
conversion runs (:func:`library_output`):

- file descriptor 2 is pointed at a temporary file, which catches the C++
  lines; Python's own ``sys.stderr`` and the logging handlers that write to
  it are pointed at the real standard error meanwhile, so the converter's
  progress lines and Python warnings still show;
- the ``tf2onnx`` and ``tensorflow`` Python loggers are raised to CRITICAL.

Afterwards the caught lines, colour codes stripped, go to the
``onnxserve.converter.libraries`` logger at DEBUG (``--log-level DEBUG``
shows them). With ``verbose`` (``onnxserve convert --verbose``) nothing is
redirected: every library's lines appear as they are written.

This covers the whole conversion, TensorFlow's import included when it
happens inside it (``onnxserve convert`` imports TensorFlow there). Redirecting
a file descriptor is process-wide: another thread's C++ output during a
conversion is caught too (and logged at DEBUG, not lost).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from typing import Any, TextIO

__all__ = ["LIBRARY_LOGGER", "library_output", "strip_colours"]

LIBRARY_LOGGER = "onnxserve.converter.libraries"
_QUIETED = ("tf2onnx", "tensorflow")
_COLOURS = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
log = logging.getLogger(LIBRARY_LOGGER)


def strip_colours(text: str) -> str:
    """``text`` without ANSI terminal escape sequences (onnxruntime colours its errors)."""
    return _COLOURS.sub("", text)


def _on_fd2(stream: Any) -> bool:
    try:
        return bool(stream.fileno() == 2)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False


def _stream_handlers() -> list[logging.StreamHandler[TextIO]]:
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    return [
        handler
        for logger in loggers
        if isinstance(logger, logging.Logger)
        for handler in logger.handlers
        if isinstance(handler, logging.StreamHandler) and _on_fd2(handler.stream)
    ]


@contextlib.contextmanager
def library_output(verbose: bool = False) -> Iterator[None]:
    """Keep the libraries' own log lines out of the output while active (see the module
    docstring); with ``verbose`` do nothing."""
    if verbose:
        yield
        return
    levels = {name: logging.getLogger(name).level for name in _QUIETED}
    for name in _QUIETED:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    sys.stderr.flush()
    real = os.dup(2)
    visible = open(real, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
    python_stderr = sys.stderr
    handlers = _stream_handlers()
    streams = [handler.setStream(visible) for handler in handlers]
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        if _on_fd2(python_stderr):
            sys.stderr = visible
        try:
            yield
        finally:
            visible.flush()
            os.dup2(real, 2)
            if sys.stderr is visible:
                sys.stderr = python_stderr
            for handler, stream in zip(handlers, streams, strict=True):
                if stream is not None:
                    handler.setStream(stream)
            visible.close()
            os.close(real)
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
            sink.seek(0)
            for line in strip_colours(sink.read().decode("utf-8", "replace")).splitlines():
                if line.strip():
                    log.debug("%s", line)
