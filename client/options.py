"""Connection options: TLS, keepalive, retries, and how channels are laid out.

Everything here is plain data plus pure functions, shared by :class:`Client`
and :class:`AsyncClient`, so that both connect, authenticate and retry in
exactly the same way and the rules can be tested without a network.
"""

from __future__ import annotations

import os
import random
import ssl
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import grpc

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_TIMEOUT_S",
    "ChannelPlan",
    "KeepaliveOptions",
    "Protocol",
    "RetryPolicy",
    "TLSConfig",
    "channel_options",
    "parse_url",
    "plan_channels",
    "url_protocol",
]

#: How a client talks to its server: gRPC, or the protocol's HTTP/REST binding.
Protocol = Literal["grpc", "http"]

#: Deadline of a call when neither the client nor the call names one.
DEFAULT_TIMEOUT_S = 60.0
#: gRPC's own 4 MiB receive limit is too small for tensors; Triton's client uses INT32_MAX too.
DEFAULT_MAX_MESSAGE_BYTES = 2**31 - 1

PemSource = bytes | str | Path


def _read_pem(source: PemSource | None) -> bytes | None:
    """PEM bytes as given, or read from a path (str or Path)."""
    if source is None or isinstance(source, bytes):
        return source
    return Path(source).read_bytes()


@dataclass(frozen=True)
class TLSConfig:
    """TLS, and mutual TLS when a client certificate and key are given.

    Each PEM may be bytes or a file path. Without ``root_certificates`` the
    system's trust store is used. ``server_name`` overrides the name checked
    against the server's certificate (for certificates issued to a name other
    than the address dialled, e.g. in tests).

    Example::

        TLSConfig(root_certificates="ca.pem", certificate_chain="client.pem",
                  private_key="client.key")
    """

    root_certificates: PemSource | None = None
    certificate_chain: PemSource | None = None
    private_key: PemSource | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("mutual TLS needs both certificate_chain and private_key")

    def credentials(self) -> grpc.ChannelCredentials:
        """gRPC channel credentials; reads the files named, once per client."""
        return grpc.ssl_channel_credentials(
            root_certificates=_read_pem(self.root_certificates),
            private_key=_read_pem(self.private_key),
            certificate_chain=_read_pem(self.certificate_chain),
        )

    def ssl_context(self) -> ssl.SSLContext:
        """The same settings as an ``ssl.SSLContext``, for the HTTP/REST transport.

        The server's certificate is checked (against ``root_certificates``, else
        the system's trust store) and its name against ``server_name`` or the
        host dialled; the context offers HTTP/1.1 by ALPN.
        """
        roots = _read_pem(self.root_certificates)
        context = ssl.create_default_context(cadata=roots.decode("ascii") if roots else None)
        if self.certificate_chain is not None and self.private_key is not None:
            chain, key = _read_pem(self.certificate_chain), _read_pem(self.private_key)
            assert chain is not None and key is not None
            # load_cert_chain reads files only: PEMs given as bytes go through
            # a private temporary file, removed at once.
            with tempfile.TemporaryDirectory(prefix="onnxserve-tls-") as folder:
                chain_file, key_file = Path(folder) / "chain.pem", Path(folder) / "key.pem"
                chain_file.write_bytes(chain)
                key_file.touch(mode=0o600)
                os.chmod(key_file, 0o600)
                key_file.write_bytes(key)
                context.load_cert_chain(chain_file, key_file)
        context.set_alpn_protocols(["http/1.1"])
        return context


@dataclass(frozen=True)
class KeepaliveOptions:
    """HTTP/2 keepalive pings, so that dead connections through load balancers are noticed.

    Servers refuse pings more frequent than they allow (gRPC's default minimum
    is 5 minutes without calls in flight), so ``permit_without_calls`` is off
    by default.
    """

    time_s: float = 30.0
    timeout_s: float = 10.0
    permit_without_calls: bool = False
    max_pings_without_data: int = 2

    def channel_options(self) -> list[tuple[str, int]]:
        """The grpc channel arguments for these settings."""
        return [
            ("grpc.keepalive_time_ms", int(self.time_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(self.timeout_s * 1000)),
            ("grpc.keepalive_permit_without_calls", int(self.permit_without_calls)),
            ("grpc.http2.max_pings_without_data", self.max_pings_without_data),
        ]


@dataclass(frozen=True)
class RetryPolicy:
    """Retries with exponential backoff and jitter for transient failures.

    Only calls that are safe to repeat are retried: every read-only call, and
    ``infer`` only with ``retry_infer=True`` (an inference that reached the
    server may have run, and a model with side effects or a billing meter may
    care). Retries never outlive the call's deadline: a retry that could not
    start before it is not made.

    Example::

        RetryPolicy(max_attempts=6, initial_backoff_s=0.1, retry_infer=True)
    """

    max_attempts: int = 4
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.2
    retry_infer: bool = False
    retryable_codes: frozenset[grpc.StatusCode] = field(
        default_factory=lambda: frozenset({grpc.StatusCode.UNAVAILABLE})
    )

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff_s < 0 or self.max_backoff_s < 0 or self.multiplier < 1:
            raise ValueError("backoffs must be >= 0 and multiplier >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")

    def backoff_s(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Pause before retry number ``attempt`` (1 = first retry), jittered by +-jitter."""
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        return base * (1 + self.jitter * (2 * rand() - 1))

    def next_delay(
        self,
        code: grpc.StatusCode,
        attempts_made: int,
        idempotent: bool,
        remaining_s: float,
        rand: Callable[[], float] = random.random,
    ) -> float | None:
        """How long to wait before the next attempt, or None to give up and raise.

        ``attempts_made`` counts the attempts so far (1 after the first failure);
        ``remaining_s`` is what is left of the call's deadline.
        """
        if code not in self.retryable_codes or attempts_made >= self.max_attempts:
            return None
        if not idempotent and not self.retry_infer:
            return None
        delay = self.backoff_s(attempts_made, rand)
        if delay >= remaining_s:
            return None
        return delay


_SCHEMES: dict[str, tuple[Protocol, bool]] = {
    "grpc": ("grpc", False),
    "grpcs": ("grpc", True),
    "http": ("http", False),
    "https": ("http", True),
}


def _scheme(url: str) -> str | None:
    scheme, sep, _ = url.strip().partition("://")
    if not sep:
        return None
    scheme = scheme.lower()
    if scheme not in _SCHEMES:
        raise ValueError(
            f"unsupported URL scheme '{scheme}' in {url!r}; use grpc://, grpcs://, http:// "
            "or https://"
        )
    return scheme


def url_protocol(url: str) -> Protocol | None:
    """``"http"`` for ``http://`` and ``https://`` URLs (REST), ``"grpc"`` for ``grpc://``
    and ``grpcs://``, None for a bare ``host:port`` (the caller's default decides)."""
    scheme = _scheme(url)
    return None if scheme is None else _SCHEMES[scheme][0]


def parse_url(url: str) -> tuple[str, bool | None]:
    """Split ``grpcs://host:port`` / ``grpc://host:port`` / ``host:port`` into (target, tls).

    ``tls`` is True for grpcs/https, False for grpc/http and None when the URL
    has no scheme (the client's ``tls`` argument decides). Which protocol a
    scheme means is :func:`url_protocol`'s answer.
    """
    url = url.strip()
    if not url:
        raise ValueError("empty server URL")
    _, sep, rest = url.partition("://")
    if not sep:
        return url.rstrip("/"), None
    tls = _SCHEMES[_scheme(url) or ""][1]
    target = rest.rstrip("/")
    if not target:
        raise ValueError(f"server URL {url!r} has no host")
    return target, tls


@dataclass(frozen=True)
class ChannelPlan:
    """The channels a client opens: one target each, whether they use TLS, and the protocol."""

    targets: tuple[str, ...]
    tls: bool
    protocol: Protocol = "grpc"


def plan_channels(
    url: str | Sequence[str],
    channels_per_url: int,
    tls: bool,
    protocol: Protocol | None = None,
) -> ChannelPlan:
    """Lay out ``channels_per_url`` channels for each URL, interleaved for round robin.

    With several server processes behind one port (SO_REUSEPORT) each channel
    is its own TCP connection and so may land on another process; with several
    URLs the calls go round them in turn. Mixing TLS and plaintext URLs is
    refused, since credentials would then leak to the plaintext ones, and so
    is mixing gRPC and HTTP URLs. ``protocol`` is what a URL without a scheme
    speaks (default gRPC); a URL whose scheme says otherwise is refused.
    """
    urls = [url] if isinstance(url, str) else list(url)
    if not urls:
        raise ValueError("no server URL given")
    if channels_per_url < 1:
        raise ValueError("channels_per_url must be at least 1")
    parsed = [parse_url(u) for u in urls]
    protocols = {p for p in (url_protocol(u) for u in urls) if p is not None}
    if len(protocols) > 1:
        raise ValueError("URLs mix gRPC (grpc://, grpcs://) and REST (http://, https://)")
    found = protocols.pop() if protocols else None
    if protocol is not None and found is not None and found != protocol:
        raise ValueError(
            f"the URL speaks {'REST' if found == 'http' else 'gRPC'} but the protocol asked "
            f"for is {protocol}"
        )
    use_protocol: Protocol = found or protocol or "grpc"
    schemes = {t for _, t in parsed if t is not None}
    if len(schemes) > 1:
        raise ValueError("URLs mix TLS and plaintext schemes; use one or the other")
    use_tls = schemes.pop() if schemes else tls
    if use_tls is False and tls:
        plain = "http://" if use_protocol == "http" else "grpc://"
        raise ValueError(f"tls was requested but the URL says {plain}")
    targets = tuple(target for _ in range(channels_per_url) for target, _ in parsed)
    return ChannelPlan(targets=targets, tls=bool(use_tls), protocol=use_protocol)


def channel_options(
    *,
    max_message_bytes: int,
    keepalive: KeepaliveOptions | None,
    server_name: str | None,
    separate_connection: bool,
    extra: Mapping[str, Any] | None = None,
) -> list[tuple[str, Any]]:
    """The grpc channel arguments for one channel.

    ``separate_connection`` gives the channel its own subchannel pool: gRPC
    otherwise shares one connection among channels with equal arguments,
    which would defeat opening several channels to spread load.
    """
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]
    if keepalive is not None:
        options.extend(keepalive.channel_options())
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    if separate_connection:
        options.append(("grpc.use_local_subchannel_pool", 1))
    if extra:
        options.extend(extra.items())
    return options
