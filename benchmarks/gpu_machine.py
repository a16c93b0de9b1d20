#!/usr/bin/env python3
"""What the GPU check needs to know about the machine: CUDA libraries, GPU, driver, providers.

    gpu_machine.py libs [--python PYTHON]   # LD_LIBRARY_PATH entries for onnxruntime-gpu
    gpu_machine.py report OUT.json          # GPU, driver, CUDA libraries, onnxruntime providers

The GPU machine has CUDA and cuDNN as the nvidia-* Python packages that
PyTorch brought (site-packages/nvidia/*/lib), not on the loader's path.
onnxruntime-gpu's CUDA provider needs libcudart, libcublas(Lt), libcurand,
libcufft and cuDNN 9 of the CUDA major it was built for (1.31's PyPI wheel:
CUDA 13); ``libs`` finds the folders holding them in the site-packages of the
given Python (the machine's own ``python3``), so that gpu_check.sh can point
LD_LIBRARY_PATH there before any process of the check starts. ``report`` runs
in the check's environment. Standard library only, but for onnxruntime in
``report``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The libraries onnxruntime-gpu's CUDA provider loads, as file-name patterns.
CUDA_LIBRARIES = {
    "cudart": r"libcudart\.so\.\d+$",
    "cublas": r"libcublas\.so\.\d+$",
    "cublasLt": r"libcublasLt\.so\.\d+$",
    "curand": r"libcurand\.so\.\d+$",
    "cufft": r"libcufft\.so\.\d+$",
    "cudnn": r"libcudnn\.so\.9$",
    "nvrtc": r"libnvrtc\.so\.\d+$",
}


def site_packages(python: str) -> list[Path]:
    """The site-packages folders of another Python (its own answer, not this process's)."""
    code = (
        "import json, site; "
        "print(json.dumps(site.getsitepackages() + [site.getusersitepackages()]))"
    )
    try:
        output = subprocess.run(
            [python, "-c", code], capture_output=True, text=True, timeout=60, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [Path(p) for p in json.loads(output) if Path(p).is_dir()]


def find_cuda_libraries(roots: list[Path]) -> dict[str, Path]:
    """Library name -> file, the first found under ``<root>/nvidia`` of each root in order."""
    found: dict[str, Path] = {}
    for root in roots:
        nvidia = root / "nvidia"
        if not nvidia.is_dir():
            continue
        for path in sorted(nvidia.rglob("lib*.so*")):
            for name, pattern in CUDA_LIBRARIES.items():
                if name not in found and re.search(pattern, path.name):
                    found[name] = path
    return found


def library_dirs(found: dict[str, Path]) -> list[str]:
    dirs: list[str] = []
    for path in found.values():
        if str(path.parent) not in dirs:
            dirs.append(str(path.parent))
    return dirs


def _nvidia_smi() -> dict[str, str]:
    fields = "name,driver_version,memory.total,compute_cap,clocks.max.sm"
    try:
        line = subprocess.run(
            ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return {}
    return dict(zip(fields.split(","), (v.strip() for v in line.split(",")), strict=False))


def report() -> dict[str, object]:
    """The machine as the check sees it (run inside the check's environment)."""
    import onnxruntime as ort

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.support.gpu import cuda_unavailable_reason

    cuda_reason = cuda_unavailable_reason()
    return {
        "gpu": _nvidia_smi(),
        "python": sys.version.split()[0],
        "onnxruntime": ort.__version__,
        "available_providers": ort.get_available_providers(),
        "cuda_session": "works" if cuda_reason is None else cuda_reason,
        "ld_library_path": os.environ.get("LD_LIBRARY_PATH", ""),
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    libs = commands.add_parser("libs", help="print LD_LIBRARY_PATH entries (one line, ':')")
    libs.add_argument("--python", default="python3", help="the Python whose packages hold CUDA")
    out = commands.add_parser("report", help="write the machine's report as JSON")
    out.add_argument("json", type=Path)
    args = parser.parse_args(argv)
    if args.command == "libs":
        found = find_cuda_libraries(site_packages(args.python))
        for name in CUDA_LIBRARIES:
            where = found.get(name)
            print(f"  {name}: {where if where else 'NOT FOUND'}", file=sys.stderr)
        print(":".join(library_dirs(found)))
        return 0 if {"cudart", "cublas", "cudnn"} <= set(found) else 1
    data = report()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=2) + "\n")
    for key, value in data.items():
        print(f"  {key}: {value}")
    return 0 if data["cuda_session"] == "works" else 1


if __name__ == "__main__":
    sys.exit(main())
