"""Whether a TCP port can be bound, asked before gRPC core is.

gRPC core answers a port in use by logging its own ``Failed to add port to
server`` line on stderr (through absl, beyond Python's logging) before
``add_insecure_port`` raises; asking the kernel first lets onnxserve's one
clear line be the only one. The check binds as gRPC would (SO_REUSEADDR, and
SO_REUSEPORT where ``--workers`` processes share the port) and lets go at once;
a port taken between the check and gRPC's bind still fails, with both lines.
"""

from __future__ import annotations

import errno
import socket

__all__ = ["port_in_use"]


def port_in_use(host: str, port: int, *, reuse_port: bool = False) -> bool:
    """True when some address ``host`` resolves to cannot be bound at ``port`` (EADDRINUSE).

    Port 0 (any free port) and names that do not resolve answer False: gRPC
    itself reports those.
    """
    if port == 0:
        return False
    try:
        addresses = socket.getaddrinfo(
            host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror:
        return False
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port and hasattr(socket, "SO_REUSEPORT"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return True
    return False
