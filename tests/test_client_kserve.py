"""A second v2 implementation: our client on KServe's model server, KServe's client on ours.

KServe needs protobuf 6 and registers the protobuf package ``inference`` too,
so it lives in its own environment (.venv-kserve, made by
tests/support/kserve_env.py, `make kserve-env`) and runs in subprocesses:
tests/support/kserve_model_server.py (KServe's ModelServer with three
models written against kserve.Model) and tests/support/kserve_client_check.py
(KServe's InferenceGRPCClient, unmodified). The first use builds the
environment from the package index, which takes about a minute.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import ml_dtypes
import numpy as np
import pytest

from onnxserve.client import (
    AsyncClient,
    Client,
    InferRequest,
    InvalidInputError,
    ModelNotFoundError,
    UnimplementedError,
)
from tests.support import kserve_env
from tests.support.client_tensors import expected_bytes, identity_input
from tests.support.models import ONNX_TYPES
from tests.support.server import RunningServer

SUPPORT = Path(__file__).parent / "support"
A = np.arange(32, dtype=np.float32).reshape(2, 16)
B = np.full((2, 16), 0.5, np.float32)


@pytest.fixture(scope="session")
def kserve_python() -> Path:
    try:
        return kserve_env.ensure()
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"could not install KServe into {kserve_env.VENV}:\n{exc.stderr[-4000:]}")


@pytest.fixture(scope="module")
def kserve_server(kserve_python: Path) -> Iterator[str]:
    """KServe's own ModelServer on a free loopback port; yields its gRPC address."""
    with kserve_env.model_server(
        kserve_python, SUPPORT / "kserve_model_server.py", "identity"
    ) as address:
        yield address


@pytest.fixture(scope="module")
def kclient(kserve_server: str) -> Iterator[Client]:
    with Client(kserve_server, timeout=30) as client:
        yield client


# -- our client, KServe's server ------------------------------------------------


def test_health_and_metadata_from_kserve(kclient: Client) -> None:
    assert kclient.is_live() and kclient.is_ready()
    assert kclient.is_model_ready("simple") is True
    # KServe answers NOT_FOUND here where onnxserve and Triton say "not ready";
    # the client gives the same answer for both.
    assert kclient.is_model_ready("no_such_model") is False
    meta = kclient.server_metadata()
    assert meta.name == "kserve"
    model = kclient.model_metadata("simple")
    assert [(t.name, t.datatype, t.shape) for t in model.inputs] == [
        ("INPUT0", "FP32", (-1, 16)),
        ("INPUT1", "FP32", (-1, 16)),
    ]


@pytest.mark.parametrize("model", ["simple", "simple_typed"])
def test_infer_on_kserve_raw_and_typed_answers(kclient: Client, model: str) -> None:
    out = kclient.infer(model, {"INPUT0": A, "INPUT1": B}, request_id="r1")
    np.testing.assert_array_equal(out["OUTPUT0"], A + B)
    np.testing.assert_array_equal(out["OUTPUT1"], A - B)
    assert out["OUTPUT0"].dtype == np.float32


@pytest.mark.parametrize("datatype", [d for d in ONNX_TYPES if d != "BF16"])
def test_datatypes_round_trip_through_kserve(kclient: Client, datatype: str) -> None:
    x = identity_input(datatype)
    out = kclient.infer("identity", {"INPUT0": x})["OUTPUT0"]
    assert out.shape == x.shape
    if datatype == "BYTES":
        assert out.reshape(-1).tolist() == expected_bytes(x)
    else:
        assert out.dtype == x.dtype and out.tobytes() == x.tobytes()


def test_kserve_refuses_bf16_and_the_client_says_so(kclient: Client) -> None:
    with pytest.raises(InvalidInputError) as info:
        kclient.infer("identity", {"INPUT0": np.ones((1, 2), ml_dtypes.bfloat16)})
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_kserve_errors_map_to_the_same_exceptions(kclient: Client) -> None:
    with pytest.raises(ModelNotFoundError, match="no_such_model"):
        kclient.infer("no_such_model", {"INPUT0": A})
    # What KServe's server lacks comes back as UNIMPLEMENTED, not a crash.
    with pytest.raises(UnimplementedError):
        kclient.model_config("simple")
    with pytest.raises(UnimplementedError):
        kclient.statistics()
    with pytest.raises(UnimplementedError):
        list(kclient.stream_infer([InferRequest("simple", {"INPUT0": A, "INPUT1": B})]))


def test_concurrent_async_calls_on_kserve(kserve_server: str) -> None:
    async def main() -> list[dict[str, np.ndarray]]:
        async with AsyncClient(kserve_server) as client:
            assert await client.is_model_ready("simple")
            return await asyncio.gather(
                *(client.infer("simple", {"INPUT0": A + i, "INPUT1": B}) for i in range(200))
            )

    for i, out in enumerate(asyncio.run(main())):
        np.testing.assert_array_equal(out["OUTPUT0"], A + i + B)


# -- KServe's client, our server ------------------------------------------------


def test_kserve_grpc_client_against_onnxserve(
    kserve_python: Path, protocol_server: RunningServer
) -> None:
    completed = subprocess.run(
        [str(kserve_python), "-I", str(SUPPORT / "kserve_client_check.py"),
         protocol_server.address],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-4000:]
    seen: dict[str, Any] = json.loads(completed.stdout)
    assert seen["live"] and seen["ready"] and seen["model_ready"]
    assert seen["id"] == "kserve-1" and seen["model_name"] == "simple"
    outputs = seen["outputs"]
    assert outputs["OUTPUT0"]["datatype"] == "FP32" and outputs["OUTPUT0"]["shape"] == [2, 16]
    np.testing.assert_array_equal(np.array(outputs["OUTPUT0"]["data"], np.float32), A + B)
    np.testing.assert_array_equal(np.array(outputs["OUTPUT1"]["data"], np.float32), A - B)
    assert seen["concurrent_ok"] is True
    assert seen["bytes"] == ["a", "bc", "é", ""]
    assert seen["missing_model_error"]["code"] == "NOT_FOUND"
    assert "no_such_model" in seen["missing_model_error"]["details"]
