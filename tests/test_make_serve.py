"""`make serve` and `make test` at once, as README's quick start lists them.

The real `make serve` of this checkout runs on the ports the environment
gives it (ONNXSERVE_GRPC_PORT, ONNXSERVE_HTTP_PORT, ONNXSERVE_METRICS_PORT: free
ones here, since another `make serve` may hold 8001, 8000 and 8002 on this machine), serving a small
repository (MODEL_REPOSITORY=..., so that the examples are not trained here);
while it serves, a few of the suite's own server tests run in a pytest of
their own, on free ports. Then `make serve` still answers, and stops on
SIGTERM. About 15 s of CPU on the 2-core machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from onnxserve.client import Client
from tests.support.models import add_sub_model
from tests.support.server import free_port, rest_served, wait_serving

ROOT = Path(__file__).resolve().parent.parent
# Tests of the suite that start servers of their own (a port in use, SIGTERM).
_SUITE_SAMPLE = (
    "tests/test_server_lifecycle.py::test_busy_port_is_a_clear_error",
    "tests/test_server_lifecycle.py::test_sigterm_drains_and_exits_zero",
)


def _make() -> str:
    make = shutil.which("make")
    if make is None:
        pytest.skip("no make on this machine")
    return make


def test_make_serve_takes_its_ports_from_the_environment_while_the_suite_runs(
    tmp_path: Path,
) -> None:
    repository = tmp_path / "models"
    add_sub_model(repository / "simple" / "1" / "model.onnx")
    grpc_port, metrics_port, http_port = free_port(), free_port(), free_port()
    venv = Path(sys.prefix)
    make_serve_ports = {
        "ONNXSERVE_GRPC_PORT": str(grpc_port),
        "ONNXSERVE_METRICS_PORT": str(metrics_port),
        "ONNXSERVE_HTTP_PORT": str(http_port),
    }
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", **make_serve_ports}
    # This environment is installed already (-o: do not reinstall it).
    command = [_make(), "-s", "-o", f"{venv}/.onnxserve-installed", "serve",
               f"VENV={venv}", f"MODEL_REPOSITORY={repository}"]  # fmt: skip
    log = tmp_path / "make-serve.log"
    with open(log, "wb") as log_file:
        serving = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True,  # make and the server: one group to stop
        )  # fmt: skip
    try:
        address = f"127.0.0.1:{grpc_port}"
        wait_serving(serving, address, 60, lambda: log.read_text(errors="replace"))
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
        assert b"nv_inference_request_success" in metrics.read()
        if rest_served():  # REST is the native front end's
            url = f"http://127.0.0.1:{http_port}/v2/health/ready"
            ready = urllib.request.urlopen(url, timeout=10)
            assert json.loads(ready.read()) == {"ready": True}
        suite = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *_SUITE_SAMPLE],
            cwd=ROOT, env={k: v for k, v in env.items() if k not in make_serve_ports},
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert suite.returncode == 0, suite.stdout + suite.stderr
        assert serving.poll() is None, log.read_text(errors="replace")
        with Client(address, timeout=10) as client:
            x = np.ones((1, 16), np.float32)
            np.testing.assert_array_equal(
                client.infer("simple", {"INPUT0": x, "INPUT1": x})["OUTPUT0"], 2 * x
            )
        text = log.read_text(errors="replace")
        assert f"127.0.0.1:{grpc_port}" in text and ":8001" not in text and ":8000" not in text
    finally:
        if serving.poll() is None:
            os.killpg(serving.pid, signal.SIGTERM)
        try:
            serving.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(serving.pid, signal.SIGKILL)
            serving.wait()
