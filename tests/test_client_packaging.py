"""``pip install onnxserve`` (no extras) is the client: no onnxruntime, TensorFlow, tf2onnx, Keras.

Checked three ways: the wheel's own metadata; pip resolving that wheel's whole
dependency set from the package index without installing it (``--dry-run
--report``); and the client and ``onnxserve infer`` working against a real
server in a process where the heavy packages cannot be imported.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.server import RunningServer

ROOT = Path(__file__).resolve().parent.parent
HEAVY = {"onnxruntime", "onnxruntime-gpu", "tensorflow", "tensorflow-cpu", "tf2onnx", "keras"}
# What the wheel needs to build: metadata, and the packages' sources.
SOURCES = ("pyproject.toml", "README.md", "onnxserve", "client", "server", "converter", "examples")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built from a copy of its sources (the shared tree is left alone)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    source.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
         "--wheel-dir", str(work / "dist"), str(source)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    (built,) = (work / "dist").glob("onnxserve-*.whl")
    return built


def test_the_wheel_requires_no_heavy_package_without_an_extra(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = archive.read(metadata_name).decode()
    requirements = [
        Requirement(line.split(":", 1)[1].strip())
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:")
    ]
    base = {
        canonicalize_name(r.name)
        for r in requirements
        if r.marker is None or r.marker.evaluate({"extra": ""})
    }
    assert base == {"grpcio", "protobuf", "numpy", "ml-dtypes"}
    # The extras still bring the server and the converter.
    server = {r.name for r in requirements if r.marker and r.marker.evaluate({"extra": "server"})}
    assert {"onnxruntime", "onnxruntime-gpu"} & server
    # The client ships typed: py.typed and the stubs of the generated code.
    assert "onnxserve/client/py.typed" in names
    assert "onnxserve/protocol/grpc_service_pb2.pyi" in names
    assert "onnxserve/client/cli.py" in names
    # The examples ship under onnxserve's name (no top-level "examples" to clash with
    # tf2onnx's), with their data; training them is the "examples" extra.
    assert "onnxserve/examples/sentiment/fallback_sentences.tsv" in names
    assert not [n for n in names if n.startswith("examples/")]
    examples = {
        r.name for r in requirements if r.marker and r.marker.evaluate({"extra": "examples"})
    }
    assert {"onnxserve", "scikit-learn"} <= examples


def test_pip_resolves_a_plain_install_without_heavy_packages(wheel: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
         "--report", str(report), str(wheel)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    resolved = {
        canonicalize_name(item["metadata"]["name"])
        for item in json.loads(report.read_text())["install"]
    }
    assert {"onnxserve", "grpcio", "protobuf", "numpy", "ml-dtypes"} <= resolved
    assert not resolved & HEAVY, f"a plain install would pull in {sorted(resolved & HEAVY)}"
    assert "onnx" not in resolved


_WITHOUT_HEAVY = """
import sys
# As on a plain install: these cannot be imported.
for name in ("onnxruntime", "onnx", "tensorflow", "tf2onnx", "keras"):
    sys.modules[name] = None
from onnxserve.cli import main
code = main(sys.argv[1:])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in
                ("onnxruntime", "onnx", "tensorflow", "tf2onnx", "keras") and sys.modules[m])
print("HEAVY-LOADED", loaded, file=sys.stderr)
sys.exit(code)
"""


def test_the_client_and_infer_command_work_without_onnxruntime_or_tensorflow(
    protocol_server: RunningServer,
) -> None:
    row = json.dumps([1.5] * 16)
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_HEAVY, "infer", "simple", "--url", protocol_server.address,
         "--input", f"INPUT0={row}", "--input", f"INPUT1={row}", "--format", "json"],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["OUTPUT0"]["data"] == [[3.0] * 16]
    assert "HEAVY-LOADED []" in result.stderr


def test_the_built_wheel_installs_alone_as_the_client(
    wheel: Path, tmp_path: Path, protocol_server: RunningServer
) -> None:
    """README's install: the wheel from `make wheel`, without extras, in a fresh environment."""
    venv = tmp_path / "client-venv"
    uv = shutil.which("uv")
    if uv:
        steps = [[uv, "venv", "--quiet", "--python", sys.executable, str(venv)],
                 [uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"),
                  str(wheel)]]  # fmt: skip
    else:
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        steps = [[sys.executable, "-m", "venv", str(venv)], [*pip, str(wheel)]]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
    names = "import importlib.metadata as m\nfor d in m.distributions(): print(d.metadata['Name'])"
    listing = subprocess.run(
        [str(venv / "bin" / "python"), "-c", names],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    installed = {canonicalize_name(name) for name in listing.split()}
    assert "onnxserve" in installed and not installed & (HEAVY | {"onnx"}), sorted(installed)
    row = json.dumps([1.5] * 16)
    command = str(venv / "bin" / "onnxserve")
    infer = subprocess.run(
        [command, "infer", "simple", "--url", protocol_server.address, "--input", f"INPUT0={row}",
         "--input", f"INPUT1={row}", "--format", "json"],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert infer.returncode == 0, infer.stderr
    assert json.loads(infer.stdout)["OUTPUT0"]["data"] == [[3.0] * 16]
    models = subprocess.run(
        [command, "models", "--url", protocol_server.address],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert models.returncode == 0 and "simple" in models.stdout, models.stderr
    # The server's subcommand says which extra it needs rather than failing on an import.
    serve = subprocess.run(
        [command, "serve", "--model-repository", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert serve.returncode == 1
    assert "Traceback" not in serve.stderr, serve.stderr
    assert "the server needs the server extra: pip install 'onnxserve[server]'" in serve.stderr
