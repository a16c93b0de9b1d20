"""TLS, mutual TLS, bearer tokens, the call limit and message sizes, against real servers.

Certificates are made at test time (tests/support/certs.py); the clients are
plain grpc stubs, onnxserve's SDK and ``onnxserve infer``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from onnx import TensorProto, helper

from onnxserve.bench.h2load import find_h2load
from onnxserve.cli import main as bench_main
from onnxserve.client import AuthenticationError, Client, TLSConfig
from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.protocol import grpc_service_pb2_grpc as pb_grpc
from tests.support.batching_models import spin_model
from tests.support.certs import TestPKI, make_pki
from tests.support.infer_requests import infer_request, outputs_of
from tests.support.models import add_sub_model, write_config
from tests.support.server import RunningServer, free_port

TOKEN = "s3cret-token-0123456789"
OTHER_TOKEN = "another-token-9876543210"
X = np.ones((1, 16), dtype=np.float32)
SIMPLE = infer_request("simple", {"INPUT0": X, "INPUT1": X})
SERVING = health_pb2.HealthCheckResponse.SERVING


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("security_repository")
    add_sub_model(root / "simple" / "1" / "model.onnx")
    return root


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokens = tmp_path_factory.mktemp("tokens") / "tokens"
    tokens.write_text(f"# operators' tokens\n{TOKEN}\n\n")
    return tokens


@pytest.fixture(scope="module")
def guarded(pki: TestPKI, repository: Path, token_file: Path) -> Iterator[RunningServer]:
    """TLS, a token file and a plaintext health port."""
    args = [*pki.server_flags, "--auth-token-file", str(token_file)]
    args += ["--health-port", str(free_port())]
    server = RunningServer(
        repository,
        args,
        credentials=pki.channel_credentials(),
        token=TOKEN,
        server_name="localhost",
    )
    with server:
        yield server


def test_tls_with_the_right_token_serves_and_anything_else_is_refused(
    guarded: RunningServer,
) -> None:
    with guarded.channel() as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        answer = stub.ModelInfer(SIMPLE, metadata=bearer(TOKEN), timeout=30)
        np.testing.assert_array_equal(outputs_of(answer)["OUTPUT0"], X + X)
        for metadata, why in (
            ((), "a bearer token is required"),
            (bearer("wrong"), "the token is not valid"),
            ((("authorization", TOKEN),), "a bearer token is required"),  # no scheme
        ):
            with pytest.raises(grpc.RpcError) as refused:
                stub.ModelInfer(SIMPLE, metadata=metadata, timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert why in (refused.value.details() or "")
        # Every RPC is guarded, not only inference.
        with pytest.raises(grpc.RpcError) as refused:
            stub.ServerReady(pb.ServerReadyRequest(), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # Health needs no token, so that Kubernetes probes work.
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=30).status == SERVING
    # Plaintext to the TLS port does not get through.
    with grpc.insecure_channel(guarded.address) as plain:
        with pytest.raises(grpc.RpcError) as failed:
            pb_grpc.GRPCInferenceServiceStub(plain).ModelInfer(
                SIMPLE, metadata=bearer(TOKEN), timeout=5
            )
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_health_port_answers_in_plaintext_without_a_token(guarded: RunningServer) -> None:
    args = guarded.extra_args
    port = args[args.index("--health-port") + 1]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=30).status == SERVING
        service = "inference.GRPCInferenceService"
        request = health_pb2.HealthCheckRequest(service=service)
        assert health.Check(request, timeout=30).status == SERVING
        # Nothing else is served there.
        with pytest.raises(grpc.RpcError) as missing:
            pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=5)
        assert missing.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_the_sdk_and_the_cli_speak_tls_with_a_token(guarded: RunningServer, pki: TestPKI) -> None:
    tls = TLSConfig(root_certificates=pki.ca, server_name="localhost")
    with Client(guarded.address, tls=tls, token=TOKEN) as client:
        out = client.infer("simple", {"INPUT0": X, "INPUT1": X})
        np.testing.assert_array_equal(out["OUTPUT1"], X - X)
        assert client.is_ready()
    wrong = Client(guarded.address, tls=tls, token="wrong")
    with wrong, pytest.raises(AuthenticationError):
        wrong.infer("simple", {"INPUT0": X, "INPUT1": X})
    command = [sys.executable, "-m", "onnxserve", "infer", "simple", "--url", guarded.address]
    command += ["--root-certificates", str(pki.ca), "--server-name", "localhost"]
    command += ["--input", "INPUT0=" + "[" + ",".join(["1.0"] * 16) + "]"]
    command += ["--input", "INPUT1=" + "[" + ",".join(["2.0"] * 16) + "]"]
    done = subprocess.run([*command, "--token", TOKEN], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "OUTPUT0" in done.stdout and "3." in done.stdout
    refused = subprocess.run(
        [*command, "--token", "wrong"], capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 1
    assert "UNAUTHENTICATED" in refused.stderr


def test_sighup_rereads_the_token_file_and_no_token_reaches_the_log(
    guarded: RunningServer, token_file: Path
) -> None:
    tokens = token_file
    assert guarded.process is not None
    with guarded.channel() as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        tokens.write_text(f"{OTHER_TOKEN}\n")
        guarded.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while True:  # the reload happens on the server's event loop, soon after the signal
            try:
                stub.ServerLive(pb.ServerLiveRequest(), metadata=bearer(OTHER_TOKEN), timeout=5)
                break
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED
                assert time.monotonic() < deadline
                time.sleep(0.05)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ServerLive(pb.ServerLiveRequest(), metadata=bearer(TOKEN), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # A file that cannot be read keeps the tokens in use.
        tokens.unlink()
        guarded.process.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        stub.ServerLive(pb.ServerLiveRequest(), metadata=bearer(OTHER_TOKEN), timeout=5)
        tokens.write_text(f"{TOKEN}\n")
        guarded.process.send_signal(signal.SIGHUP)
        guarded.wait_ready()
    log = guarded.log()
    assert "accepting 1 bearer token(s)" in log
    assert "cannot read the token file" in log
    for secret in (TOKEN, OTHER_TOKEN, "wrong"):
        assert secret not in log


def test_mutual_tls_needs_a_client_certificate_from_the_ca(pki: TestPKI, repository: Path) -> None:
    args = pki.server_flags
    args += ["--tls-client-ca", str(pki.ca)]
    mutual = RunningServer(
        repository, args, credentials=pki.channel_credentials(client=True), server_name="localhost"
    )
    options = [("grpc.ssl_target_name_override", "localhost")]
    with mutual:
        with mutual.channel() as channel:
            answer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(SIMPLE, timeout=30)
            np.testing.assert_array_equal(outputs_of(answer)["OUTPUT0"], X + X)
        stranger = grpc.ssl_channel_credentials(
            root_certificates=pki.ca.read_bytes(),
            private_key=pki.stranger.key.read_bytes(),
            certificate_chain=pki.stranger.cert.read_bytes(),
        )
        for credentials in (pki.channel_credentials(), stranger):
            with grpc.secure_channel(mutual.address, credentials, options) as channel:
                with pytest.raises(grpc.RpcError) as refused:
                    pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(SIMPLE, timeout=10)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        tls = TLSConfig(
            root_certificates=pki.ca,
            certificate_chain=pki.client.cert,
            private_key=pki.client.key,
            server_name="localhost",
        )
        with Client(mutual.address, tls=tls) as client:
            assert client.infer("simple", {"INPUT0": X, "INPUT1": X})["OUTPUT0"][0, 0] == 2.0


def tile_model(path: Path) -> Path:
    """OUTPUT0 = INPUT0 ([batch, 32] FP32) repeated 64 times: an answer 64x the request."""
    graph = helper.make_graph(
        [helper.make_node("Tile", ["INPUT0", "repeats"], ["OUTPUT0"])],
        "tile",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 32])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 2048])],
        [helper.make_tensor("repeats", TensorProto.INT64, [2], [1, 64])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True)
    onnx.save(model, str(path))
    return path


def test_the_call_limit_and_the_message_limit(tmp_path: Path) -> None:
    """--max-concurrent-rpcs 2: a third call is refused at once; messages over the limit in
    either direction get RESOURCE_EXHAUSTED."""
    spin_model(tmp_path / "spin" / "1" / "model.onnx")
    write_config(tmp_path / "spin", "instance_group [ { count: 2 kind: KIND_CPU } ]")
    tile_model(tmp_path / "tile" / "1" / "model.onnx")
    args = ["--max-concurrent-rpcs", "2", "--max-message-bytes", "4096"]
    with RunningServer(tmp_path, args) as server, server.channel() as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        slow = infer_request(
            "spin",
            {
                "INPUT0": np.ones((1, 4), dtype=np.float32),
                "SPIN": np.array([[1_500_000]], dtype=np.int64),
            },
        )
        running = [stub.ModelInfer.future(slow, timeout=120) for _ in range(2)]
        time.sleep(0.5)
        began = time.monotonic()
        with pytest.raises(grpc.RpcError) as refused:
            stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=60)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limit of 2 concurrent calls" in (refused.value.details() or "")
        assert time.monotonic() - began < 5 and not any(f.done() for f in running)
        health = health_pb2_grpc.HealthStub(channel)  # probes are never refused
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=30).status == SERVING
        for future in running:
            future.result(timeout=120)
        assert stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=30).name == "onnxserve"

        small = np.ones((1, 32), dtype=np.float32)  # 128 bytes in, 8 KiB out
        with pytest.raises(grpc.RpcError) as too_big_out:
            stub.ModelInfer(infer_request("tile", {"INPUT0": small}), timeout=30)
        assert too_big_out.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        big = np.ones((40, 32), dtype=np.float32)  # 5 KiB in
        with pytest.raises(grpc.RpcError) as too_big_in:
            stub.ModelInfer(infer_request("tile", {"INPUT0": big}), timeout=30)
        assert too_big_in.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize(
    "driver",
    [
        "python",
        pytest.param(
            "h2load",
            marks=pytest.mark.skipif(
                find_h2load() is None,
                reason="h2load not installed (apt-get install nghttp2-client)",
            ),
        ),
    ],
)
def test_the_bench_speaks_tls_with_a_token(
    guarded: RunningServer,
    pki: TestPKI,
    tmp_path: Path,
    driver: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`onnxserve bench` reaches a TLS server with a token (from the environment), and the
    report it writes does not hold the token."""
    report = tmp_path / "bench.json"
    args = ["bench", "simple", "--url", f"grpcs://{guarded.address}",
            "--root-certificates", str(pki.ca), "--server-name", "localhost",
            "--driver", driver, "--concurrency", "1,4", "--requests", "40", "--warmup", "0",
            "--no-raw-baseline", "--no-progress"]  # fmt: skip
    monkeypatch.setenv("ONNXSERVE_BENCH_TOKEN", TOKEN)
    assert bench_main([*args, "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["driver"] == driver
    assert [step["failures"] for step in result["steps"]] == [0, 0]
    assert [step["server"]["success"] for step in result["steps"]] == [40, 40]
    assert TOKEN not in report.read_text()
    capsys.readouterr()
    monkeypatch.setenv("ONNXSERVE_BENCH_TOKEN", "wrong")
    assert bench_main(args) == 2
    error = capsys.readouterr().err
    assert "UNAUTHENTICATED" in error and "wrong" not in error


def test_the_bench_refuses_a_token_over_plaintext(
    guarded: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        bench_main(["bench", "simple", "--url", guarded.address, "--token", TOKEN,
                    "--no-progress", "--no-raw-baseline"])  # fmt: skip
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "refusing to send a bearer token over a plaintext connection" in error
    assert "--allow-insecure-token" in error and TOKEN not in error
