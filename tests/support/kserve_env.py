"""Create (once) the virtual environment that holds KServe, beside the project's own.

KServe 0.21 needs protobuf 6.x and the project's generated code needs 7.x, so
KServe cannot be installed into .venv; its server and client run from
``.venv-kserve`` in subprocesses instead. The environment is rebuilt only when
kserve_requirements.txt changes (a hash of it is stamped inside), and a file
lock keeps parallel test workers from building it twice.

Usage: python -m tests.support.kserve_env   (what `make kserve-env` runs)
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = Path(__file__).with_name("kserve_requirements.txt")
VENV = Path(os.environ.get("ONNXSERVE_KSERVE_VENV", ROOT / ".venv-kserve"))
_STAMP = ".requirements-sha256"


def _digest() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


def python_of(venv: Path = VENV) -> Path:
    """The interpreter of the KServe environment."""
    return venv / "bin" / "python"


def is_current(venv: Path = VENV) -> bool:
    """Whether the environment exists and was built from the current requirements."""
    stamp = venv / _STAMP
    return python_of(venv).exists() and stamp.exists() and stamp.read_text() == _digest()


def ensure(venv: Path = VENV) -> Path:
    """Build the environment if it is missing or stale; return its Python.

    Raises subprocess.CalledProcessError (with pip's output) when the install fails.
    """
    if is_current(venv):
        return python_of(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    # The lock lives in the temporary folder, not beside the venv, so that it
    # never shows up as an untracked file in the work tree.
    key = hashlib.sha256(str(venv.resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"onnxserve-kserve-env-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_current(venv):  # another worker built it while we waited
            return python_of(venv)
        subprocess.run(
            [sys.executable, "-m", "venv", "--clear", str(venv)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        subprocess.run(
            [str(python_of(venv)), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "-r", str(REQUIREMENTS)],
            check=True, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        (venv / _STAMP).write_text(_digest())
    return python_of(venv)


def main() -> int:
    try:
        python = ensure()
    except subprocess.CalledProcessError as exc:
        print(f"installing KServe into {VENV} failed:\n{exc.stdout}\n{exc.stderr}", file=sys.stderr)
        return 1
    print(f"KServe environment ready: {python}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
