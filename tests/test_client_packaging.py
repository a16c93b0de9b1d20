"""``pip install onnxserve`` (no extras) is the client: no onnxruntime, TensorFlow, tf2onnx, Keras.

Checked three ways: the wheel's own metadata; pip resolving that wheel's whole
dependency set from the package index without installing it (``--dry-run
--report``); and the client and ``onnxserve infer`` working against a real
server in a process where the heavy packages cannot be imported.

Where cargo is found the wheel also carries the native front end
(``onnxserve/_native.abi3.so``, built by setup.py with setuptools-rust; the
wheel is then cp311-abi3), which imports from an install of it; without cargo
the build still succeeds, pure, and says why. The Rust build reuses the
checkout's native/target (``make native``'s) when there is one: about 30-60 s
for the crate itself on the 2-core development machine, 90 s or more cold.
"""

from __future__ import annotations

import json
import os
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
# What the wheel needs to build: metadata, the packages' sources, and the native
# front end's crate with the .proto files its build.rs reads.
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "onnxserve", "client",
           "server", "converter", "examples", "native", "proto")  # fmt: skip
NATIVE = "onnxserve/_native.abi3.so"
CARGO = shutil.which("cargo")
# Build outputs of the checkout that a build from sources never sees.
_NOT_SOURCES = shutil.ignore_patterns("__pycache__", "target", "_native*.so")


def _copy_sources(destination: Path) -> Path:
    destination.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, destination / name, ignore=_NOT_SOURCES)
        else:
            shutil.copy2(path, destination / name)
    return destination


def _build_wheel(source: Path, dist: Path, env: dict[str, str]) -> tuple[Path, str]:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--verbose", "--no-deps",
         "--wheel-dir", str(dist), str(source)],
        capture_output=True, text=True, timeout=900, check=False, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    (built,) = dist.glob("onnxserve-*.whl")
    return built, done.stdout + done.stderr


def _wheel_tags(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/WHEEL")]
        text = archive.read(name).decode()
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Tag:")]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built from a copy of its sources (the shared tree is left alone).

    cargo's build folder is the checkout's native/target where one exists, so the
    crate's dependencies built by ``make native`` are reused (cargo locks it).
    """
    work = tmp_path_factory.mktemp("wheel")
    env = dict(os.environ)
    if (ROOT / "native" / "target").is_dir():
        env.setdefault("CARGO_TARGET_DIR", str(ROOT / "native" / "target"))
    built, _ = _build_wheel(_copy_sources(work / "src"), work / "dist", env)
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


def test_the_wheel_carries_the_native_front_end_where_cargo_is(wheel: Path) -> None:
    if CARGO is None:
        pytest.skip("cargo not found: the wheel is built without the native front end")
    with zipfile.ZipFile(wheel) as archive:
        assert NATIVE in archive.namelist()
    # One build for every CPython >= 3.11 (PyO3's abi3-py311), on this platform only.
    (tag,) = _wheel_tags(wheel)
    assert tag.startswith("cp311-abi3-") and not tag.endswith("-any"), tag


def test_without_cargo_the_wheel_builds_pure_and_says_so(tmp_path: Path) -> None:
    """Client-only and Python-front-end installs need no Rust: the build says why it skipped."""
    cargo_dirs = {str(Path(CARGO).parent)} if CARGO else set()
    path = os.pathsep.join(
        d for d in os.environ.get("PATH", "").split(os.pathsep) if d and d not in cargo_dirs
    )
    env = {**os.environ, "PATH": path, "CARGO": str(tmp_path / "no-cargo")}
    built, output = _build_wheel(_copy_sources(tmp_path / "src"), tmp_path / "dist", env)
    assert _wheel_tags(built) == ["py3-none-any"]
    with zipfile.ZipFile(built) as archive:
        assert not [n for n in archive.namelist() if "_native" in n]
    assert "building without the native front end (the client only: no server then)" in output


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
    with zipfile.ZipFile(wheel) as archive:
        carries_native = NATIVE in archive.namelist()
    if carries_native:
        # The module loads from the install (the server runs on it).
        code = "import onnxserve._native as module; print(module.__file__)"
        imported = subprocess.run(
            [str(venv / "bin" / "python"), "-c", code],
            capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
        )  # fmt: skip
        assert imported.returncode == 0, imported.stderr
        assert imported.stdout.strip().startswith(str(venv)), imported.stdout
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
