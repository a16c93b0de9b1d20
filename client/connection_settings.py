"""The connection settings ``onnxserve infer`` and ``onnxserve bench`` share: TLS and tokens.

One typed mixin of settings fields (flags, ``ONNXSERVE_<COMMAND>_*``, TOML),
turned into the SDK's :class:`~onnxserve.client.connection.Connection` the same
way for both commands. Light to import (no grpc until a connection is made), so
that ``onnxserve --help`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxserve.settings import SettingsError

if TYPE_CHECKING:
    from onnxserve.client.connection import Connection
    from onnxserve.client.options import TLSConfig

__all__ = ["ConnectionSettings"]


@dataclass(frozen=True, kw_only=True)
class ConnectionSettings:
    """How a command reaches the server: TLS, mutual TLS and a bearer token."""

    tls: bool = field(
        default=False, metadata={"help": "Use TLS (implied by grpcs:// and https://)"}
    )
    root_certificates: Path | None = field(
        default=None, metadata={"help": "PEM file of CA certificates to trust", "metavar": "PEM"}
    )
    certificate_chain: Path | None = field(
        default=None, metadata={"help": "Client certificate PEM for mutual TLS", "metavar": "PEM"}
    )
    private_key: Path | None = field(
        default=None, metadata={"help": "Client private key PEM for mutual TLS", "metavar": "PEM"}
    )
    server_name: str = field(
        default="", metadata={"help": "Name to check the server certificate against"}
    )
    token: str = field(
        default="",
        metadata={"help": "Bearer token (prefer the environment variable over the flag)"},
    )
    allow_insecure_token: bool = field(
        default=False, metadata={"help": "Allow sending the token without TLS"}
    )

    def __post_init__(self) -> None:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise SettingsError(
                "--certificate-chain and --private-key go together (mutual TLS needs both)"
            )

    def tls_option(self) -> bool | TLSConfig:
        """The SDK's ``tls`` argument: a TLSConfig where a file or name is given."""
        from onnxserve.client.options import TLSConfig

        if self.root_certificates or self.certificate_chain or self.server_name:
            return TLSConfig(
                root_certificates=self.root_certificates,
                certificate_chain=self.certificate_chain,
                private_key=self.private_key,
                server_name=self.server_name or None,
            )
        return self.tls

    def connection(self, url: str, **kwargs: Any) -> Connection:
        """The SDK's connection plan for ``url``; a bad combination is a SettingsError."""
        from onnxserve.client.connection import plan_connection

        try:
            return plan_connection(
                url,
                tls=self.tls_option(),
                token=self.token or None,
                allow_insecure_token=self.allow_insecure_token,
                **kwargs,
            )
        except (ValueError, OSError) as exc:
            raise SettingsError(str(exc)) from None
