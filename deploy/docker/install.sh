#!/usr/bin/env bash
# Everything deploy/docker's images do beyond copying files. The tests run the
# same commands on the development machine (tests/test_deploy_image.py:
# `wheels`, then `venv` into a fresh directory, then the server as the
# entrypoint starts it), so a broken step fails there, not on a user's cluster.
#
#   install.sh wheels SOURCE WHEELHOUSE VARIANT
#       Build stage: onnxserve's wheel from SOURCE and a wheel of every
#       dependency into WHEELHOUSE. Binary wheels only: nothing is compiled,
#       and a dependency without a wheel for this Python fails here.
#   install.sh venv WHEELHOUSE PREFIX VARIANT
#       Final stage: a virtual environment at PREFIX from WHEELHOUSE alone (no
#       index, no compiler), without pip, checked by importing the server.
#   install.sh system-python
#       Dockerfile.gpu, both stages: Python and its venv module from Ubuntu's
#       packages (the CUDA base image has no Python).
#
# VARIANT is cpu (onnxruntime's CPU build: the project's server-cpu extra) or
# gpu (onnxruntime-gpu: the server extra). Exact versions come from
# constraints.txt beside this script.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
constraints="$here/constraints.txt"
python=${PYTHON:-python3}

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
    # The server starts, and onnxruntime is the build this variant wants.
    "$prefix/bin/onnxserve" serve --help >/dev/null
    "$prefix/bin/python" - "$variant" <<'PY'
import sys

import onnxruntime
import onnxruntime_extensions

cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
if cuda != (sys.argv[1] == "gpu"):
    sys.exit(f"the {sys.argv[1]} image got onnxruntime with providers "
             f"{onnxruntime.get_available_providers()}")
# Text models' string operators: the extensions library loads into this onnxruntime.
onnxruntime.SessionOptions().register_custom_ops_library(onnxruntime_extensions.get_library_path())
PY
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
    wheels) wheels "$@" ;;
    venv) venv "$@" ;;
    system-python) system_python "$@" ;;
    *) die "usage: install.sh wheels|venv|system-python ... (see the comment at its top)" ;;
esac
