#!/usr/bin/env python3
"""Prepare, here (with PyPI), what benchmarks/gpu_check.sh needs on a GPU machine without network.

    .venv/bin/python benchmarks/gpu_wheelhouse.py [--repository build/model_repository]

The GPU machine has Python 3.12, CUDA 13 and cuDNN 9 (PyTorch's nvidia-*
packages) and onnxruntime's CPU build, but no onnxruntime-gpu, no network,
and each call that reaches it carries at most 64 MiB. This script writes
into ``build/gpu-wheelhouse/`` (git-ignored):

- the wheels of a clean environment for CPython 3.12, manylinux x86_64:
  onnxruntime-gpu (PyPI's 1.31 build links CUDA 13: libcudart.so.13,
  libcublas.so.13, libcublasLt.so.13, libcurand.so.10, and cuDNN 9), grpcio,
  its health and reflection services, protobuf, numpy, ml_dtypes, onnx,
  prometheus-client, pytest, setuptools, wheel and pip, at the versions
  installed in this environment (the ones the suite passes with), and their
  dependencies; every wheel but pip's recompressed with LZMA (pip reads it;
  onnxruntime-gpu shrinks from 256 to about 205 MB);
- the example model repository (the seed's LSTM ``sentiment`` and the
  ``digits`` CNN: ``--repository``, else build/model_repository when ``make
  examples`` built it, else a ``--quick`` build of its own: speed does not
  depend on training);
- h2load (nghttp2's load generator) with the libraries it needs beyond
  glibc, so that the benchmark's load generator is not a Python process;
- the server's native front end as built here (``onnxserve/_native.abi3.so``,
  one abi3 build for CPython 3.12 too; git-ignored, so a device call's copy
  of the working tree lacks it), with the newest glibc symbol it needs
  (``payload.json``: gpu_check.sh says so where that machine's glibc is older);

packed into one tar file and split into ``parts/part-NN`` of at most 60
MiB with ``parts/manifest.json`` (SHA-256 of each part and of the whole).
The last lines printed are the device calls that carry them (one part per
call) and run the check; benchmarks/README.md explains them.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.gpu_parts import DEFAULT_PART_MIB, MANIFEST, split  # noqa: E402

OUT = ROOT / "build" / "gpu-wheelhouse"
PAYLOAD = "onnxserve-gpu-payload.tar"
PYTHON_VERSION = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
#: What the check's environment installs (each with its dependencies).
PACKAGES = (
    "onnxruntime-gpu",
    "grpcio",
    "grpcio-health-checking",
    "grpcio-reflection",
    "protobuf",
    "numpy",
    "ml_dtypes",
    "onnx",
    "prometheus-client",
    "pytest",
)
#: Installed first: pip into the bare environment, then the editable install's backend.
BOOTSTRAP = ("pip", "setuptools", "wheel")
MODELS = ("sentiment", "digits")
# h2load's libraries that every Linux has (glibc and the C++ runtime): not carried.
_SYSTEM_LIBRARIES = ("libc.so", "libm.so", "libstdc++.so", "libgcc_s.so", "ld-linux", "linux-vdso")


def _pin(name: str) -> str:
    try:
        return f"{name}=={importlib.metadata.version(name)}"
    except importlib.metadata.PackageNotFoundError:
        return name


def download(wheels: Path) -> list[str]:
    """pip download for CPython 3.12 manylinux x86_64; returns the pinned requirements."""
    wheels.mkdir(parents=True, exist_ok=True)
    pins = [_pin(name) for name in (*PACKAGES, *BOOTSTRAP)]
    cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--quiet"]
    cmd += ["--python-version", PYTHON_VERSION, "--implementation", "cp"]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    cmd += ["-d", str(wheels), *pins]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return pins


def linked_libraries(wheel: Path) -> dict[str, list[str]]:
    """The CUDA and TensorRT libraries onnxruntime-gpu's providers link against (DT_NEEDED)."""
    needed: dict[str, list[str]] = {}
    readelf = shutil.which("readelf")
    if readelf is None:
        return needed
    with zipfile.ZipFile(wheel) as archive, tempfile.TemporaryDirectory() as scratch:
        for name in archive.namelist():
            if not name.endswith(".so") or "providers_" not in name:
                continue
            target = Path(scratch) / Path(name).name
            target.write_bytes(archive.read(name))
            output = subprocess.run(
                [readelf, "-d", str(target)], capture_output=True, text=True, check=False
            ).stdout
            needed[target.name] = [
                line.split("[", 1)[1].rstrip("]")
                for line in output.splitlines()
                if "(NEEDED)" in line and any(k in line for k in ("libcu", "libnv"))
            ]
    return needed


def recompress(wheel: Path, cache: Path) -> Path:
    """The wheel with every member LZMA-compressed (cached by the source's SHA-256)."""
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()[:16]
    cached = cache / digest / wheel.name
    if cached.is_file():
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(".partial")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(partial, "w", zipfile.ZIP_LZMA) as sink:
        for info in source.infolist():
            copy = zipfile.ZipInfo(info.filename, info.date_time)
            copy.external_attr = info.external_attr
            copy.compress_type = zipfile.ZIP_LZMA
            sink.writestr(copy, source.read(info))
    partial.replace(cached)
    return cached


NATIVE_MODULE = ROOT / "onnxserve" / "_native.abi3.so"


def glibc_floor(library: Path) -> str | None:
    """The newest GLIBC_x.y symbol version ``library`` needs (objdump -T), or None."""
    objdump = shutil.which("objdump")
    if objdump is None:
        return None
    table = subprocess.run([objdump, "-T", str(library)], capture_output=True, text=True)
    versions = {
        tuple(int(part) for part in word[len("GLIBC_") :].split("."))
        for line in table.stdout.splitlines()
        for word in line.replace("(", " ").replace(")", " ").split()
        if word.startswith("GLIBC_") and word[len("GLIBC_") :].replace(".", "").isdigit()
    }
    return ".".join(map(str, max(versions))) if versions else None


def native_bundle(target: Path) -> str | None:
    """The native module under ``target``; the glibc it needs. Refuses to go without it:
    no server starts on the GPU machine without its front end (`make install` builds it)."""
    if not NATIVE_MODULE.is_file():
        raise SystemExit(f"{NATIVE_MODULE.relative_to(ROOT)} is not built: run `make install`")
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(NATIVE_MODULE, target / NATIVE_MODULE.name)
    floor = glibc_floor(NATIVE_MODULE)
    print(f"native front end: {NATIVE_MODULE.name}, needs glibc {floor or '(unknown)'}")
    return floor


def find_repository(given: Path | None) -> Path:
    """The model repository to carry (built with --quick here when none is given or built)."""
    if given is not None:
        missing = [m for m in MODELS if not (given / m).is_dir()]
        if missing:
            raise SystemExit(f"{given} lacks the model(s) {', '.join(missing)}")
        return given
    built = ROOT / "build" / "model_repository"
    if (built / ".complete").is_file():
        return built
    own = OUT / "model_repository"
    if not (own / ".complete").is_file():
        print("building a --quick example repository (TensorFlow, about a minute)", flush=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "examples.build_repository",
                "--repository",
                str(own),
                "--quick",
            ],
            check=True,
            cwd=ROOT,
        )
    return own


def h2load_bundle(target: Path) -> bool:
    """h2load and its non-glibc libraries under ``target`` with a wrapper; False if no h2load."""
    executable = shutil.which("h2load")
    if executable is None:
        print("h2load is not installed here (apt-get install nghttp2-client): not carried")
        return False
    (target / "bin").mkdir(parents=True, exist_ok=True)
    (target / "lib").mkdir(parents=True, exist_ok=True)
    shutil.copy2(executable, target / "bin" / "h2load")
    output = subprocess.run(["ldd", executable], capture_output=True, text=True, check=True).stdout
    for line in output.splitlines():
        parts = line.split("=>")
        if len(parts) != 2 or not parts[1].strip().startswith("/"):
            continue
        library = Path(parts[1].split("(")[0].strip())
        if not library.name.startswith(_SYSTEM_LIBRARIES):
            shutil.copy2(library.resolve(), target / "lib" / library.name)
    wrapper = target / "h2load"
    wrapper.write_text(
        '#!/bin/sh\nhere=$(dirname "$0")\n'
        'LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" '
        'exec "$here/bin/h2load" "$@"\n'
    )
    wrapper.chmod(0o755)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repository", type=Path, help="model repository with sentiment and digits"
    )
    parser.add_argument("--part-mib", type=int, default=DEFAULT_PART_MIB)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    out: Path = args.out
    stage = out / "stage"
    if stage.exists():
        shutil.rmtree(stage)
    wheels = stage / "wheels"
    downloads = out / "downloads"
    pins = download(downloads)
    wheels.mkdir(parents=True)
    ort_wheels = sorted(downloads.glob("onnxruntime_gpu-*.whl"))
    if len(ort_wheels) != 1:
        raise SystemExit(f"expected one onnxruntime-gpu wheel in {downloads}, found {ort_wheels}")
    needed = linked_libraries(ort_wheels[0])
    for name, libraries in needed.items():
        print(f"{name} needs: {', '.join(libraries)}")
    for wheel in sorted(downloads.glob("*.whl")):
        if wheel.name.startswith("pip-"):  # run from its own zip before pip exists: keep deflate
            shutil.copy2(wheel, wheels / wheel.name)
        else:
            print(f"recompressing {wheel.name}", flush=True)
            shutil.copy2(recompress(wheel, out / "lzma"), wheels / wheel.name)
    requirements = [pin for pin in pins if pin.split("==")[0] not in BOOTSTRAP]
    (wheels / "requirements.txt").write_text("\n".join(requirements) + "\n")
    repository = find_repository(args.repository)
    extras = stage / "extras"
    for model in MODELS:
        shutil.copytree(repository / model, extras / "models" / model)
    has_h2load = h2load_bundle(extras / "h2load")
    native_glibc = native_bundle(extras / "native")
    with tarfile.open(stage / "extras.tar.xz", "w:xz") as archive:
        archive.add(extras, arcname="extras")
    shutil.rmtree(extras)
    (stage / "payload.json").write_text(
        json.dumps(
            {
                "requirements": requirements,
                "cuda_libraries": needed,
                "h2load": has_h2load,
                "native_glibc": native_glibc,
            },
            indent=2,
        )
        + "\n"
    )
    payload = out / PAYLOAD
    with tarfile.open(payload, "w") as archive:
        for item in sorted(stage.iterdir()):
            archive.add(item, arcname=item.name)
    manifest = split(payload, out / "parts", args.part_mib << 20)
    parts = manifest["parts"]
    assert isinstance(parts, list)
    size = int(manifest["bytes"]) / (1 << 20)  # type: ignore[call-overload]
    print(f"\npayload {size:.1f} MiB in {len(parts)} parts under {out / 'parts'}")
    relative = (out / "parts").relative_to(ROOT) if out.is_relative_to(ROOT) else out / "parts"
    print("device calls (each within a few seconds of the last; see benchmarks/README.md):")
    for index, part in enumerate(parts, 1):
        carry = [str(relative / MANIFEST), str(relative / part["name"])]
        last = index == len(parts)
        command = "bash benchmarks/gpu_check.sh" if last else "bash benchmarks/gpu_check.sh --stash"
        timeout = 560 if last else 120
        print(
            f"  {index}. run(command={command!r}, carry={json.dumps(carry)}, timeout_s={timeout})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
