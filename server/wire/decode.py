"""Parse a ModelInferRequest from its wire bytes, without the generated classes.

:func:`parse_infer_request` reads the protobuf wire format of
``inference.ModelInferRequest`` (grpc_service.proto) directly:

- ``model_name`` 1, ``model_version`` 2, ``id`` 3: strings (UTF-8 checked);
- ``parameters`` 4: map entries (key 1, InferParameter 2: bool 1, int64 2,
  string 3, double 4, uint64 5);
- ``inputs`` 5: InferInputTensor (name 1, datatype 2, shape 3 packed or not,
  parameters 4, contents 5);
- ``outputs`` 6: InferRequestedOutputTensor (name 1, parameters 2);
- ``raw_input_contents`` 7: bytes, kept as zero-copy memoryviews.

It follows protobuf's rules where they matter here: the last value of a
repeated scalar field wins, repeated fields accumulate, unknown fields are
skipped by their wire type. It answers None (the caller then parses with the
generated class, whose answer is authoritative) for everything it does not
read itself: typed ``contents`` (the request is not raw), groups, a known field
with an unexpected wire type, a map entry with a repeated or an unknown field
(protobuf keeps the latter out of the map), an integer
wider than 64 bits, invalid UTF-8, and malformed bytes (a truncated varint, a
length past the end), which the generated class then refuses with a
DecodeError. Every parameter map is parsed, even the ones validation ignores,
so that a malformed one is refused here exactly as protobuf refuses it.
"""

from __future__ import annotations

import struct

from onnxserve.server.inference import CLASSIFICATION, Parameter, ParsedInput, ParsedRequest

__all__ = ["parse_infer_request"]

_UINT64 = 1 << 64
_INT64_SIGN = 1 << 63
_MAX_TAG = (1 << 32) - 1  # field numbers reach 2**29 - 1
_DOUBLE = struct.Struct("<d")
# Field numbers of ModelInferRequest and its messages, all length-delimited.
_REQUEST_FIELDS = frozenset(range(1, 8))
_INPUT_FIELDS = frozenset(range(1, 6))
_OUTPUT_FIELDS = frozenset((1, 2))
# InferParameter: field number -> its oneof field name.
_PARAMETER_KINDS = {
    1: "bool_param",
    2: "int64_param",
    3: "string_param",
    4: "double_param",
    5: "uint64_param",
}


class _Unusual(Exception):
    """Something this parser leaves to the generated class (see the module docstring)."""


def parse_infer_request(data: bytes) -> ParsedRequest | None:
    """The request's fields, or None where the generated class must decide."""
    try:
        return _request(data)
    except (_Unusual, IndexError, UnicodeDecodeError):
        # IndexError: a varint or tag ran past the end of the bytes.
        return None


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it); at most 10 bytes, as protobuf allows."""
    byte = data[pos]
    if byte < 0x80:
        return byte, pos + 1
    value = byte & 0x7F
    shift = 7
    while True:
        pos += 1
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if value >= _UINT64:
                raise _Unusual
            return value, pos + 1
        shift += 7
        if shift > 63:
            raise _Unusual


def _length(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """(position after a length prefix, position after the bytes it announces)."""
    byte = data[pos]
    if byte < 0x80:
        start = pos + 1
        stop = start + byte
    else:
        length, start = _varint(data, pos)
        if start - pos > 5:  # protobuf reads lengths and tags as 32-bit varints
            raise _Unusual
        stop = start + length
    if stop > end:
        raise _Unusual
    return start, stop


def _tag(data: bytes, pos: int) -> tuple[int, int, int]:
    """(field number, wire type, position after the tag)."""
    tag = data[pos]
    if tag < 0x80:
        pos += 1
    else:
        start = pos
        tag, pos = _varint(data, pos)
        if pos - start > 5:
            raise _Unusual
    field = tag >> 3
    if field == 0 or tag > _MAX_TAG:
        raise _Unusual
    return field, tag & 7, pos


def _skip(data: bytes, pos: int, wire: int, end: int) -> int:
    """The position after an unknown field's value."""
    if wire == 0:
        _, pos = _varint(data, pos)
    elif wire == 2:
        _, pos = _length(data, pos, end)
    elif wire == 1:
        pos += 8
    elif wire == 5:
        pos += 4
    else:  # groups (3, 4) and invalid wire types
        raise _Unusual
    if pos > end:
        raise _Unusual
    return pos


def _request(data: bytes) -> ParsedRequest:
    view = memoryview(data)
    end = len(data)
    pos = 0
    model_name = model_version = request_id = ""
    parameters: dict[str, Parameter] = {}
    inputs: list[ParsedInput] = []
    outputs: list[str] = []
    raw: list[memoryview] = []
    while pos < end:
        # The one-byte tags and lengths of the usual request, inline (hot path).
        tag = data[pos]
        if 8 <= tag < 0x80:
            pos += 1
            field = tag >> 3
            wire = tag & 7
        else:
            field, wire, pos = _tag(data, pos)
        if wire != 2:
            if field in _REQUEST_FIELDS:
                raise _Unusual
            pos = _skip(data, pos, wire, end)
            continue
        length = data[pos]
        if length < 0x80:
            start = pos + 1
            pos = start + length
            if pos > end:
                raise _Unusual
        else:
            start, pos = _length(data, pos, end)
        if field == 7:
            raw.append(view[start:pos])
        elif field == 5:
            inputs.append(_input(data, start, pos))
        elif field == 1:
            model_name = data[start:pos].decode()
        elif field == 6:
            outputs.append(_output(data, start, pos))
        elif field == 4:
            key, value = _map_entry(data, start, pos)
            parameters[key] = value
        elif field == 2:
            model_version = data[start:pos].decode()
        elif field == 3:
            request_id = data[start:pos].decode()
    if pos != end:
        raise _Unusual
    return ParsedRequest(model_name, model_version, request_id, parameters, inputs, outputs, raw)


def _next(data: bytes, pos: int, end: int, known: frozenset[int]) -> tuple[int, int, int, int]:
    """The next field of a message: (number, wire type, start, stop).

    A length-delimited field's bytes are ``data[start:stop]``; a known field
    of another wire type is left unread (start == stop == its value's
    position); an unknown field is skipped and reported as number 0.
    """
    field, wire, pos = _tag(data, pos)
    if wire == 2:
        start, stop = _length(data, pos, end)
        return field, 2, start, stop
    if field in known:
        return field, wire, pos, pos
    return 0, wire, pos, _skip(data, pos, wire, end)


def _input(data: bytes, pos: int, end: int) -> ParsedInput:
    name = datatype = ""
    shape: list[int] = []
    while pos < end:
        field, wire, start, pos = _next(data, pos, end, _INPUT_FIELDS)
        if field == 3 and wire == 0:  # an unpacked shape element
            dim, pos = _varint(data, pos)
            shape.append(dim - _UINT64 if dim >= _INT64_SIGN else dim)
        elif field and wire != 2:
            raise _Unusual
        elif field == 1:
            name = data[start:pos].decode()
        elif field == 2:
            datatype = data[start:pos].decode()
        elif field == 3:
            while start < pos:
                dim = data[start]
                if dim < 0x80:
                    start += 1
                else:
                    dim, start = _varint(data, start)
                    if dim >= _INT64_SIGN:
                        dim -= _UINT64
                shape.append(dim)
            if start != pos:
                raise _Unusual
        elif field == 4:
            _map_entry(data, start, pos)  # input parameters: checked, not used
        elif field == 5:
            raise _Unusual  # typed contents: the generated class reads them
    if pos > end:
        raise _Unusual
    return ParsedInput(name, datatype, tuple(shape), None)


def _output(data: bytes, pos: int, end: int) -> str:
    name = ""
    while pos < end:
        field, wire, start, pos = _next(data, pos, end, _OUTPUT_FIELDS)
        if field and wire != 2:
            raise _Unusual
        if field == 1:
            name = data[start:pos].decode()
        elif field == 2:
            key, _ = _map_entry(data, start, pos)
            if key == CLASSIFICATION:  # the generated class's parse reads it
                raise _Unusual
    if pos > end:
        raise _Unusual
    return name


def _map_entry(data: bytes, pos: int, end: int) -> tuple[str, Parameter]:
    """One ``map<string, InferParameter>`` entry: (key, (oneof field name, value))."""
    key = ""
    value: Parameter = (None, None)
    seen_key = seen_value = False
    while pos < end:
        field, wire, pos = _tag(data, pos)
        if field == 1 and wire == 2 and not seen_key:
            seen_key = True
            start, pos = _length(data, pos, end)
            key = data[start:pos].decode()
        elif field == 2 and wire == 2 and not seen_value:
            seen_value = True
            start, pos = _length(data, pos, end)
            value = _parameter(data, start, pos)
        else:
            # Repeated or mistyped fields (merge rules), and unknown fields (protobuf
            # keeps such an entry out of the map): left to protobuf.
            raise _Unusual
    if pos > end:
        raise _Unusual
    return key, value


def _parameter(data: bytes, pos: int, end: int) -> Parameter:
    """An InferParameter: the last oneof member on the wire wins, as in protobuf."""
    kind: str | None = None
    value: object = None
    while pos < end:
        field, wire, pos = _tag(data, pos)
        name = _PARAMETER_KINDS.get(field)
        if name is None:
            pos = _skip(data, pos, wire, end)
            continue
        if field == 3:
            if wire != 2:
                raise _Unusual
            start, pos = _length(data, pos, end)
            value = data[start:pos].decode()
        elif field == 4:
            if wire != 1 or pos + 8 > end:
                raise _Unusual
            (value,) = _DOUBLE.unpack_from(data, pos)
            pos += 8
        else:
            if wire != 0:
                raise _Unusual
            number, pos = _varint(data, pos)
            if field == 1:
                value = number != 0
            elif field == 2:
                value = number - _UINT64 if number >= _INT64_SIGN else number
            else:
                value = number
        kind = name
    if pos > end:
        raise _Unusual
    return kind, value
