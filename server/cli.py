"""``onnxserve serve``: argument parsing only; the work is in onnxserve.server.app."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Any

from onnxserve.settings import add_arguments, resolve

_HELP = "Serve a model repository over the Open Inference Protocol (gRPC and HTTP/REST)"
_DESCRIPTION = """\
Serve every model in a Triton-layout model repository over gRPC (--grpc-port,
8001) and HTTP/REST (--http-port, 8000), speaking the Open Inference Protocol
(KServe v2) as Triton does: Triton's and KServe's clients work unmodified.
grpc.health.v1 and server reflection are served on the gRPC port, Prometheus
metrics on --metrics-port (8002; 0 turns them off).

SIGTERM drains: new calls get UNAVAILABLE, accepted ones finish, exit 0.
SIGHUP re-reads --auth-token-file.

examples:
  onnxserve serve --model-repository ./models --grpc-port 8001
  onnxserve serve --model-repository /models --tls-cert tls.crt --tls-key tls.key \\
      --auth-token-file tokens --health-port 8003 --model-control-mode poll \\
      --max-concurrent-rpcs 512 --exit-on-error --log-format json
"""


def register(subparsers: Any) -> None:
    from onnxserve.server.settings import ServerSettings

    parser = subparsers.add_parser(
        "serve",
        help=_HELP,
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="TOML settings file ([serve] table)")
    add_arguments(parser, ServerSettings)
    parser.set_defaults(handler=_run)


# The server extra's packages (pyproject.toml), by import name.
_SERVER_PACKAGES = ("grpc_health", "grpc_reflection", "prometheus_client", "onnxruntime", "onnx")


def _run(args: argparse.Namespace) -> int:
    from onnxserve.server.settings import ServerSettings

    missing = next(
        (name for name in _SERVER_PACKAGES if importlib.util.find_spec(name) is None), None
    )
    if missing is not None:
        # A client-only install (the wheel without extras): say what to add.
        print(
            f"onnxserve serve: error: {missing} is not installed; the server needs the server "
            "extra: pip install 'onnxserve[server]' (from a checkout: make wheel, then "
            "pip install 'dist/onnxserve-<version>-<tags>.whl[server]')",
            file=sys.stderr,
        )
        return 1
    from onnxserve.server.app import run

    settings = resolve(ServerSettings, args, config_file=args.config, section="serve")
    return run(settings)
