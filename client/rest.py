"""The HTTP/REST transport: the SDK's calls over the Open Inference Protocol's REST binding.

A client made for an ``http://`` or ``https://`` URL sends the same
:class:`~onnxserve.client.calls.Call` descriptions as over gRPC; this module
turns each into its KServe v2 REST route (Triton's extensions included:
config, statistics, repository) and turns the JSON answer back into the
protobuf response message the call's parser already reads. Request building
and response decoding therefore stay in :mod:`onnxserve.client.calls`, shared
by every transport; only the wire differs.

Inference uses Triton's binary tensor extension both ways: the request is a
JSON header (``Inference-Header-Content-Length`` says its length) followed by
each input's raw little-endian bytes (BYTES as 4-byte-length-prefixed
elements), and asks for binary outputs, which are decoded as zero-copy
read-only views of the answer. Outputs a server answers as JSON ``data``
anyway are converted.

HTTP statuses become the SDK's errors as the server's gRPC codes would (400
:class:`InvalidInputError`, 404 :class:`ModelNotFoundError`, 401
:class:`AuthenticationError`, 429 :class:`ResourceExhaustedError`, 503
:class:`ServerUnavailableError`, ...), with the server's ``{"error": ...}``
text as the message. Connections are stdlib ``http.client`` HTTP/1.1
keep-alive connections, one per call in flight, pooled per target and reused.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import ssl
import threading
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import grpc
import numpy as np
from google.protobuf import json_format

from onnxserve.client.calls import Call, decode_parameters, encode_parameters
from onnxserve.client.connection import Connection
from onnxserve.client.errors import (
    DeadlineExceededError,
    InferenceServerError,
    InvalidResponseError,
    ResourceExhaustedError,
    ServerUnavailableError,
    UnimplementedError,
    error_for_code,
)
from onnxserve.protocol import codec
from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.protocol import model_config_pb2 as mc

__all__ = [
    "HEADER_LENGTH",
    "HttpRequest",
    "HttpTransport",
    "RestInferResponse",
    "code_for_status",
    "error_for_status",
    "infer_body",
    "request_for",
    "response_for",
]

#: Triton's header: the JSON part's length when binary tensor data follows it.
HEADER_LENGTH = "Inference-Header-Content-Length"

#: HTTP status -> the gRPC code the same failure has (the server's own mapping, reversed).
_STATUS_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.ALREADY_EXISTS,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

# Bodies up to this size are sent with the headers in one write; larger ones as
# their parts (the JSON header, then each tensor's bytes), never joined.
_JOIN_BELOW = 1 << 20
# Idle keep-alive connections kept per target.
_MAX_IDLE = 64


def code_for_status(status: int) -> grpc.StatusCode:
    """The gRPC status code an HTTP error status stands for."""
    if status in _STATUS_CODES:
        return _STATUS_CODES[status]
    if 400 <= status < 500:
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.UNKNOWN


def error_for_status(status: int, body: bytes) -> InferenceServerError:
    """The SDK's exception for an HTTP error answer, with the server's ``error`` text."""
    message = ""
    try:
        document = json.loads(body)
        if isinstance(document, dict) and isinstance(document.get("error"), str):
            message = document["error"]
    except (ValueError, UnicodeDecodeError):
        pass
    if not message:
        text = body.decode("utf-8", errors="replace").strip()
        message = f"HTTP {status}" + (f": {text[:500]}" if text else "")
    return error_for_code(code_for_status(status), message)


# -- requests -------------------------------------------------------------------


@dataclass(frozen=True)
class HttpRequest:
    """One REST call to make: method, path, body parts and extra headers."""

    method: str
    path: str
    body: tuple[bytes | memoryview, ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return sum(len(part) for part in self.body)


def _segment(text: str) -> str:
    return quote(text, safe="")


def _model_path(name: str, version: str) -> str:
    path = f"/v2/models/{_segment(name)}"
    return f"{path}/versions/{_segment(version)}" if version else path


def _json_body(document: Any) -> tuple[bytes, ...]:
    return (json.dumps(document, separators=(",", ":")).encode(),)


def infer_body(request: pb.ModelInferRequest) -> tuple[tuple[bytes | memoryview, ...], int]:
    """A ModelInferRequest as the binary tensor extension's body: (parts, JSON length).

    Every input goes as binary data (``binary_data_size``) after the JSON
    header, and every output is asked for as binary data.
    """
    raws = list(request.raw_input_contents)  # one read each (each read copies)
    if len(raws) != len(request.inputs):
        raise InvalidResponseError(
            "the REST transport sends inputs as raw contents only; "
            f"{len(request.inputs)} inputs have {len(raws)} raw contents"
        )
    inputs = []
    for tensor, raw in zip(request.inputs, raws, strict=True):
        parameters: dict[str, Any] = dict(decode_parameters(tensor.parameters))
        parameters["binary_data_size"] = len(raw)
        inputs.append(
            {
                "name": tensor.name,
                "datatype": tensor.datatype,
                "shape": [int(d) for d in tensor.shape],
                "parameters": parameters,
            }
        )
    header: dict[str, Any] = {}
    if request.id:
        header["id"] = request.id
    header["parameters"] = {**decode_parameters(request.parameters), "binary_data_output": True}
    header["inputs"] = inputs
    if request.outputs:
        header["outputs"] = [
            {"name": o.name, "parameters": {**decode_parameters(o.parameters), "binary_data": True}}
            for o in request.outputs
        ]
    head = json.dumps(header, separators=(",", ":")).encode()
    return (head, *raws), len(head)


def _repository_parameters(parameters: Any) -> dict[str, Any]:
    """ModelRepositoryParameter values as JSON; bytes as base64 (Triton's ``file:`` form)."""
    result: dict[str, Any] = {}
    for key, param in parameters.items():
        choice = param.WhichOneof("parameter_choice")
        if choice is None:
            continue
        value = getattr(param, choice)
        result[key] = base64.b64encode(value).decode() if choice == "bytes_param" else value
    return result


def request_for(call: Call[Any]) -> HttpRequest:
    """The REST route and body of a call; UnimplementedError for a call REST lacks."""
    r = call.request
    method = call.method
    if method == "ServerLive":
        return HttpRequest("GET", "/v2/health/live")
    if method == "ServerReady":
        return HttpRequest("GET", "/v2/health/ready")
    if method == "ModelReady":
        return HttpRequest("GET", f"{_model_path(r.name, r.version)}/ready")
    if method == "ServerMetadata":
        return HttpRequest("GET", "/v2")
    if method == "ModelMetadata":
        return HttpRequest("GET", _model_path(r.name, r.version))
    if method == "ModelConfig":
        return HttpRequest("GET", f"{_model_path(r.name, r.version)}/config")
    if method == "ModelStatistics":
        path = f"{_model_path(r.name, r.version)}/stats" if r.name else "/v2/models/stats"
        return HttpRequest("GET", path)
    if method == "RepositoryIndex":
        return HttpRequest("POST", "/v2/repository/index", _json_body({"ready": r.ready}))
    if method in ("RepositoryModelLoad", "RepositoryModelUnload"):
        verb = "load" if method == "RepositoryModelLoad" else "unload"
        parameters = _repository_parameters(r.parameters)
        body = _json_body({"parameters": parameters} if parameters else {})
        return HttpRequest("POST", f"/v2/repository/models/{_segment(r.model_name)}/{verb}", body)
    if method == "ModelInfer":
        parts, head = infer_body(r)
        return HttpRequest(
            "POST",
            f"{_model_path(r.model_name, r.model_version)}/infer",
            parts,
            {HEADER_LENGTH: str(head), "Content-Type": "application/octet-stream"},
        )
    raise UnimplementedError(f"{method} has no HTTP/REST route; use a grpc:// URL")


# -- answers --------------------------------------------------------------------


class RestInferResponse:
    """A REST inference answer as :func:`calls.decode_infer_response` reads a
    ModelInferResponse: the message (outputs' names, datatypes, shapes and
    parameters; the answer's identity) and the outputs' bytes as views of the
    HTTP body (no copy)."""

    __slots__ = ("message", "raw_output_contents")

    def __init__(self, message: pb.ModelInferResponse, raw: list[bytes | memoryview]) -> None:
        self.message = message
        self.raw_output_contents = raw

    @property
    def outputs(self) -> Any:
        return self.message.outputs

    @property
    def model_name(self) -> str:
        return self.message.model_name

    @property
    def model_version(self) -> str:
        return self.message.model_version

    @property
    def id(self) -> str:
        return self.message.id

    @property
    def parameters(self) -> Any:
        return self.message.parameters


def _json(body: bytes | memoryview, what: str) -> Any:
    try:
        return json.loads(bytes(body))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidResponseError(f"the server's {what} answer is not JSON: {exc}") from None


def _data_to_raw(name: str, datatype: str, data: Any) -> bytes:
    """An output's JSON ``data`` (flat or nested) as raw protocol bytes."""
    try:
        if datatype == "BYTES":
            return codec.serialize_bytes_tensor(np.asarray(data, dtype=object).reshape(-1))
        return codec.array_to_raw(
            np.asarray(data, dtype=codec.numpy_dtype(datatype)).reshape(-1), datatype
        )
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidResponseError(
            f"output '{name}': its JSON data is not {datatype}: {exc}"
        ) from None


def _infer_response(headers: Mapping[str, str], body: bytes) -> RestInferResponse:
    length_text = headers.get(HEADER_LENGTH.lower())
    view = memoryview(body)
    try:
        length = len(body) if length_text is None else int(length_text)
    except ValueError:
        raise InvalidResponseError(f"{HEADER_LENGTH} is not a number: {length_text!r}") from None
    if not 0 <= length <= len(body):
        raise InvalidResponseError(f"{HEADER_LENGTH} {length} exceeds the {len(body)}-byte body")
    document = _json(view[:length], "inference")
    if not isinstance(document, dict) or not isinstance(document.get("outputs", []), list):
        raise InvalidResponseError("the inference answer is not a JSON object with 'outputs'")
    message = pb.ModelInferResponse(
        model_name=str(document.get("model_name", "")),
        model_version=str(document.get("model_version", "")),
        id=str(document.get("id", "")),
    )
    raws: list[bytes | memoryview] = []
    offset = length
    try:
        encode_parameters(document.get("parameters"), message.parameters)
        for output in document.get("outputs", []):
            parameters = dict(output.get("parameters") or {})
            size = parameters.pop("binary_data_size", None)
            tensor = message.outputs.add(
                name=output["name"],
                datatype=output["datatype"],
                shape=[int(d) for d in output.get("shape", [])],
            )
            encode_parameters(parameters, tensor.parameters)
            if size is None:
                raws.append(_data_to_raw(tensor.name, tensor.datatype, output.get("data", [])))
                continue
            if offset + int(size) > len(body):
                raise InvalidResponseError(
                    f"output '{tensor.name}' has binary_data_size {size} but only "
                    f"{len(body) - offset} bytes of binary data are left in the answer"
                )
            raws.append(view[offset : offset + int(size)])
            offset += int(size)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, InferenceServerError):
            raise
        raise InvalidResponseError(f"the inference answer is malformed: {exc!r}") from None
    return RestInferResponse(message, raws)


def _probe(document: Any, key: str, status: int, body: bytes) -> bool:
    """Health and readiness: 200 or 503 with ``{key: bool}``; anything else is an error."""
    if isinstance(document, dict) and isinstance(document.get(key), bool):
        return bool(document[key])
    if status == 200:
        return True  # a server that answers the probe with 200 and no JSON
    raise error_for_status(status, body)


def response_for(call: Call[Any], status: int, headers: Mapping[str, str], body: bytes) -> Any:
    """The protobuf response (or :class:`RestInferResponse`) a call's parser reads.

    ``headers`` have lower-case names. Raises the SDK's error for a failure.
    """
    method = call.method
    if method in ("ServerLive", "ServerReady", "ModelReady") and status in (200, 400, 503):
        document: Any = None
        try:
            document = json.loads(body) if body.strip() else None
        except (ValueError, UnicodeDecodeError):
            document = None
        if method == "ServerLive":
            return pb.ServerLiveResponse(live=_probe(document, "live", status, body))
        if status == 400 and not (isinstance(document, dict) and "ready" in document):
            raise error_for_status(status, body)
        ready = _probe(document, "ready", status, body)
        if method == "ServerReady":
            return pb.ServerReadyResponse(ready=ready)
        return pb.ModelReadyResponse(ready=ready)
    if status != 200:
        raise error_for_status(status, body)
    if method == "ModelInfer":
        return _infer_response(headers, body)
    if method in ("RepositoryModelLoad", "RepositoryModelUnload"):
        return getattr(pb, f"{method}Response")()
    document = _json(body, method) if body.strip() else {}
    try:
        if method == "ModelConfig":
            config = json_format.ParseDict(document, mc.ModelConfig(), ignore_unknown_fields=True)
            return pb.ModelConfigResponse(config=config)
        if method == "RepositoryIndex":
            document = {"models": document} if isinstance(document, list) else document
        response = getattr(pb, f"{method}Response")()
        return json_format.ParseDict(document, response, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise InvalidResponseError(f"the server's {method} answer does not fit: {exc}") from None


# -- connections ----------------------------------------------------------------


def _split_target(target: str) -> tuple[str, int | None]:
    """``host:port`` / ``[v6]:port`` / ``host`` -> (host, port)."""
    if target.startswith("["):
        host, _, rest = target[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return target, None
    return host, int(port)


class _HTTPSConnection(http.client.HTTPSConnection):
    """An https connection that checks the certificate against ``server_name`` when given."""

    def __init__(
        self, host: str, port: int | None, *, timeout: float, context: ssl.SSLContext, name: str
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._tls_context = context
        self._tls_name = name

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._tls_context.wrap_socket(self.sock, server_hostname=self._tls_name)


# A keep-alive connection the server closed while it was idle fails like this on
# its next use, before the server read the request: that request is sent again,
# once, on a new connection.
_STALE = (
    http.client.RemoteDisconnected,
    BrokenPipeError,
    ConnectionResetError,
    ConnectionAbortedError,
)


class HttpTransport:
    """Blocking REST calls to one target over a pool of HTTP/1.1 keep-alive connections.

    Thread-safe: each call takes an idle connection (or opens one) and gives it
    back when its answer has been read, so calls in flight at once (threads,
    split batches) each have their own.
    """

    protocol = "http"

    def __init__(
        self,
        connection: Connection,
        target: str,
        compression: grpc.Compression | None = None,
    ) -> None:
        self.connection = connection
        self.target = target
        self.host, self.port = _split_target(target)
        self._headers = {"Host": target, **dict(connection.metadata)}
        self._encoding = {
            grpc.Compression.Gzip: "gzip",
            grpc.Compression.Deflate: "deflate",
        }.get(compression or grpc.Compression.NoCompression)
        if self._encoding:
            self._headers["Accept-Encoding"] = "gzip, deflate"
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    # -- the pool -------------------------------------------------------------

    def _open(self, timeout: float) -> http.client.HTTPConnection:
        context = self.connection.ssl_context
        if context is None:
            return http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        name = self.connection.server_name or self.host
        return _HTTPSConnection(self.host, self.port, timeout=timeout, context=context, name=name)

    def _take(self) -> http.client.HTTPConnection | None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the client is closed")
            return self._idle.pop() if self._idle else None

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < _MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Close every idle connection; those in use close when their call ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # -- one call -------------------------------------------------------------

    def unary(self, call: Call[Any], timeout_s: float) -> Any:
        """Send one call and return what its parser reads; raises the SDK's errors."""
        request = request_for(call)
        status, headers, body = self.exchange(request, timeout_s)
        return response_for(call, status, headers, body)

    def _body(self, request: HttpRequest) -> tuple[tuple[bytes | memoryview, ...], dict[str, str]]:
        headers = {**self._headers, **request.headers}
        parts = request.body
        if self._encoding and parts:
            joined = b"".join(parts)
            parts = (
                gzip.compress(joined, compresslevel=6)
                if self._encoding == "gzip"
                else zlib.compress(joined),
            )
            headers["Content-Encoding"] = self._encoding
        length = sum(len(p) for p in parts)
        if length > self.connection.max_message_bytes:
            raise ResourceExhaustedError(
                f"Sent message larger than max ({length} vs. {self.connection.max_message_bytes})"
            )
        if parts or request.method == "POST":
            headers["Content-Length"] = str(length)
        if len(parts) > 1 and length < _JOIN_BELOW:
            parts = (b"".join(parts),)
        return parts, headers

    def exchange(self, request: HttpRequest, timeout_s: float) -> tuple[int, dict[str, str], bytes]:
        """(status, lower-case headers, decoded body) of one request."""
        if timeout_s <= 0:
            raise DeadlineExceededError("Deadline Exceeded (before the request was sent)")
        parts, headers = self._body(request)
        conn = self._take()
        reused = conn is not None
        while True:
            if conn is None:
                conn = self._open(timeout_s)
            try:
                if conn.sock is not None:
                    conn.sock.settimeout(timeout_s)
                conn.putrequest(request.method, request.path, skip_host=True,
                                skip_accept_encoding=True)  # fmt: skip
                for name, value in headers.items():
                    conn.putheader(name, value)
                body = parts[0] if len(parts) == 1 else None
                conn.endheaders(body)
                if len(parts) > 1:
                    for part in parts:
                        conn.send(part)
                answer = conn.getresponse()
                status, answer_headers, data = self._read(answer)
            except _STALE as exc:
                conn.close()
                conn = None
                if reused:
                    reused = False
                    continue  # a connection the server had closed: once more, on a new one
                raise ServerUnavailableError(
                    f"the connection to {self.target} was closed: {exc or type(exc).__name__}"
                ) from None
            except TimeoutError:
                conn.close()
                raise DeadlineExceededError("Deadline Exceeded") from None
            except ssl.SSLError as exc:
                conn.close()
                raise ServerUnavailableError(f"TLS with {self.target} failed: {exc}") from None
            except OSError as exc:
                conn.close()
                raise ServerUnavailableError(f"cannot reach {self.target}: {exc}") from None
            except http.client.HTTPException as exc:
                conn.close()
                raise ServerUnavailableError(
                    f"{self.target} did not answer in HTTP: {exc!r}"
                ) from None
            except BaseException:
                conn.close()
                raise
            if answer.will_close:
                conn.close()
            else:
                self._give_back(conn)
            return status, answer_headers, data

    def _read(self, answer: http.client.HTTPResponse) -> tuple[int, dict[str, str], bytes]:
        headers = {k.lower(): v for k, v in answer.getheaders()}
        limit = self.connection.max_message_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            answer.close()
            answer.will_close = True
            raise ResourceExhaustedError(
                f"Received message larger than max ({declared} vs. {limit})"
            )
        data = answer.read()
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("gzip", "deflate"):
            try:
                data = gzip.decompress(data) if encoding == "gzip" else zlib.decompress(data)
            except (OSError, zlib.error) as exc:
                raise InvalidResponseError(
                    f"the {encoding} answer cannot be decoded: {exc}"
                ) from None
            headers.pop("content-encoding")
        if len(data) > limit:
            raise ResourceExhaustedError(
                f"Received message larger than max ({len(data)} vs. {limit})"
            )
        return answer.status, headers, data


def transports_for(
    connection: Connection, compression: grpc.Compression | None = None
) -> list[HttpTransport]:
    """One transport per target of the plan; repeated targets share theirs (and its pool)."""
    shared = {
        t: HttpTransport(connection, t, compression) for t in dict.fromkeys(connection.targets)
    }
    return [shared[t] for t in connection.targets]


def unique(transports: Sequence[HttpTransport]) -> list[HttpTransport]:
    return list({id(t): t for t in transports}.values())
