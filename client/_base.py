"""What :class:`Client` and :class:`AsyncClient` share: settings, credentials, channel layout.

The two clients take the same constructor arguments and validate them here,
once; they differ only in the transports they open (:mod:`onnxserve.client.transport`:
gRPC channels, or REST connections for ``http(s)://`` URLs) and in whether they
block or await.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import grpc

from onnxserve.client.calls import Call
from onnxserve.client.connection import plan_connection
from onnxserve.client.options import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_TIMEOUT_S,
    KeepaliveOptions,
    Protocol,
    RetryPolicy,
    TLSConfig,
)

#: Parts of a split batch (``infer(..., split_batches=True)``) in flight at once.
MAX_PARTS_IN_FLIGHT = 8


T = TypeVar("T")


def _once(call: Call[T]) -> Call[T]:
    """``call`` without retries: infer's own lookups fail as fast as infer does."""
    return dataclasses.replace(call, idempotent=False)


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
        protocol: Protocol | None = None,
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
            protocol=protocol,
        )
        self.connection = connection
        self.targets: tuple[str, ...] = connection.targets
        self.timeout = float(timeout)
        self.retry = retry if retry is not None else RetryPolicy()
        self._compression = compression
        self.metadata: tuple[tuple[str, str], ...] = connection.metadata
        self._counter = itertools.count()
        # What infer's casts and splits need to know of a model, asked once per
        # (model, version) and kept: input name -> datatype, and max_batch_size.
        self._declared: dict[tuple[str, str], dict[str, str]] = {}
        self._max_batch_sizes: dict[tuple[str, str], int] = {}
        self._open()

    def _open(self) -> None:
        """Open the channels (or prepare to, for a client that opens them lazily)."""
        raise NotImplementedError

    @property
    def tls(self) -> bool:
        """Whether the channels use TLS."""
        return self.connection.tls

    @property
    def protocol(self) -> Protocol:
        """``"grpc"``, or ``"http"`` for a client of ``http(s)://`` URLs (REST)."""
        return self.connection.protocol

    def _next_index(self) -> int:
        # itertools.count's __next__ is atomic under the GIL: safe across threads.
        return next(self._counter) % len(self.targets)

    @staticmethod
    def _model_key(name: str, version: str | int | None) -> tuple[str, str]:
        return name, "" if version is None else str(version)

    def _forget_model(self, key: tuple[str, str]) -> None:
        """Ask again next time: the model may have changed (a new version in poll mode)."""
        self._declared.pop(key, None)
        self._max_batch_sizes.pop(key, None)

    @staticmethod
    def _infer_calls(
        name: str,
        parts: Sequence[Mapping[str, Any]],
        outputs: Sequence[str] | None,
        version: str | int | None,
        request_id: str | None,
        parameters: Mapping[str, Any] | None,
    ) -> list[Call[dict[str, Any]]]:
        """One ModelInfer call per part of a (possibly split) batch, alike but for the rows."""
        from onnxserve.client import calls

        return [
            calls.infer(
                name,
                part,
                outputs=outputs,
                version=version,
                request_id=request_id,
                parameters=parameters,
            )
            for part in parts
        ]

    def _deadline(self, timeout: float | None) -> Deadline:
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be positive")
        return Deadline(self.timeout if timeout is None else timeout)

    def __repr__(self) -> str:
        scheme = (
            ("https" if self.tls else "http")
            if self.protocol == "http"
            else ("grpcs" if self.tls else "grpc")
        )
        urls = ", ".join(f"{scheme}://{t}" for t in dict.fromkeys(self.targets))
        return f"{type(self).__name__}({urls}, channels={len(self.targets)})"
