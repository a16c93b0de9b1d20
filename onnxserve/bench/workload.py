"""What the bench sends: the model's inputs as the server describes them, and the
pre-encoded request bodies.

Every request is serialised once, before the clock starts, so the load
generator's per-request work is only sending bytes: with client and server on
the same cores, encoding in the loop would be charged to the server. The same
bytes serve both drivers: the python driver passes them through gRPC untouched,
the h2load driver posts them in gRPC's length-prefixed frame. Over REST
(``--protocol http``) the body is what the SDK's REST transport sends
(:func:`onnxserve.client.rest.infer_body`: Triton's binary tensor extension,
binary outputs asked for) or, with ``--body json``, the inputs as JSON ``data``.

Random integer inputs stay inside the range the model's config declares for
each input (the model-level parameter ``onnxserve.input_range.<input>``, which
the server reports in ModelConfig), else inside 0..99: an Embedding fed ids past
its vocabulary fails in onnxruntime, and a benchmark of failures measures
nothing. ``--int-range`` overrides both for every integer input.

BYTES inputs (text models) get generated sentences of 1 to 40 words (random
words from a small English list, some punctuation and capitals), or the
sentences of a ``.txt`` file, one per line, rotated over the requests.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from onnxserve.client.types import TensorMetadata
from onnxserve.layout import INPUT_RANGE_PREFIX, input_range_key, parse_input_range
from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.protocol import model_config_pb2 as mc
from onnxserve.protocol.codec import array_to_raw, numpy_dtype

__all__ = [
    "DEFAULT_INT_RANGE",
    "INFER_METHOD",
    "InputSpec",
    "ModelInfo",
    "RestRequest",
    "WorkloadError",
    "build_inputs",
    "decode_frame",
    "encode_frame",
    "encode_request",
    "encode_rest_request",
    "integer_range",
    "model_info",
    "parse_shapes",
]

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
_FRAME_HEADER = struct.Struct(">BI")  # compressed flag, big-endian length
#: Random integer inputs without a declared range and without --int-range.
DEFAULT_INT_RANGE = (0, 99)


class WorkloadError(ValueError):
    """The model or the input data cannot make a request; the message says why."""


#: Kept for benchmarks/run_benchmark.py, which builds a ModelInfo by hand: the
#: bench's inputs are the client's TensorMetadata (name, datatype, shape).
InputSpec = TensorMetadata


@dataclass(frozen=True)
class ModelInfo:
    """The model as the server describes it (ModelMetadata and ModelConfig).

    ``inputs`` have their per-sample shape: no batch dim, variable dims filled
    in. ``input_ranges`` are the inclusive ranges the config declares for
    integer inputs (None: that side open).
    """

    name: str
    versions: tuple[str, ...]
    max_batch_size: int
    inputs: tuple[TensorMetadata, ...]
    default_model_filename: str
    input_ranges: Mapping[str, tuple[int | None, int | None]] = field(default_factory=dict)

    @property
    def batchable(self) -> bool:
        return self.max_batch_size > 0


def parse_shapes(text: str) -> dict[str, tuple[int, ...]]:
    """``"A:50;B:3,4"`` -> ``{"A": (50,), "B": (3, 4)}`` (dims may also be split by ``x``)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for entry in text.replace(" ", ";").split(";"):
        if not entry:
            continue
        name, sep, dims = entry.rpartition(":")
        if not sep or not name:
            raise WorkloadError(f"--shape entry {entry!r} is not NAME:D1,D2")
        try:
            values = tuple(int(d) for d in dims.replace("x", ",").split(",") if d)
        except ValueError:
            raise WorkloadError(f"--shape entry {entry!r}: dims must be integers") from None
        if any(d < 0 for d in values):
            raise WorkloadError(f"--shape entry {entry!r}: dims must be non-negative")
        shapes[name] = values
    return shapes


def _declared_ranges(
    config: mc.ModelConfig, names: Sequence[str]
) -> dict[str, tuple[int | None, int | None]]:
    """The ``onnxserve.input_range.<input>`` parameters of a config, parsed."""
    ranges = {}
    for key, parameter in config.parameters.items():
        if not key.startswith(INPUT_RANGE_PREFIX):
            continue
        name = key[len(INPUT_RANGE_PREFIX) :]
        if name not in names:
            continue  # a range of an input the server does not report: nothing to draw
        try:
            ranges[name] = parse_input_range(parameter.string_value)
        except ValueError as exc:
            raise WorkloadError(
                f"the model's config parameter {input_range_key(name)}: {exc}"
            ) from None
    return ranges


def model_info(
    metadata: pb.ModelMetadataResponse,
    config: mc.ModelConfig,
    shapes: Mapping[str, tuple[int, ...]],
) -> ModelInfo:
    """Resolve each input's per-sample shape, filling variable dims from ``shapes``,
    and read the integer ranges the config declares."""
    batchable = config.max_batch_size > 0
    inputs = []
    for tensor in metadata.inputs:
        dims = tuple(int(d) for d in tensor.shape)
        if batchable:
            dims = dims[1:]
        if tensor.name in shapes:
            given = shapes[tensor.name]
            if len(given) != len(dims) or any(
                d >= 0 and d != g for d, g in zip(dims, given, strict=True)
            ):
                raise WorkloadError(
                    f"--shape {tensor.name}:{','.join(map(str, given))} does not fit the "
                    f"model's {list(dims)} (batch dim excluded)"
                )
            dims = given
        if any(d < 0 for d in dims):
            raise WorkloadError(
                f"input '{tensor.name}' has variable dims {list(dims)} (batch dim excluded); "
                f"give their sizes with --shape {tensor.name}:"
                + ",".join("N" if d < 0 else str(d) for d in dims)
            )
        inputs.append(TensorMetadata(tensor.name, tensor.datatype, dims))
    unknown = set(shapes) - {i.name for i in inputs}
    if unknown:
        raise WorkloadError(f"--shape names unknown input(s): {', '.join(sorted(unknown))}")
    return ModelInfo(
        name=metadata.name,
        versions=tuple(metadata.versions),
        max_batch_size=int(config.max_batch_size),
        inputs=tuple(inputs),
        default_model_filename=config.default_model_filename or "model.onnx",
        input_ranges=_declared_ranges(config, [i.name for i in inputs]),
    )


def integer_range(
    info: ModelInfo, name: str, dtype: np.dtype[Any], int_range: Sequence[int] = ()
) -> tuple[int, int]:
    """The inclusive range random values of integer input ``name`` are drawn from.

    ``int_range`` (the user's --int-range) wins; else the config's declared
    range, an open side taken from DEFAULT_INT_RANGE (moved to stay non-empty);
    else DEFAULT_INT_RANGE. Clipped to the dtype; an empty result is an error.
    """
    if int_range:
        low, high = int(int_range[0]), int(int_range[1])
        source = f"--int-range {low},{high}"
    elif name in info.input_ranges:
        declared_low, declared_high = info.input_ranges[name]
        span = DEFAULT_INT_RANGE[1] - DEFAULT_INT_RANGE[0]
        if declared_low is None:
            assert declared_high is not None
            low, high = min(DEFAULT_INT_RANGE[0], declared_high - span), declared_high
        elif declared_high is None:
            low, high = declared_low, max(DEFAULT_INT_RANGE[1], declared_low + span)
        else:
            low, high = declared_low, declared_high
        source = f"the declared range {input_range_key(name)}"
    else:
        low, high = DEFAULT_INT_RANGE
        source = f"the default range {low},{high}"
    info_range = np.iinfo(dtype)
    low, high = max(low, int(info_range.min)), min(high, int(info_range.max))
    if low > high:
        raise WorkloadError(f"input '{name}' ({dtype}): {source} is outside the type's range")
    return low, high


#: Words of the generated sentences (lengths and letters vary; the vocabulary does not matter).
_WORD_LIST = (
    "the a this that service food phone battery movie was is not very really great good bad "
    "terrible excellent slow fast cold friendly staff price value screen sound acting plot "
    "ending would recommend never again loved hated it I we they and but so"
)
_WORDS = tuple(_WORD_LIST.split(" "))
_MAX_WORDS = 40


def _sentence(rng: np.random.Generator) -> bytes:
    words = [str(w) for w in rng.choice(_WORDS, size=int(rng.integers(1, _MAX_WORDS + 1)))]
    words[0] = words[0].capitalize()
    return (" ".join(words) + str(rng.choice([".", "!", "?", ""]))).encode()


def _random_array(
    info: ModelInfo,
    spec: TensorMetadata,
    shape: tuple[int, ...],
    rng: np.random.Generator,
    int_range: Sequence[int],
) -> np.ndarray:
    if spec.datatype == "BYTES":
        flat = [_sentence(rng) for _ in range(int(np.prod(shape)))]
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
        return array.reshape(shape)
    dtype = numpy_dtype(spec.datatype)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(dtype)
    if dtype.kind in "iu":
        low, high = integer_range(info, spec.name, dtype, int_range)
        return rng.integers(low, high, size=shape, endpoint=True).astype(dtype)
    return rng.random(size=shape, dtype=np.float64).astype(dtype)


def _zero_array(spec: TensorMetadata, shape: tuple[int, ...]) -> np.ndarray:
    if spec.datatype == "BYTES":
        array = np.empty(shape, dtype=object)
        array.fill(b"0")
        return array
    return np.zeros(shape, dtype=numpy_dtype(spec.datatype))


def _load_file(path: Path) -> dict[str, np.ndarray]:
    """Arrays by input name from .npz, or from JSON in either of two layouts.

    JSON: ``{"NAME": [...], ...}``, or perf_analyzer's ``{"data": [{"NAME": [...]}, ...]}``
    whose entries (one sample each) are stacked along a new batch dim.
    """
    if not path.exists():
        raise WorkloadError(f"input data file {path} does not exist")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {name: np.asarray(data[name]) for name in data.files}
    if path.suffix == ".json":
        try:
            document: Any = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise WorkloadError(f"input data file {path} is not valid JSON: {exc}") from None
        if isinstance(document, dict) and isinstance(document.get("data"), list):
            samples = document["data"]
            names = set().union(*(s.keys() for s in samples)) if samples else set()
            arrays: dict[str, np.ndarray] = {}
            for name in names:
                values = []
                for sample in samples:
                    value = sample[name]
                    if isinstance(value, dict):  # {"content": [...], "shape": [...]}
                        value = np.reshape(value["content"], value.get("shape", (-1,)))
                    values.append(np.asarray(value))
                arrays[name] = np.stack(values)
            return arrays
        if isinstance(document, dict):
            return {name: np.asarray(value) for name, value in document.items()}
        raise WorkloadError(f"input data file {path}: expected a JSON object of arrays")
    raise WorkloadError(f"input data file {path}: expected a .npz or .json file")


def _sentences_file(path: Path, info: ModelInfo) -> dict[str, np.ndarray]:
    """A .txt file's lines (UTF-8, empty lines kept) as every BYTES input's samples."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise WorkloadError(f"input data file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkloadError(f"input data file {path} cannot be read as UTF-8: {exc}") from None
    if not lines:
        raise WorkloadError(f"input data file {path} holds no sentences")
    arrays = {}
    for spec in info.inputs:
        if spec.datatype != "BYTES" or int(np.prod(spec.shape)) != 1:
            raise WorkloadError(
                f"a .txt file gives sentences to BYTES inputs of one element per sample; "
                f"input '{spec.name}' is {spec.datatype} {list(spec.shape)} (use .npz or .json)"
            )
        sentences = np.empty(len(lines), dtype=object)
        sentences[:] = [line.encode("utf-8") for line in lines]
        arrays[spec.name] = sentences.reshape(-1, *spec.shape)
    return arrays


def _from_file(
    spec: TensorMetadata, data: Mapping[str, np.ndarray], batch: int | None
) -> list[np.ndarray]:
    """The file's array for one input as one array per request (rows rotate over requests)."""
    if spec.name not in data:
        raise WorkloadError(f"input data file has no array for input '{spec.name}'")
    array = data[spec.name]
    if spec.datatype != "BYTES":
        array = array.astype(numpy_dtype(spec.datatype), copy=False)
    if batch is None:  # not batchable: the array is one request as it stands
        if tuple(array.shape) != spec.shape:
            raise WorkloadError(
                f"input '{spec.name}': file array has shape {list(array.shape)}, the model "
                f"takes {list(spec.shape)}"
            )
        return [array]
    if tuple(array.shape) == spec.shape:  # one sample: repeat it
        return [np.broadcast_to(array, (batch, *spec.shape)).copy()]
    if tuple(array.shape[1:]) != spec.shape:
        raise WorkloadError(
            f"input '{spec.name}': file array has shape {list(array.shape)}, expected "
            f"{list(spec.shape)} or [N, {', '.join(map(str, spec.shape))}]"
        )
    rows = array.shape[0]
    if rows < batch:
        reps = -(-batch // rows)
        array = np.concatenate([array] * reps)[:batch]
        rows = batch
    return [array[i * batch : (i + 1) * batch] for i in range(rows // batch)]


def build_inputs(
    info: ModelInfo,
    batch_size: int,
    source: str,
    *,
    int_range: Sequence[int] = (),
    seed: int = 0,
    count: int = 8,
) -> list[dict[str, np.ndarray]]:
    """Input arrays for up to ``count`` distinct requests of ``batch_size`` rows each.

    Random integers follow :func:`integer_range` (``int_range`` empty: the
    declared ranges).

    Non-batchable models take exactly the per-sample shape, so ``batch_size``
    must be 1 for them.
    """
    if not info.batchable and batch_size != 1:
        raise WorkloadError(
            f"model '{info.name}' is not batchable (max_batch_size 0): use --batch-size 1"
        )
    if info.batchable and batch_size > info.max_batch_size:
        raise WorkloadError(
            f"--batch-size {batch_size} exceeds the model's max_batch_size {info.max_batch_size}"
        )
    batch = batch_size if info.batchable else None
    if source in ("random", "zero"):
        rng = np.random.default_rng(seed)
        n = count if source == "random" else 1
        requests = []
        for _ in range(n):
            arrays = {}
            for spec in info.inputs:
                shape = spec.shape if batch is None else (batch, *spec.shape)
                arrays[spec.name] = (
                    _random_array(info, spec, shape, rng, int_range)
                    if source == "random"
                    else _zero_array(spec, shape)
                )
            requests.append(arrays)
        return requests
    path = Path(source)
    data = _sentences_file(path, info) if path.suffix == ".txt" else _load_file(path)
    per_input = {spec.name: _from_file(spec, data, batch) for spec in info.inputs}
    n = min(count, *(len(v) for v in per_input.values()))
    return [{name: arrays[i] for name, arrays in per_input.items()} for i in range(n)]


def encode_request(
    model: str, version: str, info: ModelInfo, arrays: Mapping[str, np.ndarray]
) -> bytes:
    """A serialised ModelInferRequest with raw input contents."""
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    for spec in info.inputs:
        array = arrays[spec.name]
        request.inputs.add(name=spec.name, datatype=spec.datatype, shape=list(array.shape))
        request.raw_input_contents.append(array_to_raw(array, spec.datatype))
    return request.SerializeToString()


@dataclass(frozen=True)
class RestRequest:
    """One pre-encoded REST inference call: path, body and the headers it needs."""

    path: str
    body: bytes
    headers: tuple[tuple[str, str], ...]


def encode_rest_request(
    model: str,
    version: str,
    info: ModelInfo,
    arrays: Mapping[str, np.ndarray],
    body: str = "binary",
) -> RestRequest:
    """A REST inference request: ``binary`` (the binary tensor extension both ways, as
    the SDK sends it) or ``json`` (inputs as JSON ``data``, outputs answered as JSON)."""
    from onnxserve.client.rest import HEADER_LENGTH, infer_body

    path = f"/v2/models/{quote(model, safe='')}"
    if version:
        path += f"/versions/{quote(version, safe='')}"
    path += "/infer"
    if body == "binary":
        request = pb.ModelInferRequest.FromString(encode_request(model, version, info, arrays))
        parts, length = infer_body(request)
        headers = (("content-type", "application/octet-stream"), (HEADER_LENGTH, str(length)))
        return RestRequest(path, b"".join(parts), headers)
    if body != "json":
        raise WorkloadError(f"--body must be binary or json, not {body!r}")
    inputs = []
    for spec in info.inputs:
        array = np.asarray(arrays[spec.name])
        if spec.datatype in ("FP16", "BF16"):
            raise WorkloadError(
                f"input '{spec.name}' is {spec.datatype}, which JSON cannot carry: "
                "use --body binary"
            )
        if spec.datatype == "BYTES":
            try:
                data: list[Any] = [
                    e.decode("utf-8") if isinstance(e, bytes) else str(e) for e in array.reshape(-1)
                ]
            except UnicodeDecodeError:
                raise WorkloadError(
                    f"input '{spec.name}' holds bytes that are not UTF-8 text, which JSON "
                    "cannot carry: use --body binary"
                ) from None
        else:
            data = array.astype(numpy_dtype(spec.datatype), copy=False).reshape(-1).tolist()
        inputs.append(
            {"name": spec.name, "datatype": spec.datatype, "shape": list(array.shape), "data": data}
        )
    document = json.dumps({"inputs": inputs}, separators=(",", ":")).encode()
    return RestRequest(path, document, (("content-type", "application/json"),))


def encode_frame(message: bytes) -> bytes:
    """gRPC's length-prefixed message: flag 0 (uncompressed), 4-byte big-endian length."""
    return _FRAME_HEADER.pack(0, len(message)) + message


def decode_frame(body: bytes) -> pb.ModelInferRequest:
    """The inverse of encode_frame + encode_request; raises WorkloadError on a bad frame."""
    if len(body) < _FRAME_HEADER.size:
        raise WorkloadError("gRPC frame shorter than its 5-byte header")
    flag, length = _FRAME_HEADER.unpack_from(body)
    if flag != 0:
        raise WorkloadError(f"gRPC frame is marked compressed (flag {flag})")
    if len(body) != _FRAME_HEADER.size + length:
        raise WorkloadError(
            f"gRPC frame declares {length} bytes but carries {len(body) - _FRAME_HEADER.size}"
        )
    request = pb.ModelInferRequest()
    request.ParseFromString(body[_FRAME_HEADER.size :])
    return request
