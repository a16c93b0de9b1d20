"""Triton's error codes (TRITONSERVER_Error_Code, as ``pb_utils.TritonError`` carries them)
and the server's errors, both ways: each pair once.

A Python model's ``TritonError(message, code)`` becomes the request's status
(:func:`error_for_code`), and an error a BLS call ended with reaches the model
as a TritonError of the matching code (:func:`code_for_error`).
"""

from __future__ import annotations

import grpc

from onnxserve.server.errors import (
    InvalidInput,
    ModelExecutionError,
    ModelNotFound,
    ModelUnavailable,
    NotImplementedByServer,
    RequestCancelled,
    ServerError,
)

UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS, CANCELLED = (
    range(8)
)

_ERRORS: dict[int, type[ServerError]] = {
    NOT_FOUND: ModelNotFound,
    INVALID_ARG: InvalidInput,
    UNAVAILABLE: ModelUnavailable,
    UNSUPPORTED: NotImplementedByServer,
    CANCELLED: RequestCancelled,
}
_CODES: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.NOT_FOUND: NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT: INVALID_ARG,
    grpc.StatusCode.UNAVAILABLE: UNAVAILABLE,
    grpc.StatusCode.UNIMPLEMENTED: UNSUPPORTED,
    grpc.StatusCode.CANCELLED: CANCELLED,
    grpc.StatusCode.ALREADY_EXISTS: ALREADY_EXISTS,
    grpc.StatusCode.UNKNOWN: UNKNOWN,
}


class UnknownModelError(ServerError):
    """A model's error with Triton's UNKNOWN code (gRPC UNKNOWN)."""

    code = grpc.StatusCode.UNKNOWN


def error_for_code(code: int, message: str) -> ServerError:
    """The request error for a TritonError's code and message (INTERNAL when unknown)."""
    if code == UNKNOWN:
        return UnknownModelError(message)
    return _ERRORS.get(code, ModelExecutionError)(message)


def code_for_error(error: ServerError) -> int:
    """The TritonError code of a server error."""
    return _CODES.get(error.code, INTERNAL)
