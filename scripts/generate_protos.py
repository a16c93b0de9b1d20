"""Regenerate the committed protobuf and gRPC code under onnxserve/protocol/ from proto/.

The generated modules are committed so that installing the client needs no
protoc; tests/test_protocol_codegen.py regenerates them into a temporary folder
and fails on any difference, so the committed code cannot drift from proto/.
Two rewrites follow protoc: sibling imports become relative (the modules live
in a package), and the messages register in the package's private descriptor
pool (onnxserve/protocol/_pool.py says why) instead of protobuf's default one.

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
DEFAULT_OUTPUT = REPO_ROOT / "onnxserve" / "protocol"
PROTO_FILES = ("model_config.proto", "grpc_service.proto")

# protoc writes `import model_config_pb2`, an absolute top-level import; inside
# a package the modules must import each other relatively.
_SIBLING_IMPORT = re.compile(r"^import (\w+_pb2) as (\w+)$", re.MULTILINE)
# protoc registers each file in protobuf's process-wide default pool.
_DEFAULT_POOL = "_descriptor_pool.Default()"
_POOL_IMPORT = "from google.protobuf import descriptor_pool as _descriptor_pool\n"


def _rewrite(text: str) -> str:
    """Relative sibling imports; registration in the private pool instead of the default."""
    text = _SIBLING_IMPORT.sub(r"from . import \1 as \2", text)
    if _DEFAULT_POOL in text:
        if _POOL_IMPORT not in text:
            raise RuntimeError("protoc's output changed shape: no descriptor_pool import found")
        text = text.replace(_POOL_IMPORT, _POOL_IMPORT + "from ._pool import POOL as _POOL\n")
        text = text.replace(_DEFAULT_POOL, "_POOL")
    return text


def generated_files(folder: Path) -> list[Path]:
    """The generated modules in ``folder`` (the hand-written ones beside them excluded)."""
    return sorted(p for p in folder.iterdir() if p.stem.endswith(("_pb2", "_pb2_grpc")))


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
            target.write_text(_rewrite(produced.read_text()))
            written.append(target)
    return written


def main(argv: list[str]) -> int:
    output = Path(argv[1]) if len(argv) > 1 else DEFAULT_OUTPUT
    for path in generate(output):
        print(path.relative_to(output.parent) if path.is_relative_to(output.parent) else path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
