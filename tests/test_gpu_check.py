"""The GPU check's own logic on the CPU: no GPU -> nothing runs; parts are stashed, joined, checked.

The wheelhouse download is not part of the suite (network, minutes); the
parts here are small payloads split by the same code.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from benchmarks.gpu_machine import find_cuda_libraries, library_dirs
from benchmarks.gpu_parts import MANIFEST, PartsError, join, split, stash

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _check(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "ONNXSERVE_GPU_WORK": str(tmp_path / "work"),
        "ONNXSERVE_GPU_PARTS": str(tmp_path / "carried"),
        "OUT": str(tmp_path / "out"),
        **(env or {}),
    }
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=environment, timeout=120
    )


def _payload(tmp_path: Path) -> Path:
    """A small payload shaped like the wheelhouse's: wheels/ and extras.tar.xz."""
    extras = io.BytesIO()
    with tarfile.open(fileobj=extras, mode="w:xz") as archive:
        data = b"model bytes"
        info = tarfile.TarInfo("extras/models/m/1/model.onnx")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    payload = tmp_path / "payload.tar"
    with tarfile.open(payload, "w") as archive:
        for name, data in (
            ("wheels/requirements.txt", b"numpy==2.0\n"),
            ("extras.tar.xz", extras.getvalue()),
            ("filler.bin", os.urandom(5000)),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return payload


def test_without_a_gpu_it_says_so_and_runs_nothing(tmp_path: Path) -> None:
    for hidden in ("", "-1"):
        completed = _check(tmp_path, env={"CUDA_VISIBLE_DEVICES": hidden})
        assert completed.returncode == 3
        assert "no NVIDIA GPU is visible here" in completed.stderr
        assert f"CUDA_VISIBLE_DEVICES is '{hidden}'" in completed.stderr
    # Without a driver at all (this machine has no nvidia-smi on PATH).
    completed = _check(tmp_path, env={"PATH": "/usr/bin:/bin"})
    assert completed.returncode == 3
    assert "nothing was run" in completed.stderr
    assert not (tmp_path / "work").exists() and not (tmp_path / "out").exists()


def test_split_and_join_round_trip(tmp_path: Path) -> None:
    payload = _payload(tmp_path)
    manifest = split(payload, tmp_path / "parts", part_bytes=4096)
    parts = manifest["parts"]
    assert isinstance(parts, list) and len(parts) == -(-payload.stat().st_size // 4096)
    assert [p["name"] for p in parts][:2] == ["part-01", "part-02"]
    join(tmp_path / "parts", tmp_path / "joined.tar")
    assert (tmp_path / "joined.tar").read_bytes() == payload.read_bytes()


def test_join_names_missing_and_damaged_parts(tmp_path: Path) -> None:
    split(_payload(tmp_path), tmp_path / "parts", part_bytes=4096)
    (tmp_path / "parts" / "part-02").unlink()
    damaged = tmp_path / "parts" / "part-01"
    damaged.write_bytes(b"x" + damaged.read_bytes()[1:])
    with pytest.raises(PartsError) as raised:
        join(tmp_path / "parts", tmp_path / "joined.tar")
    message = str(raised.value)
    assert "part-01 damaged (SHA-256 differs from the manifest)" in message
    assert "part-02 missing" in message
    assert not (tmp_path / "joined.tar").exists()


def test_parts_carried_one_per_call_are_stashed_then_joined(tmp_path: Path) -> None:
    """What the device calls do: each carries one part; the stash fills up; the check joins."""
    payload = _payload(tmp_path)
    split(payload, tmp_path / "all", part_bytes=4096)
    manifest = json.loads((tmp_path / "all" / MANIFEST).read_text())
    names = [p["name"] for p in manifest["parts"]]
    carried = tmp_path / "carried"
    for index, name in enumerate(names[:-1]):
        if carried.exists():
            for old in carried.iterdir():
                old.unlink()
        carried.mkdir(exist_ok=True)
        (carried / MANIFEST).write_bytes((tmp_path / "all" / MANIFEST).read_bytes())
        (carried / name).write_bytes((tmp_path / "all" / name).read_bytes())
        completed = _check(tmp_path, "--stash")
        assert completed.returncode == 0, completed.stderr
        assert f"parts still to carry: {', '.join(names[index + 1 :])}" in completed.stdout
    # The last call carries the last part and runs the check (a stand-in nvidia-smi here).
    for old in carried.iterdir():
        old.unlink()
    (carried / MANIFEST).write_bytes((tmp_path / "all" / MANIFEST).read_bytes())
    (carried / names[-1]).write_bytes((tmp_path / "all" / names[-1]).read_bytes())
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: Stand-in (UUID: GPU-0)'\n")
    (fake / "nvidia-smi").chmod(0o755)
    completed = _check(
        tmp_path, env={"PATH": f"{fake}:{os.environ['PATH']}", "CUDA_VISIBLE_DEVICES": "0"}
    )
    assert "payload joined and unpacked" in completed.stdout, completed.stderr
    unpacked = tmp_path / "work" / "payload"
    assert (
        unpacked / "extras" / "models" / "m" / "1" / "model.onnx"
    ).read_bytes() == b"model bytes"
    assert completed.returncode == 1  # the stand-in payload has no wheels to install


def test_a_damaged_carried_part_is_refused(tmp_path: Path) -> None:
    split(_payload(tmp_path), tmp_path / "carried", part_bytes=4096)
    part = tmp_path / "carried" / "part-01"
    part.write_bytes(part.read_bytes()[:-1])
    completed = _check(tmp_path, "--stash")
    assert completed.returncode == 2
    assert "part-01 as carried is" in completed.stderr and "carry it again" in completed.stderr


def test_a_new_manifest_empties_an_old_stash(tmp_path: Path) -> None:
    split(_payload(tmp_path), tmp_path / "first", part_bytes=4096)
    stash(tmp_path / "first", tmp_path / "stash")
    other = tmp_path / "second_payload"
    other.mkdir()
    split(_payload(other), tmp_path / "second", part_bytes=4096)
    (tmp_path / "second" / "part-01").unlink()
    present, missing = stash(tmp_path / "second", tmp_path / "stash")
    assert "part-01" in missing and "part-01" not in present


def test_cuda_libraries_are_found_in_nvidia_packages(tmp_path: Path) -> None:
    """PyTorch's CUDA 13 layout: nvidia/cu13/lib and nvidia/cudnn/lib under site-packages."""
    site = tmp_path / "site-packages"
    for relative in (
        "nvidia/cu13/lib/libcudart.so.13",
        "nvidia/cu13/lib/libcublas.so.13",
        "nvidia/cu13/lib/libcublasLt.so.13",
        "nvidia/cudnn/lib/libcudnn.so.9",
        "nvidia/cudnn/lib/libcudnn_graph.so.9",
    ):
        (site / relative).parent.mkdir(parents=True, exist_ok=True)
        (site / relative).write_bytes(b"")
    found = find_cuda_libraries([site])
    assert found["cudart"].name == "libcudart.so.13" and found["cudnn"].name == "libcudnn.so.9"
    assert library_dirs(found) == [str(site / "nvidia/cu13/lib"), str(site / "nvidia/cudnn/lib")]


def test_the_bench_graph_variant_writes_configs_the_server_accepts(tmp_path: Path) -> None:
    from benchmarks.gpu_bench import MODELS, graphs_repository
    from onnxserve.server.accelerators import plan_gpu
    from onnxserve.server.config import parse_config_text
    from tests.support.gpu_models import dense_model

    source = tmp_path / "models"
    for model in MODELS:
        dense_model(source / model / "1" / "model.onnx")
        (source / model / "config.pbtxt").write_text("max_batch_size: 64\ndynamic_batching { }\n")
    target = graphs_repository(source, tmp_path / "graphs")
    for model in MODELS:
        config = parse_config_text((target / model / "config.pbtxt").read_text(), model)
        config.name = model
        assert plan_gpu(config, "1.31.1").cuda_graph_sizes == (1, 2, 4, 8, 16, 32, 64)
        assert "enable_cuda_graph" not in (source / model / "config.pbtxt").read_text()


def test_the_payload_carries_the_native_front_end_and_names_its_glibc(tmp_path: Path) -> None:
    """Without it no server starts on the GPU machine: the carried working tree lacks the
    git-ignored module, so the payload brings it and says which glibc it needs."""
    from benchmarks.gpu_wheelhouse import NATIVE_MODULE, native_bundle

    if not NATIVE_MODULE.is_file():
        pytest.skip("the native module is not built here")
    floor = native_bundle(tmp_path / "native")
    assert (tmp_path / "native" / NATIVE_MODULE.name).read_bytes() == NATIVE_MODULE.read_bytes()
    if floor is not None:  # objdump present
        assert tuple(int(part) for part in floor.split(".")) >= (2, 17)
