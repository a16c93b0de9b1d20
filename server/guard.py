"""What a call passes before the servicer sees it: bearer tokens and the concurrency limit.

One server interceptor (installed only when ``--auth-token-file`` or
``--max-concurrent-rpcs`` is given; the servicer never sees credentials):

- Authentication: every call except grpc.health.v1 (Kubernetes probes send
  no metadata) must carry ``authorization: Bearer <token>`` with a token from
  the file; a missing or wrong one gets UNAUTHENTICATED before the request is
  read (the refusal is a streaming-request handler that never reads: grpc.aio
  reads a unary call's whole message before its behaviour runs). Tokens are
  compared in constant time (SHA-256 digests of equal length,
  hmac.compare_digest against every token, no early exit) and never logged.
  SIGHUP re-reads the file; a file that cannot be read keeps the tokens in use.
- Concurrency: past ``--max-concurrent-rpcs`` calls in flight in this process
  (health excepted, so probes still answer under load), a call gets
  RESOURCE_EXHAUSTED at once, also before its request is read (so the limit
  bounds the request bodies held as well). The check and the count happen
  together on the event loop (:class:`Admission`), so no two calls race past
  the limit. ModelStreamInfer is not counted as a call: each of its requests
  counts instead, while it runs (the servicer asks the same Admission).
"""

from __future__ import annotations

import codecs
import hashlib
import hmac
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

log = logging.getLogger(__name__)

_HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
#: Methods that need no token and do not count against the limit.
EXEMPT_METHODS = frozenset({f"/{_HEALTH}/Check", f"/{_HEALTH}/Watch"})
AUTHORIZATION = "authorization"
_SCHEME = "bearer "
# What a client can send in a header value: printable ASCII and spaces.
_SENDABLE = re.compile(r"[\x20-\x7e]+")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class TokenFile:
    """The accepted bearer tokens, from a file of one token per line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._digests: tuple[bytes, ...] = ()
        if not self.reload():
            raise OSError("cannot read --auth-token-file; refusing to start without its tokens")

    def reload(self) -> bool:
        """Read the file again; on failure keep the tokens in use. Whether it was read.

        A UTF-8 byte-order mark (Notepad writes one) is dropped, with a warning:
        read as part of the first token, it locked every client out while the log
        said the token was accepted. A line holding anything but printable ASCII
        (a header cannot carry it, so no client could ever send that token) is
        left out, loudly; so is an unreadable or non-UTF-8 file (ERROR, with the
        path and the reason; the tokens in use stay in use).
        """
        try:
            raw = self.path.read_bytes()
            text = raw.decode("utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            log.error(
                "cannot read the token file %s (%s: %s); %s",
                self.path,
                type(exc).__name__,
                why,
                "the tokens in use stay in use" if self._digests else "no token is accepted",
            )
            return False
        if raw.startswith(codecs.BOM_UTF8):
            log.warning(
                "the token file %s starts with a UTF-8 byte-order mark; it was ignored "
                "(save the file as UTF-8 without BOM)",
                self.path,
            )
        tokens = set()
        for number, line in enumerate(text.splitlines(), start=1):
            token = line.strip()
            if not token or token.startswith("#"):
                continue
            if not _SENDABLE.fullmatch(token):
                log.error(
                    "the token file %s: line %d holds characters an HTTP/2 header cannot "
                    "carry (only printable ASCII can be sent); that line is ignored",
                    self.path,
                    number,
                )
                continue
            tokens.add(token)
        self._digests = tuple(_digest(token) for token in sorted(tokens))
        if not tokens:
            log.warning("the token file holds no tokens: every call but health is refused")
        else:
            log.info("accepting %d bearer token(s)", len(tokens))
        return True

    def digests(self) -> list[bytes]:
        """The SHA-256 digests of the accepted tokens (what the native front end checks)."""
        return list(self._digests)

    def allows(self, token: str | None) -> bool:
        """Whether ``token`` is one of the file's, in time independent of which or how close."""
        presented = _digest(token or "")
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(presented, digest)
        return matched and token is not None


def token_refusal(missing: bool) -> str:
    """What a call without a token (``missing``) or with a wrong one is told."""
    why = "a bearer token is required" if missing else "the token is not valid"
    return f"{why}: send 'authorization: Bearer <token>'"


def bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` entry, if any."""
    for key, value in metadata or ():
        if key == AUTHORIZATION and isinstance(value, str) and value[:7].lower() == _SCHEME:
            return value[7:].strip()
    return None


Behavior = Callable[..., Any]
StreamAnswer = Callable[..., Any]


class Admission:
    """The count of calls (and stream requests) in flight against ``--max-concurrent-rpcs``.

    Entered and left on the event loop only, so the check and the count are
    one step; ``limit`` 0 admits everything (and counts nothing).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    def try_enter(self) -> bool:
        if not self.limit:
            return True
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        if self.limit:
            self.in_flight -= 1

    def refusal(self) -> str:
        return (
            f"the server is serving its limit of {self.limit} concurrent calls "
            "(--max-concurrent-rpcs); retry later"
        )


def _reading_lazily(handler: grpc.RpcMethodHandler, behavior: Behavior) -> grpc.RpcMethodHandler:
    """The method's handler as a streaming-request one, whose ``behavior`` takes the
    request iterator.

    grpc.aio reads a unary call's message before its behaviour runs; a
    streaming-request handler reads nothing until the behaviour iterates. The
    client cannot tell (the wire is the same), so a refusal made here comes
    before the body is read: six unauthenticated 200 MB requests no longer
    cost the server their 1.2 GB.
    """
    make = (
        grpc.stream_stream_rpc_method_handler
        if handler.unary_stream or handler.stream_stream
        else grpc.stream_unary_rpc_method_handler
    )
    return make(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


async def _only_message(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
    """A unary call's one request message, read from its request iterator."""
    async for request in requests:
        return request
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the call carried no request message")


class CallGuard(grpc.aio.ServerInterceptor):
    """Tokens and the concurrency limit; see the module docstring."""

    def __init__(
        self,
        tokens: TokenFile | None,
        admission: Admission,
        per_request: frozenset[str] = frozenset(),
    ) -> None:
        self.tokens = tokens
        self.admission = admission
        # Streaming methods whose servicer counts each request against the limit itself.
        self.per_request = per_request

    @property
    def in_flight(self) -> int:
        return self.admission.in_flight

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method in EXEMPT_METHODS:
            return handler
        if self.tokens is not None:
            token = bearer_token(handler_call_details.invocation_metadata)
            if not self.tokens.allows(token):
                return _reading_lazily(
                    handler,
                    _refusal(
                        handler, grpc.StatusCode.UNAUTHENTICATED, token_refusal(token is None)
                    ),
                )
        if self.admission.limit and method not in self.per_request:
            return _reading_lazily(handler, self._limited(handler))
        return handler

    def _limited(self, handler: grpc.RpcMethodHandler) -> Behavior:
        """The behaviour behind the limit, checked before the request is read."""
        behavior = _original(handler)
        admission = self.admission
        streaming_request = handler.stream_unary or handler.stream_stream

        if handler.unary_stream or handler.stream_stream:

            async def streaming(
                requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                if not admission.try_enter():
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, admission.refusal())
                try:
                    request = (
                        requests if streaming_request else await _only_message(requests, context)
                    )
                    async for response in behavior(request, context):
                        yield response
                finally:
                    admission.leave()

            return streaming

        async def unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            if not admission.try_enter():
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, admission.refusal())
            try:
                request = requests if streaming_request else await _only_message(requests, context)
                return await behavior(request, context)
            finally:
                admission.leave()

        return unary


def _original(handler: grpc.RpcMethodHandler) -> Behavior:
    return (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )


def _refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> Behavior:
    """A streaming-request behaviour that refuses without reading a message."""
    if handler.unary_stream or handler.stream_stream:

        async def refuse_stream(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            await context.abort(code, message)
            yield  # an async generator, as the method's kind expects

        return refuse_stream

    async def refuse(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    return refuse
