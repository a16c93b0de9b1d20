"""What :class:`Client` and :class:`AsyncClient` share: settings, credentials, channel layout.

The two clients take the same constructor arguments and validate them here,
once; they differ only in the gRPC channel type they open and in whether they
block or await.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from onnxserve.client.connection import plan_connection
from onnxserve.client.options import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_TIMEOUT_S,
    KeepaliveOptions,
    RetryPolicy,
    TLSConfig,
)


class Deadline:
    """A call's absolute deadline, shared by its retries."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._end = time.monotonic() + timeout_s

    def remaining(self) -> float:
        """Seconds left; may be zero or negative once passed."""
        return self._end - time.monotonic()


class ClientBase:
    """Constructor, validation and round-robin channel choice common to both clients."""

    def __init__(
        self,
        url: str | Sequence[str] = "localhost:8001",
        *,
        tls: bool | TLSConfig = False,
        token: str | None = None,
        allow_insecure_token: bool = False,
        headers: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        keepalive: KeepaliveOptions | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        channels_per_url: int = 1,
        compression: grpc.Compression | None = None,
        channel_args: Mapping[str, Any] | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive: every call has a deadline")
        connection = plan_connection(
            url,
            tls=tls,
            token=token,
            allow_insecure_token=allow_insecure_token,
            headers=headers,
            max_message_bytes=max_message_bytes,
            keepalive=keepalive,
            channels_per_url=channels_per_url,
            channel_args=channel_args,
        )
        self.connection = connection
        self.targets: tuple[str, ...] = connection.targets
        self.timeout = float(timeout)
        self.retry = retry if retry is not None else RetryPolicy()
        self._compression = compression
        self.metadata: tuple[tuple[str, str], ...] = connection.metadata
        self._counter = itertools.count()
        self._open()

    def _open(self) -> None:
        """Open the channels (or prepare to, for a client that opens them lazily)."""
        raise NotImplementedError

    @property
    def tls(self) -> bool:
        """Whether the channels use TLS."""
        return self.connection.tls

    def _next_index(self) -> int:
        # itertools.count's __next__ is atomic under the GIL: safe across threads.
        return next(self._counter) % len(self.targets)

    def _deadline(self, timeout: float | None) -> Deadline:
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be positive")
        return Deadline(self.timeout if timeout is None else timeout)

    def __repr__(self) -> str:
        scheme = "grpcs" if self.tls else "grpc"
        urls = ", ".join(f"{scheme}://{t}" for t in dict.fromkeys(self.targets))
        return f"{type(self).__name__}({urls}, channels={len(self.targets)})"
