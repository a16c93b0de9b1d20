"""One inference request: decode and validate it before onnxruntime sees it, encode the answer.

Validation is complete and happens once, here: after it, every input is a
numpy array of the model's dtype and shape, all inputs agree on the batch
size, integer inputs hold values within their ranges (declared in
config.pbtxt or read from the graph: ``onnxserve.server.input_ranges``), and
every requested output exists. Each failure is an InvalidInput
naming the input and what was expected, so callers never get INTERNAL for
bad input. Raw tensors become zero-copy views of the request's bytes.

Floats are not checked for NaN or Inf: models compute row by row (a converted
Keras CNN given a NaN pixel answers NaN for that image and the same as before
for the others), and a model that does fail on them fails only that request
(batch isolation, ``onnxserve.server.batching.executor``).

A request reaches validation as a :class:`ParsedRequest`, which two parsers
produce: :func:`parse_message` from the generated protobuf class (streams,
typed contents, anything unusual) and ``onnxserve.server.wire.decode`` straight
from the wire bytes (ModelInfer's usual raw request). Validation is the same
code for both, so both answer the same request the same way.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from onnxserve.layout import input_range_key
from onnxserve.protocol import codec
from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.server.config import TensorSpec
from onnxserve.server.errors import InvalidInput, quoted, shape_text
from onnxserve.server.text_tensors import raw_text_tensor

# Request parameters the protocol reserves (Triton's clients send these).
_RESERVED_PARAMETERS = frozenset({"priority", "timeout", "binary_data_output", "headers"})
# The output parameter of Triton's classification extension (a count of classes).
CLASSIFICATION = "classification"
# Datatypes that have no typed contents field: always answered raw.
_RAW_ONLY = frozenset({"FP16", "BF16"})
#: The most elements an input's shape may describe, counting only its non-zero
#: dimensions: [1, 2**62, 0] is empty, but numpy cannot reshape to it (and an
#: absurd dimension is a client's bug either way).
MAX_ELEMENTS = 1 << 48
# What a typed request's tensor without a ``contents`` field holds: nothing.
_NO_CONTENTS = pb.InferTensorContents()


@dataclass(frozen=True)
class ModelSignature:
    """What a request is checked against: the completed config's view of the model."""

    name: str
    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]
    max_batch_size: int
    # Inclusive bounds of integer inputs' values (None: open on that side), by input name.
    input_ranges: Mapping[str, tuple[int | None, int | None]] = field(default_factory=dict)
    # BYTES inputs as str (what onnxruntime needs) or as the bytes sent (Python models).
    bytes_as_text: bool = True

    @property
    def batchable(self) -> bool:
        return self.max_batch_size > 0


@dataclass
class DecodedRequest:
    """A validated request, ready for a scheduler.

    ``batch_size`` is the number of rows along the batch dimension (1 for a
    model that does not batch); ``priority`` and ``timeout_us`` are 0 when the
    request did not set them.
    """

    model_name: str
    model_version: str
    id: str
    inputs: dict[str, np.ndarray]
    output_names: tuple[str, ...]
    batch_size: int
    raw_output: bool
    priority: int = 0
    timeout_us: int = 0
    arrival_ns: int = field(default_factory=time.monotonic_ns)
    # Outputs answered as their top classes (onnxserve.server.classification): name -> count.
    classification: dict[str, int] = field(default_factory=dict)
    # Set by the batch executor once the request is answered: (queue ns, its batch's
    # ExecutionTiming), for an ensemble to add up its steps' durations.
    report: tuple[int, Any] | None = None


# A request parameter as (the InferParameter's oneof field name or None when
# none is set, its value): the form both parsers give.
Parameter = tuple[str | None, Any]


class ParsedInput(NamedTuple):
    """One input tensor as the request describes it."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    # The tensor's typed contents when it has a ``contents`` field, else None.
    contents: pb.InferTensorContents | None


class ParsedRequest:
    """A ModelInferRequest reduced to what validation reads, from either parser.

    ``raw_input_contents`` holds bytes or zero-copy memoryviews of the
    request's wire bytes; ``parameters`` the request-level parameters.
    """

    __slots__ = (
        "classification",
        "id",
        "inputs",
        "model_name",
        "model_version",
        "output_names",
        "parameters",
        "raw_input_contents",
    )

    def __init__(
        self,
        model_name: str,
        model_version: str,
        id: str,
        parameters: dict[str, Parameter],
        inputs: list[ParsedInput],
        output_names: list[str],
        raw_input_contents: Sequence[bytes | memoryview],
        classification: dict[str, Parameter] | None = None,
    ) -> None:
        self.model_name = model_name
        # Outputs asked for as classes (Triton's classification extension): output -> count.
        self.classification = classification or {}
        self.model_version = model_version
        self.id = id
        self.parameters = parameters
        self.inputs = inputs
        self.output_names = output_names
        self.raw_input_contents = raw_input_contents


def parameter_of(parameter: pb.InferParameter) -> Parameter:
    """An InferParameter as (oneof field name or None, value)."""
    kind = parameter.WhichOneof("parameter_choice")
    return kind, (getattr(parameter, kind) if kind is not None else None)


def parse_message(request: pb.ModelInferRequest) -> ParsedRequest:
    """The generated class's view of a request (each bytes field read once)."""
    return ParsedRequest(
        request.model_name,
        request.model_version,
        request.id,
        {key: parameter_of(value) for key, value in request.parameters.items()},
        [
            ParsedInput(
                tensor.name,
                tensor.datatype,
                tuple(tensor.shape),
                tensor.contents if tensor.HasField("contents") else None,
            )
            for tensor in request.inputs
        ],
        [output.name for output in request.outputs],
        list(request.raw_input_contents),
        {
            output.name: parameter_of(output.parameters[CLASSIFICATION])
            for output in request.outputs
            if CLASSIFICATION in output.parameters
        },
    )


def _request_int_parameter(parameters: Mapping[str, Parameter], key: str) -> int:
    if key not in parameters:
        return 0
    kind, value = parameters[key]
    if kind not in ("int64_param", "uint64_param"):
        raise InvalidInput(f"request parameter '{key}' must be an integer, not {kind}")
    if value < 0:
        raise InvalidInput(f"request parameter '{key}' must not be negative")
    return int(value)


def _dims_product(shape: Sequence[int]) -> int:
    """The product of a shape's non-zero dimensions (stops once past MAX_ELEMENTS)."""
    product = 1
    for dim in shape:
        if dim:
            product *= dim
            if product > MAX_ELEMENTS:
                break
    return product


def _check_shape(spec: TensorSpec, shape: Sequence[int], model: ModelSignature) -> int:
    """Check one input's shape; return its batch size (1 when the model does not batch)."""
    expected_rank = len(spec.dims) + (1 if model.batchable else 0)
    if len(shape) != expected_rank:
        wanted = ["batch", *spec.dims] if model.batchable else list(spec.dims)
        raise InvalidInput(
            f"input '{spec.name}' has shape {shape_text(shape)} (rank {len(shape)}) but model "
            f"'{model.name}' expects rank {expected_rank}: {wanted} (-1 is any size)"
        )
    if any(d < 0 for d in shape):
        raise InvalidInput(
            f"input '{spec.name}' has a negative dimension in shape {shape_text(shape)}"
        )
    if _dims_product(shape) > MAX_ELEMENTS:
        raise InvalidInput(
            f"input '{spec.name}' has shape {shape_text(shape)}, whose dimensions multiply past "
            f"{MAX_ELEMENTS} (counting the non-zero ones): no tensor is that large"
        )
    batch = 1
    body = shape
    if model.batchable:
        batch = int(shape[0])
        body = shape[1:]
        if batch < 1 or batch > model.max_batch_size:
            raise InvalidInput(
                f"input '{spec.name}' has batch size {batch} but model '{model.name}' takes "
                f"1 to {model.max_batch_size} (max_batch_size)"
            )
    for axis, (got, want) in enumerate(zip(body, spec.dims, strict=True)):
        if want != -1 and got != want:
            raise InvalidInput(
                f"input '{spec.name}' has shape {shape_text(shape)} but model '{model.name}' "
                f"expects dimension {axis + (1 if model.batchable else 0)} to be {want} "
                f"(expected {(['batch'] if model.batchable else []) + list(spec.dims)})"
            )
    return batch


def _check_range(
    array: np.ndarray, name: str, bounds: tuple[int | None, int | None], model: ModelSignature
) -> None:
    """Refuse values outside the input's declared or inferred range (one min/max pass each)."""
    if array.size == 0:
        return
    low, high = bounds
    # The usual range, 0..N-1 of a lookup table, in one pass: read as
    # unsigned, a negative value is larger than any high bound.
    if (
        low == 0
        and high is not None
        and array.dtype.kind == "i"
        and int(array.view(array.dtype.str.replace("i", "u")).max()) <= high
    ):
        return
    offending = None
    if low is not None and int(array.min()) < low:
        offending = np.unravel_index(int(np.argmin(array)), array.shape)
    elif high is not None and int(array.max()) > high:
        offending = np.unravel_index(int(np.argmax(array)), array.shape)
    if offending is None:
        return
    position = tuple(int(i) for i in offending)
    if low is not None and high is not None:
        allowed = f"{low} to {high}"
    else:
        allowed = f"at least {low}" if low is not None else f"at most {high}"
    raise InvalidInput(
        f"input '{name}' holds {array[position]} at index {position}, outside the values model "
        f"'{model.name}' accepts: {allowed} (ModelConfig parameter {input_range_key(name)})"
    )


def _as_text(array: np.ndarray, name: str) -> np.ndarray:
    """BYTES elements as str: onnxruntime turns bytes objects into their repr."""
    flat = array.reshape(-1)
    out = np.empty(flat.shape, dtype=object)
    for index, element in enumerate(flat):
        try:
            out[index] = element.decode("utf-8") if isinstance(element, bytes) else str(element)
        except UnicodeDecodeError:
            raise InvalidInput(
                f"input '{name}' element {index} is not valid UTF-8; "
                "ONNX string tensors hold UTF-8 text"
            ) from None
    return out.reshape(array.shape)


def _checked_values(array: np.ndarray, spec: TensorSpec, model: ModelSignature) -> np.ndarray:
    """BYTES elements as the model takes them (str or bytes), integers within their range."""
    if spec.datatype == "BYTES":
        if not model.bytes_as_text:
            array = _as_bytes(array)
        elif array.dtype == object:  # typed contents; raw ones are text already (text_tensors)
            array = _as_text(array, spec.name)
    bounds = model.input_ranges.get(spec.name)
    if bounds is not None:
        _check_range(array, spec.name, bounds, model)
    return array


def _check_complete(
    model: ModelSignature, inputs: Mapping[str, np.ndarray], batch_sizes: Mapping[str, int]
) -> None:
    """Every input given, all with one batch size."""
    missing = [name for name in model.inputs if name not in inputs]
    if missing:
        raise InvalidInput(
            f"model '{model.name}' needs input(s) {', '.join(missing)} which the request lacks"
        )
    if len(set(batch_sizes.values())) > 1:
        sizes = ", ".join(f"{n}: {b}" for n, b in batch_sizes.items())
        raise InvalidInput(f"inputs disagree on the batch size ({sizes}); they must share it")


def decode_request(
    request: pb.ModelInferRequest, model: ModelSignature, version: str
) -> DecodedRequest:
    """Turn a ModelInferRequest into validated numpy inputs, or raise InvalidInput."""
    return decode_parsed(parse_message(request), model, version)


def decode_parsed(request: ParsedRequest, model: ModelSignature, version: str) -> DecodedRequest:
    """Validate a parsed request into numpy inputs, or raise InvalidInput."""
    raw_contents = request.raw_input_contents
    use_raw = len(raw_contents) > 0
    if use_raw and len(raw_contents) != len(request.inputs):
        raise InvalidInput(
            f"the request has {len(raw_contents)} raw_input_contents for {len(request.inputs)} "
            "inputs; send raw contents for every input or for none"
        )
    inputs: dict[str, np.ndarray] = {}
    batch_sizes: dict[str, int] = {}
    for index, (name, datatype, shape, contents) in enumerate(request.inputs):
        spec = model.inputs.get(name)
        if spec is None:
            raise InvalidInput(
                f"unknown input '{quoted(name)}' for model '{model.name}'; its inputs are "
                f"{', '.join(model.inputs)}"
            )
        if name in inputs:
            raise InvalidInput(f"input '{name}' appears more than once in the request")
        if datatype != spec.datatype:
            raise InvalidInput(
                f"input '{name}' has datatype {quoted(datatype) or '(empty)'} but model "
                f"'{model.name}' expects {spec.datatype}"
            )
        batch_sizes[name] = _check_shape(spec, shape, model)
        try:
            if use_raw:
                if contents is not None:
                    raise InvalidInput(
                        f"input '{name}' has both raw and typed contents; send one of them"
                    )
                if spec.datatype == "BYTES":
                    count = codec.element_count(shape)
                    array = raw_text_tensor(raw_contents[index], shape, count, name)
                else:
                    array = codec.raw_to_array(raw_contents[index], spec.datatype, shape)
            else:
                array = codec.contents_to_array(
                    contents if contents is not None else _NO_CONTENTS, spec.datatype, shape
                )
        except codec.CodecError as exc:
            raise InvalidInput(f"input '{name}': {exc}") from None
        except (ValueError, MemoryError) as exc:
            # numpy refuses a shape it cannot hold ("array is too big"): the caller's fault.
            raise InvalidInput(
                f"input '{name}' has shape {shape_text(shape)}, which numpy cannot hold: {exc}"
            ) from None
        inputs[name] = _checked_values(array, spec, model)
    _check_complete(model, inputs, batch_sizes)
    if request.output_names:
        output_names = []
        for requested in request.output_names:
            if requested not in model.outputs:
                raise InvalidInput(
                    f"unknown output '{quoted(requested)}' requested from model '{model.name}'; "
                    f"its outputs are {', '.join(model.outputs)}"
                )
            if requested not in output_names:
                output_names.append(requested)
        names = tuple(output_names)
    else:
        names = tuple(model.outputs)
    parameters = request.parameters
    classification = (
        _classification(request.classification, model) if request.classification else {}
    )
    return DecodedRequest(
        model_name=model.name,
        model_version=version,
        id=request.id,
        inputs=inputs,
        output_names=names,
        batch_size=next(iter(batch_sizes.values()), 1),
        raw_output=use_raw or not request.inputs,
        priority=_request_int_parameter(parameters, "priority") if parameters else 0,
        timeout_us=_request_int_parameter(parameters, "timeout") if parameters else 0,
        classification=classification,
    )


def _classification(asked: Mapping[str, Parameter], model: ModelSignature) -> dict[str, int]:
    """The classification extension's counts, checked: numeric outputs, positive counts."""
    counts = {}
    for name, (kind, value) in asked.items():
        spec = model.outputs.get(name)
        if spec is None:
            raise InvalidInput(
                f"unknown output '{name}' requested from model '{model.name}'; "
                f"its outputs are {', '.join(model.outputs)}"
            )
        if kind not in ("int64_param", "uint64_param") or value < 1:
            raise InvalidInput(
                f"output '{name}': parameter '{CLASSIFICATION}' must be a positive integer count"
            )
        if spec.datatype in ("BYTES", "BOOL"):
            raise InvalidInput(
                f"output '{name}' of model '{model.name}' is {spec.datatype}; only numeric "
                "outputs can be classified"
            )
        counts[name] = int(value)
    return counts


def _as_bytes(array: np.ndarray) -> np.ndarray:
    """BYTES elements as bytes (str elements encoded as UTF-8), for Python models."""
    flat = array.reshape(-1)
    if array.dtype == object and all(isinstance(element, bytes) for element in flat):
        return array
    out = np.empty(flat.shape, dtype=object)
    for index, element in enumerate(flat):
        out[index] = element if isinstance(element, bytes) else str(element).encode("utf-8")
    return out.reshape(array.shape)


def decode_arrays(
    model: ModelSignature,
    version: str,
    inputs: Mapping[str, np.ndarray],
    output_names: Sequence[str],
    *,
    request_id: str = "",
    priority: int = 0,
    timeout_us: int = 0,
) -> DecodedRequest:
    """Validate numpy inputs for a call made inside the server (an ensemble step, a BLS call).

    The same checks as a request from the network (names, datatypes, shapes,
    batch sizes, ranges, outputs), raising InvalidInput naming what is wrong.
    """
    checked: dict[str, np.ndarray] = {}
    batch_sizes: dict[str, int] = {}
    for name, value in inputs.items():
        spec = model.inputs.get(name)
        if spec is None:
            raise InvalidInput(
                f"unknown input '{name}' for model '{model.name}'; its inputs are "
                f"{', '.join(model.inputs)}"
            )
        array = np.asarray(value)
        try:
            datatype = codec.datatype_of(array)
        except codec.CodecError as exc:
            raise InvalidInput(f"input '{name}': {exc}") from None
        if datatype != spec.datatype:
            raise InvalidInput(
                f"input '{name}' has datatype {datatype} but model '{model.name}' expects "
                f"{spec.datatype}"
            )
        batch_sizes[name] = _check_shape(spec, array.shape, model)
        checked[name] = _checked_values(array, spec, model)
    _check_complete(model, checked, batch_sizes)
    for requested in output_names:
        if requested not in model.outputs:
            raise InvalidInput(
                f"unknown output '{requested}' requested from model '{model.name}'; "
                f"its outputs are {', '.join(model.outputs)}"
            )
    return DecodedRequest(
        model_name=model.name,
        model_version=version,
        id=request_id,
        inputs=checked,
        output_names=tuple(dict.fromkeys(output_names)) or tuple(model.outputs),
        batch_size=next(iter(batch_sizes.values()), 1),
        raw_output=True,
        priority=priority,
        timeout_us=timeout_us,
    )


def wants_raw_output(request: DecodedRequest, model: ModelSignature) -> bool:
    """Whether the answer carries raw contents: the request came raw, or an output
    is FP16/BF16, which have no typed contents field."""
    return request.raw_output or any(
        model.outputs[n].datatype in _RAW_ONLY for n in request.output_names
    )


def encode_response(
    request: DecodedRequest, outputs: Mapping[str, np.ndarray], model: ModelSignature
) -> pb.ModelInferResponse:
    """Build the response: raw contents when the request came raw (FP16/BF16 always raw)."""
    response = pb.ModelInferResponse(
        model_name=request.model_name, model_version=request.model_version, id=request.id
    )
    any_raw = wants_raw_output(request, model)
    for name in request.output_names:
        array = outputs[name]
        datatype = model.outputs[name].datatype
        tensor = response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        if any_raw:
            response.raw_output_contents.append(codec.array_to_raw(array, datatype))
        else:
            codec.array_to_contents(array, datatype, tensor.contents)
    return response
