"""One exception hierarchy for everything a call can fail with.

Every failed call raises an :class:`InferenceServerError` (or a subclass chosen
by the gRPC status code), never a bare ``grpc.RpcError``: callers catch one
type, and branch on the subclass or on ``.code`` when they care why. The
server's own words are kept in ``.message`` unchanged, because that is the text
that names the model, input or field at fault.

Example::

    from onnxserve.client import Client, ModelNotFoundError

    with Client("localhost:8001") as client:
        try:
            client.infer("no-such-model", {"x": x})
        except ModelNotFoundError as exc:
            print(exc.code, exc.message)
"""

from __future__ import annotations

import grpc

__all__ = [
    "AuthenticationError",
    "DeadlineExceededError",
    "InferenceServerError",
    "InternalServerError",
    "InvalidInputError",
    "InvalidResponseError",
    "ModelNotFoundError",
    "PermissionDeniedError",
    "RequestCancelledError",
    "ResourceExhaustedError",
    "ServerUnavailableError",
    "UnimplementedError",
    "error_for_code",
    "from_rpc_error",
]


class InferenceServerError(Exception):
    """A call failed; ``code`` is the gRPC status code, ``message`` the server's text.

    Errors found by the client itself before anything is sent (an array whose
    dtype has no protocol datatype, say) use the code the server would have
    answered with, so one ``except`` clause covers both.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"[{self.code.name}] {self.message}"

    def __reduce__(self) -> tuple[type[InferenceServerError], tuple[str, grpc.StatusCode]]:
        # Keep the code when the error crosses a process boundary (multiprocessing).
        return (type(self), (self.message, self.code))


class ModelNotFoundError(InferenceServerError):
    """No such model or version on the server (NOT_FOUND)."""

    code = grpc.StatusCode.NOT_FOUND


class InvalidInputError(InferenceServerError, ValueError):
    """The request does not fit the model or the protocol (INVALID_ARGUMENT)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class ServerUnavailableError(InferenceServerError):
    """The server (or the model) cannot serve now; worth retrying later (UNAVAILABLE)."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceededError(InferenceServerError, TimeoutError):
    """The call's deadline passed before an answer came (DEADLINE_EXCEEDED)."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ResourceExhaustedError(InferenceServerError):
    """A queue or message-size limit was hit; back off (RESOURCE_EXHAUSTED)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnimplementedError(InferenceServerError):
    """The server does not implement this call (UNIMPLEMENTED)."""

    code = grpc.StatusCode.UNIMPLEMENTED


class AuthenticationError(InferenceServerError):
    """The server did not accept the credentials (UNAUTHENTICATED)."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDeniedError(InferenceServerError):
    """The credentials are valid but not for this call (PERMISSION_DENIED)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class RequestCancelledError(InferenceServerError):
    """The call was cancelled, by this side or the server (CANCELLED)."""

    code = grpc.StatusCode.CANCELLED


class InternalServerError(InferenceServerError):
    """The server failed while handling the call (INTERNAL)."""

    code = grpc.StatusCode.INTERNAL


class InvalidResponseError(InferenceServerError):
    """The server's answer could not be decoded (e.g. tensor bytes that do not fit the shape).

    Raised by the client, not sent by the server; its code is UNKNOWN.
    """


_BY_CODE: dict[grpc.StatusCode, type[InferenceServerError]] = {
    cls.code: cls
    for cls in (
        ModelNotFoundError,
        InvalidInputError,
        ServerUnavailableError,
        DeadlineExceededError,
        ResourceExhaustedError,
        UnimplementedError,
        AuthenticationError,
        PermissionDeniedError,
        RequestCancelledError,
        InternalServerError,
    )
}


def error_for_code(code: grpc.StatusCode, message: str) -> InferenceServerError:
    """The exception for a status code: the matching subclass, else the base class."""
    cls = _BY_CODE.get(code)
    if cls is None:
        return InferenceServerError(message, code)
    return cls(message)


def from_rpc_error(error: grpc.RpcError) -> InferenceServerError:
    """Translate a gRPC failure (sync ``grpc.Call`` or ``grpc.aio.AioRpcError``)."""
    code_fn = getattr(error, "code", None)
    details_fn = getattr(error, "details", None)
    code = code_fn() if callable(code_fn) else None
    details = details_fn() if callable(details_fn) else None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    return error_for_code(code, details or str(error) or code.name)
