"""Where and how a client connects: targets, TLS credentials, channel options, call metadata.

Built once from the user's arguments by :func:`plan_connection`, which holds the
rules (TLS from the URL scheme or the ``tls`` argument, no bearer token over
plaintext unless allowed, one connection per channel when several go to one
target). :class:`~onnxserve.client.Client`, :class:`~onnxserve.client.AsyncClient`
and ``onnxserve bench`` open their channels from the same plan, so they connect
alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from onnxserve.client.options import (
    DEFAULT_MAX_MESSAGE_BYTES,
    KeepaliveOptions,
    TLSConfig,
    channel_options,
    plan_channels,
)

__all__ = ["Connection", "plan_connection"]


@dataclass(frozen=True)
class Connection:
    """The channels to open (one per target) and what every call on them carries.

    ``metadata`` holds the caller's headers and the bearer token; it is sent
    with each call, never logged.
    """

    targets: tuple[str, ...]
    credentials: grpc.ChannelCredentials | None
    options: tuple[tuple[str, Any], ...]
    metadata: tuple[tuple[str, str], ...]

    @property
    def tls(self) -> bool:
        return self.credentials is not None

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
) -> Connection:
    """Check the arguments and lay out the channels; raises ValueError saying what is wrong."""
    if max_message_bytes < 1:
        raise ValueError("max_message_bytes must be positive")
    tls_config = tls if isinstance(tls, TLSConfig) else None
    plan = plan_channels(url, channels_per_url, tls=bool(tls))
    if plan.tls and tls_config is None:
        tls_config = TLSConfig()
    if token is not None and not plan.tls and not allow_insecure_token:
        raise ValueError(
            "refusing to send a bearer token over a plaintext connection; use TLS, or pass "
            "allow_insecure_token=True (--allow-insecure-token on the command line), e.g. "
            "behind a TLS-terminating sidecar"
        )
    options = channel_options(
        max_message_bytes=max_message_bytes,
        keepalive=keepalive,
        server_name=tls_config.server_name if tls_config else None,
        separate_connection=len(plan.targets) > len(set(plan.targets)),
        extra=channel_args,
    )
    metadata = [(k.lower(), v) for k, v in (headers or {}).items()]
    if token is not None:
        metadata.append(("authorization", f"Bearer {token}"))
    return Connection(
        targets=plan.targets,
        credentials=tls_config.credentials() if tls_config is not None else None,
        options=tuple(options),
        metadata=tuple(metadata),
    )
