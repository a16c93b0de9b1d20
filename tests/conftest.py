"""Fixtures shared across the suite: a protocol test repository and a real server on it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from onnxserve.protocol import grpc_service_pb2_grpc as pb_grpc
from tests.support.models import build_protocol_repository
from tests.support.server import RunningServer

# Tests never touch a GPU, and TensorFlow should not grab every core of a
# 2-core CI machine that also runs a server.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The servers tests start answer REST only where a test gives them a port: the
# default (8000) would collide between servers, and with a `make serve` running.
os.environ.setdefault("ONNXSERVE_HTTP_PORT", "0")


@pytest.fixture(scope="session")
def protocol_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_protocol_repository(tmp_path_factory.mktemp("protocol_repository"))


@pytest.fixture(scope="session")
def protocol_server(protocol_repository: Path) -> Iterator[RunningServer]:
    with RunningServer(protocol_repository) as server:
        yield server


@pytest.fixture(scope="session")
def channel(protocol_server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(protocol_server.address) as channel:
        yield channel


@pytest.fixture(scope="session")
def stub(channel: grpc.Channel) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(channel)
