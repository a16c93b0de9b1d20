"""Create (once) the virtual environment that holds KServe, beside the project's own.

KServe 0.21 needs protobuf 6.x and the project's generated code needs 7.x, so
KServe cannot be installed into .venv; its server and client run from
``.venv-kserve`` in subprocesses instead (see requirements_venv.py).

Usage: python -m tests.support.kserve_env   (what `make kserve-env` runs)
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
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


@contextlib.contextmanager
def model_server(python: Path, script: Path, ready_model: str) -> Iterator[str]:
    """KServe's ModelServer from ``script`` on free loopback ports; yields its gRPC address
    once ``ready_model`` is ready, and stops it after. The script takes GRPC_PORT HTTP_PORT."""
    from onnxserve.client import Client
    from tests.support.server import free_port

    grpc_port, http_port = free_port(), free_port()
    log = tempfile.NamedTemporaryFile(prefix="kserve-", suffix=".log", delete=False)  # noqa: SIM115
    # -I: KServe's environment alone, untouched by PYTHONPATH or the user's
    # site-packages that the test run may have set up.
    process = subprocess.Popen(
        [str(python), "-I", str(script), str(grpc_port), str(http_port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    address = f"127.0.0.1:{grpc_port}"
    try:
        with Client(address) as client:
            try:
                client.wait_until_ready(ready_model, timeout=90)
            except Exception:
                raise RuntimeError(
                    f"KServe's server did not start:\n{Path(log.name).read_text()[-4000:]}"
                ) from None
        yield address
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


if __name__ == "__main__":
    sys.exit(ENVIRONMENT.main("KServe"))
