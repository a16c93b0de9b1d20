#!/usr/bin/env bash
# The GPU check: on a fresh GPU machine without network, in a few minutes.
#
#   bash benchmarks/gpu_check.sh           # the check (needs a visible NVIDIA GPU)
#   bash benchmarks/gpu_check.sh --stash   # only keep the parts this call carried
#
# It needs the parts that benchmarks/gpu_wheelhouse.py prepared
# (build/gpu-wheelhouse/parts: part-NN + manifest.json), carried to the
# machine one per call; each call stashes its part outside the working tree
# (--stash, or the check itself for the part it carries). The check then:
#   1. stops at once, non-zero, if no NVIDIA GPU is visible (nothing run);
#   2. joins the parts, checking every SHA-256 against the manifest;
#   3. makes a clean environment from the wheels alone (--no-index), with
#      onnxruntime-gpu and never onnxruntime's CPU build beside it, and the
#      project installed editable from this tree;
#   4. points LD_LIBRARY_PATH at the CUDA 13 / cuDNN 9 libraries of the
#      machine's own Python packages (site-packages/nvidia/*/lib);
#   5. reports the GPU, driver, CUDA libraries and onnxruntime's providers;
#   6. runs the GPU tests (pytest -m gpu tests/test_gpu.py);
#   7. runs the benchmark matrix (benchmarks/gpu_bench.py).
# Results (report.md, report.json, tests.log, tests.xml, bench.md,
# bench.json, bench.log) go to $OUT when it is set, else to
# benchmarks/results/gpu/. Exit status: 0 when a CUDA session works, every
# GPU test passed and the benchmark ran; 1 when something failed; 2 when the
# parts are missing or damaged; 3 when no GPU is visible.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PARTS=${ONNXSERVE_GPU_PARTS:-$ROOT/build/gpu-wheelhouse/parts}
WORK=${ONNXSERVE_GPU_WORK:-/tmp/onnxserve-gpu}
PYTHON=${ONNXSERVE_GPU_PYTHON:-python3}
RESULTS=${OUT:-$ROOT/benchmarks/results/gpu}
BENCH_BUDGET_S=${ONNXSERVE_GPU_BENCH_BUDGET_S:-240}
started=$SECONDS

say() { printf '[gpu_check %3ds] %s\n' $((SECONDS - started)) "$*"; }

stash() {
    if [ -f "$PARTS/manifest.json" ]; then
        "$PYTHON" "$ROOT/benchmarks/gpu_parts.py" stash "$PARTS" "$WORK/parts" || exit 2
    fi
}

if [ "${1:-}" = "--stash" ]; then
    stash
    exit 0
fi

# 1. A GPU, or nothing at all.
hidden=${CUDA_VISIBLE_DEVICES-unset}
gpus=""
if [ "$hidden" = "" ] || [ "$hidden" = "-1" ] || [ "$hidden" = "none" ]; then
    why="CUDA_VISIBLE_DEVICES is '$hidden'"
elif ! command -v nvidia-smi >/dev/null 2>&1; then
    why="nvidia-smi is not installed (no NVIDIA driver here)"
elif ! gpus=$(nvidia-smi -L 2>/dev/null) || ! grep -q '^GPU ' <<<"$gpus"; then
    why="nvidia-smi lists no GPU"
else
    why=""
fi
if [ -n "$why" ]; then
    echo "gpu_check: no NVIDIA GPU is visible here ($why): nothing was run." >&2
    echo "gpu_check: run it on a GPU machine; benchmarks/README.md says how." >&2
    exit 3
fi
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
say "GPU: $gpus"

# 2. The payload, checked part by part.
mkdir -p "$WORK" "$RESULTS"
stash
payload="$WORK/payload"
if ! cmp -s "$WORK/parts/manifest.json" "$payload/.manifest.json" 2>/dev/null; then
    "$PYTHON" "$ROOT/benchmarks/gpu_parts.py" join "$WORK/parts" "$WORK/payload.tar" || exit 2
    rm -rf "$payload" && mkdir -p "$payload"
    "$PYTHON" - "$WORK/payload.tar" "$payload" <<'EOF' || exit 2
import sys, tarfile
with tarfile.open(sys.argv[1]) as outer:
    outer.extractall(sys.argv[2], filter="data")
with tarfile.open(sys.argv[2] + "/extras.tar.xz") as inner:
    inner.extractall(sys.argv[2], filter="data")
EOF
    rm -f "$WORK/payload.tar"
    cp "$WORK/parts/manifest.json" "$payload/.manifest.json"
    say "payload joined and unpacked"
fi
wheels="$payload/wheels"

# The server's native front end travels in the payload (git ignores the built module, so the
# working tree carried here lacks it); it needs the glibc payload.json names.
if [ ! -f "$ROOT/onnxserve/_native.abi3.so" ] && [ -f "$payload/extras/native/_native.abi3.so" ]; then
    cp "$payload/extras/native/_native.abi3.so" "$ROOT/onnxserve/_native.abi3.so"
fi
say "glibc here: $(ldd --version 2>/dev/null | head -n 1); the native module needs $("$PYTHON" -c \
    'import json, sys; print(json.load(open(sys.argv[1])).get("native_glibc"))' "$payload/payload.json")"

# 3. A clean environment from the wheels alone.
venv="$WORK/venv"
if ! cmp -s "$payload/.manifest.json" "$venv/.manifest.json" 2>/dev/null; then
    rm -rf "$venv"
    "$PYTHON" -m venv --without-pip "$venv" || exit 1
    pip_wheel=$(ls "$wheels"/pip-*.whl)
    "$venv/bin/python" "$pip_wheel/pip" install -q --no-index --find-links "$wheels" pip setuptools wheel || exit 1
    "$venv/bin/python" -m pip install -q --no-index --find-links "$wheels" -r "$wheels/requirements.txt" || exit 1
    "$venv/bin/python" -m pip install -q --no-index --no-deps --no-build-isolation -e "$ROOT" || exit 1
    cp "$payload/.manifest.json" "$venv/.manifest.json"
    say "environment ready"
fi
"$venv/bin/python" -c "import onnxserve._native" || {
    echo "gpu_check: the native front end does not load here (see above: an older glibc needs a" \
        "manylinux build, e.g. maturin build --zig with the ziglang package)" >&2
    exit 1
}
"$venv/bin/python" - <<'EOF' || exit 1
import importlib.metadata as metadata
try:
    metadata.version("onnxruntime")
except metadata.PackageNotFoundError:
    print("onnxruntime-gpu", metadata.version("onnxruntime-gpu"), "(no CPU build beside it)")
else:
    raise SystemExit("onnxruntime's CPU build is installed beside onnxruntime-gpu")
EOF

# 4. The machine's CUDA and cuDNN libraries.
say "CUDA libraries in $PYTHON's packages:"
if ! libs=$("$PYTHON" "$ROOT/benchmarks/gpu_machine.py" libs --python "$PYTHON"); then
    echo "gpu_check: CUDA runtime, cuBLAS or cuDNN 9 not found in $PYTHON's site-packages/nvidia" >&2
fi
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [ -x "$payload/extras/h2load/h2load" ] && "$payload/extras/h2load/h2load" --version >/dev/null 2>&1; then
    mkdir -p "$WORK/bin" && ln -sf "$payload/extras/h2load/h2load" "$WORK/bin/h2load"
    export PATH="$WORK/bin:$PATH"
else
    say "h2load does not run here: the benchmark uses the python driver"
fi
cd "$ROOT" || exit 1

# 5. The machine as the check sees it.
say "report:"
"$venv/bin/python" benchmarks/gpu_machine.py report "$RESULTS/report.json"
cuda=$?  # non-zero: no CUDA session here, so the GPU tests will all be skipped
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv >>"$RESULTS/report.json.txt" 2>&1

# 6. The GPU tests.
say "pytest -m gpu tests/test_gpu.py"
"$venv/bin/python" -m pytest -m gpu -rs -v -p no:cacheprovider --junitxml "$RESULTS/tests.xml" \
    tests/test_gpu.py 2>&1 | tee "$RESULTS/tests.log"
tests=${PIPESTATUS[0]}

# 7. The benchmark matrix.
say "benchmark (budget ${BENCH_BUDGET_S}s)"
"$venv/bin/python" benchmarks/gpu_bench.py --repository "$payload/extras/models" --out "$RESULTS" \
    --work "$WORK/bench" --budget-s "$BENCH_BUDGET_S" 2>&1 | tee -a "$RESULTS/bench.log"
bench=${PIPESTATUS[0]}

{
    echo "# GPU check, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo
    echo '```'
    cat "$RESULTS/report.json" "$RESULTS/report.json.txt" 2>/dev/null
    echo '```'
    echo
    [ "$cuda" -eq 0 ] || echo "**No CUDA session could be created: every GPU test was skipped.**"
    echo "Tests (exit $tests): $(tail -n 1 "$RESULTS/tests.log")"
    echo
    cat "$RESULTS/bench.md" 2>/dev/null || echo "no benchmark page (exit $bench)"
} >"$RESULTS/report.md"
rm -f "$RESULTS/report.json.txt"
say "done: CUDA session exit $cuda, tests exit $tests, benchmark exit $bench; $RESULTS/report.md"
[ "$cuda" -eq 0 ] && [ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
