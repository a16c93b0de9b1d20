#!/usr/bin/env python3
"""onnxserve against real Triton and raw onnxruntime on the seed's LSTM, in one run.

A thin driver over ``onnxserve bench`` (onnxserve.bench.run_bench, the h2load
driver) and the test suite's server launcher. It serves the seed model
(Embedding(1000, 32) -> LSTM(128, return_sequences) -> LSTM(128) ->
Dense(1, sigmoid) on 50 token ids, one sample per request), which it builds
itself once into ``build/bench_repository`` (benchmarks/seed_model.py: Keras,
one training step, onnxserve's converter; the sentiment example takes
sentences now, not token ids), from each contestant in turn (benchmarks/contestants.py: this
checkout, optionally another revision, the empty handler, Triton), and in
every round, the order rotating from round to round so that each server meets
the machine's good and bad moments alike:

- 64 concurrent calls (throughput, failures, the server's batch sizes and the
  CPU its processes spent per answered request), then 1 (latency);
- raw onnxruntime on the same model file, in this process while nothing is
  served (batch 1, and the best batched throughput).

Every contestant runs at its own best settings, and the page names them
(threads, instances, queue delays): onnxserve at its defaults and at each
``--variant`` (e.g. ``--variant=--workers=2``, its best documented setting
here), Triton at onnxruntime's and a Triton user's defaults and at each
``--triton`` variant (a small sweep: ``--triton threads=1 --triton
instances=2``). The targets are judged against the best of the Triton
variants, never against a Triton tuned down to onnxserve's choices.

It writes ``benchmarks/results/latest.md`` and ``latest.json`` (git-ignored)
and prints the page: medians over the rounds with their ranges, each round's
figures, the verdicts of issue 14, and the README's rows.

    python benchmarks/run_benchmark.py \\
        [--peers triton,empty] [--before main] [--rounds 5] [--duration 10] \\
        [--variant=--workers=2] [--triton default --triton threads=1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: benchmarks/ and tests/ are packages here
    sys.path.insert(0, str(ROOT))

from benchmarks import contestants, seed_model  # noqa: E402
from benchmarks.report import Measurement, RawFigures, markdown  # noqa: E402
from onnxserve.bench.settings import BenchSettings  # noqa: E402
from onnxserve.protocol import model_config_pb2 as mc  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SEQUENCE = seed_model.SEQUENCE
LSTM_HIDDEN = seed_model.LSTM_HIDDEN


@dataclass(frozen=True)
class SeedModel:
    """Where the seed model is served from and how to call it."""

    repository: Path
    name: str
    input_name: str
    input_dtype: np.dtype
    origin: str


def _looks_like_seed(model_file: Path) -> tuple[str, np.dtype] | None:
    """(input name, dtype) when the ONNX file is the seed's LSTM shape, else None.

    The signature checked: one input [batch, 50 or dynamic] of token ids, two
    LSTM ops with hidden size 128.
    """
    import onnx
    from onnx import helper

    try:
        model = onnx.load(str(model_file), load_external_data=False)
    except Exception:
        return None
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    lstms = [n for n in graph.node if n.op_type == "LSTM"]
    if len(inputs) != 1 or len(lstms) != 2:
        return None
    if any(a.name == "hidden_size" and a.i != LSTM_HIDDEN for n in lstms for a in n.attribute):
        return None
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 2 or (dims[1].HasField("dim_value") and dims[1].dim_value != SEQUENCE):
        return None
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(inputs[0].type.tensor_type.elem_type))
    return inputs[0].name, dtype


def find_seed(repository: Path, name: str | None) -> SeedModel | None:
    """The seed model in a Triton-layout repository (by name, or by its graph)."""
    if not repository.is_dir():
        return None
    folders = [repository / name] if name else sorted(p for p in repository.iterdir() if p.is_dir())
    for folder in folders:
        versions = sorted(
            (p for p in folder.glob("*") if p.name.isdigit()), key=lambda p: int(p.name)
        )
        if not versions or not (versions[-1] / "model.onnx").is_file():
            continue
        found = _looks_like_seed(versions[-1] / "model.onnx")
        if found is not None or name:
            if found is None:
                raise SystemExit(f"{folder} is not the seed's LSTM model (2 LSTM(128), length 50)")
            return SeedModel(repository, folder.name, found[0], found[1], f"{folder}")
    return None


@contextlib.contextmanager
def running_server(repository: Path, log_path: Path, extra: Sequence[str]) -> Iterator[str]:
    """``onnxserve serve`` on a free loopback port until the block ends: its address.

    Fails at once (SystemExit) when a model does not load; the server's log is
    copied to ``log_path`` when it stops. (benchmarks/gpu_bench.py serves with it.)
    """
    with contestants.onnxserve(repository, extra, log=log_path) as running:
        yield running.address


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


#: With --body both: onnxserve at its defaults, called with JSON bodies.
JSON_CONTESTANT = "onnxserve JSON bodies"


# --- one contestant, one round -------------------------------------------------------------


@dataclass
class Bench:
    """What every measurement shares: the model, the request, the settings."""

    seed: SeedModel
    model_file: Path
    args: argparse.Namespace
    payload: bytes = b""
    notes: list[str] = field(default_factory=list)
    # Each contestant's settings as the page states them.
    settings_of: dict[str, str] = field(default_factory=dict)

    def settings(
        self, running: contestants.Running, concurrency: int, raw: bool, name: str = ""
    ) -> BenchSettings:
        rest = self.args.protocol == "http"
        json_bodies = self.args.body == "json" or name == JSON_CONTESTANT
        if rest and running.http_address is None:
            raise SystemExit("--protocol http: a contestant without an HTTP port was started")
        return BenchSettings(
            model=self.seed.name,
            url=f"http://{running.http_address}" if rest else running.address,
            protocol=self.args.protocol,
            body="json" if json_bodies else "binary",
            concurrency=(concurrency,),
            duration=self.args.duration,
            warmup=self.args.warmup,
            driver="h2load",
            connections=self.args.connections,
            raw_baseline=raw,
            model_file=self.model_file if raw else None,
            raw_batch_sizes=(1, 32, 64, 128),
            raw_seconds=self.args.raw_seconds,
            progress=False,
        )


async def _measure_model_server(
    bench: Bench, name: str, running: contestants.Running, raw: bool
) -> tuple[Measurement, RawFigures | None]:
    """c=64 (with its CPU per request), then c=1, through onnxserve bench's runner."""
    import grpc

    from onnxserve.bench.runner import run_bench, server_delta
    from onnxserve.protocol import grpc_service_pb2 as pb
    from onnxserve.protocol import grpc_service_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(running.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelStatisticsRequest(name=bench.seed.name)
        before = await stub.ModelStatistics(request, timeout=10)
        cpu_before = contestants.process_tree_cpu_s(running.pid)
        busy = await run_bench(bench.settings(running, 64, raw, name))
        cpu_after = contestants.process_tree_cpu_s(running.pid)
        after = await stub.ModelStatistics(request, timeout=10)
    lone = await run_bench(bench.settings(running, 1, False, name))
    answered = server_delta(before, after)
    cpu_us = None
    if cpu_before is not None and cpu_after is not None and answered.success:
        cpu_us = (cpu_after - cpu_before) / (answered.success + answered.fail) * 1e6
    top, one = busy.step_at_concurrency(64), lone.step_at_concurrency(1)
    assert top is not None and one is not None
    measured = Measurement.of(name, top, one, cpu_us)
    return measured, (RawFigures.of(busy.raw) if busy.raw is not None else None)


async def _measure_empty(bench: Bench, name: str, running: contestants.Running) -> Measurement:
    """The empty handler: the h2load driver directly (it serves no statistics)."""
    from onnxserve.bench.h2load import H2LoadDriver, find_h2load

    executable = find_h2load()
    assert executable is not None
    figures = {}
    cpu_us = None
    driver = H2LoadDriver(executable, running.address, bench.payload, bench.args.connections)
    async with driver:
        for concurrency in (64, 1):
            await driver.warmup(concurrency, None, bench.args.warmup)
            started = contestants.process_tree_cpu_s(running.pid)
            run = await driver.run(concurrency, None, seconds=bench.args.duration, requests=0)
            ended = contestants.process_tree_cpu_s(running.pid)
            figures[concurrency] = run
            if concurrency == 64 and started is not None and ended is not None and run.requests:
                cpu_us = (ended - started) / run.requests * 1e6
    return Measurement.of_run(name, figures[64], figures[1], cpu_us)


@contextlib.contextmanager
def _started(
    bench: Bench, name: str, repository: Path, served: mc.ModelConfig
) -> Iterator[contestants.Running]:
    args = bench.args
    log = args.results / f"{name.replace(' ', '_').replace('=', '-')}.log"
    if name == "onnxserve" or name in args.variants:
        flags = [*args.server_arg, *args.variants.get(name, [])]
        with contestants.onnxserve(repository, flags, log=log) as running:
            yield running
    elif name.startswith("before"):
        with contestants.onnxserve(repository, args.server_arg, site=args.before_site) as running:
            yield running
    elif name.startswith("empty"):
        with contestants.empty(name) as running:
            yield running
    else:
        with contestants.triton(bench.model_file, served, args.triton[name], log) as running:
            yield running


def _note_settings(bench: Bench, name: str, served: mc.ModelConfig) -> None:
    if name in bench.args.triton:
        bench.settings_of[name] = bench.args.triton[name].describe()
    elif name.startswith("empty"):
        bench.settings_of[name] = "ModelInfer only, answers at once (the Python gRPC floor)"
    elif name.startswith("before"):
        bench.settings_of[name] = f"flags: {' '.join(bench.args.server_arg) or '(defaults)'}"


def _describe(bench: Bench, repository: Path) -> mc.ModelConfig:
    """Start this checkout's server once: the completed config, one request and its answer."""
    import grpc

    from onnxserve.bench.workload import build_inputs, encode_request, model_info
    from onnxserve.protocol import grpc_service_pb2 as pb
    from onnxserve.protocol import grpc_service_pb2_grpc as pb_grpc

    with (
        contestants.onnxserve(repository, []) as running,
        grpc.insecure_channel(running.address) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name=bench.seed.name))
        config = stub.ModelConfig(pb.ModelConfigRequest(name=bench.seed.name)).config
        # A seed converted with a dynamic sequence gets the article's 50 tokens.
        dims = next(t.dims for t in config.input if t.name == bench.seed.input_name)
        shapes = {bench.seed.input_name: (SEQUENCE,)} if list(dims) != [SEQUENCE] else {}
        info = model_info(metadata, config, shapes)
        arrays = build_inputs(info, 1, "random", int_range=(0, 99), seed=0)
        bench.payload = encode_request(bench.seed.name, "", info, arrays[0])
        stub.ModelInfer(pb.ModelInferRequest.FromString(bench.payload), timeout=60)
    return config


def workers_of(flags: Sequence[str]) -> int:
    """The ``--workers`` count serve flags ask for (1 when they do not)."""
    workers = 1
    for index, flag in enumerate(flags):
        value = None
        if flag.startswith("--workers="):
            value = flag.split("=", 1)[1]
        elif flag == "--workers" and index + 1 < len(flags):
            value = flags[index + 1]
        if value is not None and value.isdigit():
            workers = int(value)
    return workers


def connection_notes(args: argparse.Namespace) -> list[str]:
    """A note per onnxserve contestant with more processes than h2load has connections."""
    contestants_flags = {"onnxserve": list(args.server_arg)}
    contestants_flags.update(
        {name: [*args.server_arg, *flags] for name, flags in args.variants.items()}
    )
    notes = []
    for name, flags in contestants_flags.items():
        workers = workers_of(flags)
        if workers > args.connections:
            notes.append(
                f"{name}: {workers} processes but {args.connections} h2load connection(s); the "
                "kernel spreads connections, not calls, so some processes served nothing "
                "(give --connections 16, for every contestant alike)"
            )
    return notes


def _available(peers: Sequence[str], triton: Sequence[str], notes: list[str]) -> list[str]:
    """The peers that can run here (Triton as each of its variants); a note for each that cannot."""
    usable = []
    for peer in peers:
        if peer == "triton":
            from benchmarks.triton_peer import PeerUnavailable, ensure_environment, layout

            try:
                layout(ensure_environment())
            except PeerUnavailable as exc:
                notes.append(f"Triton was not measured: {exc}")
                continue
            usable.extend(triton)
            continue
        usable.append(peer)
    return usable


def onnxserve_settings(log: str, flags: Sequence[str], config: mc.ModelConfig) -> str:
    """What the page says of an onnxserve contestant: its flags, and what its log says it chose."""
    threads = sorted(set(re.findall(r"intra-op threads (\d+)", log)))
    workers = len(re.findall(r"loaded model '[^']*' version \d+", log)) or 1
    batching = config.dynamic_batching
    delay = batching.max_queue_delay_microseconds
    return (
        f"flags: {' '.join(flags) or '(defaults)'}; onnxruntime intra-op threads "
        f"{'/'.join(threads) or '?'} per instance, spinning off; "
        f"{max(1, sum(g.count or 1 for g in config.instance_group))} instance(s) per process, "
        f"{workers} process(es) loaded the model; dynamic batching "
        + (
            f"max queue delay {delay} us"
            if delay
            else "without a queue delay (a batch forms whenever an instance is free)"
        )
    )


def choose_seed(
    repository: Path | None,
    model: str | None,
    notes: list[str],
    build: Callable[[], Path] = seed_model.ensure_bench_repository,
) -> SeedModel:
    """The seed model to measure: ``--repository``'s when it holds one, else the benchmark's own.

    Without ``--repository`` (or with one that holds no token-id seed LSTM, as
    ``build/model_repository`` since its sentiment example takes sentences) the
    benchmark's own seed is built once into ``build/bench_repository`` and
    used, with a note. ``--model`` names a model that must be the seed.
    """
    if repository is not None:
        seed = find_seed(repository, model)
        if seed is not None:
            return seed
        if model:
            raise SystemExit(f"no model {model!r} in {repository}")
        notes.append(
            f"{repository} holds no token-id seed LSTM (2 LSTM(128) on 50 token ids; the "
            "sentiment example takes sentences now): the benchmark's own seed was measured"
        )
    elif model:
        raise SystemExit("--model names a model in --repository: give --repository too")
    own = build()
    seed = find_seed(own, seed_model.MODEL_NAME)
    assert seed is not None  # find_seed exits when the named model is not the seed
    folder = Path(seed.origin)
    where = folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder
    return dataclasses.replace(
        seed, origin=f"{where}, built by benchmarks/seed_model.py ({seed_model.RECIPE['training']})"
    )


def run(args: argparse.Namespace) -> int:
    if shutil.which("h2load") is None:
        raise SystemExit(
            "h2load is not installed (Debian/Ubuntu: apt-get install nghttp2-client); the "
            "benchmark needs it: a Python load generator would take the servers' CPUs"
        )
    notes = connection_notes(args)
    seed = choose_seed(args.repository, args.model, notes)
    print(f"seed model: {seed.origin}", file=sys.stderr)
    args.results.mkdir(parents=True, exist_ok=True)
    version = sorted((p for p in (seed.repository / seed.name).glob("*") if p.name.isdigit()),
                     key=lambda p: int(p.name))[-1]  # fmt: skip
    bench = Bench(seed, version / "model.onnx", args, notes=notes)
    names = ["onnxserve"]
    if args.before:
        args.before_site = contestants.revision_tree(args.before, ROOT / "build" / "bench-before")
        names.append(f"before {args.before}")
    names += list(args.variants)
    peers = args.peers
    if args.protocol == "http" and any(p.startswith("empty") for p in peers):
        bench.notes.append("--protocol http: the empty handler has no HTTP port; left out")
        peers = [p for p in peers if not p.startswith("empty")]
    if args.protocol == "http":
        bodies = (
            "binary bodies, and JSON ones for onnxserve"
            if args.body == "both"
            else (f"{args.body} bodies")
        )
        bench.notes.append(
            f"protocol: HTTP/REST, {bodies} (h2load --h1, one connection per call in flight); "
            "server statistics read over gRPC"
        )
    names += _available(peers, list(args.triton), bench.notes)
    started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    measurements: list[list[Measurement]] = []
    raws: list[RawFigures] = []
    with tempfile.TemporaryDirectory(prefix="onnxserve-bench-") as scratch:
        # Only the seed model: a copy, as the server refuses links out of its repository.
        repository = Path(scratch) / "repository"
        shutil.copytree(seed.repository / seed.name, repository / seed.name)
        served = _describe(bench, repository)
        for round_index in range(args.rounds):
            order = names[round_index % len(names) :] + names[: round_index % len(names)]
            row = []
            for name in order:
                print(f"round {round_index + 1} of {args.rounds}: {name}", file=sys.stderr)
                with _started(bench, name, repository, served) as running:
                    _note_settings(bench, name, served)
                    if name.startswith("empty"):
                        row.append(asyncio.run(_measure_empty(bench, name, running)))
                        continue
                    measured, raw = asyncio.run(
                        _measure_model_server(bench, name, running, raw=name == "onnxserve")
                    )
                    row.append(measured)
                    if raw is not None:
                        raws.append(raw)
                print(f"  {row[-1].summary()}", file=sys.stderr)
            measurements.append(sorted(row, key=lambda m: names.index(m.name)))
    environment = {
        "started_at": started_at,
        "commit": _git_commit(),
        "cpus": os.cpu_count(),
        "load_average_at_start": load_start,
        "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "python": sys.version.split()[0],
    }
    for name in names:  # onnxserve's logs are complete once the servers stopped
        log = args.results / f"{name.replace(' ', '_').replace('=', '-')}.log"
        if (name == "onnxserve" or name in args.variants) and log.exists():
            flags = [*args.server_arg, *args.variants.get(name, [])]
            bench.settings_of[name] = onnxserve_settings(log.read_text(), flags, served)
    page = markdown(
        seed.name, names, measurements, raws, environment, bench.notes, args, bench.settings_of,
        origin=seed.origin,
    )  # fmt: skip
    (args.results / "latest.md").write_text(page)
    (args.results / "latest.json").write_text(
        json.dumps(
            {
                "environment": environment,
                "arguments": {k: str(v) for k, v in vars(args).items()},
                "rounds": [[dataclasses.asdict(m) for m in row] for row in measurements],
                "raw": [dataclasses.asdict(r) for r in raws],
                "notes": bench.notes,
                "settings": bench.settings_of,
                "model": {"name": seed.name, "origin": seed.origin},
            },
            indent=2,
        )
        + "\n"
    )
    print(page)
    print(f"wrote {args.results / 'latest.md'} and latest.json", file=sys.stderr)
    return 1 if any(m.failures for row in measurements for m in row) else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Needs h2load (apt-get install nghttp2-client). The seed model is built once "
        "into build/bench_repository (python -m benchmarks.seed_model).",
    )
    parser.add_argument(
        "--repository",
        type=Path,
        help="Model repository to take the seed model from (a token-id LSTM: 2 LSTM(128), "
        "length 50); where it holds none, or without it, the benchmark's own seed in "
        "build/bench_repository is used (built when missing)",
    )
    parser.add_argument(
        "--model", help="Name of the seed model in --repository (default: found by its graph)"
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="Where to write results")
    parser.add_argument(
        "--peers",
        type=lambda text: [p for p in text.split(",") if p],
        default=["triton", "empty"],
        help=f"Servers measured beside onnxserve, from {','.join(contestants.PEERS)} "
        "(default triton,empty; an empty value for none)",
    )
    parser.add_argument(
        "--before",
        metavar="REVISION",
        help="Also measure onnxserve as of this git revision (e.g. main), with this environment",
    )
    parser.add_argument("--rounds", type=int, default=5, help="Rounds (each server once a round)")
    parser.add_argument("--duration", type=float, default=10.0, help="Seconds per measurement")
    parser.add_argument("--warmup", type=float, default=2.0, help="Warm-up seconds before each")
    parser.add_argument("--raw-seconds", type=float, default=1.0, help="Raw seconds per batch")
    parser.add_argument("--connections", type=int, default=1, help="HTTP/2 connections")
    parser.add_argument(
        "--protocol",
        choices=("grpc", "http"),
        default="grpc",
        help="What every contestant is called over: gRPC, or HTTP/REST (Triton's and "
        "onnxserve's REST ports, HTTP/1.1)",
    )
    parser.add_argument(
        "--body",
        choices=("binary", "json", "both"),
        default="binary",
        help="With --protocol http: binary tensors (Triton's extension, what tritonclient.http "
        f"sends), JSON data, or both (every contestant binary, and '{JSON_CONTESTANT}' beside)",
    )
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="Extra serve flag for onnxserve, e.g. --server-arg=--workers=2",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="FLAGS",
        help="Also measure onnxserve with these serve flags (space-separated), as its own "
        "contestant, e.g. --variant=--workers=2 (its best documented setting on 2 cores)",
    )
    parser.add_argument(
        "--triton",
        action="append",
        default=[],
        metavar="SETTINGS",
        help="A Triton variant to measure (repeatable): 'default' (onnxruntime's threads and "
        "spinning, 1 instance, 2 ms delay) or e.g. threads=1,spinning=off,instances=2,delay=500 "
        "(default: default only)",
    )
    args = parser.parse_args(argv)
    unknown = set(args.peers) - set(contestants.PEERS)
    if unknown:
        parser.error(f"--peers: unknown {', '.join(sorted(unknown))}")
    from benchmarks.triton_peer import TritonSettings

    try:
        variants = [TritonSettings.parse(text) for text in args.triton or ["default"]]
    except ValueError as exc:
        parser.error(f"--triton: {exc}")
    args.triton_spec = args.triton or ["default"]
    args.triton = {v.name(): v for v in variants}
    args.variants = {f"onnxserve {flags}": flags.split() for flags in args.variant}
    if args.body == "both":
        if args.protocol != "http":
            parser.error("--body both needs --protocol http")
        args.variants[JSON_CONTESTANT] = []
    args.before_site = None
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
