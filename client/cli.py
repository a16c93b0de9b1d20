"""``onnxserve infer``: one inference from a shell, printing the outputs.

Argument parsing and printing only; the call is :meth:`Client.infer`. Inputs
come from ``.npy`` files, ``.json`` files or inline JSON. Values from either
take the datatype the model declares (asked with ModelMetadata) when no value
changes on the way (``[1, 2]`` or a float64 file become FP32 for an FP32
input); a cast that would change a value (1.7 to INT32, 300 to INT8, 1e39 to
FP32) is refused, naming the input and the value. Narrowing a float to a
smaller float type rounds, as sending it to the model would.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

import numpy as np

from onnxserve.client.connection_settings import ConnectionSettings
from onnxserve.settings import SettingsError, add_arguments, resolve

if TYPE_CHECKING:
    from onnxserve.client.sync import Client

__all__ = [
    "InferSettings",
    "add_input_argument",
    "declared_inputs",
    "format_outputs",
    "open_client",
    "parse_input",
    "register",
    "run",
    "to_declared",
]

_DESCRIPTION = """\
Run one inference on an Open Inference Protocol (KServe v2 / Triton) server,
over gRPC or HTTP/REST, and print the outputs.

Each --input is NAME=VALUE, where VALUE is a .npy file (numpy.save), a .json
file, or inline JSON. Values get the datatype the model declares for that input
when the cast changes no value (a cast that would, such as 1.7 to INT32, is
refused), and a batch dimension of 1 is added when the model's input has one
more (variable) leading dimension than the value.

examples:
  onnxserve infer simple --input INPUT0=a.npy --input INPUT1=b.json --format json
  onnxserve infer sentiment --input tokens=tokens.npy --url 127.0.0.1:8001
  ONNXSERVE_INFER_TOKEN=... onnxserve infer digits --url grpcs://models.example:443 \\
      --input image=digit.npy --output probabilities
  onnxserve infer digits --url http://127.0.0.1:8000 --input image=digit.npy

--url http://HOST:PORT or https://HOST:PORT calls the server's HTTP/REST port (KServe v2
REST, Triton's binary tensor extension) instead of gRPC, with the same inputs, outputs,
TLS settings and token.
"""

OutputFormat = Literal["text", "json"]


@dataclass(frozen=True, kw_only=True)
class InferSettings(ConnectionSettings):
    """Settings of ``onnxserve infer``, from flags, ONNXSERVE_INFER_* or an [infer] table."""

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
    timeout: float = field(default=60.0, metadata={"help": "Deadline of the call in seconds"})
    request_id: str = field(default="", metadata={"help": "Request id sent with the call"})
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
    add_input_argument(parser)
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


def add_input_argument(parser: argparse.ArgumentParser) -> None:
    """The repeatable ``--input NAME=VALUE`` of ``infer`` and ``explain`` (read by parse_input)."""
    parser.add_argument(
        "--input",
        dest="inputs",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="An input: NAME=file.npy, NAME=file.json or NAME=<inline JSON>; repeat per input",
    )


def open_client(settings: ConnectionSettings, url: str, timeout: float) -> Client:
    """The SDK's Client for a command's connection settings (a bad one: SettingsError)."""
    from onnxserve.client import Client

    try:
        return Client(
            url,
            tls=settings.tls_option(),
            token=settings.token or None,
            allow_insecure_token=settings.allow_insecure_token,
            timeout=timeout,
        )
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def declared_inputs(
    client: Client, model: str, version: str | None
) -> dict[str, tuple[str, tuple[int, ...]]]:
    """A model's inputs as parse_input wants them; empty where the server has no ModelMetadata."""
    from onnxserve.client import UnimplementedError

    try:
        metadata = client.model_metadata(model, version)
    except UnimplementedError:
        return {}  # a server without ModelMetadata: numpy's defaults apply
    return {t.name: (t.datatype, t.shape) for t in metadata.inputs}


_NPY_MAGIC = b"\x93NUMPY"


def _read_npy(name: str, value: str) -> np.ndarray:
    try:
        with open(value, "rb") as handle:
            magic = handle.read(len(_NPY_MAGIC))
    except FileNotFoundError:
        raise SettingsError(f"input '{name}': file {value} does not exist") from None
    except OSError as exc:
        raise SettingsError(f"input '{name}': cannot read {value}: {exc.strerror}") from None
    if magic != _NPY_MAGIC:
        raise SettingsError(
            f"input '{name}': {value} is not a .npy file (numpy's format, written by numpy.save)"
        )
    try:
        return np.load(value, allow_pickle=False)
    except ValueError as exc:
        raise SettingsError(f"input '{name}': cannot read {value}: {exc}") from None


def _read_json(name: str, text: str) -> Any:
    if text.endswith(".json"):
        try:
            return json.loads(Path(text).read_text("utf-8"))
        except FileNotFoundError:
            raise SettingsError(f"input '{name}': file {text} does not exist") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SettingsError(f"input '{name}': {text} is not valid JSON ({exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        if Path(text).is_file():
            raise SettingsError(
                f"input '{name}': {text} is neither a .npy nor a .json file; save the array "
                "with numpy.save (.npy) or as JSON"
            ) from None
        raise SettingsError(
            f"input '{name}': {text!r} is neither a .npy file, a .json file nor inline JSON"
        ) from None


def _text_or_json(name: str, text: str) -> Any:
    """A BYTES input's value: JSON (a file or inline) where it parses, else the text itself
    (``--input text='I loved it'``)."""
    try:
        return _read_json(name, text)
    except SettingsError:
        if text.endswith(".json"):
            raise
        return text


def to_declared(name: str, array: np.ndarray, datatype: str | None) -> np.ndarray:
    """``array`` as the model's ``datatype``: the SDK's rule (:mod:`onnxserve.client.casting`).

    A cast that would change a value is a SettingsError here (exit 2, before
    anything is sent).
    """
    from onnxserve.client.casting import to_declared as cast
    from onnxserve.client.errors import InvalidInputError

    try:
        return cast(name, array, datatype)
    except InvalidInputError as exc:
        raise SettingsError(exc.message) from None


def parse_input(
    spec: str,
    declared: Mapping[str, tuple[str, tuple[int, ...]]],
    notes: list[str] | None = None,
) -> tuple[str, Any]:
    """``NAME=VALUE`` -> (name, array); ``declared`` maps input names to (datatype, shape).

    Values from a .npy file and from JSON alike take the declared datatype
    when no value changes (:func:`to_declared`); a leading batch dimension of 1
    is added when the declared shape has one more dimension than the value
    and it is variable (-1), which is said in ``notes`` (the command prints
    them on stderr). ``declared`` empty: the server did not say, and numpy's
    types are sent.
    """
    name, sep, value = spec.partition("=")
    if not sep or not name or not value:
        raise SettingsError(f"--input {spec!r}: expected NAME=VALUE")
    if declared and name not in declared:
        raise SettingsError(
            f"--input {name}: the model has no input '{name}'; its inputs are "
            + ", ".join(declared)
        )
    datatype, shape = declared.get(name, (None, None))
    if value.endswith(".npy"):
        array = _read_npy(name, value)
    else:
        data = _text_or_json(name, value) if datatype == "BYTES" else _read_json(name, value)
        try:
            array = np.asarray(data, dtype=object if datatype == "BYTES" else None)
        except (TypeError, ValueError, OverflowError) as exc:
            raise SettingsError(f"input '{name}': not an array of values: {exc}") from None
        if array.dtype == object and datatype != "BYTES":
            raise SettingsError(f"input '{name}': not an array of numbers or of strings")
    array = to_declared(name, array, datatype)
    if datatype == "BYTES" and shape is not None and tuple(shape[1:]) == (1,) and array.ndim <= 1:
        array = array.reshape(-1, 1)  # text models: a sentence, or a list of them, per row
    if shape is not None and len(shape) == array.ndim + 1 and shape[0] == -1:
        if notes is not None:
            notes.append(
                f"input '{name}': added a batch dimension of 1 to the value's shape "
                f"{list(array.shape)} (the model takes {list(shape)}): sent as "
                f"{[1, *array.shape]}"
            )
        array = array[np.newaxis, ...]
    return name, array


def _inputs_wanted(model: str, declared: Mapping[str, tuple[str, tuple[int, ...]]]) -> str:
    """The error for a call without --input: the model's inputs, when the server said."""
    if not declared:
        return "give at least one --input NAME=VALUE"
    listed = ", ".join(f"{n} ({d} {list(s)})" for n, (d, s) in declared.items())
    first = next(iter(declared))
    return (
        f"give the model's inputs, one --input NAME=VALUE each: '{model}' takes {listed} "
        f"(-1: any size); e.g. --input {first}=values.json (or .npy, or inline JSON)"
    )


def _unique(flag: str, names: Sequence[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise SettingsError(f"{flag} {name} is given twice")
        seen.add(name)


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
    from onnxserve.client import InferenceServerError

    out = out or sys.stdout
    settings = resolve(InferSettings, args, section="infer", config_file=args.config)
    specs: Sequence[str] = args.inputs
    _unique("--output", args.outputs)
    version = settings.model_version or None
    with open_client(settings, settings.url, settings.timeout) as client:
        try:
            declared = declared_inputs(client, settings.model, version)
            if not specs:
                raise SettingsError(_inputs_wanted(settings.model, declared))
            notes: list[str] = []
            parsed = [parse_input(spec, declared, notes) for spec in specs]
            for note in notes:
                print(f"onnxserve infer: {note}", file=sys.stderr)
            _unique("--input", [name for name, _ in parsed])
            inputs = dict(parsed)
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
