"""The protocol server over real gRPC: every RPC, every datatype, every bad input.

A real `onnxserve serve` process runs on a loopback port (tests/conftest.py);
these tests call it with the generated stubs exactly as a foreign client would.
"""

from __future__ import annotations

import grpc
import ml_dtypes
import numpy as np
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from onnxserve.protocol import codec
from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.protocol import grpc_service_pb2_grpc as pb_grpc
from tests.support.infer_requests import infer_request, outputs_of
from tests.support.server import RunningServer

Stub = pb_grpc.GRPCInferenceServiceStub
A = np.arange(32, dtype=np.float32).reshape(2, 16)
B = np.full((2, 16), 0.5, dtype=np.float32)


def rpc_error(call, *args, **kwargs) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value


# --- health, metadata, config -------------------------------------------------


def test_live_and_ready(stub: Stub) -> None:
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready


def test_server_metadata_advertises_working_extensions(stub: Stub) -> None:
    metadata = stub.ServerMetadata(pb.ServerMetadataRequest())
    assert metadata.name == "onnxserve"
    assert metadata.version
    assert {"statistics", "model_configuration"} <= set(metadata.extensions)
    assert not {"system_shared_memory", "cuda_shared_memory", "sequence"} & set(metadata.extensions)


def test_model_metadata_has_leading_minus_one_for_batchable_models(stub: Stub) -> None:
    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="simple"))
    assert metadata.platform == "onnxruntime_onnx"
    assert list(metadata.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("INPUT0", "FP32", [-1, 16]),
        ("INPUT1", "FP32", [-1, 16]),
    ]
    assert [t.name for t in metadata.outputs] == ["OUTPUT0", "OUTPUT1"]
    fixed = stub.ModelMetadata(pb.ModelMetadataRequest(name="fixed"))
    assert [list(t.shape) for t in fixed.inputs] == [[2, 16], [2, 16]]


def test_model_metadata_lists_every_served_version(stub: Stub) -> None:
    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="simple_config"))
    assert list(metadata.versions) == ["1", "2"]


def test_model_config_is_completed_from_onnx(stub: Stub) -> None:
    config = stub.ModelConfig(pb.ModelConfigRequest(name="simple")).config
    assert config.name == "simple"
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 64
    assert config.HasField("dynamic_batching")
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("INPUT0", 11, [16]),
        ("INPUT1", 11, [16]),
    ]
    providers = config.parameters["onnxserve.execution_providers"].string_value
    assert providers.split(",")[-1] == "CPUExecutionProvider"
    fixed = stub.ModelConfig(pb.ModelConfigRequest(name="fixed")).config
    assert fixed.max_batch_size == 0
    assert list(fixed.input[0].dims) == [2, 16]


def test_model_config_keeps_what_config_pbtxt_says(stub: Stub) -> None:
    config = stub.ModelConfig(pb.ModelConfigRequest(name="simple_config", version="2")).config
    assert config.max_batch_size == 8
    assert config.version_policy.WhichOneof("policy_choice") == "all"
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, 2)]


def test_model_ready(stub: Stub) -> None:
    assert stub.ModelReady(pb.ModelReadyRequest(name="simple")).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="simple_config", version="1")).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name="simple_config", version="3")).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name="no_such_model")).ready


def test_repository_index_lists_every_version(stub: Stub) -> None:
    index = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True))
    rows = {(m.name, m.version, m.state) for m in index.models}
    assert ("simple", "1", "READY") in rows
    assert {("simple_config", "1", "READY"), ("simple_config", "2", "READY")} <= rows
    assert len({m.name for m in index.models}) == 17


# --- inference ---------------------------------------------------------------


def test_infer_raw_returns_sum_and_difference_and_echoes_id(stub: Stub) -> None:
    response = stub.ModelInfer(
        infer_request("simple", {"INPUT0": A, "INPUT1": B}, request_id="req-42")
    )
    assert response.id == "req-42"
    assert response.model_name == "simple" and response.model_version == "1"
    out = outputs_of(response)
    np.testing.assert_array_equal(out["OUTPUT0"], A + B)
    np.testing.assert_array_equal(out["OUTPUT1"], A - B)
    assert [list(t.shape) for t in response.outputs] == [[2, 16], [2, 16]]


def test_infer_requested_output_subset(stub: Stub) -> None:
    response = stub.ModelInfer(
        infer_request("simple", {"INPUT0": A, "INPUT1": B}, outputs=["OUTPUT1"])
    )
    assert [t.name for t in response.outputs] == ["OUTPUT1"]
    np.testing.assert_array_equal(outputs_of(response)["OUTPUT1"], A - B)


def test_infer_typed_contents_answer_typed(stub: Stub) -> None:
    response = stub.ModelInfer(infer_request("simple", {"INPUT0": A, "INPUT1": B}, raw=False))
    assert not response.raw_output_contents
    assert list(response.outputs[0].contents.fp32_contents) == list((A + B).reshape(-1))


def test_infer_specific_versions(stub: Stub) -> None:
    for version in ("1", "2"):
        response = stub.ModelInfer(
            infer_request("simple_config", {"INPUT0": A, "INPUT1": B}, version=version)
        )
        assert response.model_version == version


def test_infer_non_batchable_model(stub: Stub) -> None:
    response = stub.ModelInfer(infer_request("fixed", {"INPUT0": A, "INPUT1": B}))
    np.testing.assert_array_equal(outputs_of(response)["OUTPUT0"], A + B)


def _sample(datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        return np.array([[b"hello", b"", "ünïcode".encode(), b"x" * 300]] * 3, dtype=object)
    if datatype == "BOOL":
        return np.array([[True, False, True, False]] * 3)
    dtype = codec.numpy_dtype(datatype)
    if datatype in ("FP16", "FP32", "FP64", "BF16"):
        values = np.array([[-1.5, 0.0, 2.25, 1e3]] * 3, dtype=np.float32)
        return values.astype(dtype)
    info = np.iinfo(dtype)
    return np.array([[info.min, 0, 1, info.max]] * 3, dtype=dtype)


@pytest.mark.parametrize("datatype", codec.DATATYPES)
def test_every_datatype_round_trips_raw(stub: Stub, datatype: str) -> None:
    sample = _sample(datatype)
    response = stub.ModelInfer(
        infer_request(
            f"identity_{datatype.lower()}", {"INPUT0": sample}, datatypes={"INPUT0": datatype}
        )
    )
    assert response.outputs[0].datatype == datatype
    result = outputs_of(response)["OUTPUT0"]
    assert result.shape == sample.shape
    if datatype == "BF16":
        assert result.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(result, sample)


@pytest.mark.parametrize("datatype", [d for d in codec.DATATYPES if d not in ("FP16", "BF16")])
def test_every_typed_datatype_round_trips_as_contents(stub: Stub, datatype: str) -> None:
    sample = _sample(datatype)
    response = stub.ModelInfer(
        infer_request(
            f"identity_{datatype.lower()}",
            {"INPUT0": sample},
            raw=False,
            datatypes={"INPUT0": datatype},
        )
    )
    assert not response.raw_output_contents
    np.testing.assert_array_equal(outputs_of(response)["OUTPUT0"], sample)


def test_stream_infer_answers_each_request_and_survives_a_bad_one(stub: Stub) -> None:
    good = [
        infer_request("simple", {"INPUT0": A * i, "INPUT1": B}, request_id=f"s{i}")
        for i in range(4)
    ]
    bad = infer_request("simple", {"INPUT0": A}, request_id="bad")
    responses = list(stub.ModelStreamInfer(iter([*good[:2], bad, *good[2:]]), timeout=30))
    assert len(responses) == 5
    errors = [r for r in responses if r.error_message]
    assert len(errors) == 1 and "INPUT1" in errors[0].error_message
    assert errors[0].infer_response.id == "bad"
    answered = {
        r.infer_response.id: outputs_of(r.infer_response) for r in responses if not r.error_message
    }
    assert set(answered) == {"s0", "s1", "s2", "s3"}
    for i in range(4):
        np.testing.assert_array_equal(answered[f"s{i}"]["OUTPUT0"], A * i + B)


# --- bad input, one by one ------------------------------------------------------


def _bad(stub: Stub, request: pb.ModelInferRequest) -> grpc.RpcError:
    return rpc_error(stub.ModelInfer, request, timeout=10)


def test_unknown_model_is_not_found(stub: Stub) -> None:
    error = _bad(stub, infer_request("no_such_model", {"INPUT0": A}))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "no_such_model" in error.details()


@pytest.mark.parametrize("version", ["3", "abc"])
def test_unknown_version_is_not_found(stub: Stub, version: str) -> None:
    error = _bad(stub, infer_request("simple_config", {"INPUT0": A, "INPUT1": B}, version=version))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert version in error.details()


def test_missing_input(stub: Stub) -> None:
    error = _bad(stub, infer_request("simple", {"INPUT0": A}))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "INPUT1" in error.details()


def test_unknown_input(stub: Stub) -> None:
    error = _bad(stub, infer_request("simple", {"INPUT0": A, "INPUT1": B, "EXTRA": A}))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown input 'EXTRA'" in error.details()


def test_duplicate_input(stub: Stub) -> None:
    request = infer_request("simple", {"INPUT0": A, "INPUT1": B})
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[2, 16])
    request.raw_input_contents.append(codec.array_to_raw(A))
    error = _bad(stub, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "more than once" in error.details()


def test_wrong_datatype(stub: Stub) -> None:
    error = _bad(stub, infer_request("simple", {"INPUT0": A.astype(np.float64), "INPUT1": B}))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "INPUT0" in error.details() and "FP64" in error.details() and "FP32" in error.details()


def test_wrong_rank(stub: Stub) -> None:
    error = _bad(stub, infer_request("simple", {"INPUT0": A.reshape(2, 4, 4), "INPUT1": B}))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "INPUT0" in error.details() and "rank 2" in error.details()


def test_wrong_fixed_dimension(stub: Stub) -> None:
    error = _bad(stub, infer_request("simple", {"INPUT0": A[:, :8], "INPUT1": B[:, :8]}))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "INPUT0" in error.details() and "to be 16" in error.details()


def test_wrong_shape_for_non_batchable_model(stub: Stub) -> None:
    three = np.zeros((3, 16), dtype=np.float32)
    error = _bad(stub, infer_request("fixed", {"INPUT0": three, "INPUT1": three}))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "dimension 0 to be 2" in error.details()


def test_batch_larger_than_max_batch_size(stub: Stub) -> None:
    nine = np.zeros((9, 16), dtype=np.float32)
    error = _bad(stub, infer_request("simple_config", {"INPUT0": nine, "INPUT1": nine}))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "batch size 9" in error.details() and "max_batch_size" in error.details()


def test_inputs_disagreeing_on_batch_size(stub: Stub) -> None:
    error = _bad(stub, infer_request("simple", {"INPUT0": A, "INPUT1": B[:1]}))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "batch size" in error.details()


def test_raw_byte_length_must_match_shape(stub: Stub) -> None:
    request = infer_request("simple", {"INPUT0": A, "INPUT1": B})
    request.raw_input_contents[1] = request.raw_input_contents[1][:-4]
    error = _bad(stub, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        "INPUT1" in error.details() and "124 bytes" in error.details() and "128" in error.details()
    )


def test_raw_contents_count_must_match_inputs(stub: Stub) -> None:
    request = infer_request("simple", {"INPUT0": A, "INPUT1": B})
    del request.raw_input_contents[1]
    error = _bad(stub, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw_input_contents" in error.details()


def test_malformed_bytes_tensor(stub: Stub) -> None:
    request = pb.ModelInferRequest(model_name="identity_bytes")
    request.inputs.add(name="INPUT0", datatype="BYTES", shape=[1, 4])
    request.raw_input_contents.append(b"\x05\x00\x00\x00abc")  # declares 5 bytes, has 3
    error = _bad(stub, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed BYTES" in error.details()


def test_bytes_tensor_with_wrong_element_count(stub: Stub) -> None:
    request = pb.ModelInferRequest(model_name="identity_bytes")
    request.inputs.add(name="INPUT0", datatype="BYTES", shape=[1, 4])
    request.raw_input_contents.append(
        codec.serialize_bytes_tensor(np.array([b"a", b"b"], dtype=object))
    )
    error = _bad(stub, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "holds 2 elements" in error.details()


def test_non_utf8_bytes_for_a_string_model(stub: Stub) -> None:
    sample = np.array([[b"ok", b"\xff\xfe", b"a", b"b"]], dtype=object)
    error = _bad(stub, infer_request("identity_bytes", {"INPUT0": sample}))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "UTF-8" in error.details()


def test_fp16_cannot_travel_as_typed_contents(stub: Stub) -> None:
    request = pb.ModelInferRequest(model_name="identity_fp16")
    request.inputs.add(name="INPUT0", datatype="FP16", shape=[1, 4])
    error = _bad(stub, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw" in error.details()


def test_typed_contents_count_must_match_shape(stub: Stub) -> None:
    request = pb.ModelInferRequest(model_name="identity_fp32")
    tensor = request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([1.0, 2.0])
    error = _bad(stub, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "fp32_contents holds 2" in error.details()


def test_unknown_requested_output(stub: Stub) -> None:
    error = _bad(stub, infer_request("simple", {"INPUT0": A, "INPUT1": B}, outputs=["OUTPUT9"]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "OUTPUT9" in error.details()


def test_non_integer_priority_parameter(stub: Stub) -> None:
    request = infer_request("simple", {"INPUT0": A, "INPUT1": B})
    request.parameters["priority"].string_param = "high"
    error = _bad(stub, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "priority" in error.details()


def test_errors_do_not_leak_paths(stub: Stub, protocol_server: RunningServer) -> None:
    root = str(protocol_server.repository)
    for request in (
        infer_request("no_such_model", {"INPUT0": A}),
        infer_request("simple", {"INPUT0": A}),
        infer_request("simple_config", {"INPUT0": A, "INPUT1": B}, version="7"),
    ):
        assert root not in _bad(stub, request).details()
    assert stub.ServerLive(pb.ServerLiveRequest()).live


# --- statistics, unimplemented, health, reflection -------------------------------


def test_statistics_count_samples_executions_and_batch_sizes(stub: Stub) -> None:
    def stats() -> pb.ModelStatistics:
        response = stub.ModelStatistics(
            pb.ModelStatisticsRequest(name="simple_config", version="1")
        )
        assert len(response.model_stats) == 1
        return response.model_stats[0]

    before = stats()
    three = np.ones((3, 16), dtype=np.float32)
    for _ in range(2):
        stub.ModelInfer(
            infer_request("simple_config", {"INPUT0": three, "INPUT1": three}, version="1")
        )
    after = stats()
    assert after.inference_count - before.inference_count == 6
    assert after.execution_count - before.execution_count == 2
    assert after.inference_stats.success.count - before.inference_stats.success.count == 2
    assert after.inference_stats.compute_infer.ns > before.inference_stats.compute_infer.ns
    assert after.last_inference > 0
    by_size = {b.batch_size: b for b in after.batch_stats}
    assert by_size[3].compute_infer.count >= 2


def test_statistics_for_all_models_and_unknown_model(stub: Stub) -> None:
    everything = stub.ModelStatistics(pb.ModelStatisticsRequest())
    assert {s.name for s in everything.model_stats} >= {"simple", "simple_config", "fixed"}
    versions = [s.version for s in everything.model_stats if s.name == "simple_config"]
    assert versions == ["1", "2"]
    error = rpc_error(stub.ModelStatistics, pb.ModelStatisticsRequest(name="no_such_model"))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_unbuilt_rpcs_answer_unimplemented(stub: Stub) -> None:
    for call, request in (
        (stub.SystemSharedMemoryStatus, pb.SystemSharedMemoryStatusRequest()),
        (stub.CudaSharedMemoryRegister, pb.CudaSharedMemoryRegisterRequest(name="x")),
        (stub.TraceSetting, pb.TraceSettingRequest()),
        (stub.LogSettings, pb.LogSettingsRequest()),
    ):
        error = rpc_error(call, request)
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "not implemented" in error.details()
    assert stub.ModelReady(pb.ModelReadyRequest(name="simple")).ready


def test_model_control_is_refused_unless_explicit(stub: Stub) -> None:
    """The default mode (none) refuses load and unload; the model keeps serving."""
    for call, request in (
        (stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="simple")),
        (stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name="simple")),
    ):
        error = rpc_error(call, request)
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "--model-control-mode none" in error.details()
        assert "--model-control-mode explicit" in error.details()
    assert stub.ModelReady(pb.ModelReadyRequest(name="simple")).ready


def test_grpc_health_checking(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    assert health.Check(health_pb2.HealthCheckRequest(service="")).status == serving
    assert (
        health.Check(health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")).status
        == serving
    )
    error = rpc_error(health.Check, health_pb2.HealthCheckRequest(service="no.Such"))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_server_reflection_lists_services(channel: grpc.Channel) -> None:
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names


def test_server_reflection_describes_the_inference_service(channel: grpc.Channel) -> None:
    """grpcurl's path: the file that defines the service, and its dependency."""
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = list(
        reflection.ServerReflectionInfo(
            iter(
                [
                    reflection_pb2.ServerReflectionRequest(
                        file_containing_symbol="inference.GRPCInferenceService"
                    ),
                    reflection_pb2.ServerReflectionRequest(
                        file_containing_symbol="grpc.health.v1.Health"
                    ),
                ]
            )
        )
    )
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for response in responses
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]
    names = {f.name for f in files}
    assert {"grpc_service.proto", "model_config.proto", health_pb2.DESCRIPTOR.name} <= names
    service = next(f for f in files if f.name == "grpc_service.proto").service[0]
    assert service.name == "GRPCInferenceService"
    assert "ModelInfer" in [m.name for m in service.method]
