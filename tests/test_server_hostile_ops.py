"""Careless operators and clients, against real servers: token files, reloads, limits, logs,
metrics connections, --workers supervision and early signals.

Each test asserts what a user sees (statuses, the log, exit codes, processes
left behind), never timings, except the bounds the server promises itself
(--worker-stall-timeout-s, the metrics idle timeout), which are waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from onnxserve.layout import is_valid_model_name
from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.protocol import grpc_service_pb2_grpc as pb_grpc
from onnxserve.server.metrics import METRICS_CONNECTIONS, METRICS_IDLE_TIMEOUT_S
from onnxserve.server.peers import PeerClient, PeerServer, VersionReport, WorkerPeers
from onnxserve.server.registry import STALE_REASON
from onnxserve.server.statistics import StatisticsSnapshot
from tests.support.batching_models import spin_model
from tests.support.certs import make_pki
from tests.support.hostile import bytes_request, peak_rss, raw_call, reset_peak_rss, rss
from tests.support.infer_requests import infer_request
from tests.support.models import add_sub_model, write_config
from tests.support.server import RunningServer, free_port
from tests.test_batching_workers import worker_processes

X = np.ones((1, 16), dtype=np.float32)
MIB = 1 << 20


def _wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _index(stub: pb_grpc.GRPCInferenceServiceStub) -> dict[tuple[str, str], tuple[str, str]]:
    index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=30)
    return {(m.name, m.version): (m.state, m.reason) for m in index.models}


def _spin(turns: int) -> pb.ModelInferRequest:
    inputs = {"INPUT0": np.ones((1, 4), np.float32), "SPIN": np.array([[turns]], np.int64)}
    return infer_request("slow", inputs)


# -- token files ------------------------------------------------------------------------------


def test_a_token_file_with_a_byte_order_mark_works_and_the_log_says_so(tmp_path: Path) -> None:
    add_sub_model(tmp_path / "repository" / "simple" / "1" / "model.onnx")
    tokens = tmp_path / "tokens"
    # Notepad's UTF-8: a BOM first; and a line no header could ever carry.
    tokens.write_bytes("\ufeffgood-token\r\nbäd-token\r\n".encode())
    args = ["--auth-token-file", str(tokens)]
    with RunningServer(tmp_path / "repository", args, token="good-token") as server:
        with server.channel() as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            good = (("authorization", "Bearer good-token"),)
            answer = stub.ModelInfer(
                infer_request("simple", {"INPUT0": X, "INPUT1": X}), metadata=good, timeout=30
            )
            assert answer.model_name == "simple"
        log = server.log()
    assert "byte-order mark" in log
    assert "line 2 holds characters an HTTP/2 header cannot carry" in log
    assert "accepting 1 bearer token(s)" in log
    assert "good-token" not in log


@pytest.mark.parametrize("content", [None, b"\xff\xfegood-token\n"], ids=["folder", "not-utf-8"])
def test_an_unreadable_token_file_stops_the_start_and_says_why(
    tmp_path: Path, content: bytes | None
) -> None:
    add_sub_model(tmp_path / "repository" / "simple" / "1" / "model.onnx")
    tokens = tmp_path / "tokens"
    if content is None:
        tokens.mkdir()  # unreadable as a file, even for root
    else:
        tokens.write_bytes(content)
    repository = str(tmp_path / "repository")
    done = subprocess.run(
        [sys.executable, "-m", "onnxserve", "serve", "--model-repository", repository,
         "--grpc-port", str(free_port()), "--metrics-port", "0", "--auth-token-file", str(tokens)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    if content is None:  # refused with the other settings
        assert f"--auth-token-file: {tokens} is not a readable file" in done.stderr
    else:
        assert f"cannot read the token file {tokens} (UnicodeDecodeError" in done.stderr


# -- names, limits, reloads -------------------------------------------------------------------


def test_model_names_are_matched_whole() -> None:
    assert is_valid_model_name("simple")
    for name in ("simple\n", "simple\n\n", "\nsimple", "sim ple", "a" * 129, ""):
        assert not is_valid_model_name(name), repr(name)


def test_model_control_refuses_a_name_with_a_trailing_newline(tmp_path: Path) -> None:
    add_sub_model(tmp_path / "simple" / "1" / "model.onnx")
    server = RunningServer(tmp_path, ["--model-control-mode", "explicit"])
    with server, server.channel() as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.RepositoryModelLoad(
                pb.RepositoryModelLoadRequest(model_name="simple\n"), timeout=30
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid model name" in (refused.value.details() or "")


def test_poll_mode_shows_why_a_changed_version_did_not_reload(tmp_path: Path) -> None:
    model = add_sub_model(tmp_path / "simple" / "1" / "model.onnx")
    good = model.read_bytes()
    args = ["--model-control-mode", "poll", "--repository-poll-secs", "0.2"]
    with RunningServer(tmp_path, args) as server, server.channel() as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert _index(stub)[("simple", "1")] == ("READY", "")
        model.write_bytes(b"not an onnx file")  # changed in place, and broken
        _wait_for(lambda: _index(stub)[("simple", "1")][1] != "")
        state, reason = _index(stub)[("simple", "1")]
        assert state == "READY"
        assert reason.startswith(STALE_REASON) and "onnxruntime cannot load it" in reason
        assert str(tmp_path) not in reason
        answer = stub.ModelInfer(infer_request("simple", {"INPUT0": X, "INPUT1": X}), timeout=30)
        assert answer.model_version == "1"  # the old copy keeps serving

        (tmp_path / "simple" / "config.pbtxt").write_text("this is { not a config")
        _wait_for(lambda: "config" in _index(stub)[("simple", "1")][1])
        assert _index(stub)[("simple", "1")][0] == "READY"

        (tmp_path / "simple" / "config.pbtxt").unlink()
        model.write_bytes(good)  # back as it was: nothing to reload, nothing to report
        _wait_for(lambda: _index(stub)[("simple", "1")] == ("READY", ""))


def test_each_stream_request_counts_against_the_concurrency_limit(tmp_path: Path) -> None:
    spin_model(tmp_path / "slow" / "1" / "model.onnx")
    server = RunningServer(tmp_path, ["--max-concurrent-rpcs", "2"])
    with server, server.channel() as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        answers = list(stub.ModelStreamInfer(iter([_spin(300_000)] * 6), timeout=120))
        refused = [a for a in answers if a.error_message]
        assert len(answers) == 6
        assert 1 <= len(refused) <= 4
        assert all("limit of 2 concurrent calls" in a.error_message for a in refused)
        # While a stream's requests fill the limit, a unary call is refused too.
        stream = stub.ModelStreamInfer(iter([_spin(600_000)] * 2), timeout=120)
        time.sleep(1.0)
        with pytest.raises(grpc.RpcError) as busy:
            stub.ModelInfer(_spin(0), timeout=30)
        assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert all(not a.error_message for a in stream)
        assert stub.ModelInfer(_spin(0), timeout=30).model_name == "slow"


def test_calls_past_the_limit_are_refused_before_their_bodies_are_read(tmp_path: Path) -> None:
    spin_model(tmp_path / "slow" / "1" / "model.onnx")
    with RunningServer(tmp_path, ["--max-concurrent-rpcs", "1"]) as server:
        assert server.process is not None
        pid = server.process.pid
        body = bytes_request("slow", b"\x00" * (200 * 1000 * 1000), 50 * 1000 * 1000)
        with server.channel() as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            holder = stub.ModelInfer.future(_spin(1_500_000), timeout=120)
            time.sleep(1.0)
            reset_peak_rss(pid)
            before = rss(pid)
            call = raw_call(channel)

            def refused() -> grpc.StatusCode:
                with pytest.raises(grpc.RpcError) as error:
                    call(body, timeout=120)
                return error.value.code()

            with ThreadPoolExecutor(6) as pool:
                codes = list(pool.map(lambda _: refused(), range(6)))
            growth = peak_rss(pid) - before
            assert holder.result(timeout=120).model_name == "slow"
    assert set(codes) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert growth < 200 * MIB, f"peak RSS grew {growth / MIB:.0f} MiB"


# -- logs and metrics -------------------------------------------------------------------------


def test_json_logs_stay_json_through_a_handshake_flood_and_a_model_s_stderr(
    tmp_path: Path,
) -> None:
    """Under --log-format json every line is JSON: failed TLS handshakes (plaintext at a TLS
    port, as a flood would send) write no line at all, and what a Python model's process
    writes straight to its stderr (fd 2, past Python's logging) comes out as an event."""
    repository = tmp_path / "repository"
    add_sub_model(repository / "simple" / "1" / "model.onnx")
    (repository / "chatty" / "1").mkdir(parents=True)
    (repository / "chatty" / "1" / "model.py").write_text(
        "import sys\n\n"
        "class TritonPythonModel:\n"
        "    def initialize(self, args):\n"
        "        print('chatty model: warming up', file=sys.stderr, flush=True)\n\n"
        "    def execute(self, requests):\n"
        "        return []\n"
    )
    write_config(
        repository / "chatty",
        'name: "chatty"\nbackend: "python"\n'
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1 ] } ]\n',
    )
    pki = make_pki(tmp_path / "pki")
    args = ["--log-format", "json", *pki.server_flags]
    server = RunningServer(
        repository, args, credentials=pki.channel_credentials(), server_name="localhost"
    )
    with server:
        for _ in range(20):  # plaintext at a TLS port: failed handshakes
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
                sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00" * 64)
                sock.settimeout(2)
                with contextlib.suppress(OSError):
                    sock.recv(1024)
        time.sleep(1.0)
    events = [json.loads(line) for line in server.log().splitlines() if line.strip()]
    assert not [e for e in events if "handshake" in e["message"].lower()], events
    chatty = [e for e in events if e["logger"] == "stderr"]
    assert any("chatty model: warming up" in e["message"] for e in chatty), events


def test_metrics_serves_a_bounded_number_of_connections_and_drops_idle_ones(
    tmp_path: Path,
) -> None:
    add_sub_model(tmp_path / "simple" / "1" / "model.onnx")
    port = free_port()
    with RunningServer(tmp_path, ["--metrics-port", str(port)]) as server:
        assert server.process is not None
        pid = server.process.pid

        def threads() -> int:
            status = Path(f"/proc/{pid}/status").read_text()
            return int(
                next(ln for ln in status.splitlines() if ln.startswith("Threads:")).split()[1]
            )

        before = threads()
        idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(100)]
        time.sleep(1.0)
        # Before: a thread per connection, kept for ever.
        assert threads() - before <= METRICS_CONNECTIONS + 2
        # Idle connections are closed by the server after the idle timeout...
        time.sleep(METRICS_IDLE_TIMEOUT_S + 2)
        for sock in idle:
            sock.settimeout(5)
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(1) == b""
            sock.close()
        # ...and then Prometheus is served again.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
            assert b"nv_inference_request_success" in answer.read()
        assert threads() - before <= 2


# -- --workers and signals --------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in state


def test_workers_die_with_their_supervisor(tmp_path: Path) -> None:
    add_sub_model(tmp_path / "simple" / "1" / "model.onnx")
    server = RunningServer(tmp_path, ["--workers", "2"])
    with server:
        assert server.process is not None
        workers = worker_processes(server.process.pid)
        assert len(workers) == 2
        server.process.kill()  # SIGKILL: no chance to stop them
        server.process.wait()
        _wait_for(lambda: not any(_alive(w) for w in workers), timeout=30)
    assert "the supervising process is gone" in server.log() or "stopping" in server.log()


def test_a_stopped_worker_is_reported_and_the_server_stops_for_a_restart(tmp_path: Path) -> None:
    add_sub_model(tmp_path / "simple" / "1" / "model.onnx")
    server = RunningServer(tmp_path, ["--workers", "2", "--worker-stall-timeout-s", "2"])
    with server:
        assert server.process is not None
        workers = worker_processes(server.process.pid)
        os.kill(workers[1], signal.SIGSTOP)
        code = server.process.wait(timeout=60)
        log = server.log()
    assert code != 0
    assert "has not run its event loop" in log and "stopped" in log
    assert not any(_alive(w) for w in workers)


def test_summed_statistics_keep_a_slow_peers_last_answer(tmp_path: Path) -> None:
    snapshot = StatisticsSnapshot()
    sent = [VersionReport("m", "1", snapshot, 0)]

    async def exchange() -> tuple[list[list[VersionReport]], list[list[VersionReport]]]:
        address = f"unix:{tmp_path / 'worker-1.sock'}"
        peer = PeerServer(address, lambda: sent)
        await peer.start()
        client = PeerClient(WorkerPeers(0, f"unix:{tmp_path / 'worker-0.sock'}", (address,)))
        try:
            first = await client.gather(5.0)
            await peer.stop()  # from now on, it does not answer
            return first, await client.gather(0.5)
        finally:
            await client.close()

    first, later = asyncio.run(exchange())
    assert first == later == [sent]


def _catches(pid: int, signum: int) -> bool:
    """Whether the process has a handler for ``signum`` (its SigCgt mask in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return False
    mask = int(next(line for line in status if line.startswith("SigCgt:")).split()[1], 16)
    return bool(mask & (1 << (signum - 1)))


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sighup_and_sigterm_from_the_first_instant(tmp_path: Path, workers: str) -> None:
    add_sub_model(tmp_path / "simple" / "1" / "model.onnx")
    # SIGHUP as soon as the process catches it (the first thing onnxserve's main does:
    # before, the interpreter itself is starting, 0.15 to 0.3 s here, and no Python
    # code can handle a signal), then during the imports and the start; before the
    # fix, any SIGHUP in the first seconds ended the server with 129 (255 with workers).
    for extra_delay in (0.0, 0.5, 1.5):
        process = subprocess.Popen(
            [sys.executable, "-m", "onnxserve", "serve", "--model-repository", str(tmp_path),
             "--host", "127.0.0.1", "--grpc-port", str(free_port()), "--metrics-port", "0",
             "--workers", workers],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        pid = process.pid
        _wait_for(lambda pid=pid: _catches(pid, signal.SIGHUP), timeout=30)  # type: ignore[misc]
        time.sleep(extra_delay)
        process.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        process.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert process.poll() is None, f"SIGHUP ended it with {process.returncode}"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr.decode(errors="replace")[-2000:]


def test_sigterm_before_start_up_exits_0_at_once(tmp_path: Path) -> None:
    add_sub_model(tmp_path / "simple" / "1" / "model.onnx")
    process = subprocess.Popen(
        [sys.executable, "-m", "onnxserve", "serve", "--model-repository", str(tmp_path),
         "--host", "127.0.0.1", "--grpc-port", str(free_port()), "--metrics-port", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    _wait_for(lambda: _catches(process.pid, signal.SIGTERM), timeout=30)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0
    assert "stopped before start-up" in stderr.decode(errors="replace")
