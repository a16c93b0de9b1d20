"""The container image's install, run on this machine the way the Dockerfile runs it.

No Docker engine runs here, so the image cannot be built; but everything it
does beyond copying files is deploy/docker/install.sh. These tests stage the
files that the Dockerfile's build stage copies, run the script's `wheels` and
`venv` steps into a fresh directory, and start the server from that
environment the way the entrypoint does: the image's ENTRYPOINT, the
Deployment's arguments, the ConfigMap's settings file, the overlay's
environment, a numeric non-root user, a read-only model repository, and one
writable directory standing for the tmpfs. Then a client checks gRPC health
(the probes' services) and one inference, and SIGTERM drains within the
Deployment's terminationGracePeriodSeconds.

The image carries the native front end (Rust, built into onnxserve's wheel by
install.sh's `wheels` step): the test checks that the environment imports
onnxserve._native and that the server it starts answers REST too (the native
front end's). Where no cargo is installed the install runs with
ONNXSERVE_NATIVE=skip and the serving part is skipped, saying so: no server
starts without the module.

Time, measured on the 2-core development machine: the two steps take 25-35 s
(pip asks the registry, unpacks onnxruntime and compiles bytecode; 60-85 s
while the rest of the suite runs beside them) plus the crate's Rust build
(cargo's build folder is the checkout's native/target where `make native`
made one, so only the crate and PyO3 build again: 30-60 s; about 90 s cold),
the GPU dry run about 20 s, the server 2 s.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from onnxserve.client import Client
from onnxserve.server.app import INFERENCE_SERVICE
from tests.support import deploy
from tests.support.models import add_sub_model
from tests.support.server import free_port, wait_serving

# The image builds the native front end; without cargo here the install is made without it.
CARGO = shutil.which("cargo")
# pip's dry run for the GPU image: its Python (Ubuntu 24.04's) and platform.
GPU_IMAGE_PYTHON = "3.12"
GPU_IMAGE_PLATFORMS = [
    f"manylinux_2_{minor}_x86_64" for minor in (39, 35, 34, 31, 28, 27, 24, 17)
] + ["manylinux2014_x86_64"]


def _reachable_by_others(path: Path) -> bool:
    """Whether a user other than the owner may run ``path`` (every folder above it searchable)."""
    path = path.resolve()
    if not path.exists() or not path.stat().st_mode & stat.S_IXOTH:
        return False
    return all(parent.stat().st_mode & stat.S_IXOTH for parent in path.parents)


def image_like_python() -> str:
    """A Python of this version that the server's non-root user may run.

    The test's own interpreter may live under /root (pyenv), which another
    user cannot enter; the image's interpreter is world-readable, so the venv
    is built from one that is too.
    """
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [
        sys.executable,
        getattr(sys, "_base_executable", sys.executable),
        shutil.which(f"python{version}") or "",
        f"/usr/bin/python{version}",
        f"/usr/local/bin/python{version}",
    ]
    for candidate in candidates:
        if candidate and _reachable_by_others(Path(candidate)):
            return str(Path(candidate).resolve())
    if os.geteuid() == 0:
        pytest.skip(f"no Python {version} here that a non-root user may run")
    return sys.executable


def _run_as() -> tuple[int, int] | None:
    """The image's USER (uid, gid) when this test may switch to it, else None (already non-root)."""
    user = deploy.last(deploy.DOCKERFILES["cpu"], "USER").arguments
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and gid.isdigit(), f"USER must be numeric uid:gid, not {user}"
    if os.geteuid() != 0:
        return None
    return int(uid), int(gid)


@pytest.fixture(scope="module")
def image_root() -> Iterator[Path]:
    """A world-readable scratch folder standing for the image's file system.

    Not pytest's tmp_path: its parents are private to the user running the tests.
    """
    root = Path(tempfile.mkdtemp(prefix="onnxserve-image-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def installed(image_root: Path) -> Path:
    """The CPU image's virtual environment, made by install.sh from the staged build context.

    Used by one test only: pytest-xdist would otherwise build it in each worker.
    """
    source = deploy.stage_build_context(deploy.DOCKERFILES["cpu"], image_root / "build")
    wheels, prefix = image_root / "wheels", image_root / "opt" / "onnxserve"
    env = {**os.environ, "PYTHON": image_like_python()}
    if CARGO is None:
        print("cargo not found: install.sh runs with ONNXSERVE_NATIVE=skip (no native front end)")
        env["ONNXSERVE_NATIVE"] = "skip"
    elif (deploy.ROOT / "native" / "target").is_dir():
        # make native's build folder: the crate's dependencies are built already.
        env.setdefault("CARGO_TARGET_DIR", str(deploy.ROOT / "native" / "target"))
    script = str(source / deploy.INSTALL_SCRIPT.relative_to(deploy.ROOT))
    for step in (
        [script, "wheels", str(source), str(wheels), "cpu"],
        [script, "venv", str(wheels), str(prefix), "cpu"],
    ):
        started = time.monotonic()
        done = subprocess.run(step, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"install.sh {step[1]} failed:\n{done.stdout}\n{done.stderr}"
        print(f"install.sh {step[1]}: {time.monotonic() - started:.1f}s")
    return prefix


def _installed_distributions(prefix: Path) -> dict[str, str]:
    code = (
        "import importlib.metadata as m\n"
        "for d in m.distributions(): print(d.metadata['Name'], d.version)"
    )
    listing = subprocess.run(
        [str(prefix / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return {deploy.normalise(n): v for n, v in (line.split() for line in listing.splitlines())}


def _check_pinned_packages_only(installed: Path) -> None:
    distributions = _installed_distributions(installed)
    pins = deploy.pinned_versions()
    assert "onnxruntime" in distributions and "onnxruntime-gpu" not in distributions
    assert "pip" not in distributions and "setuptools" not in distributions, "no installer kept"
    for name, version in distributions.items():
        if name == "onnxserve":
            continue
        assert pins.get(name) == version, f"{name} {version} is not pinned in constraints.txt"


def _serve_help(installed: Path) -> str:
    done = subprocess.run(
        [str(installed / "bin" / "onnxserve"), "serve", "--help"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def _check_native_front_end(installed: Path) -> None:
    """The image's environment carries the native front end, which the server runs on."""
    if CARGO is None:
        print("cargo not found: the environment was built without the native front end")
        return
    code = (
        "import onnxserve._native as module\n"
        "from onnxserve.server.native import native_available\n"
        "print(module.__file__, native_available())"
    )
    done = subprocess.run(  # -I: not the checkout in the working directory
        [str(installed / "bin" / "python"), "-I", "-c", code],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    path, available = done.stdout.split()
    assert Path(path).is_relative_to(installed) and available == "True", done.stdout


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


def test_the_server_extras_differ_only_in_onnxruntime() -> None:
    """server-cpu is server with onnxruntime's CPU build in place of the GPU one."""
    extras = deploy.pyproject()["project"]["optional-dependencies"]

    def runtime(requirement: str) -> bool:  # onnxruntime or onnxruntime-gpu, not -extensions
        return requirement.startswith(("onnxruntime>", "onnxruntime-gpu"))

    def others(requirements: list[str]) -> list[str]:
        return [r for r in requirements if not runtime(r)]

    assert others(extras["server"]) == others(extras["server-cpu"])
    assert [r for r in extras["server-cpu"] if runtime(r)] == ["onnxruntime>=1.20"]


def test_the_gpu_image_resolves_to_pinned_binary_wheels(tmp_path: Path) -> None:
    """The GPU image's install (onnxruntime-gpu, about 250 MB) is resolved, not downloaded.

    pip's dry run for the GPU image's Python and platform, with the same
    constraints and binary wheels only: every package it picks is pinned.
    """
    report = tmp_path / "report.json"
    platforms = [arg for p in GPU_IMAGE_PLATFORMS for arg in ("--platform", p)]
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
         "--disable-pip-version-check", "--python-version", GPU_IMAGE_PYTHON, *platforms,
         "--only-binary=:all:", "--constraint", str(deploy.CONSTRAINTS), "--report", str(report),
         f"{deploy.ROOT}[server]"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    resolved = {
        deploy.normalise(item["metadata"]["name"]): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    assert "onnxruntime-gpu" in resolved and "onnxruntime" not in resolved
    pins = deploy.pinned_versions()
    for name, version in resolved.items():
        if name != "onnxserve":
            assert pins.get(name) == version, f"{name} {version} is not pinned in constraints.txt"


def _deployment_container(path: Path) -> dict:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    return deployment["spec"]["template"]["spec"]["containers"][0]


def _overlay_environment(overlay: str) -> dict[str, str]:
    patch = _deployment_container(deploy.KUBERNETES / "overlays" / overlay / f"{overlay}.yaml")
    return {item["name"]: item["value"] for item in patch.get("env", [])}


def _image_environment(prefix: Path, writable: Path) -> dict[str, str]:
    """The Dockerfile's ENV, with the image's paths mapped onto this machine's."""
    words = deploy.last(deploy.DOCKERFILES["cpu"], "ENV").arguments.split()
    image_env = dict(word.split("=", 1) for word in words)
    assert image_env["HOME"] == image_env["TMPDIR"] == "/tmp"
    path = image_env["PATH"].replace("/opt/onnxserve", str(prefix))
    return {
        **image_env,
        "PATH": path.replace("$PATH", os.environ.get("PATH", "/usr/bin:/bin")),
        "HOME": str(writable),
        "TMPDIR": str(writable),
        "CUDA_VISIBLE_DEVICES": "",
    }


def _read_only_repository(root: Path) -> Path:
    repository = root / "models"
    add_sub_model(repository / "simple" / "1" / "model.onnx")
    for path in sorted(repository.rglob("*"), reverse=True):
        path.chmod(0o555 if path.is_dir() else 0o444)
    repository.chmod(0o555)
    return repository


def test_the_image_serves_as_its_entrypoint_and_manifests_say(
    installed: Path, image_root: Path
) -> None:
    """One test for the whole install, so that parallel workers build it once."""
    _check_pinned_packages_only(installed)
    _check_native_front_end(installed)
    serve_help = _serve_help(installed)
    assert "--http-port" in serve_help
    if CARGO is None:
        pytest.skip("no cargo here: the environment was built without the native module")
    settings = deploy.serve_settings()
    container = _deployment_container(deploy.KUBERNETES / "base" / "deployment.yaml")
    entrypoint = deploy.last(deploy.DOCKERFILES["cpu"], "ENTRYPOINT").exec_form()
    assert entrypoint == ["onnxserve", "serve"]
    # The Deployment's arguments, with the ConfigMap's mount point mapped to the file here.
    settings_dir = image_root / "etc" / "onnxserve"
    settings_dir.mkdir(parents=True)
    shutil.copy(deploy.SETTINGS_FILE, settings_dir / deploy.SETTINGS_FILE.name)
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "settings"]
    args = [arg.replace(mount["mountPath"], str(settings_dir)) for arg in container["args"]]
    repository = _read_only_repository(image_root)
    writable = image_root / "tmp"
    writable.mkdir()
    port, metrics_port, http_port = free_port(), free_port(), free_port()
    env = {
        **_image_environment(installed, writable),
        **_overlay_environment("cpu"),
        # What differs on this shared machine: the repository is not at /models,
        # the ports must be free ones (the ConfigMap's 8001 and 8002 are what a
        # `make serve` beside the suite holds), and only loopback is listened on
        # (in the pod, 0.0.0.0 lets the probes reach the pod IP: test_deploy_manifests).
        "ONNXSERVE_MODEL_REPOSITORY": str(repository),
        "ONNXSERVE_GRPC_PORT": str(port),
        "ONNXSERVE_METRICS_PORT": str(metrics_port),
        "ONNXSERVE_HTTP_PORT": str(http_port),
        "ONNXSERVE_HOST": "127.0.0.1",
    }
    user = _run_as()
    if user is not None:
        os.chown(writable, *user)
        writable.chmod(0o700)
        # The server's user cannot change the models or the code.
        probe = subprocess.run(
            ["touch", str(repository / "simple" / "x"), str(installed / "x")],
            user=user[0], group=user[1], capture_output=True,
        )  # fmt: skip
        assert probe.returncode != 0
    else:
        assert os.geteuid() != 0
    log = image_root / "server.log"
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            [str(installed / "bin" / entrypoint[0]), *entrypoint[1:], *args],
            env=env,
            cwd=writable,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            **({"user": user[0], "group": user[1], "extra_groups": []} if user else {}),
        )
    try:
        if user is not None:
            assert Path(f"/proc/{process.pid}").stat().st_uid == user[0]
        address = f"127.0.0.1:{port}"
        wait_serving(process, address, 60, lambda: log.read_text(errors="replace"))
        assert "HTTP/REST on " in log.read_text(errors="replace")  # the native front end
        with Client(address, timeout=10) as client:
            x = np.arange(16, dtype=np.float32).reshape(1, 16)
            out = client.infer("simple", {"INPUT0": x, "INPUT1": x})
            np.testing.assert_array_equal(out["OUTPUT0"], 2 * x)
        # The services the kubelet's probes ask for.
        probed = {p["grpc"].get("service", "") for p in _probes(container)}
        assert probed == {"", INFERENCE_SERVICE}
        with grpc.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in probed:
                answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING, service
        for path in ("/v2/health/live", "/v2/health/ready"):  # REST's health, no token needed
            assert _get(f"http://127.0.0.1:{http_port}{path}") == 200, path
        # Pod deletion: SIGTERM after the preStop sleep; exit 0 within the grace.
        process.send_signal(signal.SIGTERM)
        grace = settings["grace_period_s"]
        assert process.wait(timeout=grace + 10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        print(log.read_text(errors="replace"))


def _probes(container: dict) -> list[dict]:
    return [container[k] for k in ("startupProbe", "readinessProbe", "livenessProbe")]


def _docker() -> str:
    """The docker command where an engine answers ``docker info``; else skip, saying why."""
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker command here, so the CPU image is not built (install.sh is tested)")
    info = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=60, check=False)
    if info.returncode != 0:
        why = (info.stderr or info.stdout).strip().splitlines()[-1:] or ["no answer"]
        pytest.skip(f"no Docker engine answers `docker info` here ({why[0]}): image not built")
    return docker


def test_the_cpu_image_builds_and_serves_where_a_docker_engine_runs(tmp_path: Path) -> None:
    """docker build of deploy/docker/Dockerfile, then the image serves a read-only repository."""
    docker = _docker()
    tag = f"onnxserve-test:{os.getpid()}"
    built = subprocess.run(
        [docker, "build", "-f", str(deploy.DOCKERFILES["cpu"]), "-t", tag, str(deploy.ROOT)],
        capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    repository = tmp_path / "models"
    add_sub_model(repository / "simple" / "1" / "model.onnx")
    for path in [repository, *repository.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    port = free_port()
    name = f"onnxserve-test-{os.getpid()}"
    run = [docker, "run", "-d", "--rm", "--name", name, "--read-only", "--tmpfs", "/tmp",
           "-p", f"127.0.0.1:{port}:8001", "-v", f"{repository}:/models:ro", tag]  # fmt: skip
    started = subprocess.run(run, capture_output=True, text=True, timeout=120, check=False)
    assert started.returncode == 0, started.stderr
    try:
        with Client(f"127.0.0.1:{port}", timeout=10) as client:
            client.wait_until_ready(timeout=120)
            x = np.arange(16, dtype=np.float32).reshape(1, 16)
            out = client.infer("simple", {"INPUT0": x, "INPUT1": x})
        np.testing.assert_array_equal(out["OUTPUT0"], 2 * x)
    finally:
        logs = subprocess.run([docker, "logs", name], capture_output=True, text=True, check=False)
        print(logs.stdout[-3000:], logs.stderr[-3000:])
        subprocess.run([docker, "stop", "-t", "30", name], capture_output=True, check=False)
        subprocess.run([docker, "rmi", tag], capture_output=True, check=False)
