"""The one part of the build that pyproject.toml cannot say: the native front end.

``pip wheel .`` and ``pip install .`` build native/ (Rust, PyO3) into the
package as ``onnxserve/_native.abi3.so`` with setuptools-rust when cargo is on
PATH; the wheel is then tagged cp311-abi3 (one build for every CPython >=
3.11), which the server runs on. Without cargo (or on Python 3.10, below the
module's abi3 floor) the build says why on stderr and makes the pure wheel:
the client needs no Rust; ``onnxserve serve`` then says how to get the module.

ONNXSERVE_NATIVE chooses:
  auto      (default) build it when cargo is found; a failed Rust build is
            reported and the wheel is made without it
  required  build it or fail (the container images: deploy/docker/install.sh)
  skip      never build it (``make install``'s editable install, whose module
            scripts/build_native.py builds and refreshes on every run)

CARGO_TARGET_DIR moves cargo's build folder (default native/target, the one
``make native`` uses), CARGO the cargo command.
"""

from __future__ import annotations

import os
import shutil
import sys

from setuptools import setup

MODES = ("auto", "required", "skip")


def _say(message: str) -> None:
    print(f"onnxserve build: {message}", file=sys.stderr)


def rust_extensions() -> list:
    mode = os.environ.get("ONNXSERVE_NATIVE", "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise SystemExit(f"ONNXSERVE_NATIVE must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "skip":
        _say("ONNXSERVE_NATIVE=skip: the native front end is not built into this package")
        return []
    why = None
    if sys.version_info < (3, 11):
        why = "the native module needs Python >= 3.11 (PyO3 abi3-py311)"
    elif shutil.which(os.environ.get("CARGO", "cargo")) is None:
        why = "cargo not found (install Rust from https://rustup.rs)"
    else:
        try:
            from setuptools_rust import Binding, RustExtension
        except ImportError:
            why = "setuptools-rust is not installed in the build environment"
    if why is not None:
        if mode == "required":
            raise SystemExit(f"onnxserve build: ONNXSERVE_NATIVE=required, but {why}")
        _say(f"{why}; building without the native front end (the client only: no server then)")
        return []
    _say("building the native front end (native/, cargo build --release) into onnxserve._native")
    return [
        RustExtension(
            "onnxserve._native",
            path="native/Cargo.toml",
            binding=Binding.PyO3,
            # The name and wheel tag follow bdist_wheel's py_limited_api (cp311) below;
            # the crate itself asks PyO3 for abi3-py311.
            py_limited_api="auto",
            # Release even for in-place (editable) builds: the server's hot path.
            debug=False,
            optional=mode != "required",
        )
    ]


extensions = rust_extensions()
if extensions:
    setup(rust_extensions=extensions, options={"bdist_wheel": {"py_limited_api": "cp311"}})
else:
    setup()
