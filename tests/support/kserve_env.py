"""Create (once) the virtual environment that holds KServe, beside the project's own.

KServe 0.21 needs protobuf 6.x and the project's generated code needs 7.x, so
KServe cannot be installed into .venv; its server and client run from
``.venv-kserve`` in subprocesses instead (see requirements_venv.py).

Usage: python -m tests.support.kserve_env   (what `make kserve-env` runs)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.support.requirements_venv import RequirementsVenv

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = Path(__file__).with_name("kserve_requirements.txt")
VENV = Path(os.environ.get("ONNXSERVE_KSERVE_VENV", ROOT / ".venv-kserve"))
ENVIRONMENT = RequirementsVenv(VENV, REQUIREMENTS)


def ensure() -> Path:
    """Build the environment if it is missing or stale; return its Python.

    Raises subprocess.CalledProcessError (with pip's output) when the install fails.
    """
    return ENVIRONMENT.ensure()


if __name__ == "__main__":
    sys.exit(ENVIRONMENT.main("KServe"))
