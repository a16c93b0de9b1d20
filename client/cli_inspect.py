"""``onnxserve models`` and ``onnxserve describe MODEL``: what a server serves, from a shell.

``models`` prints RepositoryIndex (every model and version with its state, and
the reason of those that are not READY); ``describe`` prints what a caller
needs to build a request: ModelMetadata's inputs and outputs (datatypes and
shapes, -1 for a variable dimension) with the ranges the config declares for
integer inputs, and ModelConfig's batching (max_batch_size, dynamic batching,
instances) and onnxserve's notes (providers, a model's warning). Servers
without ModelConfig (KServe's) get the metadata alone. Argument parsing and
printing only; the calls are :class:`~onnxserve.client.Client`'s.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

from onnxserve.client.connection_settings import ConnectionSettings
from onnxserve.settings import SettingsError, add_arguments, resolve

if TYPE_CHECKING:
    from onnxserve.client import Client, ModelMetadata, RepositoryModel
    from onnxserve.protocol import model_config_pb2 as mc

__all__ = ["DescribeSettings", "ModelsSettings", "describe_lines", "register"]

OutputFormat = Literal["text", "json"]


@dataclass(frozen=True, kw_only=True)
class ModelsSettings(ConnectionSettings):
    """Settings of ``onnxserve models``, from flags, ONNXSERVE_MODELS_* or a [models] table."""

    url: str = field(
        default="localhost:8001",
        metadata={
            "help": "Server address: host:port or grpc://host:port (gRPC), grpcs://host:port "
            "(gRPC with TLS), http://host:port or https://host:port (HTTP/REST, the server's "
            "--http-port, 8000 by default)"
        },
    )
    timeout: float = field(default=10.0, metadata={"help": "Deadline of each call in seconds"})
    format: OutputFormat = field(default="text", metadata={"help": "text or json"})


@dataclass(frozen=True, kw_only=True)
class DescribeSettings(ModelsSettings):
    """Settings of ``onnxserve describe``, from flags, ONNXSERVE_DESCRIBE_* or [describe]."""

    model: str = field(metadata={"help": "Model name", "metavar": "MODEL"})
    model_version: str = field(default="", metadata={"help": "Model version (default: latest)"})


def register(subparsers: Any) -> None:
    """Add the ``models`` and ``describe`` subcommands."""
    models = subparsers.add_parser(
        "models",
        help="list the models a server serves, each version with its state",
        description="List every model and version of a server's repository (RepositoryIndex) "
        "with its state (READY, LOADING, UNAVAILABLE, UNLOADING) and, for those not READY, "
        "the reason.",
    )
    add_arguments(models, ModelsSettings)
    _config_flag(models, "models")
    models.set_defaults(handler=run_models)
    describe = subparsers.add_parser(
        "describe",
        help="show a model's inputs, outputs, datatypes, shapes, ranges and batching",
        description="Show what a request to MODEL needs: its inputs and outputs (datatypes, "
        "shapes with -1 for a variable dimension, declared integer ranges) and how the "
        "server batches it (max_batch_size, dynamic batching, instances).",
    )
    add_arguments(describe, DescribeSettings, positional=("model",))
    _config_flag(describe, "describe")
    describe.set_defaults(handler=run_describe)


def _config_flag(parser: argparse.ArgumentParser, section: str) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"TOML file with a [{section}] table",
    )


def _client(settings: ModelsSettings) -> Client:
    from onnxserve.client import Client

    try:
        return Client(
            settings.url,
            tls=settings.tls_option(),
            token=settings.token or None,
            allow_insecure_token=settings.allow_insecure_token,
            timeout=settings.timeout,
        )
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            + "\n"
        )


def format_models(models: list[RepositoryModel], output_format: OutputFormat, out: TextIO) -> None:
    """The index as a table (text) or a JSON list."""
    if output_format == "json":
        document = [
            {"name": m.name, "version": m.version, "state": m.state, "reason": m.reason}
            for m in models
        ]
        json.dump(document, out, indent=2)
        out.write("\n")
        return
    if not models:
        out.write("the server's repository holds no model\n")
        return
    rows = [["MODEL", "VERSION", "STATE", "REASON"]]
    rows += [[m.name, m.version or "-", m.state, m.reason] for m in models]
    _table(rows, out)


def _failed(command: str, exc: Exception) -> int:
    print(f"onnxserve {command}: error: {exc}", file=sys.stderr)
    return 1


def run_models(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Print RepositoryIndex; 1 with the server's message on failure."""
    from onnxserve.client import InferenceServerError

    settings = resolve(ModelsSettings, args, section="models", config_file=args.config)
    with _client(settings) as client:
        try:
            models = client.repository_index()
        except InferenceServerError as exc:
            return _failed("models", exc)
    format_models(models, settings.format, out or sys.stdout)
    return 0


def _range(config: mc.ModelConfig | None, name: str) -> str:
    from onnxserve.layout import input_range_key, parse_input_range

    if config is None or input_range_key(name) not in config.parameters:
        return ""
    try:
        low, high = parse_input_range(config.parameters[input_range_key(name)].string_value)
    except ValueError:
        return ""
    return f"{'' if low is None else low}..{'' if high is None else high}"


def _batching(config: mc.ModelConfig) -> list[str]:
    if config.max_batch_size <= 0:
        return ["not batched (max_batch_size 0): each request is one sample, shapes as listed"]
    lines = [
        f"max_batch_size {config.max_batch_size}: the first dimension (-1) is the batch, "
        f"up to {config.max_batch_size} rows per request"
    ]
    if config.HasField("dynamic_batching"):
        dynamic = config.dynamic_batching
        preferred = ", ".join(map(str, dynamic.preferred_batch_size)) or "none"
        lines.append(
            f"dynamic batching: max queue delay {dynamic.max_queue_delay_microseconds} us, "
            f"preferred batch sizes {preferred}"
        )
    else:
        lines.append("dynamic batching: off (each request runs alone)")
    return lines


def describe_lines(metadata: ModelMetadata, config: mc.ModelConfig | None) -> list[str]:
    """What ``onnxserve describe`` prints, line by line."""
    from onnxserve.layout import PROVIDERS_PARAMETER, WARNING_PARAMETER

    versions = ", ".join(metadata.versions) or "-"
    lines = [
        f"model     {metadata.name} (versions {versions}; platform {metadata.platform or '-'})"
    ]
    for title, tensors in (("inputs", metadata.inputs), ("outputs", metadata.outputs)):
        lines.append(title)
        rows = [
            [f"  {t.name}", t.datatype, str(list(t.shape)), _range(config, t.name)] for t in tensors
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(4)] if rows else []
        for row in rows:
            if row[3]:
                row[3] = f"values {row[3]}"
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    if config is None:
        lines.append("batching  unknown (the server answers no ModelConfig)")
        return lines
    lines.append("batching")
    lines += [f"  {line}" for line in _batching(config)]
    for group in config.instance_group:
        lines.append(f"  instances: {group.count or 1} on {_kind(group.kind)}")
    if PROVIDERS_PARAMETER in config.parameters:
        lines.append(f"providers {config.parameters[PROVIDERS_PARAMETER].string_value}")
    if WARNING_PARAMETER in config.parameters:
        lines.append(f"WARNING   {config.parameters[WARNING_PARAMETER].string_value}")
    return lines


def _kind(kind: int) -> str:
    from onnxserve.protocol import model_config_pb2 as mc

    return str(mc.ModelInstanceGroup.Kind.Name(kind))


def _describe_json(metadata: ModelMetadata, config: mc.ModelConfig | None) -> dict[str, Any]:
    def tensors(items: Any) -> list[dict[str, Any]]:
        return [
            {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
            | ({"range": _range(config, t.name)} if _range(config, t.name) else {})
            for t in items
        ]

    document: dict[str, Any] = {
        "name": metadata.name,
        "versions": list(metadata.versions),
        "platform": metadata.platform,
        "inputs": tensors(metadata.inputs),
        "outputs": tensors(metadata.outputs),
    }
    if config is not None:
        document["max_batch_size"] = config.max_batch_size
        document["dynamic_batching"] = config.HasField("dynamic_batching")
        document["parameters"] = {k: v.string_value for k, v in config.parameters.items()}
    return document


def run_describe(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Print a model's metadata and batching; 1 with the server's message on failure."""
    from onnxserve.client import InferenceServerError, UnimplementedError

    settings = resolve(DescribeSettings, args, section="describe", config_file=args.config)
    out = out or sys.stdout
    version = settings.model_version or None
    with _client(settings) as client:
        try:
            metadata = client.model_metadata(settings.model, version)
            try:
                config: mc.ModelConfig | None = client.model_config(settings.model, version)
            except UnimplementedError:
                config = None
        except InferenceServerError as exc:
            return _failed("describe", exc)
    if settings.format == "json":
        json.dump(_describe_json(metadata, config), out, indent=2)
        out.write("\n")
    else:
        out.write("\n".join(describe_lines(metadata, config)) + "\n")
    return 0
