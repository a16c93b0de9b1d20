"""Triton's own Python client (tritonclient.grpc), unmodified, against onnxserve.

It runs in a subprocess (tests/support/triton_client_check.py) because it
registers the same protobuf package as ours; this test checks what it saw.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import RunningServer

pytest.importorskip(
    "tritonclient", reason="tritonclient is a dev dependency (pip install -e .[dev])"
)

CHECK = Path(__file__).parent / "support" / "triton_client_check.py"


@pytest.fixture(scope="module")
def seen(protocol_server: RunningServer) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, str(CHECK), protocol_server.address],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(completed.stdout)


def test_health_and_readiness(seen: dict[str, Any]) -> None:
    assert seen["live"] and seen["ready"] and seen["model_ready"]
    assert seen["model_ready_missing"] is False


def test_server_and_model_metadata(seen: dict[str, Any]) -> None:
    assert seen["server_metadata"]["name"] == "onnxserve"
    assert "statistics" in seen["server_metadata"]["extensions"]
    inputs = seen["model_metadata"]["inputs"]
    assert [(i["name"], i["datatype"], i["shape"]) for i in inputs] == [
        ("INPUT0", "FP32", ["-1", "16"]),
        ("INPUT1", "FP32", ["-1", "16"]),
    ]


def test_model_config_parses_as_a_real_model_config(seen: dict[str, Any]) -> None:
    config = seen["model_config"]["config"]
    assert config["name"] == "simple_config"
    assert config["max_batch_size"] == 8
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    assert config["instance_group"][0]["count"] == 2


def test_sync_async_and_streaming_infer(seen: dict[str, Any]) -> None:
    infer = seen["infer"]
    assert infer["id"] == "sync-1"
    assert infer["output0"] == infer["expected"]
    assert infer["output1_absent"]
    assert seen["async_infer"]["error"] is None
    assert seen["async_infer"]["output1"] == seen["async_infer"]["expected"]
    assert seen["stream"] == {"stream-0": True, "stream-1": True, "stream-2": True}
    assert seen["aio_sums"] == [5.0] and seen["aio_ready"]


def test_bytes_and_fp16(seen: dict[str, Any]) -> None:
    assert seen["bytes"] == ["alpha", "", "grüße", "z"]
    assert seen["fp16"] == [[0.5, -2.0, 65504.0, 0.0]]


def test_statistics_and_repository_index(seen: dict[str, Any]) -> None:
    (stats,) = seen["statistics"]["model_stats"]
    assert stats["name"] == "simple"
    # Taken after the sync, async and three streamed requests of two rows each.
    assert int(stats["inference_count"]) >= 2 + 2 + 3 * 2
    assert int(stats["inference_stats"]["success"]["count"]) >= 1 + 1 + 3
    names = {m["name"] for m in seen["index"]["models"]}
    assert {"simple", "simple_config", "identity_bytes"} <= names


def test_errors_reach_the_client_with_their_status(seen: dict[str, Any]) -> None:
    errors = seen["errors"]
    assert errors["unknown_model"]["status"] == "StatusCode.NOT_FOUND"
    assert errors["bad_shape"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "INPUT0" in errors["bad_shape"]["message"]
    assert errors["load"]["status"] == "StatusCode.UNIMPLEMENTED"
