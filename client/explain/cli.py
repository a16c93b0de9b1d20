"""``onnxserve explain``: which words, tokens, pixels or columns drove one prediction.

Argument parsing and printing only; the work is :func:`onnxserve.client.explain.explain`.
Settings come from flags, ``ONNXSERVE_EXPLAIN_*`` and an ``[explain]`` table
(:mod:`onnxserve.settings`); the input from ``--text`` or ``--input NAME=VALUE``
(as ``onnxserve infer`` reads them).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

from onnxserve.client.cli import add_input_argument
from onnxserve.client.connection_settings import ConnectionSettings
from onnxserve.settings import SettingsError, add_arguments, resolve

__all__ = ["ExplainSettings", "register", "run"]

_DESCRIPTION = """\
Explain one prediction of a served model: perturbed copies of the input go to
the server in batches, and each word (text-in models), token (token-id
models), pixel or patch (images) or column (tabular rows) gets an attribution:
how much it pushed the output up (+) or down (-). Works against any Open
Inference Protocol (KServe v2 / Triton) gRPC server.

methods:
  occlusion       remove each feature once; exact, one inference per feature
  kernel-shap     shap's KernelExplainer, --samples coalitions, --seed
  partition-shap  shap's Partition explainer with a Text masker (words, tokens)
  lime            lime's LimeTextExplainer (words, tokens) or LimeImageExplainer
                  (images; --patch sets the segments)
The last three need the explain extra: pip install 'onnxserve[explain]'.

Removing a word leaves it out of the sentence; a token, out of the ids (which
are padded again); a pixel or column becomes --baseline. The output explained
is --output (default: the first) at --target (default: the predicted class).

examples:
  onnxserve explain sentiment --text "the food was great but the service awful" \\
      --method kernel-shap
  onnxserve explain digits --input image=digit.npy --heatmap digit.png
  onnxserve explain reviews --text "not bad at all" --format json
"""

Kind = Literal["auto", "text", "tokens", "image", "tabular"]
MethodName = Literal["occlusion", "kernel-shap", "partition-shap", "lime"]
OutputFormat = Literal["text", "json"]
ColorChoice = Literal["auto", "always", "never"]


@dataclass(frozen=True, kw_only=True)
class ExplainSettings(ConnectionSettings):
    """Settings of ``onnxserve explain``, from flags, ONNXSERVE_EXPLAIN_* or an [explain] table."""

    model: str = field(metadata={"help": "Model name", "metavar": "MODEL"})
    url: str = field(
        default="localhost:8001",
        metadata={
            "help": "Server address: host:port or grpc://host:port (gRPC), grpcs://host:port "
            "(gRPC with TLS), http://host:port or https://host:port (HTTP/REST, the server's "
            "--http-port, 8000 by default)"
        },
    )
    model_version: str = field(default="", metadata={"help": "Model version (default: latest)"})
    timeout: float = field(default=60.0, metadata={"help": "Deadline of each call in seconds"})
    text: str = field(
        default="",
        metadata={"help": "The sentence to explain, for a model with a text (BYTES) input"},
    )
    input_name: str = field(
        default="", metadata={"help": "The input to explain (default: the model's only input)"}
    )
    kind: Kind = field(
        default="auto", metadata={"help": "What the input's elements are (auto: from its type)"}
    )
    output: str = field(default="", metadata={"help": "The output to explain (default: the first)"})
    target: int | None = field(
        default=None,
        metadata={"help": "Index in the output's row (default: the predicted class, or 0)"},
    )
    method: MethodName = field(default="occlusion", metadata={"help": "Attribution method"})
    samples: int = field(
        default=500, metadata={"help": "Evaluations of the sampling methods (not occlusion)"}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the sampling methods"})
    patch: int = field(default=1, metadata={"help": "Images: side of a square patch, in pixels"})
    baseline: float = field(
        default=0.0, metadata={"help": "Images and tables: the value of a removed pixel or column"}
    )
    feature_names: tuple[str, ...] = field(
        default=(), metadata={"help": "Tables: column names, comma-separated", "metavar": "A,B,..."}
    )
    pad_id: int = field(default=0, metadata={"help": "Token inputs: the padding id"})
    batch_size: int = field(
        default=0,
        metadata={"help": "Rows per request (0: the model's max_batch_size, or 64 if unknown)"},
    )
    concurrency: int = field(default=4, metadata={"help": "Requests in flight at once"})
    top: int = field(default=10, metadata={"help": "Rows of the table"})
    format: OutputFormat = field(
        default="text", metadata={"help": "text (a table, and the sentence) or json"}
    )
    heatmap: Path | None = field(
        default=None, metadata={"help": "Images: also write a PNG heat map here", "metavar": "PNG"}
    )
    color: ColorChoice = field(
        default="auto",
        metadata={"help": "Colour words by sign: auto (a terminal, and NO_COLOR unset)"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("samples", "patch", "concurrency"):
            if getattr(self, name) < 1:
                raise SettingsError(f"--{name} must be 1 or more")
        if self.batch_size < 0:
            raise SettingsError("--batch-size must be 0 (the model's) or more")
        if self.top < 0:
            raise SettingsError("--top must be 0 or more")
        if self.target is not None and self.target < 0:
            raise SettingsError("--target must be 0 or more")


def register(subparsers: Any) -> None:
    """Add the ``explain`` subcommand."""
    parser = subparsers.add_parser(
        "explain",
        help="explain one prediction: which words, pixels or columns drove it",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser, ExplainSettings, positional=("model",))
    add_input_argument(parser)
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="TOML file with an [explain] table",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Resolve settings, explain, print; 1 with the server's message when a call fails."""
    from onnxserve.client import InferenceServerError
    from onnxserve.client.cli import declared_inputs, open_client, parse_input
    from onnxserve.client.explain import explain, render

    out = out or sys.stdout
    # shap logs its arithmetic at INFO, which the command's log level lets through
    logging.getLogger("shap").setLevel(logging.WARNING)
    settings = resolve(ExplainSettings, args, section="explain", config_file=args.config)
    if not settings.text and not args.inputs:
        raise SettingsError("give --text SENTENCE or --input NAME=VALUE")
    version = settings.model_version or None
    with open_client(settings, settings.url, settings.timeout) as client:
        try:
            declared = declared_inputs(client, settings.model, version)
            inputs = dict(parse_input(spec, declared) for spec in args.inputs)
            result = explain(
                client,
                settings.model,
                inputs,
                text=settings.text or None,
                input=settings.input_name or None,
                kind=settings.kind,
                output=settings.output or None,
                target=settings.target,
                method=settings.method,
                samples=settings.samples,
                seed=settings.seed,
                patch=settings.patch,
                baseline=settings.baseline,
                feature_names=settings.feature_names or None,
                pad_id=settings.pad_id,
                batch_size=settings.batch_size or None,
                concurrency=settings.concurrency,
                version=version,
                timeout=settings.timeout,
            )
        except InferenceServerError as exc:
            print(f"onnxserve explain: error: {exc}", file=sys.stderr)
            return 1
        except ModuleNotFoundError as exc:
            print(f"onnxserve explain: error: {exc}", file=sys.stderr)
            return 1
        except (ValueError, IndexError) as exc:
            raise SettingsError(str(exc)) from None
    if settings.heatmap is not None:
        if result.kind != "image":
            raise SettingsError(f"--heatmap draws images; this input is {result.kind}")
        render.write_heatmap(result, settings.heatmap)
        print(f"heat map written to {settings.heatmap}", file=sys.stderr)
    if settings.format == "json":
        out.write(render.format_json(result))
        return 0
    color = render.use_color(out, settings.color)
    out.write(render.format_table(result, settings.top, color=color))
    if result.kind in ("text", "tokens"):
        out.write(render.format_sentence(result, color=color))
    return 0
