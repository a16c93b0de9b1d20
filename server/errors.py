"""Domain errors, each carrying the gRPC status code a caller should see.

Handlers raise these and never build statuses by hand; one decorator in
``onnxserve.server.service`` turns them into ``context.abort``. Messages are
written for the caller: they name the model, input or field at fault and what
was expected, and never include filesystem paths or internal names.
"""

from __future__ import annotations

import grpc


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


class ConfigError(Exception):
    """A model's configuration or files are unusable; raised at load time.

    Not a request error: it marks the model UNAVAILABLE in the repository index,
    with this message as the reason.
    """
