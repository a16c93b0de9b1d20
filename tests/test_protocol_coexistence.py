"""The SDK imports and works beside Triton's and KServe's clients in one process.

Both register protobuf package ``inference`` (and Triton's the file name
``model_config.proto``) in protobuf's default descriptor pool; onnxserve's
generated code registers in a private pool, so either import order works and
both clients talk to the same server from one process. KServe's client needs
protobuf 6 and cannot share an environment with the project (protobuf 7), so
its registration is reproduced with protoc's unmodified output for the same
package, which is what its grpc_predict_v2_pb2 does.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from scripts.generate_protos import PROTO_DIR
from tests.support.server import RunningServer

_USE_BOTH = """
import numpy as np
a = np.arange(16, dtype=np.float32).reshape(1, 16)
with onnxserve.client.Client(ADDRESS) as ours:
    out = ours.infer("simple", {"INPUT0": a, "INPUT1": a})["OUTPUT0"]
assert np.array_equal(out, a + a), out
triton = tritonclient.grpc.InferenceServerClient(ADDRESS)
inputs = [tritonclient.grpc.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
for tensor in inputs:
    tensor.set_data_from_numpy(a)
theirs = triton.infer("simple", inputs).as_numpy("OUTPUT1")
assert np.array_equal(theirs, a - a), theirs
assert triton.get_model_config("simple").config.name == "simple"
assert ours_config_name() == "simple"
print("both clients answered")
"""


def _run(code: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=cwd
    )


@pytest.mark.parametrize("triton_first", [True, False], ids=["triton-first", "onnxserve-first"])
def test_sdk_and_triton_client_share_a_process(
    protocol_server: RunningServer, triton_first: bool
) -> None:
    imports = ["import tritonclient.grpc", "import onnxserve.client"]
    if not triton_first:
        imports.reverse()
    code = "\n".join(
        [
            *imports,
            f"ADDRESS = {protocol_server.address!r}",
            "def ours_config_name():",
            "    with onnxserve.client.Client(ADDRESS) as c:",
            "        return c.model_config('simple').name",
            textwrap.dedent(_USE_BOTH),
        ]
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr
    assert "both clients answered" in result.stdout


@pytest.mark.parametrize("foreign_first", [True, False], ids=["foreign-first", "onnxserve-first"])
def test_sdk_imports_beside_a_default_pool_inference_package(
    tmp_path: Path, foreign_first: bool
) -> None:
    """What KServe's client registers: package ``inference`` in the default pool."""
    generated = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--proto_path={PROTO_DIR}",
            f"--python_out={tmp_path}",
            str(PROTO_DIR / "model_config.proto"),
            str(PROTO_DIR / "grpc_service.proto"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert generated.returncode == 0, generated.stderr
    imports = ["import grpc_service_pb2 as foreign", "import onnxserve.client"]
    if not foreign_first:
        imports.reverse()
    code = "\n".join(
        [
            f"import sys; sys.path.insert(0, {str(tmp_path)!r})",
            *imports,
            "from onnxserve.protocol import grpc_service_pb2 as ours",
            "wire = foreign.ModelInferRequest(model_name='m', id='7').SerializeToString()",
            "assert ours.ModelInferRequest.FromString(wire).id == '7'",
            "print('ok')",
        ]
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
