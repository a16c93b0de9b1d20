"""Model control against real servers: poll and explicit modes, under load, losing no call."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest

from onnxserve.client import Client, InferenceServerError, ModelNotFoundError, UnimplementedError
from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.protocol import grpc_service_pb2_grpc as pb_grpc
from tests.support.batching_models import spin_model
from tests.support.infer_requests import infer_request, outputs_of
from tests.support.models import add_sub_model
from tests.support.server import RunningServer

X = np.ones((1, 16), dtype=np.float32)
LONG_SPIN = 600_000  # loop turns: a run of a few seconds here


def spin_request(model: str, turns: int, version: str = "") -> pb.ModelInferRequest:
    return infer_request(
        model,
        {"INPUT0": np.full((1, 4), 5.0, dtype=np.float32), "SPIN": np.array([[turns]], np.int64)},
        version=version,
    )


class Load:
    """Callers calling a model in a loop on their own threads, tallying status codes."""

    def __init__(self, address: str, request: pb.ModelInferRequest, callers: int = 4) -> None:
        self.codes: Counter[str] = Counter()
        self.versions: Counter[str] = Counter()
        self.latest_version = ""
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._call, args=(address, request)) for _ in range(callers)
        ]

    def _call(self, address: str, request: pb.ModelInferRequest) -> None:
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while not self._stop.is_set():
                try:
                    answer = stub.ModelInfer(request, timeout=30)
                    code, version = "OK", answer.model_version
                except grpc.RpcError as error:
                    code, version = f"{error.code().name}: {error.details()}", ""
                with self._lock:
                    self.codes[code] += 1
                    if version:
                        self.versions[version] += 1
                        self.latest_version = version

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def index_of(stub: pb_grpc.GRPCInferenceServiceStub) -> dict[tuple[str, str], tuple[str, str]]:
    index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=30)
    return {(m.name, m.version): (m.state, m.reason) for m in index.models}


def place(source: Path, target: Path) -> None:
    """Move a prepared folder into the repository at once (a rename), as a deploy would."""
    os.rename(source, target)


def test_poll_mode_swaps_versions_and_models_while_every_call_succeeds(tmp_path: Path) -> None:
    repository, staging = tmp_path / "repository", tmp_path / "staging"
    add_sub_model(repository / "simple" / "1" / "model.onnx")
    spin_model(repository / "slow" / "1" / "model.onnx")
    add_sub_model(staging / "simple2" / "model.onnx")
    spin_model(staging / "slow2" / "model.onnx")
    add_sub_model(staging / "extra" / "1" / "model.onnx")
    args = ["--model-control-mode", "poll", "--repository-poll-secs", "0.2"]
    with RunningServer(repository, args) as server, server.channel() as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = infer_request("simple", {"INPUT0": X, "INPUT1": X})
        with Load(server.address, request) as load:
            wait_for(lambda: load.codes["OK"] > 20)
            # A long call on slow version 1 is in flight when version 2 arrives.
            long_call = stub.ModelInfer.future(spin_request("slow", LONG_SPIN), timeout=120)
            time.sleep(0.3)
            place(staging / "slow2", repository / "slow" / "2")
            place(staging / "simple2", repository / "simple" / "2")
            wait_for(lambda: index_of(stub).get(("slow", "2"), ("",))[0] == "READY")
            if not long_call.done():  # version 1 drains: visible, not serving new calls
                assert index_of(stub)[("slow", "1")][0] == "UNLOADING"
                new_call = stub.ModelInfer(spin_request("slow", 0), timeout=30)
                assert new_call.model_version == "2"
            assert long_call.result(timeout=120).model_version == "1"
            wait_for(lambda: ("slow", "1") not in index_of(stub))
            wait_for(lambda: load.latest_version == "2")
            wait_for(lambda: ("simple", "1") not in index_of(stub))
            # Version 2 leaves again: version 1 comes back before 2 drains.
            place(repository / "simple" / "2", staging / "simple2-gone")
            wait_for(lambda: load.latest_version == "1" and ("simple", "2") not in index_of(stub))
            # A new model folder loads; a removed one drains and leaves the index.
            place(staging / "extra", repository / "extra")
            wait_for(lambda: index_of(stub).get(("extra", "1"), ("",))[0] == "READY")
            answer = stub.ModelInfer(infer_request("extra", {"INPUT0": X, "INPUT1": X}))
            np.testing.assert_array_equal(outputs_of(answer)["OUTPUT0"], X + X)
            place(repository / "extra", staging / "extra-gone")
            wait_for(lambda: not any(name == "extra" for name, _ in index_of(stub)))
            time.sleep(0.5)
        with pytest.raises(grpc.RpcError) as gone:
            stub.ModelInfer(infer_request("extra", {"INPUT0": X, "INPUT1": X}), timeout=30)
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=30).ready
    assert set(load.codes) == {"OK"}, load.codes
    assert load.versions["1"] > 0 and load.versions["2"] > 0
    log = server.log()
    assert "model 'simple' version 1 unloaded" in log


def test_poll_mode_keeps_serving_when_a_new_version_is_broken(tmp_path: Path) -> None:
    add_sub_model(tmp_path / "simple" / "1" / "model.onnx")
    args = ["--model-control-mode", "poll", "--repository-poll-secs", "0.2"]
    with RunningServer(tmp_path, args) as server, server.channel() as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        broken = tmp_path / "simple" / "2" / "model.onnx"
        broken.parent.mkdir()
        broken.write_bytes(b"not an onnx file")
        wait_for(lambda: index_of(stub).get(("simple", "2"), ("",))[0] == "UNAVAILABLE")
        _, reason = index_of(stub)[("simple", "2")]
        assert "onnxruntime cannot load it" in reason and str(tmp_path) not in reason
        assert index_of(stub)[("simple", "1")] == ("READY", "")
        answer = stub.ModelInfer(infer_request("simple", {"INPUT0": X, "INPUT1": X}), timeout=30)
        assert answer.model_version == "1"
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=30).ready


def test_explicit_mode_loads_and_unloads_on_request(tmp_path: Path) -> None:
    spin_model(tmp_path / "slow" / "1" / "model.onnx")
    add_sub_model(tmp_path / "simple" / "1" / "model.onnx")
    corrupt = tmp_path / "broken" / "1" / "model.onnx"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(b"not an onnx file")
    args = ["--model-control-mode", "explicit", "--load-model", "slow"]
    with RunningServer(tmp_path, args) as server, server.channel() as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=30).ready
        assert index_of(stub)[("simple", "")] == ("UNAVAILABLE", "not loaded")
        assert "model_repository" in stub.ServerMetadata(pb.ServerMetadataRequest()).extensions
        with pytest.raises(grpc.RpcError) as not_loaded:
            stub.ModelInfer(infer_request("simple", {"INPUT0": X, "INPUT1": X}), timeout=30)
        assert not_loaded.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "not loaded" in (not_loaded.value.details() or "")

        with Client(server.address) as client:
            client.load_model("simple")
            assert client.infer("simple", {"INPUT0": X, "INPUT1": X})["OUTPUT0"][0, 0] == 2.0
            for parameters, why in (
                ({"file:1/model.onnx": b"\x08\x07"}, "never accepts model files"),
                ({"config": '{"max_batch_size": 0}'}, "config overrides are not accepted"),
            ):
                with pytest.raises(InferenceServerError, match=why) as refused:
                    client.load_model("simple", parameters=parameters)
                assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(InferenceServerError) as missing:
                client.load_model("nothing_here")
            assert missing.value.code == grpc.StatusCode.NOT_FOUND
            with pytest.raises(ModelNotFoundError) as typo:
                client.infer("simpel", {"INPUT0": X, "INPUT1": X})
            assert "the models served are 'broken', 'simple', 'slow'" in typo.value.message
            assert "load it (RepositoryModelLoad)" in typo.value.message
            with pytest.raises(InferenceServerError) as traversal:
                client.load_model("../elsewhere")
            assert traversal.value.code == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(InferenceServerError) as failed:
                client.load_model("broken")
            assert failed.value.code == grpc.StatusCode.FAILED_PRECONDITION
            assert "onnxruntime cannot load it" in str(failed.value)
            assert str(tmp_path) not in str(failed.value)

            # Unloading waits for the call in flight, which finishes OK.
            long_call = stub.ModelInfer.future(spin_request("slow", LONG_SPIN), timeout=120)
            time.sleep(0.5)
            client.unload_model("slow")
            answer = long_call.result(timeout=120)
            assert outputs_of(answer)["OUTPUT0"][0, 0] == 5.0
            with pytest.raises(grpc.RpcError) as after:
                stub.ModelInfer(spin_request("slow", 0), timeout=30)
            assert after.value.code() == grpc.StatusCode.UNAVAILABLE
            assert index_of(stub)[("slow", "")] == ("UNAVAILABLE", "not loaded")
            client.load_model("slow")
            assert index_of(stub)[("slow", "1")] == ("READY", "")
    assert "drains and unloads" in server.log()


def test_model_control_is_refused_in_poll_mode(tmp_path: Path) -> None:
    add_sub_model(tmp_path / "simple" / "1" / "model.onnx")
    args = ["--model-control-mode", "poll"]
    with RunningServer(tmp_path, args) as server, Client(server.address) as client:
        with pytest.raises(UnimplementedError, match="--model-control-mode poll"):
            client.unload_model("simple")
        assert client.is_model_ready("simple")
        with pytest.raises(ModelNotFoundError, match="loads at the next scan"):
            client.infer("simpel", {"INPUT0": X, "INPUT1": X})


def test_an_unknown_model_names_the_models_served_and_how_to_add_one(tmp_path: Path) -> None:
    """A typo, or a folder added after the start in mode none: what is served, what to do."""
    names = [f"model{i:02d}" for i in range(12)]
    for name in names:
        add_sub_model(tmp_path / name / "1" / "model.onnx")
    with RunningServer(tmp_path) as server, Client(server.address) as client:
        with pytest.raises(ModelNotFoundError) as unknown:
            client.infer("model", {"INPUT0": X, "INPUT1": X})
        message = unknown.value.message
        listed = ", ".join(f"'{n}'" for n in names[:10])
        assert message.startswith(f"model 'model' is not served: the models served are {listed}")
        assert "and 2 more (RepositoryIndex lists them)" in message
        assert "'model11'" not in message
        assert "--model-control-mode poll (loads new folders)" in message
        assert "restart the server" in message
        with pytest.raises(ModelNotFoundError, match="the models served are"):
            client.model_metadata("model")
