"""The Open Inference Protocol over HTTP/REST (``--http-port``), tested as users call it.

Triton's ``tritonclient.http`` unmodified (binary and JSON tensors, every datatype,
compression, metadata, config, statistics, repository index, load and unload,
errors), plain HTTP from the standard library for status codes and headers, curl
(HTTP/1.1 and h2c), a REST call and a gRPC call sharing one batch, TLS and tokens,
the limits and the drain. REST is the native front end's: without the built
module these tests skip.
"""

from __future__ import annotations

import gzip
import http.client
import json
import shutil
import signal
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.protocol import grpc_service_pb2_grpc as pb_grpc
from onnxserve.protocol.codec import DATATYPES as PROTOCOL_DATATYPES
from onnxserve.protocol.codec import numpy_dtype
from tests.support.batching_models import pair_model
from tests.support.certs import TestPKI, make_pki
from tests.support.infer_requests import infer_request, outputs_of
from tests.support.models import add_sub_model, build_protocol_repository, write_config
from tests.support.server import RunningServer, rest_served

pytestmark = pytest.mark.skipif(
    not rest_served(), reason="REST is served by the native front end (make install)"
)
http_client = pytest.importorskip("tritonclient.http")

TOKEN = "rest-token-0123456789"
X = np.ones((1, 16), dtype=np.float32)
# Every datatype but BF16, which numpy has no type of its own for (tritonclient's neither).
DATATYPES = tuple(d for d in PROTOCOL_DATATYPES if d != "BF16")


def sample(datatype: str) -> np.ndarray:
    """A [1, 4] tensor of the datatype with values that tell elements apart."""
    if datatype == "BYTES":
        return np.array([[b"alpha", b"", "grüße".encode(), b"z"]], dtype=np.object_)
    if datatype == "BOOL":
        return np.array([[True, False, True, True]])
    values = np.array([[0, 3, 100, 127]])
    if datatype.startswith("INT"):
        values = -values
    return values.astype(numpy_dtype(datatype))


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = build_protocol_repository(tmp_path_factory.mktemp("rest_repository"))
    # Batches leave at 2 rows, or after 5 s: two calls sent together share one.
    pair_model(root / "together" / "1" / "model.onnx")
    write_config(
        root / "together",
        "max_batch_size: 16\n"
        "dynamic_batching { preferred_batch_size: [2] max_queue_delay_microseconds: 5000000 }",
    )
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[RunningServer]:
    args = ["--model-control-mode", "explicit", "--load-model", "*"]
    with RunningServer(repository, args, http=True) as server:
        yield server


@pytest.fixture(scope="module")
def triton(server: RunningServer) -> Any:
    return http_client.InferenceServerClient(server.http_address)


def call(
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    method: str | None = None,
    context: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """An HTTP call from the standard library: (status, headers, body), errors included."""
    request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def simple_inputs(value: np.ndarray, binary: bool = True) -> list[Any]:
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        tensor = http_client.InferInput(name, list(value.shape), "FP32")
        tensor.set_data_from_numpy(value, binary_data=binary)
        inputs.append(tensor)
    return inputs


def test_health_metadata_config_and_index_as_tritonclient_reads_them(
    triton: Any, server: RunningServer
) -> None:
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("simple") and not triton.is_model_ready("nope")
    metadata = triton.get_server_metadata()
    assert metadata["name"] == "onnxserve"
    assert {"binary_tensor_data", "model_repository", "statistics"} <= set(metadata["extensions"])
    model = triton.get_model_metadata("simple_config", "2")
    assert model["name"] == "simple_config" and model["versions"] == ["1", "2"]
    assert model["inputs"][0] == {"name": "INPUT0", "datatype": "FP32", "shape": [-1, 16]}
    # The config is the gRPC one in protobuf's JSON form, 64-bit integers as numbers.
    config = triton.get_model_config("simple_config")
    with server.channel() as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        grpc_config = stub.ModelConfig(pb.ModelConfigRequest(name="simple_config")).config
    assert config["max_batch_size"] == grpc_config.max_batch_size == 8
    assert config["input"][0]["dims"] == list(grpc_config.input[0].dims) == [16]
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    assert config["instance_group"][0]["count"] == 2
    index = triton.get_model_repository_index()
    assert {"name": "simple", "version": "1", "state": "READY", "reason": ""} in index


@pytest.mark.parametrize("datatype", DATATYPES)
def test_every_datatype_in_binary_and_in_json(triton: Any, datatype: str) -> None:
    x = sample(datatype)
    for binary_in in (True, False):
        if datatype == "FP16" and not binary_in:
            continue  # JSON has no half floats: binary only (checked below)
        for binary_out in (True, False):
            tensor = http_client.InferInput("INPUT0", [1, 4], datatype)
            tensor.set_data_from_numpy(x, binary_data=binary_in)
            asked = http_client.InferRequestedOutput("OUTPUT0", binary_data=binary_out)
            result = triton.infer(f"identity_{datatype.lower()}", [tensor], outputs=[asked])
            y = result.as_numpy("OUTPUT0")
            if datatype == "BYTES" and not binary_out:  # JSON strings come back as str
                y = np.array([[v.encode() for v in y.ravel()]], dtype=np.object_)
            np.testing.assert_array_equal(y, x)
            assert y.dtype == x.dtype
            output = result.get_output("OUTPUT0")
            assert ("binary_data_size" in output.get("parameters", {})) == binary_out


def test_half_floats_travel_only_as_binary(triton: Any) -> None:
    tensor = http_client.InferInput("INPUT0", [1, 4], "FP16")
    tensor.set_data_from_numpy(np.ones((1, 4), np.float16), binary_data=False)
    with pytest.raises(http_client.InferenceServerException) as refused:
        triton.infer("identity_fp16", [tensor])
    assert refused.value.status() == "400"
    assert "FP16, which JSON cannot carry" in refused.value.message()
    # Asked for JSON, a half-float output comes back as numbers.
    tensor.set_data_from_numpy(np.full((1, 4), 0.5, np.float16), binary_data=True)
    asked = http_client.InferRequestedOutput("OUTPUT0", binary_data=False)
    result = triton.infer("identity_fp16", [tensor], outputs=[asked])
    assert result.get_output("OUTPUT0")["data"] == [0.5] * 4


def test_default_outputs_compression_ids_and_classification(triton: Any) -> None:
    a = np.arange(32, dtype=np.float32).reshape(2, 16)
    result = triton.infer("simple", simple_inputs(a), request_id="call-7")
    assert result.get_response()["id"] == "call-7"
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + a)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - a)
    for request, response in (("gzip", "deflate"), ("deflate", "gzip")):
        result = triton.infer(
            "simple",
            simple_inputs(a),
            request_compression_algorithm=request,
            response_compression_algorithm=response,
        )
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + a)
    top = http_client.InferRequestedOutput("OUTPUT0", class_count=2)
    labels = triton.infer("simple", simple_inputs(a), outputs=[top]).as_numpy("OUTPUT0")
    assert labels.shape == (2, 2) and labels[1, 0] == b"62.000000:15"


def test_statistics_count_rest_calls(triton: Any) -> None:
    before = triton.get_inference_statistics("simple")["model_stats"][0]
    triton.infer("simple", simple_inputs(X))
    after = triton.get_inference_statistics("simple", "1")["model_stats"][0]
    assert after["inference_count"] == before["inference_count"] + 1
    assert after["inference_stats"]["success"]["count"] == (
        before["inference_stats"]["success"]["count"] + 1
    )
    every = triton.get_inference_statistics()["model_stats"]
    assert {entry["name"] for entry in every} >= {"simple", "identity_fp32"}


def test_no_access_log_below_debug(server: RunningServer) -> None:
    assert "onnxserve.server.access" not in server.log()


def test_load_and_unload_follow_the_grpc_rules(triton: Any) -> None:
    triton.unload_model("identity_int8")
    assert not triton.is_model_ready("identity_int8")
    triton.load_model("identity_int8")
    assert triton.is_model_ready("identity_int8")
    # A config from the network is refused, as over gRPC.
    with pytest.raises(http_client.InferenceServerException) as refused:
        triton.load_model("identity_int8", config=json.dumps({"max_batch_size": 1}))
    assert refused.value.status() == "400"
    with pytest.raises(http_client.InferenceServerException) as missing:
        triton.load_model("../etc")
    assert missing.value.status() in ("400", "404")


def test_errors_say_whose_fault_with_the_grpc_messages(triton: Any, server: RunningServer) -> None:
    base = f"http://{server.http_address}"
    with pytest.raises(http_client.InferenceServerException) as unknown:
        triton.infer("nope", simple_inputs(X))
    assert unknown.value.status() == "404" and "model 'nope' is not served" in (
        unknown.value.message()
    )
    short = http_client.InferInput("INPUT0", [1, 15], "FP32")
    short.set_data_from_numpy(np.ones((1, 15), np.float32))
    with pytest.raises(http_client.InferenceServerException) as bad:
        triton.infer("simple", [short, simple_inputs(X)[1]])
    with server.channel() as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = infer_request("simple", {"INPUT0": np.ones((1, 15), np.float32), "INPUT1": X})
        with pytest.raises(grpc.RpcError) as grpc_bad:
            stub.ModelInfer(request, timeout=30)
    assert bad.value.status() == "400" and bad.value.message() == grpc_bad.value.details()
    for url, body, method, status, words in (
        (f"{base}/v2/models/simple/infer", b"{not json", "POST", 400, "not valid JSON"),
        (f"{base}/v2/models/simple/infer", b'{"inputs": 3}', "POST", 400, "'inputs'"),
        (
            f"{base}/v2/models/simple/infer",
            b'{"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1,2],"data":[1]}]}',
            "POST",
            400,
            "holds 2 elements, but its data holds 1",
        ),
        (f"{base}/v2/models/simple/infer", None, "GET", 405, "use POST"),
        (f"{base}/v2/nothing/here", None, "GET", 404, "not a route"),
        (f"{base}/v2/systemsharedmemory/status", None, "GET", 501, "shared-memory"),
    ):
        code, headers, answer = call(url, body, method=method)
        assert code == status, (url, answer)
        assert headers["content-type"] == "application/json"
        assert words in json.loads(answer)["error"], answer


def test_json_bodies_nested_and_flat_with_curl_over_http1_and_h2c(server: RunningServer) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("no curl on this machine")
    body = {
        "inputs": [
            {"name": "INPUT0", "datatype": "FP32", "shape": [2, 16], "data": [[1.5] * 16] * 2},
            {"name": "INPUT1", "datatype": "FP32", "shape": [2, 16], "data": [0.5] * 32},
        ],
        "outputs": [{"name": "OUTPUT1"}],
    }
    url = f"http://{server.http_address}/v2/models/simple/infer"
    for version in ("--http1.1", "--http2-prior-knowledge"):
        done = subprocess.run(
            [curl, "-sS", "--fail-with-body", version, "-w", "\n%{http_version}", url,
             "-H", "Content-Type: application/json", "-d", json.dumps(body)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr + done.stdout
        answer, http_version = done.stdout.rsplit("\n", 1)
        assert http_version == ("1.1" if version == "--http1.1" else "2")
        result = json.loads(answer)
        assert result["model_name"] == "simple" and result["model_version"] == "1"
        [output] = result["outputs"]
        expected = {"name": "OUTPUT1", "datatype": "FP32", "shape": [2, 16], "data": [1.0] * 32}
        assert output == expected


def test_binary_bodies_by_hand_as_the_extension_defines_them(server: RunningServer) -> None:
    """Triton's binary tensor data: the JSON part's length in a header, raw tensors after it."""
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": n,
                    "datatype": "FP32",
                    "shape": [1, 16],
                    "parameters": {"binary_data_size": a.nbytes},
                }
                for n in ("INPUT0", "INPUT1")
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    body = header + a.tobytes() + a.tobytes()
    headers = {"Inference-Header-Content-Length": str(len(header)), "Accept-Encoding": "gzip"}
    code, answer_headers, answer = call(
        f"http://{server.http_address}/v2/models/simple/infer", body, headers
    )
    assert code == 200, answer
    assert answer_headers["content-encoding"] == "gzip"
    answer = gzip.decompress(answer)
    length = int(answer_headers["inference-header-content-length"])
    result = json.loads(answer[:length])
    sizes = [o["parameters"]["binary_data_size"] for o in result["outputs"]]
    assert sizes == [64, 64] and len(answer) == length + 128
    np.testing.assert_array_equal(np.frombuffer(answer[length : length + 64], np.float32), 2 * a[0])
    # Binary data no input claims is an error, not silently dropped.
    code, _, answer = call(
        f"http://{server.http_address}/v2/models/simple/infer",
        body + b"\0\0\0\0",
        {"Inference-Header-Content-Length": str(len(header))},
    )
    assert code == 400 and "4 bytes of binary data" in json.loads(answer)["error"]


@pytest.mark.parametrize("typed", [False, True], ids=["raw", "typed"])
def test_a_rest_call_and_a_grpc_call_share_one_batch(
    server: RunningServer, triton: Any, typed: bool
) -> None:
    """REST calls join gRPC's batches, whether the gRPC call sends raw or typed contents
    (Rust reads both; a typed call is answered typed, as Python answers it)."""
    pair = np.ones((1, 3), dtype=np.float32)
    before = triton.get_inference_statistics("together")["model_stats"][0]

    def by_rest() -> np.ndarray:
        inputs = []
        for name in ("INPUT0", "INPUT1"):
            tensor = http_client.InferInput(name, [1, 3], "FP32")
            tensor.set_data_from_numpy(pair)
            inputs.append(tensor)
        client = http_client.InferenceServerClient(server.http_address)
        answer: np.ndarray = client.infer("together", inputs).as_numpy("OUTPUT0")
        return answer

    def by_grpc() -> np.ndarray:
        with server.channel() as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            request = infer_request("together", {"INPUT0": pair, "INPUT1": pair})
            if typed:
                for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=True):
                    tensor.contents.fp32_contents.extend(np.frombuffer(raw, np.float32).tolist())
                del request.raw_input_contents[:]
            response = stub.ModelInfer(request, timeout=30)
            assert bool(response.raw_output_contents) != typed
            return outputs_of(response)["OUTPUT0"]

    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        answers = [f.result(timeout=30) for f in (pool.submit(by_rest), pool.submit(by_grpc))]
    # Alone, either would have waited the full 5 s for company.
    assert time.monotonic() - started < 4.5
    for answer in answers:
        np.testing.assert_array_equal(answer, pair + pair)
    stats = triton.get_inference_statistics("together")["model_stats"][0]
    assert stats["inference_count"] - before["inference_count"] == 2
    assert stats["execution_count"] - before["execution_count"] == 1
    assert [b["batch_size"] for b in stats["batch_stats"]] == [2]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_https_with_tokens_and_mutual_tls(pki: TestPKI, tmp_path: Path) -> None:
    add_sub_model(tmp_path / "models" / "simple" / "1" / "model.onnx")
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    tls = pki.server_flags
    credentials = pki.channel_credentials()
    server = RunningServer(
        tmp_path / "models", [*tls, "--auth-token-file", str(tokens), "--log-level", "DEBUG"],
        http=True,
        credentials=credentials, token=TOKEN, server_name="localhost",
    )  # fmt: skip
    context = ssl.create_default_context(cafile=str(pki.ca))
    base = f"https://localhost:{server.http_port}"
    with server:
        # Health needs no token (probes); everything else does, as on gRPC.
        assert call(f"{base}/v2/health/ready", context=context)[0] == 200
        code, _, answer = call(f"{base}/v2", context=context)
        assert code == 401 and "a bearer token is required" in json.loads(answer)["error"]
        code, _, answer = call(f"{base}/v2", headers={"Authorization": "Bearer x"}, context=context)
        assert code == 401 and "the token is not valid" in json.loads(answer)["error"]
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert call(f"{base}/v2", headers=bearer, context=context)[0] == 200
        triton = http_client.InferenceServerClient(
            f"localhost:{server.http_port}", ssl=True,
            ssl_context_factory=lambda: ssl.create_default_context(cafile=str(pki.ca)),
        )  # fmt: skip
        result = triton.infer("simple", simple_inputs(X), headers=bearer)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), X + X)
        # Plain HTTP to the https port gets nowhere, and no token reached the log.
        with pytest.raises((OSError, http.client.HTTPException)):  # a TLS alert, not HTTP
            urllib.request.urlopen(f"http://localhost:{server.http_port}/v2/health/live", timeout=5)
        # At DEBUG, one access line per call: method, path, status, time; never a token.
        time.sleep(0.5)
        log = server.log()
        assert TOKEN not in log
        assert " onnxserve.server.access: GET /v2 401 " in log
        assert " onnxserve.server.access: POST /v2/models/simple/infer 200 " in log
    mutual = RunningServer(
        tmp_path / "models", [*tls, "--tls-client-ca", str(pki.ca)], http=True,
        credentials=pki.channel_credentials(client=True),
        server_name="localhost",
    )  # fmt: skip
    with mutual:
        url = f"https://localhost:{mutual.http_port}/v2/health/ready"
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            urllib.request.urlopen(url, timeout=5, context=context)
        context.load_cert_chain(str(pki.client.cert), str(pki.client.key))
        assert call(url, context=context)[0] == 200


def test_limits_the_queue_and_the_drain(tmp_path: Path) -> None:
    root = tmp_path / "models"
    pair_model(root / "slow" / "1" / "model.onnx")
    # One request may wait, up to 3 s, for company that never comes.
    write_config(
        root / "slow",
        "max_batch_size: 16\n"
        "dynamic_batching { max_queue_delay_microseconds: 3000000 "
        "default_queue_policy { max_queue_size: 1 } }",
    )
    limits = ["--max-message-bytes", "4096", "--grace-period-s", "10"]
    server = RunningServer(root, limits, http=True)
    base = f"http://{server.http_address}"
    pair = np.ones((1, 3), dtype=np.float32)
    body = json.dumps(
        {
            "inputs": [
                {"name": n, "datatype": "FP32", "shape": [1, 3], "data": pair.ravel().tolist()}
                for n in ("INPUT0", "INPUT1")
            ]
        }
    ).encode()
    url = f"{base}/v2/models/slow/infer"
    with server:
        big = b'{"inputs": [], "pad": "' + b"x" * 5000 + b'"}'
        code, _, answer = call(url, big)
        assert code == 413
        assert f"larger than max ({len(big)} vs. 4096)" in json.loads(answer)["error"]
        squeezed = gzip.compress(big)
        code, _, answer = call(url, squeezed, {"Content-Encoding": "gzip"})
        assert code == 413, answer  # the limit holds after decompression too
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(call, url, body)
            time.sleep(0.5)
            code, _, answer = call(url, body)  # the queue holds one already
            assert code == 429 and "queue" in json.loads(answer)["error"], answer
            assert server.process is not None
            server.process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            code, _, answer = call(url, body)
            assert code == 503 and "shutting down" in json.loads(answer)["error"], answer
            assert call(f"{base}/v2/health/ready")[0] == 503
            status, _, answer = first.result(timeout=30)
            assert status == 200, answer  # accepted before the drain: answered
        assert server.process.wait(timeout=30) == 0


def test_the_call_limit_refuses_at_once_and_spares_the_probes(tmp_path: Path) -> None:
    root = tmp_path / "models"
    pair_model(root / "slow" / "1" / "model.onnx")
    # A lone request waits 3 s for company: it holds the one place meanwhile.
    write_config(
        root / "slow",
        "max_batch_size: 16\ndynamic_batching { max_queue_delay_microseconds: 3000000 }",
    )
    server = RunningServer(root, ["--max-concurrent-rpcs", "1"], http=True)
    body = json.dumps(
        {
            "inputs": [
                {"name": n, "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}
                for n in ("INPUT0", "INPUT1")
            ]
        }
    ).encode()
    base = f"http://{server.http_address}"
    with server, ThreadPoolExecutor(1) as pool:
        first = pool.submit(call, f"{base}/v2/models/slow/infer", body)
        time.sleep(0.5)
        code, _, answer = call(f"{base}/v2/models/slow/infer", body)
        assert code == 429 and "--max-concurrent-rpcs" in json.loads(answer)["error"], answer
        assert call(f"{base}/v2/health/ready")[0] == 200  # probes are not counted
        assert first.result(timeout=30)[0] == 200


def test_bytes_that_are_not_text_are_refused_as_over_grpc(server: RunningServer) -> None:
    """BYTES travel as JSON strings or as binary data; either way an ONNX string tensor
    holds UTF-8 text, and an element that is not is refused with gRPC's message."""
    four = b"".join(len(p).to_bytes(4, "little") + p for p in (b"\xff\x00", b"a", b"", b"z"))
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT0",
                    "datatype": "BYTES",
                    "shape": [1, 4],
                    "parameters": {"binary_data_size": len(four)},
                }
            ]
        }
    ).encode()
    code, _, answer = call(
        f"http://{server.http_address}/v2/models/identity_bytes/infer",
        header + four,
        {"Inference-Header-Content-Length": str(len(header))},
    )
    assert code == 400
    assert json.loads(answer)["error"] == (
        "input 'INPUT0' element 0 is not valid UTF-8; ONNX string tensors hold UTF-8 text"
    )


def test_a_stalled_http1_client_holds_no_one_up(server: RunningServer) -> None:
    """A client that opens a connection and sends half a request line waits alone."""
    import socket

    host, port = server.http_address.split(":")
    with socket.create_connection((host, int(port)), timeout=5) as stalled:
        stalled.sendall(b"POST /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\n")
        done = threading.Event()

        def others() -> None:
            for _ in range(5):
                assert call(f"http://{server.http_address}/v2/health/live")[0] == 200
            done.set()

        worker = threading.Thread(target=others)
        worker.start()
        worker.join(timeout=20)
        assert done.is_set()
