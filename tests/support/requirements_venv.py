"""A virtual environment built once from a requirements file, beside the project's own.

Tools whose dependencies clash with the project's (KServe needs protobuf 6,
checkov pins dozens of packages) live in their own environments, run in
subprocesses. Each is rebuilt only when its requirements file changes (a hash
of it is stamped inside), and a file lock keeps parallel test workers from
building it twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

_STAMP = ".requirements-sha256"


@dataclass(frozen=True)
class RequirementsVenv:
    """The environment at ``path``, installed from ``requirements``."""

    path: Path
    requirements: Path

    def _digest(self) -> str:
        return hashlib.sha256(self.requirements.read_bytes()).hexdigest()

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def bin(self, name: str) -> Path:
        """An executable that a package installed into the environment."""
        return self.path / "bin" / name

    def is_current(self) -> bool:
        """Whether the environment exists and was built from the current requirements."""
        stamp = self.path / _STAMP
        return self.python.exists() and stamp.exists() and stamp.read_text() == self._digest()

    def ensure(self, timeout_s: float = 900) -> Path:
        """Build the environment if it is missing or stale; return its Python.

        Raises subprocess.CalledProcessError (with pip's output) when the install fails.
        """
        if self.is_current():
            return self.python
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The lock lives in the temporary folder, not beside the venv, so that it
        # never shows up as an untracked file in the work tree.
        key = hashlib.sha256(str(self.path.resolve()).encode()).hexdigest()[:16]
        with open(Path(tempfile.gettempdir()) / f"onnxserve-venv-{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.is_current():  # another worker built it while we waited
                return self.python
            subprocess.run(
                [sys.executable, "-m", "venv", "--clear", str(self.path)],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            subprocess.run(
                [str(self.python), "-m", "pip", "install", "--quiet",
                 "--disable-pip-version-check", "-r", str(self.requirements)],
                check=True, capture_output=True, text=True, timeout=timeout_s,
            )  # fmt: skip
            (self.path / _STAMP).write_text(self._digest())
        return self.python

    def main(self, what: str) -> int:
        """The command-line entry of a module that builds one such environment."""
        try:
            python = self.ensure()
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            output = f"{exc.stdout or ''}\n{exc.stderr or ''}"
            print(f"installing {what} into {self.path} failed:\n{output}", file=sys.stderr)
            return 1
        print(f"{what} environment ready: {python}")
        return 0
