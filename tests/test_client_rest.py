"""The client SDK over HTTP/REST (``http://`` and ``https://`` URLs) against a real server.

One ``onnxserve serve`` process answers gRPC and REST on the protocol test
repository; the same calls through a REST client and a gRPC client must give
the same answers and the same errors (class, code and the server's message).
TLS, mutual TLS and tokens use the test PKI. REST is the native front end's:
without the built module these tests skip.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from onnxserve.client import (
    AsyncClient,
    AuthenticationError,
    Client,
    DeadlineExceededError,
    InferRequest,
    InvalidInputError,
    ModelNotFoundError,
    ResourceExhaustedError,
    RetryPolicy,
    ServerUnavailableError,
    TLSConfig,
)
from onnxserve.client.connection import plan_connection
from onnxserve.client.options import url_protocol
from onnxserve.client.rest import code_for_status, error_for_status
from tests.support.batching_models import pair_model
from tests.support.certs import TestPKI, make_pki
from tests.support.client_tensors import expected_bytes, identity_input
from tests.support.models import ONNX_TYPES, add_sub_model, build_protocol_repository, write_config
from tests.support.server import RunningServer, free_port, rest_served

needs_rest = pytest.mark.skipif(
    not rest_served(), reason="REST is served by the native front end (make install)"
)

TOKEN = "rest-client-token-0123456789"
A = np.arange(32, dtype=np.float32).reshape(2, 16)
B = np.linspace(-3, 3, 32, dtype=np.float32).reshape(2, 16)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    if not rest_served():
        pytest.skip("REST is served by the native front end (make install)")
    root = build_protocol_repository(tmp_path_factory.mktemp("rest_client_repository"))
    args = ["--model-control-mode", "explicit", "--load-model", "*"]
    with RunningServer(root, args, http=True) as server:
        yield server


@pytest.fixture(scope="module")
def rest(server: RunningServer) -> Iterator[Client]:
    with Client(f"http://{server.http_address}", timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def grpc_client(server: RunningServer) -> Iterator[Client]:
    with Client(server.address, timeout=30) as client:
        yield client


# -- without a server -------------------------------------------------------------


def test_the_url_scheme_chooses_the_protocol() -> None:
    assert url_protocol("http://h:8000") == url_protocol("HTTPS://h:8443") == "http"
    assert url_protocol("grpc://h:1") == url_protocol("grpcs://h:1") == "grpc"
    assert url_protocol("h:1") is None
    assert plan_connection("http://h:8000").protocol == "http"
    assert plan_connection("h:8000", protocol="http").protocol == "http"
    assert plan_connection("h:8001").protocol == "grpc"
    secure = plan_connection("https://h:8443")
    assert secure.protocol == "http" and secure.tls and secure.ssl_context is not None
    assert repr(Client("https://h:8443")) == "Client(https://h:8443, channels=1)"
    with pytest.raises(ValueError, match="mix gRPC"):
        plan_connection(["http://a:1", "grpc://b:1"])
    with pytest.raises(ValueError, match="the URL speaks REST"):
        plan_connection("http://a:1", protocol="grpc")
    with pytest.raises(ValueError, match="the URL says http://"):
        plan_connection("http://a:1", tls=True)
    with pytest.raises(ValueError, match="plaintext"):
        plan_connection("http://a:1", token="t")
    with pytest.raises(ValueError, match="keepalive"):
        Client("http://a:1", keepalive=__import__("onnxserve.client").client.KeepaliveOptions())
    with pytest.raises(ValueError, match="unsupported URL scheme 'ftp'"):
        plan_connection("ftp://a:1")


def test_http_statuses_map_to_the_grpc_codes() -> None:
    assert code_for_status(400) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_for_status(404) == grpc.StatusCode.NOT_FOUND
    assert code_for_status(401) == grpc.StatusCode.UNAUTHENTICATED
    assert code_for_status(413) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert code_for_status(429) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert code_for_status(503) == grpc.StatusCode.UNAVAILABLE
    assert code_for_status(501) == grpc.StatusCode.UNIMPLEMENTED
    error = error_for_status(404, b'{"error": "model \'x\' is not served"}')
    assert isinstance(error, ModelNotFoundError) and error.message == "model 'x' is not served"
    assert error_for_status(502, b"<html>bad gateway</html>").message.startswith("HTTP 502: <html>")


# -- every call, as gRPC answers it -------------------------------------------------


@needs_rest
def test_health_metadata_config_statistics_and_index_match_grpc(
    rest: Client, grpc_client: Client
) -> None:
    assert rest.protocol == "http" and grpc_client.protocol == "grpc"
    assert rest.is_live() and rest.is_ready()
    assert rest.is_model_ready("simple") and rest.is_model_ready("simple_config", version=2)
    assert not rest.is_model_ready("no_such_model") and not rest.is_model_ready("simple", 9)
    rest.wait_until_ready("simple", timeout=5)
    assert rest.server_metadata().name == grpc_client.server_metadata().name == "onnxserve"
    assert "binary_tensor_data" in rest.server_metadata().extensions
    for name, version in (("simple", None), ("simple_config", 2), ("identity_bytes", None)):
        assert rest.model_metadata(name, version) == grpc_client.model_metadata(name, version)
        assert rest.model_config(name, version) == grpc_client.model_config(name, version)
    assert rest.model_config("simple_config").instance_group[0].count == 2
    assert rest.repository_index() == grpc_client.repository_index()
    assert rest.repository_index(ready_only=True) == grpc_client.repository_index(ready_only=True)
    (before,) = rest.statistics("simple")
    for _ in range(3):
        rest.infer("simple", {"INPUT0": A, "INPUT1": B})
    (after,) = rest.statistics("simple", 1)
    assert after.inference_count - before.inference_count == 6
    assert after.inference_stats.success.count - before.inference_stats.success.count == 3
    assert [s.name for s in rest.statistics()] == [s.name for s in grpc_client.statistics()]


@needs_rest
def test_load_and_unload(rest: Client) -> None:
    rest.unload_model("identity_int8")
    assert not rest.is_model_ready("identity_int8")
    rest.load_model("identity_int8")
    assert rest.is_model_ready("identity_int8")
    with pytest.raises(ModelNotFoundError) as missing:
        rest.load_model("no_such_model")
    assert "no_such_model" in missing.value.message


# -- inference ----------------------------------------------------------------------


@needs_rest
def test_two_inputs_with_outputs_version_id_and_parameters(rest: Client) -> None:
    out = rest.infer("simple", {"INPUT0": A, "INPUT1": B})
    assert set(out) == {"OUTPUT0", "OUTPUT1"}
    np.testing.assert_array_equal(out["OUTPUT0"], A + B)
    np.testing.assert_array_equal(out["OUTPUT1"], A - B)
    assert out["OUTPUT0"].dtype == np.float32
    assert not out["OUTPUT0"].flags.writeable  # a view of the answer's bytes
    out = rest.infer(
        "simple_config",
        {"INPUT0": A, "INPUT1": B},
        outputs=["OUTPUT1"],
        version=2,
        request_id="abc",
        parameters={"priority": 1, "note": "hello", "flag": True},
    )
    assert list(out) == ["OUTPUT1"]
    np.testing.assert_array_equal(out["OUTPUT1"], A - B)


@needs_rest
@pytest.mark.parametrize("datatype", list(ONNX_TYPES))
def test_every_datatype_round_trips_as_binary(rest: Client, datatype: str) -> None:
    x = identity_input(datatype)
    (out,) = rest.infer(f"identity_{datatype.lower()}", {"INPUT0": x}).values()
    assert out.shape == x.shape
    if datatype == "BYTES":
        assert out.dtype == object
        assert out.reshape(-1).tolist() == expected_bytes(x)
    else:
        assert out.dtype == x.dtype
        assert out.tobytes() == x.tobytes()


@needs_rest
def test_strings_casts_and_split_batches(rest: Client) -> None:
    x = np.array([["a", "bb", "ccc", "é"]])  # dtype <U3: BYTES
    assert rest.infer("identity_bytes", {"INPUT0": x})["OUTPUT0"].tolist() == [
        [b"a", b"bb", b"ccc", "é".encode()]
    ]
    # Lists and float64 take the declared FP32; a lossy cast is refused before sending.
    out = rest.infer("simple", {"INPUT0": A.astype(np.float64).tolist(), "INPUT1": B})
    np.testing.assert_array_equal(out["OUTPUT0"], A + B)
    with pytest.raises(InvalidInputError, match="would become 1"):
        rest.infer("identity_int32", {"INPUT0": [[1, 1.7, 2, 3]]})
    # 20 rows for max_batch_size 8: three requests, one answer.
    rows = np.arange(20 * 16, dtype=np.float32).reshape(20, 16)
    out = rest.infer("simple_config", {"INPUT0": rows, "INPUT1": rows}, split_batches=True)
    np.testing.assert_array_equal(out["OUTPUT0"], rows + rows)


@needs_rest
def test_stream_infer_sends_each_request_and_reports_errors_in_place(rest: Client) -> None:
    def requests() -> Iterator[InferRequest]:
        for i in range(6):
            x = np.full((1, 16), i, np.float32)
            model = "no_such_model" if i == 3 else "simple"
            yield InferRequest(model, {"INPUT0": x, "INPUT1": x}, request_id=str(i))

    results = list(rest.stream_infer(requests()))
    assert [r.id for r in results] == [str(i) for i in range(6)]
    assert isinstance(results[3].error, ModelNotFoundError)
    for i, result in enumerate(results):
        if i != 3:
            assert result.model_name == "simple" and result.model_version == "1"
            out = result.raise_for_error().outputs["OUTPUT0"]
            np.testing.assert_array_equal(out, np.full((1, 16), 2 * i))


# -- errors -------------------------------------------------------------------------


@needs_rest
@pytest.mark.parametrize(
    ("model", "inputs", "version", "error"),
    [
        ("no_such_model", {"INPUT0": A}, None, ModelNotFoundError),
        ("simple", {"INPUT0": A, "INPUT1": B}, 9, ModelNotFoundError),
        ("simple", {"INPUT0": A.astype(np.float64), "INPUT1": B}, None, InvalidInputError),
        ("simple", {"INPUT0": A}, None, InvalidInputError),
        ("simple", {"INPUT0": A[:, :8], "INPUT1": B[:, :8]}, None, InvalidInputError),
        ("simple", {"INPUT0": A, "INPUT1": B, "EXTRA": A}, None, InvalidInputError),
        ("identity_bytes", {"INPUT0": np.array([[b"\xff", b"a", b"", b"z"]])}, None, None),
    ],
)
def test_errors_have_the_grpc_class_code_and_message(
    rest: Client,
    grpc_client: Client,
    model: str,
    inputs: dict[str, np.ndarray],
    version: int | None,
    error: type[Exception] | None,
) -> None:
    with pytest.raises(InvalidInputError if error is None else error) as over_rest:
        rest.infer(model, inputs, version=version, cast=False)
    with pytest.raises(type(over_rest.value)) as over_grpc:
        grpc_client.infer(model, inputs, version=version, cast=False)
    assert over_rest.value.code == over_grpc.value.code
    assert over_rest.value.message == over_grpc.value.message


@needs_rest
def test_deadlines_sizes_and_an_absent_server(server: RunningServer) -> None:
    big = np.ones((65536, 16), np.float32)
    with (
        Client(f"http://{server.http_address}") as client,
        pytest.raises(DeadlineExceededError),
    ):
        client.infer("simple", {"INPUT0": big, "INPUT1": big}, timeout=1e-4)
        assert client.is_live()  # the client recovers: a fresh connection
    x = np.ones((64, 16), np.float32)
    with (
        Client(f"http://{server.http_address}", max_message_bytes=2048) as small,
        pytest.raises(ResourceExhaustedError, match="larger than max"),
    ):
        small.infer("simple", {"INPUT0": x, "INPUT1": x})
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.1, multiplier=2, jitter=0)
    with Client(f"http://127.0.0.1:{free_port()}", retry=policy, timeout=10) as nobody:
        started = time.monotonic()
        with pytest.raises(ServerUnavailableError, match="cannot reach"):
            nobody.is_live()
        assert time.monotonic() - started >= 0.1 + 0.2  # retried, as over gRPC
        with pytest.raises(ServerUnavailableError):
            nobody.infer("simple", {"INPUT0": A, "INPUT1": B}, cast=False)


@needs_rest
def test_a_full_queue_is_resource_exhausted_and_a_draining_server_unavailable(
    tmp_path: Path,
) -> None:
    root = tmp_path / "models"
    pair_model(root / "slow" / "1" / "model.onnx")
    write_config(
        root / "slow",
        "max_batch_size: 16\n"
        "dynamic_batching { max_queue_delay_microseconds: 3000000 "
        "default_queue_policy { max_queue_size: 1 } }",
    )
    pair = {"INPUT0": np.ones((1, 3), np.float32), "INPUT1": np.ones((1, 3), np.float32)}
    with (
        RunningServer(root, ["--grace-period-s", "10"], http=True) as server,
        Client(f"http://{server.http_address}", timeout=30) as client,
        ThreadPoolExecutor(1) as pool,
    ):
        client.model_metadata("slow")  # declared types known: no lookups below
        first = pool.submit(client.infer, "slow", pair)
        time.sleep(0.5)
        with pytest.raises(ResourceExhaustedError, match="queue"):
            client.infer("slow", pair)
        assert server.process is not None
        server.process.terminate()
        time.sleep(0.5)
        with pytest.raises(ServerUnavailableError, match="shutting down"):
            client.infer("slow", pair)
        assert not client.is_ready()
        np.testing.assert_array_equal(first.result(timeout=30)["OUTPUT0"], np.full((1, 3), 2.0))


# -- connections --------------------------------------------------------------------


def _connections_to(port: int) -> set[str]:
    remotes = {f"0100007F:{port:04X}", f"0000000000000000FFFF00000100007F:{port:04X}"}
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[2] in remotes and fields[3] == "01":
                found.add(fields[9])
    return found


@needs_rest
def test_connections_are_kept_alive_and_shared_by_threads(server: RunningServer) -> None:
    before = _connections_to(server.http_port)
    with Client(f"http://{server.http_address}") as client:
        for _ in range(20):
            client.infer("simple", {"INPUT0": A, "INPUT1": B})
        assert len(_connections_to(server.http_port) - before) == 1  # one, reused

        def call(i: int) -> bool:
            x = np.full((1, 16), i, np.float32)
            out = client.infer("simple", {"INPUT0": x, "INPUT1": B[:1]})
            return bool(np.array_equal(out["OUTPUT1"], x - B[:1]))

        with ThreadPoolExecutor(max_workers=8) as pool:
            assert all(pool.map(call, range(200)))
        assert len(_connections_to(server.http_port) - before) <= 8
    with Client(f"http://{server.http_address}", compression=grpc.Compression.Gzip) as gz:
        np.testing.assert_array_equal(
            gz.infer("simple", {"INPUT0": A, "INPUT1": B})["OUTPUT0"], A + B
        )


@needs_rest
def test_async_client_over_http(server: RunningServer) -> None:
    async def main() -> None:
        async with AsyncClient(f"http://{server.http_address}") as aclient:
            assert await aclient.is_live() and await aclient.is_ready()
            assert not await aclient.is_model_ready("no_such_model")
            assert (await aclient.model_config("simple_config")).max_batch_size == 8
            assert "fixed" in {m.name for m in await aclient.repository_index()}
            for datatype in ("BYTES", "BF16", "FP16", "BOOL", "UINT64"):
                x = identity_input(datatype)
                out = (await aclient.infer(f"identity_{datatype.lower()}", {"INPUT0": x}))[
                    "OUTPUT0"
                ]
                if datatype == "BYTES":
                    assert out.reshape(-1).tolist() == expected_bytes(x)
                else:
                    assert out.dtype == x.dtype and out.tobytes() == x.tobytes()
            with pytest.raises(ModelNotFoundError):
                await aclient.infer("no_such_model", {"INPUT0": A})
            with pytest.raises(InvalidInputError):
                await aclient.infer("simple", {"INPUT0": A})
            answers = await asyncio.gather(
                *(
                    aclient.infer(
                        "simple", {"INPUT0": np.full((1, 16), i, np.float32), "INPUT1": B[:1]}
                    )
                    for i in range(200)
                )
            )
            for i, out in enumerate(answers):
                np.testing.assert_array_equal(
                    out["OUTPUT0"], np.full((1, 16), i, np.float32) + B[:1]
                )
            results = [
                r async for r in aclient.stream_infer([InferRequest("simple", {"INPUT0": A})])
            ]
            assert isinstance(results[0].error, InvalidInputError)

    asyncio.run(main())


# -- TLS and tokens -----------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return make_pki(tmp_path_factory.mktemp("rest_client_pki"))


@needs_rest
def test_https_with_a_token(pki: TestPKI, tmp_path: Path) -> None:
    add_sub_model(tmp_path / "models" / "simple" / "1" / "model.onnx")
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    tls = pki.server_flags
    server = RunningServer(
        tmp_path / "models", [*tls, "--auth-token-file", str(tokens)], http=True,
        credentials=pki.channel_credentials(),
        token=TOKEN, server_name="localhost",
    )  # fmt: skip
    trusted = TLSConfig(root_certificates=pki.ca)
    url = f"https://localhost:{server.http_port}"
    with server:
        with Client(url, tls=trusted, token=TOKEN) as client:
            assert client.tls
            out = client.infer("simple", {"INPUT0": A, "INPUT1": B})
            np.testing.assert_array_equal(out["OUTPUT0"], A + B)
        # The certificate names localhost: dialling 127.0.0.1 checks it against server_name.
        named = TLSConfig(root_certificates=pki.ca.read_bytes(), server_name="localhost")
        with Client(f"https://127.0.0.1:{server.http_port}", tls=named, token=TOKEN) as client:
            assert client.model_metadata("simple").name == "simple"
        wrong = TLSConfig(root_certificates=pki.ca, server_name="elsewhere.example")
        with (
            Client(url, tls=wrong, token=TOKEN, retry=RetryPolicy(max_attempts=1)) as client,
            pytest.raises(ServerUnavailableError, match="TLS"),
        ):
            client.model_metadata("simple")
        with Client(url, tls=trusted) as client:
            assert client.is_live()  # health needs no token
            with pytest.raises(AuthenticationError, match="a bearer token is required"):
                client.model_metadata("simple")
        with (
            Client(url, tls=trusted, token="not-it") as client,
            pytest.raises(AuthenticationError, match="the token is not valid"),
        ):
            client.infer("simple", {"INPUT0": A, "INPUT1": B})
        # A server that is not trusted is refused before any request is sent.
        with (
            Client(url, tls=True, token=TOKEN, retry=RetryPolicy(max_attempts=1)) as client,
            pytest.raises(ServerUnavailableError, match="certificate"),
        ):
            client.is_live()
        assert TOKEN not in server.log()


@needs_rest
def test_mutual_tls(pki: TestPKI, tmp_path: Path) -> None:
    add_sub_model(tmp_path / "models" / "simple" / "1" / "model.onnx")
    tls = pki.server_flags
    server = RunningServer(
        tmp_path / "models", [*tls, "--tls-client-ca", str(pki.ca)], http=True,
        credentials=pki.channel_credentials(client=True),
        server_name="localhost",
    )  # fmt: skip
    url = f"https://localhost:{server.http_port}"
    with server:
        mutual = TLSConfig(
            root_certificates=pki.ca,
            certificate_chain=pki.client.cert.read_bytes(),  # bytes and paths alike
            private_key=pki.client.key,
        )
        with Client(url, tls=mutual) as client:
            np.testing.assert_array_equal(
                client.infer("simple", {"INPUT0": A, "INPUT1": B})["OUTPUT1"], A - B
            )
        policy = RetryPolicy(max_attempts=1)
        for refused in (
            TLSConfig(root_certificates=pki.ca),
            TLSConfig(
                root_certificates=pki.ca,
                certificate_chain=pki.stranger.cert,
                private_key=pki.stranger.key,
            ),
        ):
            with (
                Client(url, tls=refused, retry=policy) as client,
                pytest.raises(ServerUnavailableError),
            ):
                client.is_live()


def test_threads_do_not_share_a_connection_at_once() -> None:
    """The pool hands each call its own connection: no interleaved requests."""
    from onnxserve.client.rest import HttpTransport

    transport = HttpTransport(plan_connection("http://127.0.0.1:1"), "127.0.0.1:1")
    taken = []
    lock = threading.Lock()
    for _ in range(3):
        conn = transport._open(1.0)
        with lock:
            taken.append(conn)
        transport._give_back(conn)
    assert len({id(c) for c in [transport._take(), transport._take(), transport._take()]}) == 3
    assert transport._take() is None
    transport.close()
    with pytest.raises(RuntimeError, match="closed"):
        transport._take()


# -- the command line ---------------------------------------------------------------


@needs_rest
def test_the_cli_over_http(server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from onnxserve.cli import main

    url = f"http://{server.http_address}"
    row = json.dumps([1.5] * 16)
    code = main(["infer", "simple", "--url", url, "--input", f"INPUT0={row}",
                 "--input", f"INPUT1={row}", "--format", "json"])  # fmt: skip
    assert code == 0
    assert json.loads(capsys.readouterr().out)["OUTPUT0"]["data"] == [[3.0] * 16]
    text = 'INPUT0=[["a", "b", "c", "é"]]'
    code = main(["infer", "identity_bytes", "--url", url, "--input", text, "--format", "json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["OUTPUT0"]["data"] == [["a", "b", "c", "é"]]
    assert main(["infer", "no_such_model", "--url", url, "--input", "x=[1]"]) == 1
    assert "[NOT_FOUND] model 'no_such_model' is not served" in capsys.readouterr().err
    assert main(["models", "--url", url, "--format", "json"]) == 0
    assert "simple_config" in capsys.readouterr().out
    assert main(["describe", "simple_config", "--url", url]) == 0
    described = capsys.readouterr().out
    assert "INPUT0" in described and "8" in described
    with pytest.raises(SystemExit) as usage:
        main(["infer", "simple", "--url", url, "--token", "t", "--input", "INPUT0=[1]"])
    assert usage.value.code == 2  # a token over plaintext http is refused too
    with pytest.raises(SystemExit):
        main(["infer", "--help"])
    assert "http://host:port or https://host:port (HTTP/REST" in " ".join(
        capsys.readouterr().out.split()
    )
