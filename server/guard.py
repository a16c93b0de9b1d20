"""Bearer tokens and the call limit's words: what the native front end enforces.

Rust checks every call but grpc.health.v1 and REST's /v2/health (Kubernetes
probes send no credentials) against the SHA-256 digests of the accepted
tokens, in constant time, from the headers, before a body is read
(``native/src/service.rs``); ``--max-concurrent-rpcs`` is counted there too.
This module owns the token file (read at start, re-read on SIGHUP; tokens are
never logged) and the messages a refused call gets, worded once.
"""

from __future__ import annotations

import codecs
import hashlib
import logging
import re
from pathlib import Path

log = logging.getLogger(__name__)

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


def token_refusal(missing: bool) -> str:
    """What a call without a token (``missing``) or with a wrong one is told."""
    why = "a bearer token is required" if missing else "the token is not valid"
    return f"{why}: send 'authorization: Bearer <token>'"


def busy_refusal(limit: int) -> str:
    """What a call past ``--max-concurrent-rpcs`` is told (RESOURCE_EXHAUSTED, REST 429)."""
    return (
        f"the server is serving its limit of {limit} concurrent calls "
        "(--max-concurrent-rpcs); retry later"
    )
