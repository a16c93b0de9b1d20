"""A second v2 implementation: our client on KServe's model server, KServe's client on ours.

KServe needs protobuf 6 and registers the protobuf package ``inference`` too,
so it lives in its own environment (.venv-kserve, made by
tests/support/kserve_env.py, `make kserve-env`) and runs in subprocesses:
tests/support/kserve_model_server.py (KServe's ModelServer with three
models written against kserve.Model) and tests/support/kserve_client_check.py
(KServe's InferenceGRPCClient, unmodified) and tests/support/kserve_rest_check.py
(KServe's InferenceRESTClient with RESTConfig(protocol="v2"), unmodified, against
onnxserve's --http-port: health, readiness, metadata parsed with KServe's own v2
data models, every datatype as JSON and binary both ways, errors). The first use
builds the environment from the package index, which takes about a minute.
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
from onnxserve.protocol.codec import DATATYPES as PROTOCOL_DATATYPES
from onnxserve.protocol.codec import numpy_dtype
from tests.support import kserve_env
from tests.support.client_tensors import expected_bytes, identity_input
from tests.support.models import ONNX_TYPES
from tests.support.server import RunningServer, rest_served

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


# -- KServe's REST client, our server -------------------------------------------

REST_TOKEN = "kserve-rest-token-0123456789"
# KServe's REST client carries these (kserve.utils.numpy_codec); BF16 it has no
# numpy type for.
REST_DATATYPES = tuple(d for d in PROTOCOL_DATATYPES if d != "BF16")


def rest_sample(datatype: str) -> np.ndarray:
    """A [2, 4] tensor of the datatype with the values JSON finds hardest: its extremes
    (64-bit integers beyond a double's 53 bits), floats that are not round, strings
    that are empty, not ASCII or hold a NUL."""
    if datatype == "BYTES":
        words = ["alpha", "", "grüße", "z", "日本語", " ", "a\x00b", "x" * 300]
        return np.array(words, dtype=np.object_).reshape(2, 4)
    if datatype == "BOOL":
        return np.array([[True, False, True, True], [False, False, True, False]])
    dtype = numpy_dtype(datatype)
    if dtype.kind == "f":
        info = np.finfo(dtype)
        values = [0.1, -1 / 3, float(info.max), float(-info.max), float(info.tiny), 2.5, -0.0, 7]
        return np.array(values, dtype=dtype).reshape(2, 4)
    info = np.iinfo(dtype)
    values = [info.min, info.max, 0, 1, info.min + 1, info.max - 1, 42, info.max // 3]
    return np.array(values, dtype=dtype).reshape(2, 4)


# (datatype, binary in, binary out). FP16 goes as binary only: KServe's client
# refuses to put it in JSON (InferRequest.to_rest raises InvalidInput), as the server would.
REST_CASES = [
    (datatype, binary_in, binary_out)
    for datatype in REST_DATATYPES
    for binary_in in (False, True)
    for binary_out in (False, True)
    if binary_in or datatype != "FP16"
]


def _case_id(case: tuple[str, bool, bool]) -> str:
    datatype, binary_in, binary_out = case
    return f"{datatype}-{'binary' if binary_in else 'json'}-to-{'binary' if binary_out else 'json'}"


@pytest.fixture(scope="module")
def rest_server(
    protocol_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """onnxserve with REST on, explicit model control (to unload a model) and a token."""
    if not rest_served():
        pytest.skip("REST is served by the native front end (make install)")
    tokens = tmp_path_factory.mktemp("kserve_rest") / "tokens"
    tokens.write_text(f"{REST_TOKEN}\n")
    args = ["--model-control-mode", "explicit", "--load-model", "*"]
    args += ["--auth-token-file", str(tokens)]
    with RunningServer(protocol_repository, args, http=True, token=REST_TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def kserve_rest(kserve_python: Path, rest_server: RunningServer) -> dict[str, Any]:
    """What KServe's InferenceRESTClient saw of the server (tests/support/kserve_rest_check.py)."""
    cases = [
        {
            "model": f"identity_{datatype.lower()}",
            "datatype": datatype,
            "shape": [2, 4],
            "data": rest_sample(datatype).reshape(-1).tolist(),
            "binary_in": binary_in,
            "binary_out": binary_out,
        }
        for datatype, binary_in, binary_out in REST_CASES
    ]
    completed = subprocess.run(
        [str(kserve_python), "-I", str(SUPPORT / "kserve_rest_check.py"),
         f"http://{rest_server.http_address}", REST_TOKEN],
        input=json.dumps(cases), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-4000:]
    seen: dict[str, Any] = json.loads(completed.stdout)
    seen["tensors"] = dict(zip(REST_CASES, seen["tensors"], strict=True))
    return seen


def _value(result: dict[str, Any]) -> Any:
    """What a call returned; a call that raised fails the test with what it raised."""
    assert "error" not in result, result["error"]
    return result["value"]


def _status_error(result: dict[str, Any], status: int) -> str:
    """KServe's client raised httpx.HTTPStatusError with this status: its message."""
    assert "value" not in result, f"expected HTTP {status}, got an answer: {result}"
    error = result["error"]
    assert error["type"] == "httpx.HTTPStatusError" and error["status"] == status, error
    # KServe puts the server's {"error": ...} into the message when the answer is
    # application/json (InferenceRESTClient._construct_http_status_error).
    assert error["content_type"] == "application/json"
    assert json.loads(error["body"])["error"] in error["message"]
    return str(error["message"])


def test_kserve_rest_health_and_readiness(kserve_rest: dict[str, Any]) -> None:
    assert _value(kserve_rest["live"]) is True
    assert _value(kserve_rest["ready"]) is True
    assert _value(kserve_rest["model_ready"]) is True
    assert _value(kserve_rest["version_ready"]) is True
    # is_model_ready is "the answer was 2xx": 503 for a model not served, and
    # 401 without the token, both read as False.
    assert _value(kserve_rest["unknown_model_ready"]) is False
    assert _value(kserve_rest["model_ready_without_token"]) is False


def test_kserve_rest_metadata_parse_as_kserve_data_models(kserve_rest: dict[str, Any]) -> None:
    # KServe 0.21's REST client has no metadata calls: the documents are parsed with
    # the pydantic models KServe's own server answers with (v2_datamodels).
    documents = kserve_rest["documents"]
    for path, document in documents.items():
        assert document["status"] == 200 and document["valid"] is True, (path, document)
    server = documents["/v2"]["body"]
    assert server["name"] == "onnxserve" and "binary_tensor_data" in server["extensions"]
    model = documents["/v2/models/simple"]["body"]
    assert model["platform"] == "onnxruntime_onnx"
    assert [(t["name"], t["datatype"], t["shape"]) for t in model["inputs"]] == [
        ("INPUT0", "FP32", [-1, 16]),
        ("INPUT1", "FP32", [-1, 16]),
    ]
    assert documents["/v2/models/simple_config/versions/2"]["body"]["versions"] == ["1", "2"]
    assert documents["/v2/models/simple/ready"]["body"] == {"name": "simple", "ready": True}


@pytest.mark.parametrize("mode", ["json", "binary", "binary_data_output", "mixed"])
def test_kserve_rest_infer_fp32(kserve_rest: dict[str, Any], mode: str) -> None:
    """JSON inputs, binary inputs, binary outputs for the whole request
    (parameters.binary_data_output) and one input of each kind in one request."""
    answer = _value(kserve_rest["mixed"] if mode == "mixed" else kserve_rest["simple"][mode])
    assert answer["model_name"] == "simple"
    assert answer["id"] == ("mixed" if mode == "mixed" else f"rest-{mode}")
    binary_out = mode == "binary_data_output"
    assert answer["content_type"] == (
        "application/octet-stream" if binary_out else "application/json"
    )
    assert (answer["header_length"] is not None) == binary_out
    outputs = answer["outputs"]
    for name, expected in (("OUTPUT0", A + B), ("OUTPUT1", A - B)):
        assert outputs[name]["datatype"] == "FP32" and outputs[name]["shape"] == [2, 16]
        got = np.array(outputs[name]["data"], np.float32).reshape(2, 16)
        np.testing.assert_array_equal(got, expected)


def test_kserve_rest_json_answer_parses_as_kserve_inference_response(
    kserve_rest: dict[str, Any],
) -> None:
    document = _value(kserve_rest["response_documents"]["with_id"])
    assert document["valid"] is True, document
    assert document["body"]["id"] == "doc-1" and document["body"]["model_name"] == "identity_fp32"
    assert document["body"]["outputs"][0]["data"] == [1.0, 2.0, 3.0, 4.0]


def test_kserve_rest_answer_without_request_id_parses_as_kserve_inference_response(
    kserve_rest: dict[str, Any],
) -> None:
    """KServe's data model requires an id; the answer carries the request's, empty when
    it had none (KServe's own server invents a uuid; Triton's clients ignore it)."""
    document = _value(kserve_rest["response_documents"]["without_id"])
    assert document["valid"] is True, document
    assert document["body"]["id"] == ""


@pytest.mark.parametrize("case", REST_CASES, ids=_case_id)
def test_kserve_rest_datatypes(kserve_rest: dict[str, Any], case: tuple[str, bool, bool]) -> None:
    datatype, _, binary_out = case
    x = rest_sample(datatype)
    answer = _value(kserve_rest["tensors"][case])
    assert answer["model_name"] == f"identity_{datatype.lower()}"
    assert answer["content_type"] == (
        "application/octet-stream" if binary_out else "application/json"
    )
    output = answer["outputs"]["OUTPUT0"]
    assert output["datatype"] == datatype and output["shape"] == [2, 4]
    if datatype == "BYTES":  # KServe hands strings back as str, binary or not
        assert output["data"] == x.reshape(-1).tolist()
    else:
        y = np.array(output["data"], dtype=x.dtype).reshape(x.shape)
        assert y.tobytes() == x.tobytes()  # bit for bit: -0.0, the extremes, 2**63 - 1


def test_kserve_rest_concurrent_calls(kserve_rest: dict[str, Any]) -> None:
    for i, data in enumerate(kserve_rest["concurrent"]):
        assert data is not None, f"call {i} failed"
        np.testing.assert_array_equal(np.array(data, np.float32).reshape(2, 16), A + i + B)


def test_kserve_rest_errors(kserve_rest: dict[str, Any]) -> None:
    errors = kserve_rest["errors"]
    # An unknown model: KServe raises httpx.HTTPStatusError, 404, with the server's message
    # followed by "'404 Not Found' for url ...".
    for key in ("unknown_model", "unknown_model_json"):
        message = _status_error(errors[key], 404)
        assert "model 'no_such_model' is not served" in message
        assert "'404 Not Found' for url 'http://" in message
        assert "/v2/models/no_such_model/infer'" in message
    message = _status_error(errors["wrong_shape"], 400)
    assert "input 'INPUT0' has shape [1, 3]" in message and "'400 Bad Request'" in message
    message = _status_error(errors["no_token"], 401)
    assert "a bearer token is required" in message and "'401 Unauthorized'" in message
    # A model unloaded: not ready, its calls 503; loaded again, ready.
    assert errors["unload_status"] == 200 and errors["load_status"] == 200
    assert _value(errors["unloaded_ready"]) is False
    message = _status_error(errors["unloaded_infer"], 503)
    assert "model 'fixed' is not loaded" in message
    assert _value(errors["reloaded_ready"]) is True
