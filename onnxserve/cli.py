"""The ``onnxserve`` command: one entry point, one subcommand per job.

Each subcommand lives beside the code it drives (``onnxserve.server.cli``,
``onnxserve.converter.cli``, ...) and exposes ``register(subparsers)``; the
module that does the work is imported only when the subcommand runs, so
``onnxserve --help`` and the client's ``infer`` work on a plain client install
that has neither onnxruntime nor TensorFlow.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from onnxserve import __version__
from onnxserve.settings import SECTIONS, SettingsError

# Subcommand modules, each with register(subparsers). They import only
# argparse-level code at module level.
_SUBCOMMAND_MODULES = (
    "onnxserve.server.cli",
    "onnxserve.converter.cli",
    "onnxserve.client.cli",
    "onnxserve.client.cli_inspect",
    "onnxserve.bench.cli",
    "onnxserve.client.explain.cli",
)

_DESCRIPTION = """\
Serve ONNX models (typically converted from Keras) over the Open Inference
Protocol (KServe v2) on gRPC, wire-compatible with Triton's clients.

Settings come from flags, then environment variables, then a TOML file given
with --config, in that order of precedence. serve reads ONNXSERVE_<SETTING>
(ONNXSERVE_GRPC_PORT); the other subcommands ONNXSERVE_<COMMAND>_<SETTING>
(ONNXSERVE_INFER_URL, ONNXSERVE_CONVERT_MODEL). The file has one table per
subcommand:
  {tables}
whose keys are the flags without their leading dashes (grpc-port = 9001);
relative paths in it are relative to the file's folder. Each subcommand's
--help lists its settings with their variables.
"""

# 128 + SIGPIPE: the status of a command-line tool whose reader went away.
_BROKEN_PIPE_STATUS = 141


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onnxserve",
        description=_DESCRIPTION.format(tables=", ".join(f"[{s}]" for s in SECTIONS)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"onnxserve {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in _SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # A subcommand whose package is absent from this install is left out.
            if exc.name and module_name.startswith(exc.name):
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    if words[:1] == ["serve"]:
        # Before the seconds of imports below: a signal now must not kill the server.
        from onnxserve.server import early_signals

        early_signals.hold()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", None) or "INFO",
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        status = int(args.handler(args) or 0)
        sys.stdout.flush()  # here, so that a closed pipe is seen below, not at exit
        return status
    except SettingsError as exc:
        parser.exit(2, f"onnxserve {args.command}: error: {exc}\n")
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of the output went away (`onnxserve infer ... | head`): stop
        # quietly, as other command-line tools do. Python's own flush at exit
        # would fail again, so stdout is pointed at /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return _BROKEN_PIPE_STATUS


if __name__ == "__main__":
    sys.exit(main())
