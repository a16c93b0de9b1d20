"""The committed generated code must be exactly what proto/ generates today."""

from __future__ import annotations

import filecmp
from pathlib import Path

from scripts.generate_protos import DEFAULT_OUTPUT, generate, generated_files


def test_generated_code_matches_proto_sources(tmp_path: Path) -> None:
    written = generate(tmp_path / "protocol")
    assert written, "protoc produced nothing"
    committed = [p.name for p in generated_files(DEFAULT_OUTPUT)]
    regenerated = sorted(p.name for p in written)
    assert committed == regenerated
    drifted = [
        name
        for name in regenerated
        if not filecmp.cmp(DEFAULT_OUTPUT / name, tmp_path / "protocol" / name, shallow=False)
    ]
    assert not drifted, (
        f"{drifted} differ from what proto/ generates; run `make protos` and commit the result"
    )


def test_field_numbers_match_triton() -> None:
    """Spot-check the wire contract against Triton's published field numbers."""
    from onnxserve.protocol import grpc_service_pb2 as pb
    from onnxserve.protocol import model_config_pb2 as mc

    def numbers(message: type) -> dict[str, int]:
        return {f.name: f.number for f in message.DESCRIPTOR.fields}

    assert numbers(pb.ModelInferRequest) == {
        "model_name": 1,
        "model_version": 2,
        "id": 3,
        "parameters": 4,
        "inputs": 5,
        "outputs": 6,
        "raw_input_contents": 7,
    }
    assert numbers(pb.ModelInferResponse)["raw_output_contents"] == 6
    assert numbers(pb.InferTensorContents) == {
        "bool_contents": 1,
        "int_contents": 2,
        "int64_contents": 3,
        "uint_contents": 4,
        "uint64_contents": 5,
        "fp32_contents": 6,
        "fp64_contents": 7,
        "bytes_contents": 8,
    }
    assert numbers(pb.ModelStatistics)["batch_stats"] == 7
    assert numbers(pb.InferStatistics)["compute_output"] == 6
    assert numbers(pb.ModelStreamInferResponse) == {"error_message": 1, "infer_response": 2}
    config = numbers(mc.ModelConfig)
    assert (config["max_batch_size"], config["dynamic_batching"], config["instance_group"]) == (
        4,
        11,
        7,
    )
    assert numbers(mc.ModelDynamicBatching)["default_queue_policy"] == 6
    assert mc.TYPE_STRING == 13 and mc.TYPE_BF16 == 14
    methods = [m.name for m in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods]
    assert methods[:8] == [
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "ModelStreamInfer",
        "ModelConfig",
    ]
