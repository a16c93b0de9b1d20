"""``onnxserve infer``: one inference from a shell, printing the outputs.

Argument parsing and printing only; the call is :meth:`Client.infer`. Inputs
come from ``.npy`` files, ``.json`` files or inline JSON; JSON values take the
datatype the model declares (asked with ModelMetadata), so ``[1, 2]`` becomes
FP32 for an FP32 input rather than numpy's default float64.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

import numpy as np

from onnxserve.settings import SettingsError, add_arguments, resolve

__all__ = ["InferSettings", "format_outputs", "parse_input", "register", "run"]

_DESCRIPTION = """\
Run one inference on an Open Inference Protocol (KServe v2 / Triton) gRPC
server and print the outputs.

Each --input is NAME=VALUE, where VALUE is a .npy file, a .json file, or inline
JSON. JSON values get the datatype the model declares for that input, and a
batch dimension of 1 is added when the model's input has one more (variable)
leading dimension than the value.

examples:
  onnxserve infer simple --input INPUT0=a.npy --input INPUT1=b.npy
  onnxserve infer sentiment --url grpcs://models.example:443 --token "$TOKEN" \\
      --input text='["great film"]' --format json
"""

OutputFormat = Literal["text", "json"]


@dataclass(frozen=True)
class InferSettings:
    """Settings of ``onnxserve infer``, from flags, ONNXSERVE_* or an [infer] table."""

    model: str = field(metadata={"help": "Model name", "metavar": "MODEL"})
    url: str = field(
        default="localhost:8001",
        metadata={"help": "Server address: host:port, grpc://host:port or grpcs://host:port"},
    )
    model_version: str = field(default="", metadata={"help": "Model version (default: latest)"})
    timeout: float = field(default=60.0, metadata={"help": "Deadline of the call in seconds"})
    request_id: str = field(default="", metadata={"help": "Request id sent with the call"})
    tls: bool = field(default=False, metadata={"help": "Use TLS (implied by grpcs://)"})
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
    format: OutputFormat = field(
        default="text", metadata={"help": "How to print the outputs: text or json"}
    )
    save_dir: Path | None = field(
        default=None,
        metadata={"help": "Also save each output as DIR/<name>.npy", "metavar": "DIR"},
    )


def register(subparsers: Any) -> None:
    """Add the ``infer`` subcommand."""
    parser = subparsers.add_parser(
        "infer",
        help="run one inference on a server and print the outputs",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser, InferSettings, positional=("model",))
    parser.add_argument(
        "--input",
        dest="inputs",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="An input: NAME=file.npy, NAME=file.json or NAME=<inline JSON>; repeat per input",
    )
    parser.add_argument(
        "--output",
        dest="outputs",
        action="append",
        default=[],
        metavar="NAME",
        help="Ask for this output only; repeat for several (default: all)",
    )
    parser.add_argument(
        "--config", type=Path, default=None, metavar="FILE", help="TOML file with an [infer] table"
    )
    parser.set_defaults(handler=run)


def _json_value(name: str, text: str) -> Any:
    path = Path(text)
    if text.endswith(".json"):
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise SettingsError(f"input '{name}': file {text} does not exist") from None
        except json.JSONDecodeError as exc:
            raise SettingsError(f"input '{name}': {text} is not valid JSON ({exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise SettingsError(
            f"input '{name}': {text!r} is neither a .npy file, a .json file nor inline JSON"
        ) from None


def parse_input(spec: str, declared: Mapping[str, tuple[str, tuple[int, ...]]]) -> tuple[str, Any]:
    """``NAME=VALUE`` -> (name, array); ``declared`` maps input names to (datatype, shape).

    The declared datatype is applied to JSON values (a .npy file keeps its
    dtype); a leading batch dimension of 1 is added when the declared shape
    has one more dimension than the value and it is variable (-1).
    """
    from onnxserve.protocol import codec

    name, sep, value = spec.partition("=")
    if not sep or not name or not value:
        raise SettingsError(f"--input {spec!r}: expected NAME=VALUE")
    datatype, shape = declared.get(name, (None, None))
    if value.endswith(".npy"):
        try:
            array = np.load(value, allow_pickle=False)
        except FileNotFoundError:
            raise SettingsError(f"input '{name}': file {value} does not exist") from None
        except ValueError as exc:
            raise SettingsError(f"input '{name}': cannot read {value}: {exc}") from None
    else:
        data = _json_value(name, value)
        if datatype is None:
            array = np.asarray(data)
        elif datatype == "BYTES":
            array = np.asarray(data, dtype=object)
        else:
            try:
                array = np.asarray(data, dtype=codec.numpy_dtype(datatype))
            except (TypeError, ValueError, OverflowError) as exc:
                raise SettingsError(f"input '{name}': not {datatype} values: {exc}") from None
    if shape is not None and len(shape) == array.ndim + 1 and shape[0] == -1:
        array = array[np.newaxis, ...]
    return name, array


def _jsonable(array: np.ndarray) -> Any:
    if array.dtype == object:

        def text(element: Any) -> str:
            data = bytes(element)
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                return "base64:" + base64.b64encode(data).decode("ascii")

        return np.vectorize(text, otypes=[object])(array).tolist() if array.size else []
    if array.dtype.kind == "f" or array.dtype.name == "bfloat16":
        return array.astype(np.float64).tolist()
    return array.tolist()


def format_outputs(
    outputs: Mapping[str, np.ndarray], output_format: OutputFormat, out: TextIO
) -> None:
    """Print outputs: numpy's repr per output (text), or one JSON object (json)."""
    from onnxserve.protocol import codec

    if output_format == "json":
        document = {
            name: {
                "datatype": codec.datatype_of(array),
                "shape": list(array.shape),
                "data": _jsonable(array),
            }
            for name, array in outputs.items()
        }
        json.dump(document, out, indent=2, ensure_ascii=False)
        out.write("\n")
        return
    for name, array in outputs.items():
        out.write(f"{name} {codec.datatype_of(array)} {list(array.shape)}\n")
        out.write(np.array2string(array, separator=", ") + "\n")


def _save(outputs: Mapping[str, np.ndarray], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in outputs.items():
        # BYTES as fixed-width bytes, so the file loads without pickle.
        data = array.astype(np.bytes_) if array.dtype == object else array
        np.save(directory / f"{name}.npy", data, allow_pickle=False)


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Resolve settings, call the server, print; 1 with the server's message on failure."""
    from onnxserve.client import Client, InferenceServerError, TLSConfig, UnimplementedError

    out = out or sys.stdout
    settings = resolve(InferSettings, args, config_file=args.config, section="infer")
    specs: Sequence[str] = args.inputs
    if not specs:
        raise SettingsError("give at least one --input NAME=VALUE")
    tls: bool | TLSConfig = settings.tls
    if settings.root_certificates or settings.certificate_chain or settings.server_name:
        tls = TLSConfig(
            root_certificates=settings.root_certificates,
            certificate_chain=settings.certificate_chain,
            private_key=settings.private_key,
            server_name=settings.server_name or None,
        )
    version = settings.model_version or None
    try:
        client = Client(
            settings.url,
            tls=tls,
            token=settings.token or None,
            allow_insecure_token=settings.allow_insecure_token,
            timeout=settings.timeout,
        )
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    with client:
        try:
            try:
                metadata = client.model_metadata(settings.model, version)
                declared = {t.name: (t.datatype, t.shape) for t in metadata.inputs}
            except UnimplementedError:
                declared = {}  # a server without ModelMetadata: numpy's defaults apply
            inputs = dict(parse_input(spec, declared) for spec in specs)
            outputs = client.infer(
                settings.model,
                inputs,
                outputs=list(args.outputs) or None,
                version=version,
                request_id=settings.request_id or None,
            )
        except InferenceServerError as exc:
            print(f"onnxserve infer: error: {exc}", file=sys.stderr)
            return 1
    format_outputs(outputs, settings.format, out)
    if settings.save_dir is not None:
        _save(outputs, settings.save_dir)
    return 0
