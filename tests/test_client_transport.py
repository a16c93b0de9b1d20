"""The client's transport: TLS, mutual TLS, bearer tokens and retry counts, over real gRPC.

onnxserve's server does not terminate TLS or check tokens itself (a mesh or
ingress does that in front of it), so these tests run a small gRPC server in
this process that does: it uses real certificates made with openssl, and it
records what each call carried and how many attempts arrived, which a server
in another process could not tell the test.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest

from onnxserve.client import (
    AsyncClient,
    AuthenticationError,
    Client,
    KeepaliveOptions,
    RetryPolicy,
    ServerUnavailableError,
    TLSConfig,
)
from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.protocol import grpc_service_pb2_grpc as pb_grpc

TOKEN = "s3cret-token"
SERVER_NAME = "onnxserve.test"
X = np.ones((1, 4), np.float32)


@dataclass
class Recorder(pb_grpc.GRPCInferenceServiceServicer):
    """Answers ServerLive / ModelInfer; fails the first ``fail_live`` lives with UNAVAILABLE."""

    require_token: bool = False
    fail_live: int = 0
    fail_infer: bool = False
    live_attempts: int = 0
    infer_attempts: int = 0
    metadata: list[dict[str, str]] = field(default_factory=list)
    peers: list[dict[str, list[bytes]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _check(self, context: grpc.ServicerContext) -> None:
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        with self.lock:
            self.metadata.append(metadata)
            self.peers.append(dict(context.auth_context()))
        if self.require_token and metadata.get("authorization") != f"Bearer {TOKEN}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

    def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.ServicerContext
    ) -> pb.ServerLiveResponse:
        self._check(context)
        with self.lock:
            self.live_attempts += 1
            fail = self.live_attempts <= self.fail_live
        if fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        return pb.ServerLiveResponse(live=True)

    def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.ServicerContext
    ) -> pb.ModelInferResponse:
        self._check(context)
        with self.lock:
            self.infer_attempts += 1
        if self.fail_infer:
            context.abort(grpc.StatusCode.UNAVAILABLE, "model reloading")
        response = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
        for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=True):
            response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
            response.raw_output_contents.append(raw)
        return response


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A throwaway CA, a server certificate for SERVER_NAME and a client certificate."""
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command is needed to make test certificates")
    d = tmp_path_factory.mktemp("certs")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=test-ca",
        "-days",
        "2",
        cwd=d,
    )
    for name, ext in (
        ("server", f"subjectAltName=DNS:{SERVER_NAME}\nextendedKeyUsage=serverAuth"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        _openssl(
            "req",
            *ec,
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN=test-{name}",
            cwd=d,
        )
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
            cwd=d,
        )
    return Certificates(
        d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key"
    )


@contextmanager
def serving(
    recorder: Recorder,
    certs: Certificates | None = None,
    require_client_cert: bool = False,
) -> Iterator[int]:
    """Run ``recorder`` on a loopback port (TLS when ``certs`` is given); yield the port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(recorder, server)
    if certs is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        credentials = grpc.ssl_server_credentials(
            [(certs.server_key.read_bytes(), certs.server_cert.read_bytes())],
            root_certificates=certs.ca.read_bytes(),
            require_client_auth=require_client_cert,
        )
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield port
    finally:
        server.stop(grace=None)


NO_RETRY = RetryPolicy(max_attempts=1)


# -- TLS and tokens -------------------------------------------------------------


def test_tls_with_a_private_ca_carries_the_bearer_token(certs: Certificates) -> None:
    recorder = Recorder(require_token=True)
    with serving(recorder, certs) as port:
        tls = TLSConfig(root_certificates=certs.ca, server_name=SERVER_NAME)
        with Client(f"127.0.0.1:{port}", tls=tls, token=TOKEN) as client:
            assert client.is_live()
            out = client.infer("echo", {"x": X})
        np.testing.assert_array_equal(out["x"], X)
        assert [m["authorization"] for m in recorder.metadata] == [f"Bearer {TOKEN}"] * 2
        assert recorder.peers[0].get("transport_security_type") == [b"ssl"]


def test_a_wrong_token_is_an_authentication_error(certs: Certificates) -> None:
    with serving(Recorder(require_token=True), certs) as port:
        tls = TLSConfig(root_certificates=certs.ca.read_bytes(), server_name=SERVER_NAME)
        with Client(f"grpcs://127.0.0.1:{port}", tls=tls, token="wrong") as client:
            with pytest.raises(AuthenticationError, match="bearer token") as info:
                client.is_live()
            assert info.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_an_untrusted_server_certificate_is_refused(certs: Certificates) -> None:
    recorder = Recorder()
    with serving(recorder, certs) as port:
        # The system's roots do not include the test CA.
        tls = TLSConfig(server_name=SERVER_NAME)
        with (
            Client(f"127.0.0.1:{port}", tls=tls, retry=NO_RETRY, timeout=5) as client,
            pytest.raises(ServerUnavailableError),
        ):
            client.is_live()
        assert recorder.live_attempts == 0


def test_mutual_tls_presents_the_client_certificate(certs: Certificates) -> None:
    recorder = Recorder()
    with serving(recorder, certs, require_client_cert=True) as port:
        address = f"grpcs://127.0.0.1:{port}"
        anonymous = TLSConfig(root_certificates=certs.ca, server_name=SERVER_NAME)
        with (
            Client(address, tls=anonymous, retry=NO_RETRY, timeout=5) as client,
            pytest.raises(ServerUnavailableError),
        ):
            client.is_live()
        assert recorder.live_attempts == 0
        mutual = TLSConfig(
            root_certificates=certs.ca,
            certificate_chain=certs.client_cert,
            private_key=str(certs.client_key),
            server_name=SERVER_NAME,
        )
        with Client(address, tls=mutual) as client:
            assert client.is_live()
        assert recorder.peers[-1].get("x509_common_name") == [b"test-client"]


def test_plaintext_token_only_when_explicitly_allowed() -> None:
    recorder = Recorder(require_token=True)
    with serving(recorder) as port:
        with pytest.raises(ValueError, match="plaintext"):
            Client(f"127.0.0.1:{port}", token=TOKEN)
        with Client(
            f"127.0.0.1:{port}",
            token=TOKEN,
            allow_insecure_token=True,
            headers={"X-Request-Source": "tests"},
            keepalive=KeepaliveOptions(time_s=10, timeout_s=5),
        ) as client:
            assert client.is_live()
        assert recorder.metadata[0]["authorization"] == f"Bearer {TOKEN}"
        assert recorder.metadata[0]["x-request-source"] == "tests"


# -- retries --------------------------------------------------------------------


def test_idempotent_calls_are_retried_until_they_succeed() -> None:
    recorder = Recorder(fail_live=2)
    with serving(recorder) as port, Client(f"127.0.0.1:{port}") as client:
        assert client.is_live()
    assert recorder.live_attempts == 3


def test_retries_stop_at_max_attempts() -> None:
    recorder = Recorder(fail_live=100)
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.01)
    with (
        serving(recorder) as port,
        Client(f"127.0.0.1:{port}", retry=policy) as client,
        pytest.raises(ServerUnavailableError, match="warming up"),
    ):
        client.is_live()
    assert recorder.live_attempts == 3


def test_infer_is_not_retried_unless_asked() -> None:
    recorder = Recorder(fail_infer=True)
    with serving(recorder) as port:
        with (
            Client(f"127.0.0.1:{port}") as client,
            pytest.raises(ServerUnavailableError, match="model reloading"),
        ):
            client.infer("echo", {"x": X})
        assert recorder.infer_attempts == 1
        policy = RetryPolicy(max_attempts=4, initial_backoff_s=0.01, retry_infer=True)
        with (
            Client(f"127.0.0.1:{port}", retry=policy) as client,
            pytest.raises(ServerUnavailableError),
        ):
            client.infer("echo", {"x": X})
        assert recorder.infer_attempts == 1 + 4


def test_async_client_retries_the_same_way() -> None:
    recorder = Recorder(fail_live=2, fail_infer=True)

    async def main(port: int) -> None:
        async with AsyncClient(f"127.0.0.1:{port}") as client:
            assert await client.is_live()
            with pytest.raises(ServerUnavailableError):
                await client.infer("echo", {"x": X})
        policy = RetryPolicy(max_attempts=2, initial_backoff_s=0.01, retry_infer=True)
        async with AsyncClient(f"127.0.0.1:{port}", retry=policy) as client:
            with pytest.raises(ServerUnavailableError):
                await client.infer("echo", {"x": X})

    with serving(recorder) as port:
        asyncio.run(main(port))
    assert recorder.live_attempts == 3
    assert recorder.infer_attempts == 1 + 2


def test_async_client_over_mutual_tls_with_a_token(certs: Certificates) -> None:
    recorder = Recorder(require_token=True)
    mutual = TLSConfig(
        root_certificates=certs.ca,
        certificate_chain=certs.client_cert,
        private_key=certs.client_key,
        server_name=SERVER_NAME,
    )

    async def main(port: int) -> dict[str, np.ndarray]:
        async with AsyncClient(f"127.0.0.1:{port}", tls=mutual, token=TOKEN) as client:
            return await client.infer("echo", {"x": X})

    with serving(recorder, certs, require_client_cert=True) as port:
        out = asyncio.run(main(port))
    np.testing.assert_array_equal(out["x"], X)
    assert recorder.peers[0].get("x509_common_name") == [b"test-client"]
