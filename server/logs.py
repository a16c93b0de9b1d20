"""The server's log: one line per event, as text or JSON, at the resolved level.

Set up from the resolved settings (flag, ``ONNXSERVE_LOG_LEVEL`` or the
config file) in every server process, workers included. A traceback stays on
its event's line (JSON: in ``exc_info``; text: its lines joined with `` | ``),
so that a log shipper never splits an event. The server logs no line per
request at INFO, and never a token or a tensor's contents: requests appear only
through errors, whose messages name inputs, shapes and datatypes.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

from onnxserve.server import stderr_json

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(process_name)s%(name)s: %(message)s"


class _OneLine(logging.Formatter):
    """Text with any traceback folded onto the same line."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", " | ")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, worker, message, exc_info."""

    def __init__(self, worker: str) -> None:
        super().__init__()
        self._worker = worker

    def format(self, record: logging.LogRecord) -> str:
        event = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self._worker:
            event["worker"] = self._worker
        if record.exc_info:
            event["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(event, ensure_ascii=False)


def configure_logging(level: str, log_format: str, worker: str = "") -> None:
    """Replace the root logger's handlers with one stderr handler in the chosen format.

    JSON: fd 2 itself becomes JSON too (gRPC core's lines, ``stderr_json``).
    """
    if log_format == "json":
        handler = logging.StreamHandler(stderr_json.install(worker))
    else:
        handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(worker))
    else:
        prefix = f"[{worker}] " if worker else ""
        handler.setFormatter(_OneLine(_TEXT_FORMAT.replace("%(process_name)s", prefix)))
    logging.basicConfig(level=level, handlers=[handler], force=True)
