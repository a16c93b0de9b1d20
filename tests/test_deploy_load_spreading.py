"""Spreading calls over replicas: the server's connection age, the client's round robin.

kube-proxy balances connections, not requests, and a gRPC channel keeps its
connection for ever: without a maximum age, replicas that a HorizontalPodAutoscaler
adds get no traffic from clients that are already connected. The first test
watches a real client channel against a real server process: with
``--max-connection-age-s`` the channel leaves READY (the server's GOAWAY)
within the age plus gRPC's 10% jitter, and the next call reconnects and
succeeds; without it the channel stays READY over the same time.

The second is the SDK set up as deploy/README.md shows for the headless
Service: gRPC's round_robin policy over every address the name resolves to
(here two server processes given as an ``ipv4:`` address list, as DNS would
list two pods) sends calls to both.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from onnxserve.client import Client
from onnxserve.protocol import grpc_service_pb2_grpc as pb_grpc
from tests.support.infer_requests import infer_request, outputs_of
from tests.support.models import add_sub_model
from tests.support.server import RunningServer

AGE_S = 1.0
# The age plus gRPC's jitter (+10%) and the scheduling slack of a busy 2-core machine.
WATCH_S = 4.0


class ConnectivityLog:
    """The states a channel went through, recorded by gRPC's connectivity callback."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.states: list[grpc.ChannelConnectivity] = []
        self._changed = threading.Condition()
        self._channel = channel
        channel.subscribe(self._record, try_to_connect=False)

    def _record(self, state: grpc.ChannelConnectivity) -> None:
        with self._changed:
            self.states.append(state)
            self._changed.notify_all()

    def wait_to_leave_ready(self, timeout_s: float) -> bool:
        """Whether the channel left READY (after having been READY) within ``timeout_s``."""

        def left() -> bool:
            if grpc.ChannelConnectivity.READY not in self.states:
                return False
            after = self.states[self.states.index(grpc.ChannelConnectivity.READY) + 1 :]
            return any(s is not grpc.ChannelConnectivity.READY for s in after)

        with self._changed:
            return self._changed.wait_for(left, timeout=timeout_s)

    def wait_for_ready_count(self, count: int, timeout_s: float) -> int:
        """How many times the channel has been READY, once that reaches ``count`` or time is up.

        gRPC reports states from its own thread, possibly after a call returned.
        """

        def ready() -> int:
            return self.states.count(grpc.ChannelConnectivity.READY)

        with self._changed:
            self._changed.wait_for(lambda: ready() >= count, timeout=timeout_s)
            return ready()

    def close(self) -> None:
        self._channel.unsubscribe(self._record)


@pytest.fixture(scope="module")
def simple_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("connection_age")
    add_sub_model(root / "simple" / "1" / "model.onnx")
    return root


def _infer(stub: pb_grpc.GRPCInferenceServiceStub) -> np.ndarray:
    x = np.arange(16, dtype=np.float32).reshape(1, 16)
    response = stub.ModelInfer(infer_request("simple", {"INPUT0": x, "INPUT1": x}), timeout=10)
    return outputs_of(response)["OUTPUT0"][0]


def test_old_connections_are_closed_and_clients_reconnect(simple_repository: Path) -> None:
    aged = RunningServer(
        simple_repository,
        ["--max-connection-age-s", str(AGE_S), "--max-connection-age-grace-s", "1"],
    )
    plain = RunningServer(simple_repository)
    with aged, plain:
        channels = {
            name: grpc.insecure_channel(server.address)
            for name, server in (("aged", aged), ("plain", plain))
        }
        try:
            logs = {name: ConnectivityLog(channel) for name, channel in channels.items()}
            stubs = {name: pb_grpc.GRPCInferenceServiceStub(c) for name, c in channels.items()}
            expected = 2 * np.arange(16, dtype=np.float32)
            for stub in stubs.values():
                np.testing.assert_array_equal(_infer(stub), expected)

            start = time.monotonic()
            assert logs["aged"].wait_to_leave_ready(WATCH_S), (
                f"the channel stayed connected past {WATCH_S}s with a {AGE_S}s maximum age: "
                f"{logs['aged'].states}\n{aged.log()}"
            )
            assert time.monotonic() - start >= 0.5 * AGE_S
            # The next call opens a new connection and succeeds.
            np.testing.assert_array_equal(_infer(stubs["aged"]), expected)
            assert logs["aged"].wait_for_ready_count(2, timeout_s=5) == 2, logs["aged"].states

            # Without the option, the same wait leaves the connection alone.
            remaining_s = max(0.0, WATCH_S - (time.monotonic() - start))
            assert not logs["plain"].wait_to_leave_ready(remaining_s), logs["plain"].states
            np.testing.assert_array_equal(_infer(stubs["plain"]), expected)
            assert logs["plain"].wait_for_ready_count(2, timeout_s=0.5) == 1, logs["plain"].states
            for log in logs.values():
                log.close()
        finally:
            for channel in channels.values():
                channel.close()


def test_negative_connection_age_is_refused(simple_repository: Path) -> None:
    server = RunningServer(simple_repository, ["--max-connection-age-s", "-1"])
    with pytest.raises(RuntimeError, match="must not be negative"):
        server.start()
    server.stop()


def test_round_robin_over_the_addresses_reaches_every_server(simple_repository: Path) -> None:
    with RunningServer(simple_repository) as first, RunningServer(simple_repository) as second:
        target = f"ipv4:{first.address},{second.address}"
        x = np.ones((1, 16), np.float32)
        with Client(target, channel_args={"grpc.lb_policy_name": "round_robin"}) as client:
            client.wait_until_ready(timeout=30)
            for _ in range(20):
                client.infer("simple", {"INPUT0": x, "INPUT1": x})
        counts = []
        for server in (first, second):
            with Client(server.address) as client:
                (stats,) = client.statistics("simple")
                counts.append(stats.inference_count)
        assert sum(counts) == 20
        assert min(counts) >= 5, counts
