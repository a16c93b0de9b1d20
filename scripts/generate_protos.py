"""Regenerate the committed protobuf and gRPC code under client/protocol/ from proto/.

The generated modules are committed so that installing the client needs no
protoc; tests/test_protocol_codegen.py regenerates them into a temporary folder
and fails on any difference, so the committed code cannot drift from proto/.

Usage: python scripts/generate_protos.py [OUTPUT_DIR]
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO_ROOT / "proto"
DEFAULT_OUTPUT = REPO_ROOT / "client" / "protocol"
PROTO_FILES = ("model_config.proto", "grpc_service.proto")

# protoc writes `import model_config_pb2`, an absolute top-level import; inside
# a package the modules must import each other relatively.
_SIBLING_IMPORT = re.compile(r"^import (\w+_pb2) as (\w+)$", re.MULTILINE)


def _relativize(text: str) -> str:
    return _SIBLING_IMPORT.sub(r"from . import \1 as \2", text)


def generate(output_dir: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) and return the files written.

    protoc runs in its own process: its bundled C++ protobuf crashes a process
    that already holds another copy (TensorFlow's, for one).
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        args = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--proto_path={PROTO_DIR}",
            f"--python_out={scratch}",
            f"--pyi_out={scratch}",
            f"--grpc_python_out={scratch}",
            *(str(PROTO_DIR / name) for name in PROTO_FILES),
        ]
        completed = subprocess.run(args, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            raise RuntimeError(f"protoc failed:\n{completed.stderr}")
        written = []
        for produced in sorted(Path(scratch).iterdir()):
            target = output_dir / produced.name
            target.write_text(_relativize(produced.read_text()))
            written.append(target)
    init = output_dir / "__init__.py"
    init.write_text(
        '"""Generated protobuf and gRPC code for the Open Inference Protocol '
        '(do not edit; run scripts/generate_protos.py)."""\n'
    )
    written.append(init)
    return written


def main(argv: list[str]) -> int:
    output = Path(argv[1]) if len(argv) > 1 else DEFAULT_OUTPUT
    for path in generate(output):
        print(path.relative_to(output.parent) if path.is_relative_to(output.parent) else path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
