"""Build the native front end (native/, Rust) into onnxserve/_native.abi3.so.

``make install`` runs this: ``cargo build --release`` (incremental: a no-op
when nothing changed), then the library is copied next to the package's
modules, where the editable install finds it. One build loads on every
CPython >= 3.11 (PyO3's abi3). Without cargo it says how to install Rust and
exits 1: no server can start without the module (the client alone needs none).

Measured cold build on the 2-core development machine: see native/README.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CRATE = ROOT / "native"
TARGET = ROOT / "onnxserve" / "_native.abi3.so"


def main() -> int:
    cargo = shutil.which("cargo")
    if cargo is None:
        print(
            "build_native: cargo not found: the server's native front end cannot be built; "
            "install Rust (https://rustup.rs, or Debian's cargo) and run `make install` again",
            file=sys.stderr,
        )
        return 1
    started = time.monotonic()
    command = [cargo, "build", "--release", "--quiet", "--manifest-path", str(CRATE / "Cargo.toml")]
    env = {**os.environ, "PYO3_PYTHON": sys.executable}
    result = subprocess.run(command, env=env, check=False)
    if result.returncode != 0:
        print("build_native: cargo build failed (see above)", file=sys.stderr)
        return result.returncode
    built = CRATE / "target" / "release" / "lib_native.so"
    if not TARGET.exists() or TARGET.stat().st_mtime < built.stat().st_mtime:
        temporary = TARGET.with_suffix(".tmp")
        shutil.copyfile(built, temporary)
        temporary.replace(TARGET)  # atomic: a running server keeps its mapped copy
    print(f"build_native: onnxserve/_native.abi3.so ready ({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
