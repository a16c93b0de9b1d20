"""The client SDK against a real ``onnxserve serve`` process: every call, datatype and error.

The session's protocol server (tests/conftest.py) serves "simple" (add/sub on
FP32 [-1, 16]), "simple_config" (two versions), "fixed" and one identity
model per protocol datatype. Expected values are computed with numpy.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from onnxserve.client import (
    AsyncClient,
    Client,
    DeadlineExceededError,
    InferenceServerError,
    InferRequest,
    InvalidInputError,
    ModelNotFoundError,
    ResourceExhaustedError,
    RetryPolicy,
    ServerUnavailableError,
    UnimplementedError,
)
from onnxserve.protocol import model_config_pb2 as mc
from tests.support.client_tensors import expected_bytes, identity_input
from tests.support.models import ONNX_TYPES, add_sub_model
from tests.support.server import RunningServer, free_port

A = np.arange(32, dtype=np.float32).reshape(2, 16)
B = np.linspace(-3, 3, 32, dtype=np.float32).reshape(2, 16)


@pytest.fixture(scope="module")
def client(protocol_server: RunningServer) -> Iterator[Client]:
    with Client(protocol_server.address, timeout=30) as client:
        yield client


# -- every call -----------------------------------------------------------------


def test_health_calls(client: Client) -> None:
    assert client.is_live() is True
    assert client.is_ready() is True
    assert client.is_model_ready("simple") is True
    assert client.is_model_ready("simple_config", version=2) is True
    assert client.is_model_ready("no_such_model") is False
    assert client.is_model_ready("simple", version=9) is False
    client.wait_until_ready("simple", timeout=5)


def test_server_metadata(client: Client) -> None:
    meta = client.server_metadata()
    assert meta.name == "onnxserve"
    assert meta.version
    assert "statistics" in meta.extensions


def test_model_metadata(client: Client) -> None:
    meta = client.model_metadata("simple")
    assert meta.name == "simple"
    assert meta.versions == ("1",)
    assert meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, t.shape) for t in meta.inputs] == [
        ("INPUT0", "FP32", (-1, 16)),
        ("INPUT1", "FP32", (-1, 16)),
    ]
    assert [t.name for t in meta.outputs] == ["OUTPUT0", "OUTPUT1"]
    assert meta.input("INPUT0").dtype == np.float32
    assert client.model_metadata("simple_config").versions == ("1", "2")


def test_model_config_is_the_protobuf_message(client: Client) -> None:
    config = client.model_config("simple_config")
    assert isinstance(config, mc.ModelConfig)
    assert config.name == "simple_config"
    assert config.max_batch_size == 8
    assert [i.name for i in config.input] == ["INPUT0", "INPUT1"]
    assert config.instance_group[0].count == 2


def test_repository_index_lists_every_model(client: Client) -> None:
    index = client.repository_index()
    names = {entry.name for entry in index}
    assert {"simple", "simple_config", "fixed"} | {
        f"identity_{d.lower()}" for d in ONNX_TYPES
    } <= names
    assert all(entry.state == "READY" for entry in index)
    versions = sorted(e.version for e in index if e.name == "simple_config")
    assert versions == ["1", "2"]
    assert {e.name for e in client.repository_index(ready_only=True)} == names


def test_statistics_count_the_samples_this_client_sent(client: Client) -> None:
    def counts() -> tuple[int, int]:
        (stats,) = client.statistics("simple")
        return stats.inference_count, stats.inference_stats.success.count

    before_samples, before_success = counts()
    x = np.ones((2, 16), np.float32)
    for _ in range(3):
        client.infer("simple", {"INPUT0": x, "INPUT1": x})
    after_samples, after_success = counts()
    assert after_samples - before_samples == 6
    assert after_success - before_success == 3
    everything = {s.name for s in client.statistics()}
    assert {"simple", "fixed"} <= everything


def test_model_control_calls_report_the_server_refusal(client: Client) -> None:
    with pytest.raises(UnimplementedError, match="RepositoryModelLoad") as info:
        client.load_model("simple")
    assert info.value.code == grpc.StatusCode.UNIMPLEMENTED
    with pytest.raises(UnimplementedError, match="RepositoryModelUnload"):
        client.unload_model("simple")


# -- inference ------------------------------------------------------------------


def test_infer_returns_every_output_by_name(client: Client) -> None:
    out = client.infer("simple", {"INPUT0": A, "INPUT1": B})
    assert set(out) == {"OUTPUT0", "OUTPUT1"}
    np.testing.assert_array_equal(out["OUTPUT0"], A + B)
    np.testing.assert_array_equal(out["OUTPUT1"], A - B)
    assert out["OUTPUT0"].dtype == np.float32
    assert not out["OUTPUT0"].flags.writeable  # a view of the response bytes


def test_infer_with_outputs_version_id_and_parameters(client: Client) -> None:
    out = client.infer(
        "simple_config",
        {"INPUT0": A, "INPUT1": B},
        outputs=["OUTPUT1"],
        version=2,
        request_id="abc",
        parameters={"priority": 1, "note": "hello", "flag": True},
    )
    assert list(out) == ["OUTPUT1"]
    np.testing.assert_array_equal(out["OUTPUT1"], A - B)


@pytest.mark.parametrize("datatype", list(ONNX_TYPES))
def test_every_datatype_round_trips(client: Client, datatype: str) -> None:
    x = identity_input(datatype)
    (out,) = client.infer(f"identity_{datatype.lower()}", {"INPUT0": x}).values()
    assert out.shape == x.shape
    if datatype == "BYTES":
        assert out.dtype == object
        assert out.reshape(-1).tolist() == expected_bytes(x)
    else:
        assert out.dtype == x.dtype
        assert out.tobytes() == x.tobytes()


def test_numpy_string_arrays_round_trip_as_bytes(client: Client) -> None:
    x = np.array([["a", "bb", "ccc", "é"]])  # dtype <U3
    out = client.infer("identity_bytes", {"INPUT0": x})["OUTPUT0"]
    assert out.tolist() == [[b"a", b"bb", b"ccc", "é".encode()]]


# -- errors ---------------------------------------------------------------------


def test_unknown_model_is_model_not_found(client: Client) -> None:
    with pytest.raises(ModelNotFoundError, match="no_such_model") as info:
        client.infer("no_such_model", {"INPUT0": A})
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(ModelNotFoundError):
        client.model_metadata("no_such_model")
    with pytest.raises(ModelNotFoundError, match="version 9"):
        client.infer("simple", {"INPUT0": A, "INPUT1": B}, version=9)


@pytest.mark.parametrize(
    ("inputs", "words"),
    [
        ({"INPUT0": A.astype(np.float64), "INPUT1": B}, "FP64"),
        ({"INPUT0": A}, "INPUT1"),
        ({"INPUT0": A[:, :8], "INPUT1": B[:, :8]}, "16"),
        ({"INPUT0": A, "INPUT1": B, "EXTRA": A}, "EXTRA"),
    ],
)
def test_bad_inputs_are_invalid_input_with_the_server_message(
    client: Client, inputs: dict[str, np.ndarray], words: str
) -> None:
    with pytest.raises(InvalidInputError) as info:
        client.infer("simple", inputs, cast=False)  # the server's own checks
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert words in info.value.message


# 8 MiB of request: gRPC cannot even serialise and send it before a 100 µs
# deadline, so the deadline has certainly passed when an answer could come
# (a tiny request may be answered before gRPC's deadline timer fires).
BIG = np.ones((65536, 16), np.float32)


def test_a_passed_deadline_is_deadline_exceeded(client: Client) -> None:
    with pytest.raises(DeadlineExceededError) as info:
        client.infer("simple", {"INPUT0": BIG, "INPUT1": BIG}, timeout=1e-4)
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_message_over_the_size_limit_is_resource_exhausted(
    protocol_server: RunningServer,
) -> None:
    x = np.ones((64, 16), np.float32)  # 4 KiB per input
    with (
        Client(protocol_server.address, max_message_bytes=2048) as small,
        pytest.raises(ResourceExhaustedError) as info,
    ):
        small.infer("simple", {"INPUT0": x, "INPUT1": x})
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_no_server_is_unavailable_after_retrying_idempotent_calls_only() -> None:
    policy = RetryPolicy(max_attempts=4, initial_backoff_s=0.1, multiplier=2, jitter=0)
    with Client(f"127.0.0.1:{free_port()}", retry=policy, timeout=10) as nobody:
        started = time.monotonic()
        with pytest.raises(ServerUnavailableError) as info:
            nobody.is_live()
        retried_for = time.monotonic() - started
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        assert retried_for >= 0.1 + 0.2 + 0.4  # three pauses between four attempts
        started = time.monotonic()
        with pytest.raises(ServerUnavailableError):
            nobody.infer("simple", {"INPUT0": A, "INPUT1": B})
        assert time.monotonic() - started < 0.1 + 0.2 + 0.4  # infer: no retry pauses


# -- streaming ------------------------------------------------------------------


def test_stream_answers_every_request_and_reports_errors_in_place(client: Client) -> None:
    def requests() -> Iterator[InferRequest]:
        for i in range(20):
            x = np.full((1, 16), i, np.float32)
            if i == 7:
                yield InferRequest("no_such_model", {"INPUT0": x}, request_id="7")
            else:
                yield InferRequest("simple", {"INPUT0": x, "INPUT1": x}, request_id=str(i))

    results = {r.id: r for r in client.stream_infer(requests())}
    assert set(results) == {str(i) for i in range(20)}
    bad = results.pop("7")
    assert not bad.ok and isinstance(bad.error, InferenceServerError)
    assert "no_such_model" in bad.error.message
    for rid, result in results.items():
        assert result.model_name == "simple"
        np.testing.assert_array_equal(
            result.raise_for_error().outputs["OUTPUT0"], np.full((1, 16), 2 * int(rid))
        )


def test_stream_raises_a_request_the_client_cannot_encode(client: Client) -> None:
    def requests() -> Iterator[InferRequest]:
        yield InferRequest("simple", {"INPUT0": A, "INPUT1": B}, request_id="ok")
        yield InferRequest("simple", {"INPUT0": np.ones(2, np.complex64)}, request_id="bad")

    with pytest.raises(InvalidInputError, match="complex64"):
        list(client.stream_infer(requests()))


# -- asyncio --------------------------------------------------------------------


def test_async_client_makes_every_call(protocol_server: RunningServer) -> None:
    async def main() -> None:
        async with AsyncClient(protocol_server.address) as aclient:
            assert await aclient.is_live()
            assert await aclient.is_ready()
            assert await aclient.is_model_ready("simple")
            assert not await aclient.is_model_ready("no_such_model")
            await aclient.wait_until_ready("simple", timeout=5)
            assert (await aclient.server_metadata()).name == "onnxserve"
            assert (await aclient.model_metadata("simple")).inputs[0].shape == (-1, 16)
            assert (await aclient.model_config("simple_config")).max_batch_size == 8
            assert "simple" in {s.name for s in await aclient.statistics()}
            assert (await aclient.statistics("simple"))[0].name == "simple"
            assert "fixed" in {m.name for m in await aclient.repository_index()}
            out = await aclient.infer("simple", {"INPUT0": A, "INPUT1": B}, outputs=["OUTPUT0"])
            np.testing.assert_array_equal(out["OUTPUT0"], A + B)
            with pytest.raises(ModelNotFoundError):
                await aclient.infer("no_such_model", {"INPUT0": A})
            with pytest.raises(InvalidInputError):
                await aclient.infer("simple", {"INPUT0": A})
            with pytest.raises(DeadlineExceededError):
                await aclient.infer("simple", {"INPUT0": BIG, "INPUT1": BIG}, timeout=1e-4)
            with pytest.raises(UnimplementedError):
                await aclient.load_model("simple")

    asyncio.run(main())


@pytest.mark.parametrize("datatype", ["BYTES", "BF16", "FP16", "BOOL", "UINT64"])
def test_async_datatype_round_trip(protocol_server: RunningServer, datatype: str) -> None:
    async def main() -> np.ndarray:
        async with AsyncClient(protocol_server.address) as aclient:
            out = await aclient.infer(f"identity_{datatype.lower()}", {"INPUT0": x})
            return out["OUTPUT0"]

    x = identity_input(datatype)
    out = asyncio.run(main())
    if datatype == "BYTES":
        assert out.reshape(-1).tolist() == expected_bytes(x)
    else:
        assert out.dtype == x.dtype and out.tobytes() == x.tobytes()


def test_hundreds_of_concurrent_async_calls_each_get_their_own_answer(
    protocol_server: RunningServer,
) -> None:
    count = 500

    async def main() -> list[dict[str, np.ndarray]]:
        async with AsyncClient(protocol_server.address, channels_per_url=2) as aclient:
            return await asyncio.gather(
                *(
                    aclient.infer(
                        "simple",
                        {"INPUT0": np.full((1, 16), i, np.float32), "INPUT1": B[:1]},
                        request_id=str(i),
                    )
                    for i in range(count)
                )
            )

    started = time.monotonic()
    results = asyncio.run(main())
    elapsed = time.monotonic() - started
    assert len(results) == count
    for i, out in enumerate(results):
        np.testing.assert_array_equal(out["OUTPUT0"], np.full((1, 16), i, np.float32) + B[:1])
        np.testing.assert_array_equal(out["OUTPUT1"], np.full((1, 16), i, np.float32) - B[:1])
    assert elapsed < 60


def test_async_stream_from_an_async_generator(protocol_server: RunningServer) -> None:
    async def requests() -> AsyncIterator[InferRequest]:
        for i in range(30):
            await asyncio.sleep(0)
            x = np.full((1, 16), i, np.float32)
            yield InferRequest("simple", {"INPUT0": x, "INPUT1": x}, request_id=str(i))
        yield InferRequest("simple", {"INPUT0": A}, request_id="missing-input")

    async def main() -> dict[str, object]:
        async with AsyncClient(protocol_server.address) as aclient:
            return {r.id: r async for r in aclient.stream_infer(requests())}

    results = asyncio.run(main())
    assert len(results) == 31
    bad = results.pop("missing-input")
    assert not bad.ok  # type: ignore[attr-defined]
    for rid, result in results.items():
        out = result.raise_for_error().outputs["OUTPUT0"]  # type: ignore[attr-defined]
        np.testing.assert_array_equal(out, np.full((1, 16), 2 * int(rid)))


# -- spreading load -------------------------------------------------------------


def connections_to(port: int) -> set[str]:
    """Socket inodes of this machine's established TCP connections to 127.0.0.1:port.

    Read from Linux's /proc, IPv4 and IPv4-mapped IPv6 alike (gRPC's sockets
    are dual-stack). Sets, not counts, so that connections of earlier tests
    still closing cannot blur the difference.
    """
    remotes = {f"0100007F:{port:04X}", f"0000000000000000FFFF00000100007F:{port:04X}"}
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[2] in remotes and fields[3] == "01":
                found.add(fields[9])
    return found


def test_channels_per_url_opens_that_many_connections(protocol_server: RunningServer) -> None:
    port = protocol_server.port
    before = connections_to(port)
    with Client(protocol_server.address, channels_per_url=3) as spread:
        for _ in range(6):
            assert spread.is_live()
        opened = connections_to(port) - before
        assert len(opened) == 3
    # Closing the client closes its connections (they are its own, not shared).
    deadline = time.monotonic() + 10
    while opened & connections_to(port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not opened & connections_to(port)


@pytest.fixture(scope="module")
def two_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RunningServer]]:
    repo = tmp_path_factory.mktemp("two_servers")
    add_sub_model(repo / "simple" / "1" / "model.onnx")
    with RunningServer(repo) as first, RunningServer(repo) as second:
        yield [first, second]


def test_calls_go_round_robin_over_several_urls(two_servers: list[RunningServer]) -> None:
    urls = [s.address for s in two_servers]
    with Client(urls) as both:
        for _ in range(10):
            out = both.infer("simple", {"INPUT0": A[:1], "INPUT1": B[:1]})
            np.testing.assert_array_equal(out["OUTPUT0"], A[:1] + B[:1])
    for url in urls:
        with Client(url) as one:
            (stats,) = one.statistics("simple")
            assert stats.inference_stats.success.count == 5


def test_a_dead_url_among_several_is_retried_on_the_next(two_servers: list[RunningServer]) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{closed.getsockname()[1]}"
        with Client([dead, two_servers[0].address]) as mixed:
            assert all(mixed.is_ready() for _ in range(4))


def test_one_client_shared_by_many_threads(protocol_server: RunningServer) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def call(i: int) -> bool:
        x = np.full((1, 16), i, np.float32)
        out = shared.infer("simple", {"INPUT0": x, "INPUT1": B[:1]})
        return bool(np.array_equal(out["OUTPUT1"], x - B[:1]))

    with (
        Client(protocol_server.address, channels_per_url=2) as shared,
        ThreadPoolExecutor(max_workers=8) as pool,
    ):
        results = list(pool.map(call, range(200)))
    assert all(results)


def test_an_async_client_belongs_to_one_event_loop(protocol_server: RunningServer) -> None:
    aclient = AsyncClient(protocol_server.address)  # made outside any loop: fine
    assert asyncio.run(aclient.is_live())
    with pytest.raises(RuntimeError, match="another event loop"):
        asyncio.run(aclient.is_live())


def test_compressed_requests(protocol_server: RunningServer) -> None:
    with Client(protocol_server.address, compression=grpc.Compression.Gzip) as gz:
        out = gz.infer("simple", {"INPUT0": A, "INPUT1": B})
    np.testing.assert_array_equal(out["OUTPUT0"], A + B)


def test_async_stream_raises_a_request_the_client_cannot_encode(
    protocol_server: RunningServer,
) -> None:
    requests = [
        InferRequest("simple", {"INPUT0": A, "INPUT1": B}, request_id="ok"),
        InferRequest("simple", {"INPUT0": np.ones(2, np.complex64)}, request_id="bad"),
    ]

    async def main() -> None:
        async with AsyncClient(protocol_server.address) as aclient:
            async for _ in aclient.stream_infer(requests):
                pass

    with pytest.raises(InvalidInputError, match="complex64"):
        asyncio.run(main())
