#!/usr/bin/env bash
# Everything deploy/docker's images do beyond copying files. The tests run the
# same commands on the development machine (tests/test_deploy_image.py:
# `wheels`, then `venv` into a fresh directory, then the server as the
# entrypoint starts it), so a broken step fails there, not on a user's cluster.
#
#   install.sh rust
#       Build stage only: a C toolchain (the linker, and ring's C code) from the
#       distribution and Rust RUST_VERSION by rustup-init RUSTUP_VERSION, whose
#       checksum is pinned below, into RUSTUP_HOME and CARGO_HOME (the
#       Dockerfiles set them; their bin/ is on PATH).
#   install.sh wheels SOURCE WHEELHOUSE VARIANT
#       Build stage: onnxserve's wheel from SOURCE, with the native front end
#       built in (setup.py, setuptools-rust: cargo must be on PATH), and a wheel
#       of every dependency into WHEELHOUSE. Dependencies are binary wheels
#       only: nothing of theirs is compiled, and one without a wheel for this
#       Python fails here.
#   install.sh venv WHEELHOUSE PREFIX VARIANT
#       Final stage: a virtual environment at PREFIX from WHEELHOUSE alone (no
#       index, no compiler), without pip, checked by importing the server and
#       the native front end.
#   install.sh system-python
#       Dockerfile.gpu, both stages: Python and its venv module from Ubuntu's
#       packages (the CUDA base image has no Python).
#
# VARIANT is cpu (onnxruntime's CPU build: the project's server-cpu extra) or
# gpu (onnxruntime-gpu: the server extra). Exact versions come from
# constraints.txt beside this script.
#
# ONNXSERVE_NATIVE (setup.py) is `required` unless set: an image without the
# native front end fails to build. `skip` builds and checks the venv without it
# (tests/test_deploy_image.py where no cargo is installed).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
constraints="$here/constraints.txt"
python=${PYTHON:-python3}

native=${ONNXSERVE_NATIVE:-required}
export ONNXSERVE_NATIVE=$native
# Rust for the build stage (native/Cargo.toml's rust-version is the floor),
# installed by rustup-init of this version with these SHA-256 sums.
RUST_VERSION=1.95.0
RUSTUP_VERSION=1.29.0
declare -A RUSTUP_SHA256=(
    [x86_64]=4acc9acc76d5079515b46346a485974457b5a79893cfb01112423c89aeb5aa10
    [aarch64]=9732d6c5e2a098d3521fca8145d826ae0aaa067ef2385ead08e6feac88fa5792
)

die() { echo "install.sh: $*" >&2; exit 2; }

extra_of() {
    case "$1" in
        cpu) echo server-cpu ;;
        gpu) echo server ;;
        *) die "VARIANT must be cpu or gpu, not '$1'" ;;
    esac
}

wheels() {
    [ $# -eq 3 ] || die "usage: install.sh wheels SOURCE WHEELHOUSE VARIANT"
    local source=$1 wheelhouse=$2 extra build
    extra=$(extra_of "$3")
    build=$(mktemp -d)
    # A throwaway environment for pip, which Ubuntu's python3 lacks (the one
    # that Python's venv module bundles: no unpinned download of a newer one).
    "$python" -m venv "$build/venv"
    # PyO3 reads the interpreter's version from PYO3_PYTHON: the base Python,
    # not the throwaway venv's path (which would rebuild PyO3 on every run).
    PYO3_PYTHON=${PYO3_PYTHON:-$(command -v "$python")} \
        "$build/venv/bin/python" -m pip wheel --quiet --disable-pip-version-check --no-cache-dir \
        --only-binary=:all: --constraint "$constraints" --wheel-dir "$wheelhouse" \
        "$source[$extra]"
    rm -rf "$build"
}

venv() {
    [ $# -eq 3 ] || die "usage: install.sh venv WHEELHOUSE PREFIX VARIANT"
    local wheelhouse=$1 prefix=$2 variant=$3 extra
    extra=$(extra_of "$variant")
    "$python" -m venv "$prefix"
    "$prefix/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir \
        --no-index --find-links "$wheelhouse" --constraint "$constraints" "onnxserve[$extra]"
    # Nothing installs at run time: no pip, and no setuptools (Python 3.11's
    # venv seeds an old one that nothing here uses).
    "$prefix/bin/python" -m pip uninstall --quiet --yes pip setuptools
    # The server's command answers (its REST port among its settings), and
    # onnxruntime is the build this variant wants.
    local help
    help=$("$prefix/bin/onnxserve" serve --help)
    [[ $help == *--http-port* ]] || die "onnxserve serve --help lists no --http-port"
    # -I: the environment as installed, never a checkout in the working directory.
    "$prefix/bin/python" -I - "$variant" "$native" <<'PY'
import sys

import onnxruntime
import onnxruntime_extensions

if sys.argv[2] != "skip":
    # The native front end, built against this base image's glibc (both stages
    # share one base), loads here: the server runs on it.
    import onnxserve._native

cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
if cuda != (sys.argv[1] == "gpu"):
    sys.exit(f"the {sys.argv[1]} image got onnxruntime with providers "
             f"{onnxruntime.get_available_providers()}")
# Text models' string operators: the extensions library loads into this onnxruntime.
onnxruntime.SessionOptions().register_custom_ops_library(onnxruntime_extensions.get_library_path())
PY
}

rust() {
    [ $# -eq 0 ] || die "usage: install.sh rust"
    local arch triple download
    arch=$(uname -m)
    [ -n "${RUSTUP_SHA256[$arch]:-}" ] || die "no rustup-init checksum for $arch"
    triple="$arch-unknown-linux-gnu"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install --yes --no-install-recommends ca-certificates curl gcc libc6-dev
    rm -rf /var/lib/apt/lists/*
    download=$(mktemp -d)
    curl --proto '=https' --tlsv1.2 --fail --silent --show-error --location \
        --output "$download/rustup-init" \
        "https://static.rust-lang.org/rustup/archive/$RUSTUP_VERSION/$triple/rustup-init"
    echo "${RUSTUP_SHA256[$arch]}  $download/rustup-init" | sha256sum --check --quiet -
    chmod +x "$download/rustup-init"
    "$download/rustup-init" -y --quiet --no-modify-path --profile minimal \
        --default-toolchain "$RUST_VERSION" --default-host "$triple"
    rm -rf "$download"
    cargo --version
}

system_python() {
    [ $# -eq 0 ] || die "usage: install.sh system-python"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install --yes --no-install-recommends python3 python3-venv
    rm -rf /var/lib/apt/lists/*
}

command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
    rust) rust "$@" ;;
    wheels) wheels "$@" ;;
    venv) venv "$@" ;;
    system-python) system_python "$@" ;;
    *) die "usage: install.sh rust|wheels|venv|system-python ... (see the comment at its top)" ;;
esac
