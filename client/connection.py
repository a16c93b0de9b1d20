"""Where and how a client connects: targets, protocol, TLS, channel options, call metadata.

Built once from the user's arguments by :func:`plan_connection`, which holds the
rules (TLS from the URL scheme or the ``tls`` argument, no bearer token over
plaintext unless allowed, one connection per channel when several go to one
target). :class:`~onnxserve.client.Client`, :class:`~onnxserve.client.AsyncClient`
and ``onnxserve bench`` open their channels from the same plan, so they connect
alike. A plan for ``http://`` / ``https://`` URLs (``protocol == "http"``) holds
an ``ssl.SSLContext`` in place of gRPC credentials; the REST transport
(:mod:`onnxserve.client.rest`) connects with it.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from onnxserve.client.options import (
    DEFAULT_MAX_MESSAGE_BYTES,
    KeepaliveOptions,
    Protocol,
    TLSConfig,
    channel_options,
    plan_channels,
)

__all__ = ["Connection", "plan_connection"]


@dataclass(frozen=True)
class Connection:
    """The channels to open (one per target) and what every call on them carries.

    ``metadata`` holds the caller's headers and the bearer token; it is sent
    with each call (gRPC metadata, or HTTP headers), never logged. gRPC plans
    carry ``credentials`` and channel ``options``; HTTP plans (``protocol ==
    "http"``) carry ``ssl_context`` and ``server_name`` instead, and
    ``max_message_bytes`` bounds what the REST transport sends and accepts.
    """

    targets: tuple[str, ...]
    credentials: grpc.ChannelCredentials | None
    options: tuple[tuple[str, Any], ...]
    metadata: tuple[tuple[str, str], ...]
    protocol: Protocol = "grpc"
    ssl_context: ssl.SSLContext | None = None
    server_name: str | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES

    @property
    def tls(self) -> bool:
        return self.credentials is not None or self.ssl_context is not None

    def aio_channel(
        self, target: str, extra_options: Sequence[tuple[str, Any]] = (), **kwargs: Any
    ) -> grpc.aio.Channel:
        """An asyncio channel to ``target`` (secure when the plan says TLS)."""
        options = [*self.options, *extra_options, *authority_option(target, self.options)]
        if self.credentials is not None:
            return grpc.aio.secure_channel(target, self.credentials, options=options, **kwargs)
        return grpc.aio.insecure_channel(target, options=options, **kwargs)

    def sync_channel(self, target: str, **kwargs: Any) -> grpc.Channel:
        """A blocking channel to ``target`` (secure when the plan says TLS)."""
        options = [*self.options, *authority_option(target, self.options)]
        if self.credentials is not None:
            return grpc.secure_channel(target, self.credentials, options=options, **kwargs)
        return grpc.insecure_channel(target, options=options, **kwargs)


def authority_option(target: str, options: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """``grpc.default_authority`` for a target listing several addresses (``ipv4:a,b``).

    gRPC sends such a target whole as the HTTP/2 ``:authority``, commas and all,
    which is not a valid authority: the native front end's HTTP/2 stack (hyper)
    resets the stream with PROTOCOL_ERROR. The first address is a valid one (and
    what the server never reads anyway); a ``grpc.default_authority`` given in
    ``channel_args`` wins.
    """
    scheme, _, addresses = target.partition(":")
    if scheme not in ("ipv4", "ipv6") or "," not in addresses:
        return []
    if any(key == "grpc.default_authority" for key, _ in options):
        return []
    return [("grpc.default_authority", addresses.split(",")[0].strip("/"))]


def plan_connection(
    url: str | Sequence[str],
    *,
    tls: bool | TLSConfig = False,
    token: str | None = None,
    allow_insecure_token: bool = False,
    headers: Mapping[str, str] | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    keepalive: KeepaliveOptions | None = None,
    channels_per_url: int = 1,
    channel_args: Mapping[str, Any] | None = None,
    protocol: Protocol | None = None,
) -> Connection:
    """Check the arguments and lay out the channels; raises ValueError saying what is wrong.

    ``protocol`` is what URLs without a scheme speak (default gRPC); ``http://``
    and ``https://`` URLs speak REST whatever it says (and a clash is refused).
    """
    if max_message_bytes < 1:
        raise ValueError("max_message_bytes must be positive")
    tls_config = tls if isinstance(tls, TLSConfig) else None
    plan = plan_channels(url, channels_per_url, tls=bool(tls), protocol=protocol)
    if plan.tls and tls_config is None:
        tls_config = TLSConfig()
    if token is not None and not plan.tls and not allow_insecure_token:
        raise ValueError(
            "refusing to send a bearer token over a plaintext connection; use TLS, or pass "
            "allow_insecure_token=True (--allow-insecure-token on the command line), e.g. "
            "behind a TLS-terminating sidecar"
        )
    metadata = [(k.lower(), v) for k, v in (headers or {}).items()]
    if token is not None:
        metadata.append(("authorization", f"Bearer {token}"))
    if plan.protocol == "http":
        # gRPC's channel settings have no REST meaning: refused rather than ignored.
        if keepalive is not None:
            raise ValueError(
                "keepalive is HTTP/2 pings of gRPC channels; REST connections are HTTP/1.1 "
                "keep-alive connections, reused without pings"
            )
        if channel_args:
            raise ValueError("channel_args are gRPC channel arguments; REST URLs take none")
        return Connection(
            targets=plan.targets,
            credentials=None,
            options=(),
            metadata=tuple(metadata),
            protocol="http",
            ssl_context=tls_config.ssl_context() if tls_config is not None else None,
            server_name=tls_config.server_name if tls_config is not None else None,
            max_message_bytes=max_message_bytes,
        )
    options = channel_options(
        max_message_bytes=max_message_bytes,
        keepalive=keepalive,
        server_name=tls_config.server_name if tls_config else None,
        separate_connection=len(plan.targets) > len(set(plan.targets)),
        extra=channel_args,
    )
    return Connection(
        targets=plan.targets,
        credentials=tls_config.credentials() if tls_config is not None else None,
        options=tuple(options),
        metadata=tuple(metadata),
        max_message_bytes=max_message_bytes,
    )
