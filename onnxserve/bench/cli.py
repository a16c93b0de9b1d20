"""``onnxserve bench``: argument parsing only; the work is in onnxserve.bench.runner."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from onnxserve.settings import add_arguments, resolve

_HELP = "Load-test a model over gRPC or REST and compare it with raw onnxruntime"
_DESCRIPTION = """\
Send ModelInfer requests to a running server from N concurrent clients (a
sweep, one step per value) or at fixed request rates, and report per step:
throughput (infer/s and samples/s), client latency (p50/p90/p99, mean),
failures, and from the server's ModelStatistics the queue and compute time
per request and the batch size it achieved. With the model file (--model-file,
or --repository to find it) the same model is also timed in onnxruntime in
this process, and every step is compared with it.

--protocol http (or an http:// / https:// --url) posts REST inference calls to
the server's --http-port instead (/v2/models/MODEL/infer; --body binary: Triton's
binary tensor extension, --body json: JSON data), over HTTP/1.1 with one
connection per request in flight, or h2c with --http-version 2 (h2load only).

The h2load driver (Debian/Ubuntu: apt-get install nghttp2-client) costs the
server's CPUs far less than the python one; it is used when installed.

Exit status: 0, or 1 when any measured request failed.

examples:
  onnxserve bench simple --url 127.0.0.1:8001 --concurrency 1,8,64 --duration 5
  onnxserve bench sentiment --repository ./models --plot bench.png --json bench.json
  onnxserve bench simple --url http://127.0.0.1:8000 --body json --concurrency 1,16
"""


def register(subparsers: Any) -> None:
    from onnxserve.bench.settings import BenchSettings

    parser = subparsers.add_parser(
        "bench",
        help=_HELP,
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="TOML settings file ([bench] table)")
    add_arguments(parser, BenchSettings, positional=("model",))
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    import asyncio
    import sys

    from onnxserve.bench.progress import Progress
    from onnxserve.bench.report import format_report, write_json, write_plot
    from onnxserve.bench.runner import BenchError, run_bench
    from onnxserve.bench.settings import BenchSettings

    settings = resolve(BenchSettings, args, config_file=args.config, section="bench")
    try:
        report = asyncio.run(run_bench(settings, Progress(enabled=settings.progress)))
    except BenchError as exc:
        print(f"onnxserve bench: error: {exc}", file=sys.stderr)
        return 2
    print(format_report(report))
    if settings.json is not None:
        write_json(report, settings.json)
        print(f"wrote {settings.json}")
    if settings.plot is not None:
        write_plot(report, settings.plot)
        print(f"wrote {settings.plot}")
    return 1 if report.failures else 0
