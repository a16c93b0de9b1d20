"""What a call passes before the servicer sees it: bearer tokens and the concurrency limit.

One server interceptor (installed only when ``--auth-token-file`` or
``--max-concurrent-rpcs`` is given; the servicer never sees credentials):

- Authentication: every call except grpc.health.v1 (Kubernetes probes send
  no metadata) must carry ``authorization: Bearer <token>`` with a token from
  the file; a missing or wrong one gets UNAUTHENTICATED before the request is
  read. Tokens are compared in constant time (SHA-256 digests of equal length,
  hmac.compare_digest against every token, no early exit) and never logged.
  SIGHUP re-reads the file; a file that cannot be read keeps the tokens in use.
- Concurrency: past ``--max-concurrent-rpcs`` calls in flight in this process
  (health excepted, so probes still answer under load), a call gets
  RESOURCE_EXHAUSTED at once. The check and the count happen together when
  the handler starts, on the event loop, so no two calls race past the limit.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
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
        """Read the file again; on failure keep the tokens in use. Whether it was read."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            log.error(
                "cannot read the token file (%s); the tokens in use stay in use",
                type(exc).__name__,
            )
            return False
        stripped = (line.strip() for line in lines)
        tokens = {line for line in stripped if line and not line.startswith("#")}
        self._digests = tuple(_digest(token) for token in sorted(tokens))
        if not tokens:
            log.warning("the token file holds no tokens: every call but health is refused")
        else:
            log.info("accepting %d bearer token(s)", len(tokens))
        return True

    def allows(self, token: str | None) -> bool:
        """Whether ``token`` is one of the file's, in time independent of which or how close."""
        presented = _digest(token or "")
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(presented, digest)
        return matched and token is not None


def bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` entry, if any."""
    for key, value in metadata or ():
        if key == AUTHORIZATION and isinstance(value, str) and value[:7].lower() == _SCHEME:
            return value[7:].strip()
    return None


Behavior = Callable[..., Any]


def _replace_behavior(handler: grpc.RpcMethodHandler, behavior: Behavior) -> grpc.RpcMethodHandler:
    """The same method handler (kind, (de)serializers) with another behaviour."""
    if handler.unary_unary:
        make = grpc.unary_unary_rpc_method_handler
    elif handler.unary_stream:
        make = grpc.unary_stream_rpc_method_handler
    elif handler.stream_unary:
        make = grpc.stream_unary_rpc_method_handler
    else:
        make = grpc.stream_stream_rpc_method_handler
    return make(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _original(handler: grpc.RpcMethodHandler) -> Behavior:
    return (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )


class CallGuard(grpc.aio.ServerInterceptor):
    """Tokens and the concurrency limit; see the module docstring."""

    def __init__(self, tokens: TokenFile | None, max_concurrent: int) -> None:
        self.tokens = tokens
        self.max_concurrent = max_concurrent
        self.in_flight = 0

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method in EXEMPT_METHODS:
            return handler
        if self.tokens is not None:
            token = bearer_token(handler_call_details.invocation_metadata)
            if not self.tokens.allows(token):
                why = "a bearer token is required" if token is None else "the token is not valid"
                return _replace_behavior(
                    handler,
                    _refusal(
                        handler,
                        grpc.StatusCode.UNAUTHENTICATED,
                        f"{why}: send 'authorization: Bearer <token>'",
                    ),
                )
        if self.max_concurrent:
            return _replace_behavior(handler, self._limited(handler))
        return handler

    def _limited(self, handler: grpc.RpcMethodHandler) -> Behavior:
        behavior = _original(handler)
        guard = self

        def refuse_or_enter(context: grpc.aio.ServicerContext) -> Awaitable[None] | None:
            if guard.in_flight >= guard.max_concurrent:
                return context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the server is serving its limit of {guard.max_concurrent} concurrent "
                    "calls; retry later",
                )
            guard.in_flight += 1
            return None

        if handler.unary_stream or handler.stream_stream:

            async def streaming(
                request: Any, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                refusal = refuse_or_enter(context)
                if refusal is not None:
                    await refusal
                try:
                    async for response in behavior(request, context):
                        yield response
                finally:
                    guard.in_flight -= 1

            return streaming

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            refusal = refuse_or_enter(context)
            if refusal is not None:
                await refusal
            try:
                return await behavior(request, context)
            finally:
                guard.in_flight -= 1

        return unary


def _refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> Behavior:
    if handler.unary_stream or handler.stream_stream:

        async def refuse_stream(
            request: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            await context.abort(code, message)
            yield  # an async generator, as the method's kind expects

        return refuse_stream

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    return refuse
