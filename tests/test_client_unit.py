"""The client's pure parts: request building, response decoding, dtypes, errors, retries, options.

No server here: these functions are pure, and the end-to-end behaviour is in
test_client_server.py. Each test checks values computed independently of the
code under test (numpy's own bytes, hand-built protobuf messages).
"""

from __future__ import annotations

import pickle
import struct

import grpc
import ml_dtypes
import numpy as np
import pytest

from onnxserve.client import (
    Client,
    DeadlineExceededError,
    InferenceServerError,
    InvalidInputError,
    InvalidResponseError,
    KeepaliveOptions,
    ModelNotFoundError,
    ResourceExhaustedError,
    RetryPolicy,
    ServerUnavailableError,
    TLSConfig,
    UnimplementedError,
    calls,
)
from onnxserve.client.errors import error_for_code
from onnxserve.client.options import channel_options, parse_url, plan_channels
from onnxserve.client.types import Duration, ModelMetadata, TensorMetadata
from onnxserve.protocol import codec
from onnxserve.protocol import grpc_service_pb2 as pb

NUMERIC: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BF16": np.dtype(ml_dtypes.bfloat16),
}


def sample(dtype: np.dtype, shape: tuple[int, ...] = (2, 3)) -> np.ndarray:
    values = np.arange(int(np.prod(shape))).reshape(shape)
    if dtype == np.bool_:
        return values % 2 == 0
    if dtype.kind in "iu":
        # Values at the ends of the range, where a wrong width or sign shows.
        info = np.iinfo(dtype)
        start = info.max - 50 if dtype.kind == "u" else info.min
        return np.array([start + 7 * int(v) for v in values.reshape(-1)], dtype=dtype).reshape(
            shape
        )
    return (values / 4 - 1).astype(dtype)


def response_for(arrays: dict[str, np.ndarray]) -> pb.ModelInferResponse:
    """A raw ModelInferResponse built with numpy's own bytes, not the client's codec."""
    response = pb.ModelInferResponse(model_name="m", model_version="1", id="x")
    for name, array in arrays.items():
        response.outputs.add(name=name, datatype=codec.datatype_of(array), shape=array.shape)
        response.raw_output_contents.append(np.ascontiguousarray(array).tobytes())
    return response


# -- datatypes ----------------------------------------------------------------


@pytest.mark.parametrize("datatype", list(NUMERIC))
def test_numeric_input_is_sent_raw_with_its_datatype(datatype: str) -> None:
    array = sample(NUMERIC[datatype])
    request = calls.build_infer_request("m", {"x": array})
    (tensor,) = request.inputs
    assert tensor.datatype == datatype
    assert list(tensor.shape) == [2, 3]
    assert request.raw_input_contents[0] == array.astype(array.dtype.newbyteorder("<")).tobytes()
    assert not tensor.HasField("contents")


@pytest.mark.parametrize("datatype", list(NUMERIC))
def test_numeric_output_decodes_to_the_same_dtype_and_values(datatype: str) -> None:
    array = sample(NUMERIC[datatype])
    out = calls.decode_infer_response(response_for({"y": array}))["y"]
    assert out.dtype == NUMERIC[datatype]
    assert out.shape == array.shape
    np.testing.assert_array_equal(out, array)


def test_raw_output_is_a_read_only_view_of_the_response_bytes() -> None:
    raw = np.arange(12, dtype=np.float32).tobytes()
    tensor = pb.ModelInferResponse.InferOutputTensor(name="y", datatype="FP32", shape=[3, 4])
    out = codec.decode_output(tensor, raw)
    base = out
    while isinstance(base, np.ndarray):
        base = base.base
    assert base is raw, "decoded array must be a view of the bytes, not a copy"
    assert not out.flags.writeable


def test_big_endian_and_non_contiguous_inputs_go_little_endian_row_major() -> None:
    big = np.arange(6, dtype=">i4").reshape(2, 3)
    request = calls.build_infer_request("m", {"a": big, "b": big.T})
    assert request.inputs[0].datatype == "INT32"
    assert request.raw_input_contents[0] == struct.pack("<6i", 0, 1, 2, 3, 4, 5)
    assert list(request.inputs[1].shape) == [3, 2]
    assert request.raw_input_contents[1] == struct.pack("<6i", 0, 3, 1, 4, 2, 5)


@pytest.mark.parametrize(
    "value",
    [
        np.array([["ab", "é"], ["", "xyz"]]),  # numpy str_
        np.array([[b"ab", "é".encode()], [b"", b"xyz"]]),  # numpy bytes_
        np.array([["ab", "é".encode()], [b"", "xyz"]], dtype=object),  # mixed objects
        [["ab", "é"], ["", "xyz"]],  # a plain list
    ],
)
def test_strings_and_bytes_are_sent_as_framed_bytes(value: object) -> None:
    request = calls.build_infer_request("m", {"s": value})
    assert request.inputs[0].datatype == "BYTES"
    assert list(request.inputs[0].shape) == [2, 2]
    expected = b"".join(struct.pack("<I", len(e)) + e for e in (b"ab", "é".encode(), b"", b"xyz"))
    assert request.raw_input_contents[0] == expected


def test_bytes_output_decodes_to_an_object_array_of_bytes() -> None:
    elements = [b"a", b"", "é".encode(), b"\x00\xff"]
    response = pb.ModelInferResponse()
    response.outputs.add(name="s", datatype="BYTES", shape=[2, 2])
    response.raw_output_contents.append(b"".join(struct.pack("<I", len(e)) + e for e in elements))
    out = calls.decode_infer_response(response)["s"]
    assert out.dtype == object and out.shape == (2, 2)
    assert out.reshape(-1).tolist() == elements


def test_typed_contents_output_is_decoded_when_not_raw() -> None:
    response = pb.ModelInferResponse()
    tensor = response.outputs.add(name="y", datatype="INT32", shape=[2, 2])
    tensor.contents.int_contents.extend([1, -2, 3, -4])
    text = response.outputs.add(name="t", datatype="BYTES", shape=[1])
    text.contents.bytes_contents.append(b"hi")
    out = calls.decode_infer_response(response)
    np.testing.assert_array_equal(out["y"], np.array([[1, -2], [3, -4]], np.int32))
    assert out["y"].dtype == np.int32
    assert out["t"].tolist() == [b"hi"]


def test_python_lists_follow_numpy_defaults() -> None:
    request = calls.build_infer_request("m", {"f": [1.5, 2.5], "i": [1, 2], "b": [True]})
    assert [t.datatype for t in request.inputs] == ["FP64", "INT64", "BOOL"]


def test_an_array_with_no_protocol_datatype_is_refused_before_sending() -> None:
    with pytest.raises(InvalidInputError, match="input 'c'") as info:
        calls.build_infer_request("m", {"c": np.ones(2, np.complex64)})
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert isinstance(info.value, ValueError)


def test_decode_refuses_raw_contents_that_do_not_fit_the_shape() -> None:
    response = response_for({"y": np.zeros((2, 2), np.float32)})
    response.outputs[0].shape[:] = [2, 3]
    with pytest.raises(InvalidResponseError, match=r"output 'y'.*needs 24"):
        calls.decode_infer_response(response)


def test_decode_refuses_a_raw_count_that_differs_from_the_outputs() -> None:
    response = response_for({"a": np.zeros(2, np.float32), "b": np.zeros(2, np.float32)})
    del response.raw_output_contents[1]
    with pytest.raises(InvalidResponseError, match="2 outputs but 1 raw"):
        calls.decode_infer_response(response)


# -- request fields -------------------------------------------------------------


def test_request_carries_version_id_outputs_and_typed_parameters() -> None:
    request = calls.build_infer_request(
        "m",
        {"x": np.zeros(1, np.float32)},
        outputs=["b", "a"],
        version=2,
        request_id="req-7",
        parameters={"flag": True, "priority": 1, "big": 2**63, "ratio": 0.5, "tag": "t"},
    )
    assert request.model_name == "m" and request.model_version == "2" and request.id == "req-7"
    assert [o.name for o in request.outputs] == ["b", "a"]
    p = request.parameters
    assert p["flag"].WhichOneof("parameter_choice") == "bool_param" and p["flag"].bool_param
    assert p["priority"].WhichOneof("parameter_choice") == "int64_param"
    assert p["big"].WhichOneof("parameter_choice") == "uint64_param"
    assert p["big"].uint64_param == 2**63
    assert p["ratio"].double_param == 0.5
    assert p["tag"].string_param == "t"
    assert calls.decode_parameters(request.parameters) == {
        "flag": True,
        "priority": 1,
        "big": 2**63,
        "ratio": 0.5,
        "tag": "t",
    }


@pytest.mark.parametrize("bad", [[1, 2], None, 2**64, b"raw"])
def test_parameters_of_other_types_are_refused(bad: object) -> None:
    with pytest.raises(InvalidInputError, match="parameter 'p'"):
        calls.build_infer_request("m", {}, parameters={"p": bad})  # type: ignore[dict-item]


def test_outputs_given_as_one_string_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="sequence of names"):
        calls.build_infer_request("m", {}, outputs="OUTPUT0")


def test_each_call_names_its_rpc_and_retry_safety() -> None:
    assert calls.infer("m", {}).idempotent is False
    assert calls.load_model("m").idempotent is False
    for call in (
        calls.server_live(),
        calls.server_ready(),
        calls.model_ready("m"),
        calls.server_metadata(),
        calls.model_metadata("m"),
        calls.model_config("m"),
        calls.statistics(),
        calls.repository_index(),
    ):
        assert call.idempotent, call.method
    assert calls.model_ready("m", 3).request.version == "3"
    assert calls.repository_index(ready_only=True).request.ready is True


# -- responses ------------------------------------------------------------------


def test_metadata_responses_become_dataclasses() -> None:
    response = pb.ModelMetadataResponse(name="m", versions=["1", "2"], platform="onnxruntime_onnx")
    response.inputs.add(name="x", datatype="FP16", shape=[-1, 3])
    response.outputs.add(name="y", datatype="BYTES", shape=[-1])
    meta = calls.model_metadata("m").parse(response)
    assert meta == ModelMetadata(
        name="m",
        versions=("1", "2"),
        platform="onnxruntime_onnx",
        inputs=(TensorMetadata("x", "FP16", (-1, 3)),),
        outputs=(TensorMetadata("y", "BYTES", (-1,)),),
    )
    assert meta.input("x").dtype == np.float16
    assert meta.output("y").dtype == object
    with pytest.raises(KeyError):
        meta.input("y")


def test_statistics_response_becomes_dataclasses() -> None:
    response = pb.ModelStatisticsResponse()
    stats = response.model_stats.add(
        name="m", version="1", last_inference=5, inference_count=10, execution_count=4
    )
    stats.inference_stats.success.count = 4
    stats.inference_stats.success.ns = 8_000_000
    stats.batch_stats.add(batch_size=3).compute_infer.count = 2
    (parsed,) = calls.statistics("m").parse(response)
    assert (parsed.inference_count, parsed.execution_count) == (10, 4)
    assert parsed.inference_stats.success == Duration(4, 8_000_000)
    assert parsed.inference_stats.success.mean_ms == 2.0
    assert parsed.inference_stats.fail.mean_ms == 0.0
    assert parsed.batch_stats[0].batch_size == 3
    assert parsed.batch_stats[0].compute_infer.count == 2


def test_stream_error_becomes_a_result_with_an_error() -> None:
    response = pb.ModelStreamInferResponse(error_message="bad input 'x'")
    response.infer_response.id = "7"
    result = calls.stream_result(response)
    assert not result.ok and result.id == "7" and result.outputs == {}
    with pytest.raises(InferenceServerError, match="bad input 'x'"):
        result.raise_for_error()
    good = pb.ModelStreamInferResponse(infer_response=response_for({"y": np.ones(2, np.int8)}))
    assert calls.stream_result(good).raise_for_error().outputs["y"].tolist() == [1, 1]


# -- errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.NOT_FOUND, ModelNotFoundError),
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidInputError),
        (grpc.StatusCode.UNAVAILABLE, ServerUnavailableError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceededError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhaustedError),
        (grpc.StatusCode.UNIMPLEMENTED, UnimplementedError),
    ],
)
def test_each_common_code_has_its_exception(code: grpc.StatusCode, cls: type) -> None:
    error = error_for_code(code, "the server's words")
    assert type(error) is cls
    assert error.code == code and error.message == "the server's words"
    assert str(error) == f"[{code.name}] the server's words"
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is cls and clone.code == code and clone.message == error.message


def test_an_uncommon_code_keeps_its_code_on_the_base_class() -> None:
    error = error_for_code(grpc.StatusCode.FAILED_PRECONDITION, "nope")
    assert type(error) is InferenceServerError
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION


# -- retry policy -------------------------------------------------------------


def test_backoff_grows_exponentially_to_its_cap() -> None:
    policy = RetryPolicy(initial_backoff_s=0.1, multiplier=2, max_backoff_s=0.5, jitter=0.2)
    middle = [policy.backoff_s(n, rand=lambda: 0.5) for n in range(1, 6)]
    assert middle == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])
    assert policy.backoff_s(1, rand=lambda: 0.0) == pytest.approx(0.08)
    assert policy.backoff_s(1, rand=lambda: 1.0) == pytest.approx(0.12)


def test_only_unavailable_idempotent_calls_are_retried_by_default() -> None:
    policy = RetryPolicy(max_attempts=3)
    unavailable = grpc.StatusCode.UNAVAILABLE
    assert policy.next_delay(unavailable, 1, True, 10.0) is not None
    assert policy.next_delay(unavailable, 2, True, 10.0) is not None
    assert policy.next_delay(unavailable, 3, True, 10.0) is None  # attempts used up
    assert policy.next_delay(unavailable, 1, False, 10.0) is None  # infer
    assert policy.next_delay(grpc.StatusCode.INTERNAL, 1, True, 10.0) is None
    assert policy.next_delay(grpc.StatusCode.DEADLINE_EXCEEDED, 1, True, 10.0) is None
    assert RetryPolicy(retry_infer=True).next_delay(unavailable, 1, False, 10.0) is not None


def test_no_retry_is_started_that_would_outlive_the_deadline() -> None:
    policy = RetryPolicy(initial_backoff_s=1.0, jitter=0.0)
    assert policy.next_delay(grpc.StatusCode.UNAVAILABLE, 1, True, 0.9) is None
    assert policy.next_delay(grpc.StatusCode.UNAVAILABLE, 1, True, 1.1) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "kwargs", [{"max_attempts": 0}, {"multiplier": 0.5}, {"jitter": 1.5}, {"initial_backoff_s": -1}]
)
def test_nonsense_retry_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


# -- urls, channels, credentials ----------------------------------------------


def test_url_schemes_decide_tls() -> None:
    assert parse_url("localhost:8001") == ("localhost:8001", None)
    assert parse_url("grpc://h:1/") == ("h:1", False)
    assert parse_url("grpcs://h:1") == ("h:1", True)
    assert parse_url("https://h:1") == ("h:1", True)
    with pytest.raises(ValueError, match="scheme"):
        parse_url("ftp://h:1")
    with pytest.raises(ValueError):
        parse_url("  ")


def test_channels_are_interleaved_across_urls_for_round_robin() -> None:
    plan = plan_channels(["a:1", "b:2"], channels_per_url=2, tls=False)
    assert plan.targets == ("a:1", "b:2", "a:1", "b:2")
    assert plan.tls is False
    assert plan_channels("grpcs://a:1", 1, tls=False).tls is True
    with pytest.raises(ValueError, match="mix"):
        plan_channels(["grpc://a:1", "grpcs://b:1"], 1, tls=False)
    with pytest.raises(ValueError, match="tls was requested"):
        plan_channels("grpc://a:1", 1, tls=True)
    with pytest.raises(ValueError):
        plan_channels([], 1, tls=False)
    with pytest.raises(ValueError):
        plan_channels("a:1", 0, tls=False)


def test_channel_options_carry_sizes_keepalive_and_separate_connections() -> None:
    options = dict(
        channel_options(
            max_message_bytes=1234,
            keepalive=KeepaliveOptions(time_s=20, timeout_s=5, permit_without_calls=True),
            server_name="svc.example",
            separate_connection=True,
            extra={"grpc.primary_user_agent": "me"},
        )
    )
    assert options["grpc.max_send_message_length"] == 1234
    assert options["grpc.max_receive_message_length"] == 1234
    assert options["grpc.keepalive_time_ms"] == 20000
    assert options["grpc.keepalive_timeout_ms"] == 5000
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.ssl_target_name_override"] == "svc.example"
    assert options["grpc.use_local_subchannel_pool"] == 1
    assert options["grpc.primary_user_agent"] == "me"
    plain = dict(
        channel_options(
            max_message_bytes=1, keepalive=None, server_name=None, separate_connection=False
        )
    )
    assert "grpc.keepalive_time_ms" not in plain and "grpc.use_local_subchannel_pool" not in plain


def test_a_token_is_never_sent_in_plaintext_unless_allowed() -> None:
    with pytest.raises(ValueError, match="plaintext"):
        Client("localhost:1", token="secret")
    with Client("localhost:1", token="secret", allow_insecure_token=True) as client:
        assert ("authorization", "Bearer secret") in client.metadata
        assert not client.tls
    with Client("grpcs://localhost:1", token="secret", headers={"X-Team": "a"}) as client:
        assert client.tls
        assert client.metadata == (("x-team", "a"), ("authorization", "Bearer secret"))


def test_client_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="deadline"):
        Client("localhost:1", timeout=0)
    with pytest.raises(ValueError, match="both"):
        TLSConfig(certificate_chain=b"x")
    with Client(["a:1", "b:1"], channels_per_url=3) as client:
        assert len(client.targets) == 6
        assert repr(client) == "Client(grpc://a:1, grpc://b:1, channels=6)"
        with pytest.raises(ValueError):
            client.is_live(timeout=-1)
    with pytest.raises(RuntimeError, match="closed"):
        client.is_live()


def test_model_ready_reads_not_found_as_not_ready_and_other_calls_raise() -> None:
    missing = error_for_code(grpc.StatusCode.NOT_FOUND, "Model with name x does not exist.")
    assert calls.model_ready("x").result_for(missing) is False
    with pytest.raises(ModelNotFoundError):
        calls.model_metadata("x").result_for(missing)
    with pytest.raises(ServerUnavailableError):
        calls.model_ready("x").result_for(error_for_code(grpc.StatusCode.UNAVAILABLE, "down"))
