"""Python models, ensembles and BLS calls against real server processes.

Models are Triton Python-backend model.py files (tests/support/pymodels), run
unchanged; Triton's own client (tritonclient.grpc, in a subprocess) calls them
as it calls Triton, and where real Triton can run here (``make triton-env``)
the same repository is served by Triton 2.51 and both answers are compared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from onnxserve.client import Client
from onnxserve.client.errors import InferenceServerError
from onnxserve.client.types import ModelStatistics
from tests.support.python_repository import (
    JUDGE_CONFIG,
    build_bad_ensembles,
    build_onnxserve_repository,
    build_triton_comparable,
    expected_score,
    python_model,
)
from tests.support.server import RunningServer

CHECK = Path(__file__).parent / "support" / "triton_python_check.py"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repository = build_onnxserve_repository(tmp_path_factory.mktemp("python-models"))
    with RunningServer(repository) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[Client]:
    with Client(server.address) as connected:
        yield connected


def _triton_client_view(address: str) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, str(CHECK), address], capture_output=True, text=True, timeout=180
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(completed.stdout)


@pytest.fixture(scope="module")
def seen(server: RunningServer) -> dict[str, Any]:
    pytest.importorskip("tritonclient", reason="tritonclient is a dev dependency")
    return _triton_client_view(server.address)


def _statistics(client: Client, name: str) -> ModelStatistics:
    (stats,) = client.statistics(name)
    return stats


def test_triton_add_sub_example_answers_tritonclient(seen: dict[str, Any]) -> None:
    assert seen["add_sub"] == {"OUTPUT0": [1.5, 2.5, 3.5, 4.5], "OUTPUT1": [0.5, 1.5, 2.5, 3.5]}
    assert seen["add_sub_metadata"]["platform"] == "python"
    assert seen["add_sub_auto"] == {  # its tensors from its own auto_complete_config
        "OUTPUT0": [1.5, 2.5, 3.5, 4.5],
        "inputs": [["INPUT0", "TYPE_FP32", ["4"]], ["INPUT1", "TYPE_FP32", ["4"]]],
        "max_batch_size": 0,
    }
    assert seen["twice"] == {
        "TWICE_A": [2.0, 4.0, 6.0, 8.0],
        "TWICE_B": [1.0, 1.0, 1.0, 1.0],
        "platform": "ensemble",
    }
    assert seen["add_sub_config"] == {"backend": "python", "name": "add_sub"}
    assert seen["unknown_model"]["status"] == "StatusCode.NOT_FOUND"


def test_model_errors_fail_only_their_own_requests(seen: dict[str, Any]) -> None:
    judged = seen["judge"]
    assert judged["2.0"] == {"status": "OK", "outputs": [[4.0]]}
    # A TritonError is that request's status and message.
    assert judged["-1.0"] == {
        "status": "StatusCode.INVALID_ARGUMENT",
        "message": "negative input is refused",
    }
    # execute raising: INTERNAL with the exception, without a traceback or a path.
    raised = judged["13.0"]
    assert raised["status"] == "StatusCode.INTERNAL"
    assert "RuntimeError: thirteen is unlucky" in raised["message"]
    assert "/" not in raised["message"]
    # Batched with others, a refused request fails alone.
    statuses = [answer["status"] for answer in seen["judge_concurrent"]]
    assert statuses == ["OK", "OK", "StatusCode.INVALID_ARGUMENT", "OK", "OK", "OK"]
    values = [a["outputs"][0][0] for a in seen["judge_concurrent"] if a["status"] == "OK"]
    assert values == [2.0, 4.0, 8.0, 10.0, 12.0]


def test_a_raising_request_batched_with_others_fails_alone(client: Client) -> None:
    values = [1.0, 13.0, 3.0, 4.0]
    with ThreadPoolExecutor(len(values)) as pool:
        futures = [
            pool.submit(client.infer, "judge", {"INPUT0": np.array([[v]], np.float32)})
            for v in values
        ]
    outcomes: list[Any] = []
    for future in futures:
        try:
            outcomes.append(float(future.result()["OUTPUT0"][0, 0]))
        except InferenceServerError as exc:
            outcomes.append(exc.code)
    assert outcomes == [2.0, grpc.StatusCode.INTERNAL, 6.0, 8.0]


def test_classification_extension_answers_as_triton_does(seen: dict[str, Any]) -> None:
    classes = seen["classification"]
    assert classes["1"] == {
        "values": [["0.700000:1:one"], ["0.400000:0:zero"]],
        "shape": [2, 1],
        "datatype": "BYTES",
    }
    assert classes["2"]["values"][1] == ["0.400000:0:zero", "0.300000:2:two"]
    assert classes["10"]["shape"] == [2, 4]  # at most the classes there are


def test_requests_reach_execute_in_batches(client: Client) -> None:
    before = _statistics(client, "judge")
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(
                lambda v: client.infer("judge", {"INPUT0": np.array([[v]], np.float32)}),
                [float(v) for v in range(1, 9)],
            )
        )
    assert [float(a["OUTPUT0"][0, 0]) for a in answers] == [2.0 * v for v in range(1, 9)]
    after = _statistics(client, "judge")
    assert after.inference_count - before.inference_count == 8
    executions = after.execution_count - before.execution_count
    assert executions < 8, "concurrent requests should share execute calls"
    # compute_infer is the time execute took in the model's process; the rest is the IPC.
    assert after.inference_stats.compute_infer.ns > before.inference_stats.compute_infer.ns
    assert any(batch.batch_size > 1 for batch in after.batch_stats)


def test_tokenizer_then_onnx_ensemble_answers_sentences(client: Client) -> None:
    sentences = ["The movie was great.", "a bad awful movie", "good good", "unknown words"]
    before = {m: _statistics(client, m) for m in ("sentiment", "tokenizer", "scorer")}
    with ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(
                lambda s: client.infer("sentiment", {"SENTENCE": np.array([[s]], dtype=object)}),
                sentences,
            )
        )
    scores = [float(answer["SCORE"][0, 0]) for answer in answers]
    assert scores == [expected_score(s) for s in sentences] == [2.0, -3.0, 2.0, 0.0]
    after = {m: _statistics(client, m) for m in ("sentiment", "tokenizer", "scorer")}
    for name in ("sentiment", "tokenizer", "scorer"):  # the ensemble and each step counted
        assert after[name].inference_count - before[name].inference_count == 4
        assert (
            after[name].inference_stats.success.count - before[name].inference_stats.success.count
            == 4
        )
    ensemble = after["sentiment"].inference_stats
    assert ensemble.compute_infer.ns > before["sentiment"].inference_stats.compute_infer.ns
    metadata = client.model_metadata("sentiment")
    assert metadata.platform == "ensemble"
    assert [(t.name, t.datatype, t.shape) for t in metadata.inputs] == [
        ("SENTENCE", "BYTES", (-1, 1))
    ]


def test_an_ensemble_step_error_names_the_step(client: Client) -> None:
    with pytest.raises(InferenceServerError) as info:
        client.infer("sentiment", {"SENTENCE": np.array([["a", "b"]], dtype=object)})
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT  # the ensemble's own check
    assert "SENTENCE" in info.value.message


def test_bls_calls_merge_into_the_onnx_models_batches(client: Client) -> None:
    before = _statistics(client, "adder")
    calls = 16
    with ThreadPoolExecutor(calls) as pool:
        answers = list(
            pool.map(
                lambda v: client.infer("bls_async", {"INPUT0": np.array([[v]], np.float32)}),
                [float(v) for v in range(calls)],
            )
        )
    assert [float(a["OUTPUT0"][0, 0]) for a in answers] == [2.0 * v for v in range(calls)]
    after = _statistics(client, "adder")
    assert after.inference_count - before.inference_count == calls
    executions = after.execution_count - before.execution_count
    assert executions <= calls // 2, f"{calls} BLS calls ran in {executions} executions"


def test_bls_exec_and_its_errors(client: Client) -> None:
    answer = client.infer("bls_sync", {"INPUT0": np.array([[3.0]], np.float32)})
    assert float(answer["OUTPUT0"][0, 0]) == 6.0
    with pytest.raises(InferenceServerError) as info:
        client.infer("bls_missing", {"INPUT0": np.array([[3.0]], np.float32)})
    assert info.value.code == grpc.StatusCode.INTERNAL
    assert "the call failed: model 'no_such_model' is not served" in str(info.value.message)


def _triton_peer_python() -> Path | None:
    from benchmarks import triton_peer

    own = os.environ.get(triton_peer.OWN_VENV)
    if own:
        return Path(own) / "bin" / "python"
    python = triton_peer.VENV / "bin" / "python"
    return python if python.exists() else None


def test_the_same_model_py_files_on_real_triton(tmp_path: Path, seen: dict[str, Any]) -> None:
    """Triton 2.51 serves the same repository; the answers must be the same."""
    if _triton_peer_python() is None:
        pytest.skip("real Triton is not installed here (make triton-env builds .venv-triton)")
    from benchmarks.triton_peer import PeerUnavailable, serving_repository

    repository = build_triton_comparable(tmp_path / "repository")
    try:
        with serving_repository(repository, tmp_path / "triton.log") as (address, _, _):
            triton = _triton_client_view(address)
    except PeerUnavailable as exc:
        pytest.skip(f"Triton cannot run here: {exc}")
    compared = ("add_sub", "add_sub_metadata", "add_sub_config", "classification", "twice")
    for key in (*compared, "add_sub_auto"):
        assert seen[key] == triton[key], key
    for key in ("judge", "judge_concurrent"):
        ours = [(v["status"], v.get("outputs")) for v in _values(seen[key])]
        theirs = [(v["status"], v.get("outputs")) for v in _values(triton[key])]
        assert ours == theirs, key
    assert seen["judge"]["-1.0"]["message"] == triton["judge"]["-1.0"]["message"]
    # Both name the exception; Triton adds a traceback with the server's paths, onnxserve not.
    assert "RuntimeError: thirteen is unlucky" in triton["judge"]["13.0"]["message"]
    assert seen["unknown_model"]["status"] == triton["unknown_model"]["status"]


def _values(answers: dict[str, Any] | list[Any]) -> list[Any]:
    return list(answers.values()) if isinstance(answers, dict) else answers


def _index(client: Client) -> dict[str, Any]:
    return {entry.name: entry for entry in client.repository_index()}


def test_a_crashing_model_fails_its_batch_restarts_then_gives_up(tmp_path: Path) -> None:
    python_model(tmp_path, "judge", "judge", JUDGE_CONFIG)
    python_model(tmp_path, "steady", "judge", JUDGE_CONFIG)
    with (
        RunningServer(tmp_path, ["--log-format", "json"]) as running,
        Client(running.address) as client,
    ):
        one = {"INPUT0": np.array([[1.0]], np.float32)}
        crash = {"INPUT0": np.array([[666.0]], np.float32)}
        with pytest.raises(InferenceServerError):
            client.infer("judge", {"INPUT0": np.array([[13.0]], np.float32)})
        # The model's process logs as the server does: one JSON object per line, its traceback
        # inside, the instance named. Its line reaches the server's log through a pipe, so it
        # may land a moment after the answer (seen once on a loaded machine).
        raised: list[dict[str, Any]] = []
        waited_until = time.monotonic() + 10
        while not raised and time.monotonic() < waited_until:
            lines = running.log().splitlines()
            events = [json.loads(line) for line in lines if line.startswith("{")]
            raised = [e for e in events if "execute raised" in e["message"]]
            if not raised:
                time.sleep(0.05)
        assert raised and raised[0]["worker"] == "judge_0_0"
        assert "thirteen is unlucky" in raised[0]["message"]
        with pytest.raises(InferenceServerError) as info:
            client.infer("judge", crash)
        assert info.value.code == grpc.StatusCode.INTERNAL
        assert "killed by SIGSEGV" in info.value.message
        assert "a new process was started" in info.value.message
        assert float(client.infer("judge", one)["OUTPUT0"][0, 0]) == 2.0  # restarted
        for _ in range(3):
            with pytest.raises(InferenceServerError):
                client.infer("judge", crash)
        deadline = time.monotonic() + 30
        while _index(client)["judge"].state != "UNAVAILABLE" and time.monotonic() < deadline:
            time.sleep(0.1)
        entry = _index(client)["judge"]
        assert entry.state == "UNAVAILABLE"
        assert "crashed 4 times in 60 s (last: its process killed by SIGSEGV)" in entry.reason
        with pytest.raises(InferenceServerError) as info:
            client.infer("judge", one)
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        # The server and its other models never noticed.
        assert float(client.infer("steady", one)["OUTPUT0"][0, 0]) == 2.0
        assert client.is_live()
        assert not client.is_ready()  # strict readiness: a model it serves is gone


def test_bad_ensembles_and_python_models_are_refused_by_name(tmp_path: Path) -> None:
    expected = build_bad_ensembles(tmp_path)
    python_model(tmp_path, "no_tensors", "judge", "max_batch_size: 8")
    needs = python_model(tmp_path, "needs_packages", "judge", JUDGE_CONFIG)
    (needs / "requirements.txt").write_text("numpy\nno-such-distribution-here>=1.0\n")
    broken = python_model(tmp_path, "broken", "judge", JUDGE_CONFIG)
    (broken / "1" / "model.py").write_text(
        "class TritonPythonModel:\n    def initialize(self, args):\n"
        "        raise ImportError('no module named tokenizers')\n"
    )
    # Packages the operator installed into the model's folder (pip install --target).
    own = python_model(tmp_path, "own_packages", "judge", JUDGE_CONFIG)
    (own / "requirements.txt").write_text("fakedist>=1.0\n")
    packages = own / "site-packages"
    (packages / "fakedist-1.2.dist-info").mkdir(parents=True)
    (packages / "fakedist-1.2.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fakedist\nVersion: 1.2\n"
    )
    (packages / "fakedist.py").write_text("ANSWER = 42\n")
    source = (own / "1" / "model.py").read_text()
    (own / "1" / "model.py").write_text("import fakedist\n" + source)
    expected["no_tensors"] = "must declare its inputs and outputs in config.pbtxt"
    expected["needs_packages"] = "no-such-distribution-here>=1.0 (not installed)"
    expected["broken"] = "initialize raised ImportError: no module named tokenizers"
    with (
        RunningServer(tmp_path, require_ready=False) as running,
        Client(running.address) as client,
    ):
        index = _index(client)
        for name, fragment in expected.items():
            assert index[name].state == "UNAVAILABLE", name
            assert fragment in index[name].reason, (name, index[name].reason)
            assert str(tmp_path) not in index[name].reason
        assert index["adder"].state == index["tokenizer"].state == "READY"
        assert index["own_packages"].state == "READY", index["own_packages"].reason
        answer = client.infer("own_packages", {"INPUT0": np.array([[2.0]], np.float32)})
        assert float(answer["OUTPUT0"][0, 0]) == 4.0


def test_explicit_mode_loads_python_models_only_when_the_operator_allows(tmp_path: Path) -> None:
    build_triton_comparable(tmp_path)
    flags = ["--model-control-mode", "explicit", "--load-model", "judge"]
    with RunningServer(tmp_path, flags) as running, Client(running.address) as client:
        assert client.is_model_ready("judge")  # the operator's own choice at start-up
        with pytest.raises(InferenceServerError) as info:
            client.load_model("add_sub")
        assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert "--allow-python-load" in info.value.message
        assert not client.is_model_ready("add_sub")
    allowed = ["--model-control-mode", "explicit", "--allow-python-load"]
    with RunningServer(tmp_path, allowed) as running, Client(running.address) as client:
        client.load_model("add_sub")
        a = np.ones(4, np.float32)
        assert client.infer("add_sub", {"INPUT0": a, "INPUT1": a})["OUTPUT0"].tolist() == [2.0] * 4
        client.unload_model("add_sub")
        assert not client.is_model_ready("add_sub")
        deadline = time.monotonic() + 10
        while "Cleaning up..." not in running.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "Cleaning up..." in running.log()  # add_sub's finalize() ran at unload
