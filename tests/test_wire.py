"""ModelInfer on the wire bytes (onnxserve.server.wire) against the generated classes.

The generated protobuf class is the oracle: for every request here, built by
the generated classes or written byte by byte (unknown fields of every wire
type, unpacked shapes, repeated fields, every truncation and many corruptions
of valid requests), the wire parser either gives exactly what the generated
class parses or hands the request back to it (None), never a different
request; and every request the generated class refuses is handed back, so the
servicer answers INVALID_ARGUMENT for it. Validation then gives both the same
outcome, and the wire encoder writes the same bytes as SerializeToString.
"""

from __future__ import annotations

import itertools
import random
import struct
from collections.abc import Iterator

import grpc
import ml_dtypes
import numpy as np
import pytest
from google.protobuf.message import DecodeError

from onnxserve.protocol import codec
from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.server.config import TensorSpec
from onnxserve.server.errors import InvalidInput
from onnxserve.server.inference import (
    DecodedRequest,
    ModelSignature,
    ParsedRequest,
    decode_parsed,
    encode_response,
    parse_message,
)
from onnxserve.server.wire.decode import parse_infer_request
from onnxserve.server.wire.encode import encode_infer_response
from tests.support.infer_requests import infer_request
from tests.support.server import RunningServer

NUMERIC = [d for d in codec.DATATYPES if d != "BYTES"]


# --- writing wire bytes by hand ------------------------------------------------------------


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(field: int, wire: int) -> bytes:
    return varint(field << 3 | wire)


def ld(field: int, payload: bytes) -> bytes:
    return tag(field, 2) + varint(len(payload)) + payload


def unknown_fields(field: int) -> list[bytes]:
    """One unknown field of each wire type protobuf skips."""
    return [
        tag(field, 0) + varint(300),
        tag(field, 1) + b"\x01" * 8,
        tag(field, 5) + b"\x02" * 4,
        ld(field, b"anything \xff"),
    ]


# --- the oracle ------------------------------------------------------------------------------


def sample_arrays() -> Iterator[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    for datatype in NUMERIC:
        dtype = codec.numpy_dtype(datatype)
        yield datatype, (rng.random((2, 3)) * 100).astype(dtype)
        yield datatype, np.zeros((0, 3), dtype=dtype)
    yield "BYTES", np.array([[b"ab", b""], [b"\xff\x00", b"text"]], dtype=object)
    yield "FP32", np.float32(3.5).reshape(())


def generated_requests() -> Iterator[bytes]:
    """Requests the generated classes build: every datatype raw and typed, outputs, parameters."""
    for datatype, array in sample_arrays():
        yield infer_request("m", {"x": array}).SerializeToString()
        if datatype not in ("FP16", "BF16"):
            yield infer_request("m", {"x": array}, raw=False).SerializeToString()
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    base = infer_request("m", {"x": a, "y": a}, version="2", request_id="id-1", outputs=["o", "p"])
    yield base.SerializeToString()
    for key, value in itertools.product(
        ("priority", "timeout", "other"),
        (
            {"int64_param": 3},
            {"int64_param": -2},
            {"uint64_param": 2**64 - 1},
            {"bool_param": True},
            {"string_param": "high"},
            {"double_param": 0.25},
            {},
        ),
    ):
        request = pb.ModelInferRequest()
        request.CopyFrom(base)
        request.parameters[key].CopyFrom(pb.InferParameter(**value))
        request.inputs[0].parameters["binary_data_size"].int64_param = 24
        request.outputs[0].parameters["classification"].int64_param = 2
        yield request.SerializeToString()
    yield pb.ModelInferRequest().SerializeToString()
    yield pb.ModelInferRequest(model_name="m", id="só ünïcode").SerializeToString()
    empty = pb.ModelInferRequest(model_name="m")
    empty.inputs.add(name="x", datatype="FP32")
    empty.raw_input_contents.append(b"")
    yield empty.SerializeToString()
    both = infer_request("m", {"x": a})
    both.inputs[0].contents.fp32_contents.extend([1.0])
    yield both.SerializeToString()


def handwritten_requests() -> Iterator[bytes]:
    """Wire encodings the generated classes never write but must read the same way."""
    raw = np.arange(6, dtype=np.int32).tobytes()
    shape_packed = ld(3, varint(2) + varint(3))
    tensor = ld(1, b"x") + ld(2, b"INT32") + shape_packed
    yield ld(1, b"m") + ld(5, tensor) + ld(7, raw)
    # unpacked shape, negative and huge dims
    yield (
        ld(1, b"m")
        + ld(5, ld(1, b"x") + tag(3, 0) + varint(2) + tag(3, 0) + varint(3))
        + ld(7, raw)
    )
    yield ld(5, ld(1, b"x") + ld(3, varint(-1) + varint(2**63 - 1))) + ld(7, b"")
    # repeated scalars: the last wins; repeated shape fields accumulate
    yield ld(1, b"first") + ld(1, b"m") + ld(5, tensor + ld(2, b"FP32") + ld(3, varint(1)))
    # unknown fields of every wire type, at every level
    for field in (8, 15, 16, 1000, 2**29 - 1):
        for extra in unknown_fields(field):
            yield extra + ld(1, b"m") + ld(5, tensor + extra) + ld(7, raw) + extra
            yield ld(1, b"m") + ld(6, ld(1, b"o") + extra) + ld(4, ld(1, b"k") + extra)
            yield ld(4, ld(1, b"priority") + ld(2, tag(2, 0) + varint(5) + extra))
    # oneof: the last member on the wire wins
    yield ld(4, ld(1, b"priority") + ld(2, tag(1, 0) + varint(1) + tag(2, 0) + varint(7)))
    yield ld(4, ld(1, b"priority") + ld(2, ld(3, b"s") + tag(4, 1) + struct.pack("<d", 2.5)))
    # map entries: missing key or value, duplicate keys across entries
    yield ld(4, ld(2, tag(2, 0) + varint(1))) + ld(4, ld(1, b"timeout"))
    yield ld(4, ld(1, b"priority") + ld(2, tag(2, 0) + varint(1))) + ld(
        4, ld(1, b"priority") + ld(2, tag(5, 0) + varint(9))
    )
    # a repeated value inside one map entry (protobuf merges; left to it)
    yield ld(4, ld(1, b"p") + ld(2, tag(2, 0) + varint(1)) + ld(2, tag(1, 0) + varint(1)))
    # a known field with another wire type, groups, field number 0
    yield tag(1, 0) + varint(5) + ld(1, b"m")
    yield ld(1, b"m") + tag(9, 3) + tag(9, 4)
    yield tag(0, 2) + varint(0)
    # invalid UTF-8 in a string field, and in bytes (allowed there)
    yield ld(1, b"\xff\xfe")
    yield ld(5, ld(1, b"x") + ld(2, b"\xc3")) + ld(7, b"\xff")
    # overlong varints: 10 bytes, 11 bytes, a value beyond 64 bits
    yield tag(3, 2) + b"\x80" * 9 + b"\x00"
    yield tag(3, 2) + b"\x80" * 10 + b"\x00"
    yield ld(5, ld(3, b"\xff" * 9 + b"\x7f"))


def corruptions(data: bytes, seed: int) -> Iterator[bytes]:
    """Every truncation of ``data``, and random byte changes."""
    for cut in range(len(data)):
        yield data[:cut]
    rng = random.Random(seed)
    for _ in range(60):
        corrupt = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            if corrupt:
                corrupt[rng.randrange(len(corrupt))] = rng.randrange(256)
        yield bytes(corrupt)
    yield data + b"\x0a"  # a tag without its length
    yield data + b"\x3a\x05ab"  # a length past the end


def comparable(request: ParsedRequest) -> tuple[object, ...]:
    return (
        request.model_name,
        request.model_version,
        request.id,
        request.parameters,
        [(i.name, i.datatype, i.shape, i.contents) for i in request.inputs],
        request.output_names,
        [bytes(raw) for raw in request.raw_input_contents],
    )


def oracle(data: bytes) -> ParsedRequest | DecodeError:
    try:
        return parse_message(pb.ModelInferRequest.FromString(data))
    except DecodeError as exc:
        return exc


def all_requests() -> Iterator[bytes]:
    yield from generated_requests()
    yield from handwritten_requests()


def test_the_wire_parser_agrees_with_the_generated_class_or_hands_over() -> None:
    read = handed_over = refused = 0
    for index, valid in enumerate(all_requests()):
        for data in [valid, *corruptions(valid, index)]:
            expected = oracle(data)
            parsed = parse_infer_request(data)
            if isinstance(expected, DecodeError):
                assert parsed is None, f"accepted what protobuf refuses: {data!r}"
                refused += 1
            elif parsed is None:
                handed_over += 1
            else:
                assert comparable(parsed) == comparable(expected), data
                read += 1
    # The parser reads the ordinary requests itself, not only the odd ones.
    assert read > 1000 and handed_over > 100 and refused > 1000


def test_raw_tensors_are_zero_copy_views_of_the_request() -> None:
    tokens = np.arange(50, dtype=np.int32).reshape(1, 50)
    data = infer_request("m", {"tokens": tokens}).SerializeToString()
    parsed = parse_infer_request(data)
    assert parsed is not None
    model = ModelSignature("m", {"tokens": TensorSpec("tokens", "INT32", (50,))}, {}, 8)
    array = decode_parsed(parsed, model, "1").inputs["tokens"]
    np.testing.assert_array_equal(array, tokens)
    assert not array.flags.owndata and not array.flags.writeable


def test_typed_contents_are_left_to_the_generated_class() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert parse_infer_request(infer_request("m", {"x": a}, raw=False).SerializeToString()) is None


# --- validation gives both parsers' requests the same outcome ------------------------------


SIGNATURES = [
    ModelSignature(
        "m",
        {"x": TensorSpec("x", datatype, (-1,)), "y": TensorSpec("y", "FP32", (3,))},
        {"o": TensorSpec("o", "FP32", (3,)), "p": TensorSpec("p", datatype, (-1,))},
        8,
        {"x": (0, 50)} if datatype.startswith(("INT", "UINT")) else {},
    )
    for datatype in codec.DATATYPES
] + [
    # a model that does not batch, with a scalar output
    ModelSignature(
        "m", {"x": TensorSpec("x", "FP32", (2, 3))}, {"o": TensorSpec("o", "FP32", ())}, 0
    )
]


def outcome(request: ParsedRequest, model: ModelSignature) -> object:
    try:
        decoded = decode_parsed(request, model, "1")
    except InvalidInput as exc:
        return ("InvalidInput", exc.message)
    inputs = {k: (v.dtype, v.shape, v.tobytes() if v.dtype != object else v.tolist())
              for k, v in decoded.inputs.items()}  # fmt: skip
    return (decoded.model_name, decoded.id, inputs, decoded.output_names, decoded.batch_size,
            decoded.raw_output, decoded.priority, decoded.timeout_us)  # fmt: skip


def test_validation_answers_both_parsers_alike() -> None:
    compared = 0
    for data in all_requests():
        parsed = parse_infer_request(data)
        expected = oracle(data)
        if parsed is None or isinstance(expected, DecodeError):
            continue
        for model in SIGNATURES:
            assert outcome(parsed, model) == outcome(expected, model), data
            compared += 1
    assert compared > 500


# --- the encoder writes what SerializeToString writes --------------------------------------


def decoded_request(names: tuple[str, ...], raw: bool, **fields: object) -> DecodedRequest:
    return DecodedRequest(
        model_name=str(fields.get("name", "m")),
        model_version=str(fields.get("version", "1")),
        id=str(fields.get("id", "")),
        inputs={},
        output_names=names,
        batch_size=1,
        raw_output=raw,
    )


def test_the_encoder_writes_the_generated_class_s_bytes() -> None:
    checked = 0
    for (datatype, array), raw, request_id, version in itertools.product(
        sample_arrays(), (True, False), ("", "req-7", "ü" * 200), ("1", "")
    ):
        outputs = {"o": np.ones((array.shape[0] if array.ndim else 1, 3), np.float32), "p": array}
        spec = {
            "o": TensorSpec("o", "FP32", (3,)),
            "p": TensorSpec("p", datatype, tuple(array.shape[1:])),
        }
        model = ModelSignature("m" * 130, {}, spec, 8)
        for names in (("o", "p"), ("p",)):
            request = decoded_request(names, raw, name="m" * 130, id=request_id, version=version)
            expected = encode_response(request, outputs, model).SerializeToString()
            written = encode_infer_response(request, outputs, model)
            assert written == expected
            assert pb.ModelInferResponse.FromString(written) == pb.ModelInferResponse.FromString(
                expected
            )
            checked += 1
    assert checked > 200


def test_fp16_and_bf16_answers_are_raw_even_for_typed_requests() -> None:
    model = ModelSignature("m", {}, {"h": TensorSpec("h", "FP16", (2,)),
                                     "b": TensorSpec("b", "BF16", (2,))}, 4)  # fmt: skip
    outputs = {
        "h": np.ones((1, 2), np.float16),
        "b": np.ones((1, 2), ml_dtypes.bfloat16),
    }
    request = decoded_request(("h", "b"), raw=False)
    response = pb.ModelInferResponse.FromString(encode_infer_response(request, outputs, model))
    assert len(response.raw_output_contents) == 2


# --- the server ----------------------------------------------------------------------------


def test_malformed_request_bytes_answer_invalid_argument(protocol_server: RunningServer) -> None:
    valid = infer_request("simple", {"INPUT0": np.ones((1, 16), np.float32),
                                     "INPUT1": np.ones((1, 16), np.float32)})  # fmt: skip
    data = valid.SerializeToString()
    with grpc.insecure_channel(protocol_server.address) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        answer = pb.ModelInferResponse.FromString(infer(data, timeout=10))
        assert answer.model_name == "simple"
        for bad in (data[:-3], data + b"\x3a\x7fxy", b"\x0a", b"\x08\x80\x80"):
            with pytest.raises(grpc.RpcError) as info:
                infer(bad, timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a valid ModelInferRequest" in info.value.details()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_event_loop_is_chosen_and_logged(protocol_repository: object, loop: str) -> None:
    with RunningServer(protocol_repository, ["--event-loop", loop]) as server:  # type: ignore[arg-type]
        with grpc.insecure_channel(server.address) as channel:
            infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            a = np.ones((1, 16), np.float32)
            request = infer_request("simple", {"INPUT0": a, "INPUT1": a}, request_id="r1")
            answer = pb.ModelInferResponse.FromString(infer(request.SerializeToString()))
            assert answer.id == "r1"
        log = server.log()
    expected = "uvloop 0." if loop == "uvloop" else "(gRPC, asyncio event loop)"
    assert expected in log
