"""Domain errors, each carrying the gRPC status code a caller should see.

Handlers raise these and never build statuses by hand; one decorator in
``onnxserve.server.service`` turns them into ``context.abort``. Messages are
written for the caller: they name the model, input or field at fault and what
was expected, and never include filesystem paths or internal names.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Literal

import grpc

log = logging.getLogger(__name__)

#: Why a request to a model version failed: the ``reason`` label of
#: ``nv_inference_request_failure`` (see :func:`failure_reason`).
FailureReason = Literal[
    "invalid_argument", "queue_full", "deadline_exceeded", "cancelled", "unavailable", "internal"
]
FAILURE_REASONS: tuple[FailureReason, ...] = (
    "invalid_argument",
    "queue_full",
    "deadline_exceeded",
    "cancelled",
    "unavailable",
    "internal",
)
#: What a caller reads when the server failed in a way it does not explain.
INTERNAL_MESSAGE = "internal server error; see the server log"
#: The most characters of one caller-sent value (a name, a version, a shape) an
#: error message quotes: a 50 MiB model name echoed whole made the status
#: exceed gRPC's 16 KiB metadata limit, and the caller read RESOURCE_EXHAUSTED.
QUOTE_LIMIT = 200
#: The most characters of any message a caller reads (grpc-message travels in a
#: header, percent-encoded: 1,024 characters stay under 16 KiB even as 4-byte
#: UTF-8 characters, each written as three characters per byte).
MESSAGE_LIMIT = 1024
# A shape quoted in a message shows this many dimensions at most.
_SHAPE_DIMS = 16


def quoted(text: str, limit: int = QUOTE_LIMIT) -> str:
    """Caller-sent text as an error message may quote it: at most ``limit`` characters."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def shape_text(shape: Sequence[int]) -> str:
    """A caller-sent shape as an error message may quote it: at most 16 dimensions."""
    if len(shape) <= _SHAPE_DIMS:
        return str(list(shape))
    head = ", ".join(str(d) for d in shape[: _SHAPE_DIMS // 2])
    return f"[{head}, ... ({len(shape)} dimensions)]"


def bounded_message(message: str) -> str:
    """A message cut to :data:`MESSAGE_LIMIT` characters (the last guard before the wire)."""
    if len(message) <= MESSAGE_LIMIT:
        return message
    return message[: MESSAGE_LIMIT - 20] + "... (message cut)"


class ServerError(Exception):
    """Base class: an error with a status code and a caller-facing message."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ServerError):
    """The request is malformed or does not match the model (INVALID_ARGUMENT)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotFound(ServerError):
    """No such model, or no such version of it (NOT_FOUND)."""

    code = grpc.StatusCode.NOT_FOUND


class ModelUnavailable(ServerError):
    """The model exists but cannot serve now: loading, draining, failed (UNAVAILABLE)."""

    code = grpc.StatusCode.UNAVAILABLE


class QueueFull(ServerError):
    """The model's queue is at max_queue_size; retry later (RESOURCE_EXHAUSTED)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class ServerBusy(ServerError):
    """The server serves its --max-concurrent-rpcs; retry later (RESOURCE_EXHAUSTED)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class RequestTimeout(ServerError):
    """The request's queue timeout or deadline passed before it ran (DEADLINE_EXCEEDED)."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class RequestCancelled(ServerError):
    """The caller went away before the request ran (CANCELLED)."""

    code = grpc.StatusCode.CANCELLED


class NotImplementedByServer(ServerError):
    """A protocol feature this server does not provide (UNIMPLEMENTED)."""

    code = grpc.StatusCode.UNIMPLEMENTED


class ModelExecutionError(ServerError):
    """onnxruntime failed on input that passed validation (INTERNAL).

    The message stays generic for the caller; the details go to the log.
    """

    code = grpc.StatusCode.INTERNAL


class ModelControlRefused(ServerError):
    """A model-control call while the mode does not enable it (UNIMPLEMENTED).

    gRPC's UNIMPLEMENTED covers an operation "not supported/enabled in this
    service"; clients already treat it as "this server does not do that".
    """

    code = grpc.StatusCode.UNIMPLEMENTED


class ModelLoadFailed(ServerError):
    """RepositoryModelLoad could not load the model from the repository (FAILED_PRECONDITION)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ConfigError(Exception):
    """A model's configuration or files are unusable; raised at load time.

    Not a request error: it marks the model UNAVAILABLE in the repository index,
    with this message as the reason.
    """


def status_of(error: BaseException, where: str) -> tuple[grpc.StatusCode, str]:
    """The one mapping of an exception to what the caller sees: (status code, message).

    A :class:`ServerError` carries both; anything else is a bug or an
    environment failure: INTERNAL with a generic message, the details only in
    the log (``where`` names the RPC there).
    """
    if isinstance(error, ServerError):
        return error.code, bounded_message(error.message)
    log.error("unexpected error in %s", where, exc_info=error)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


_REASONS: dict[type[ServerError], FailureReason] = {
    InvalidInput: "invalid_argument",
    QueueFull: "queue_full",
    RequestTimeout: "deadline_exceeded",
    RequestCancelled: "cancelled",
    ModelUnavailable: "unavailable",
}


def failure_reason(error: BaseException | None) -> FailureReason:
    """The metrics reason of a failed request (``None``: unknown, counted as internal)."""
    if isinstance(error, asyncio.CancelledError):
        return "cancelled"
    for kind, reason in _REASONS.items():
        if isinstance(error, kind):
            return reason
    return "internal"


class ModelLoadRefused(ServerError):
    """A load the server's settings do not allow for this model (PERMISSION_DENIED)."""

    code = grpc.StatusCode.PERMISSION_DENIED
