#!/usr/bin/env python3
"""The GPU benchmark matrix: raw onnxruntime on CUDA against the server, one GPU, N workers.

For each model (the seed's LSTM, ``sentiment``, and the digits CNN,
``digits``) it serves the repository with ``onnxserve serve --device cuda``
and drives it with ``onnxserve bench`` at concurrency 1 and 64:

- ``--workers`` 1, 2 and 4 (every worker its own session and CUDA context),
  with the GPU's utilisation and memory sampled by nvidia-smi during the load;
- ``--workers 1`` with CUDA graphs (allowed_batch_sizes 1,2,4,...,64 and
  enable_cuda_graph), where the model allows them;
- raw onnxruntime on CUDA (``InferenceSession.run`` on host arrays, the bench's
  baseline, batch 1 to 128), and in-process plain ``run`` against IO binding
  (onnxserve.server.binding) at batch 1 and 64: what binding saves per batch.

It writes ``bench.json`` (every figure) and ``bench.md`` (the tables) into
``--out``, and stops starting new configurations once ``--budget-s`` is spent
(saying which were skipped), so that it fits the device time it is given.
benchmarks/gpu_check.sh runs it; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.run_benchmark import running_server  # noqa: E402

MODELS = ("sentiment", "digits")
GRAPH_SIZES = "1,2,4,8,16,32,64"


class GpuSampler:
    """nvidia-smi's utilisation and memory every 200 ms while the block runs."""

    def __init__(self) -> None:
        self.utilisation: list[float] = []
        self.memory_mib: list[float] = []
        self._process: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        query = "--query-gpu=utilization.gpu,memory.used"
        with contextlib.suppress(OSError):
            self._process = subprocess.Popen(
                ["nvidia-smi", query, "--format=csv,noheader,nounits", "-lms", "200"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()
        return self

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            with contextlib.suppress(ValueError):
                util, memory = (float(v) for v in line.split(","))
                self.utilisation.append(util)
                self.memory_mib.append(memory)

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def summary(self) -> dict[str, float | None]:
        busy = self.utilisation
        return {
            "gpu_util_mean": statistics.fmean(busy) if busy else None,
            "gpu_util_max": max(busy) if busy else None,
            "gpu_memory_max_mib": max(self.memory_mib) if self.memory_mib else None,
        }


def bench(
    model: str, address: str, repository: Path, out: Path, args: argparse.Namespace, raw: bool
) -> dict[str, Any]:
    """One ``onnxserve bench`` run (concurrency 1 and 64); its JSON report."""
    report = out / f"bench-{model}.json"
    cmd = [sys.executable, "-m", "onnxserve", "bench", model, "--url", address]
    cmd += ["--concurrency", args.concurrency, "--duration", str(args.duration)]
    cmd += ["--warmup", str(args.warmup), "--connections", str(args.connections)]
    cmd += ["--json", str(report), "--no-progress", "--log-level", "WARNING"]
    if raw:
        cmd += ["--repository", str(repository), "--raw-device", "cuda"]
        cmd += ["--raw-seconds", str(args.raw_seconds)]
    else:
        cmd += ["--no-raw-baseline"]
    completed = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    with (out / "bench.log").open("a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n{completed.stdout}{completed.stderr}")
    if not report.is_file():
        raise RuntimeError(
            f"onnxserve bench failed ({completed.returncode}): {completed.stderr[-800:]}"
        )
    data = json.loads(report.read_text())
    report.unlink()
    return data


def graphs_repository(source: Path, target: Path) -> Path:
    """A copy of ``source`` whose models pad to GRAPH_SIZES and replay a CUDA graph each."""
    from google.protobuf import text_format

    from onnxserve.server.config import parse_config_text

    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    for model in MODELS:
        path = target / model / "config.pbtxt"
        config = parse_config_text(path.read_text() if path.is_file() else "", model)
        config.parameters["allowed_batch_sizes"].string_value = GRAPH_SIZES
        accelerators = config.optimization.execution_accelerators
        cuda = accelerators.gpu_execution_accelerator.add(name="cuda")
        cuda.parameters["enable_cuda_graph"] = "1"
        path.write_text(text_format.MessageToString(config))
    return target


def binding_gain(repository: Path, model: str, runs: int = 200) -> dict[str, float]:
    """Mean ms of plain ``run`` on host arrays against IO binding, batch 1 and 64, in process."""
    import numpy as np

    from onnxserve.server.binding import BoundRunner
    from onnxserve.sessions import create_session

    path = repository / model / "1" / "model.onnx"
    session = create_session(path, ["CUDAExecutionProvider"], quiet_providers=True)
    if "CUDAExecutionProvider" not in session.get_providers():
        raise RuntimeError("onnxruntime could not start CUDA")
    runner = BoundRunner(session, "cuda", 0)
    inputs = session.get_inputs()
    names = [o.name for o in session.get_outputs()]
    figures: dict[str, float] = {}
    rng = np.random.default_rng(0)
    for batch in (1, 64):
        feeds = {}
        for node in inputs:
            shape = [batch, *(d if isinstance(d, int) else 1 for d in node.shape[1:])]
            if "int" in node.type:
                feeds[node.name] = rng.integers(0, 100, shape).astype(
                    np.int32 if "32" in node.type else np.int64
                )
            else:
                feeds[node.name] = rng.random(shape).astype(np.float32)
        for label, call in (
            ("plain", lambda f=feeds: session.run(names, f)),
            ("bound", lambda f=feeds: runner.run(f, names)),
        ):
            for _ in range(10):
                call()
            started = time.perf_counter()
            for _ in range(runs):
                call()
            figures[f"{label}_batch{batch}_ms"] = (time.perf_counter() - started) * 1000 / runs
    return figures


def _row(data: dict[str, Any], concurrency: int) -> dict[str, Any]:
    step = next((s for s in data["steps"] if int(s["load"]) == concurrency), None)
    if step is None:
        return {}
    latency = step.get("latency") or {}
    server = step.get("server") or {}
    return {
        "samples_per_s": step["samples_per_s"],
        "mean_ms": latency.get("mean_ms"),
        "p99_ms": latency.get("p99_ms"),
        "failures": step["failures"],
        "avg_batch": server.get("avg_batch"),
        "client_cpu_percent": step.get("client_cpu_percent"),
        "driver": step.get("driver"),
    }


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# GPU benchmark, {results['started']}", ""]
    lines += [f"GPU: {results.get('gpu', {})}", ""]
    lines += [
        "| model | configuration | c=64 samples/s | x raw best | c=1 mean ms | c=1 over raw b1 "
        "| avg batch (c=64) | GPU util mean/max % | GPU MiB | failed |"
    ]
    lines += ["|---|---|---|---|---|---|---|---|---|---|"]
    for row in results["configs"]:
        raw = results["raw"].get(row["model"]) or {}
        best, batch1 = raw.get("best_samples_per_s"), raw.get("batch1_ms")
        c64, c1 = row.get("c64", {}), row.get("c1", {})
        ratio = f"{c64['samples_per_s'] / best:.2f}" if best and c64 else "-"
        delta = f"+{c1['mean_ms'] - batch1:.2f}" if batch1 and c1.get("mean_ms") else "-"
        util = row.get("gpu_util_mean"), row.get("gpu_util_max")
        lines.append(
            f"| {row['model']} | {row['configuration']} "
            f"| {c64.get('samples_per_s', 0):,.0f} | {ratio} | "
            f"{c1.get('mean_ms') or 0:.2f} | {delta} | {c64.get('avg_batch') or 0:.1f} | "
            f"{util[0] or 0:.0f}/{util[1] or 0:.0f} | {row.get('gpu_memory_max_mib') or 0:.0f} | "
            f"{c64.get('failures', 0) + c1.get('failures', 0)} |"
        )
    lines += ["", "Raw onnxruntime on CUDA (host arrays in and out, the bench's baseline):", ""]
    for model, raw in results["raw"].items():
        lines.append(
            f"- {model}: "
            + ", ".join(
                f"batch {p['batch']} {p['mean_ms']:.3f} ms ({p['samples_per_s']:,.0f}/s)"
                for p in raw.get("points", [])
            )
        )
    lines += ["", "Plain run against IO binding, in process (mean ms per batch):", ""]
    for model, gain in results["binding"].items():
        lines.append(f"- {model}: " + ", ".join(f"{k} {v:.3f}" for k, v in gain.items()))
    for note in results["notes"]:
        lines.append(f"- note: {note}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/onnxserve-gpu/bench"))
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--concurrency", default="1,64")
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--raw-seconds", type=float, default=0.5)
    parser.add_argument("--no-graphs", action="store_true")
    parser.add_argument("--budget-s", type=float, default=240.0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "configs": [],
        "raw": {},
        "binding": {},
        "notes": [],
    }
    with contextlib.suppress(Exception):
        from benchmarks.gpu_machine import _nvidia_smi

        results["gpu"] = _nvidia_smi()
    plan: list[tuple[str, str, int, bool]] = []
    for model in MODELS:
        for workers in (int(w) for w in args.workers.split(",")):
            plan.append((model, f"--workers {workers}", workers, False))
        if not args.no_graphs:
            plan.append((model, "--workers 1, CUDA graphs", 1, True))
    graphs = None if args.no_graphs else graphs_repository(args.repository, args.work / "graphs")
    log = args.out / "servers.log"
    for model, label, workers, with_graphs in plan:
        if time.monotonic() - started > args.budget_s:
            results["notes"].append(
                f"skipped {model} {label}: the {args.budget_s:.0f} s budget was spent"
            )
            continue
        repository = graphs if with_graphs and graphs is not None else args.repository
        row: dict[str, Any] = {"model": model, "configuration": label}
        print(f"[{time.monotonic() - started:5.0f} s] {model} {label}", flush=True)
        server_log = args.work / "server.log"
        extra = ["--device", "cuda", "--workers", str(workers), "--log-level", "INFO"]
        with_raw = model not in results["raw"]
        try:
            with running_server(repository, server_log, extra) as address, GpuSampler() as sampler:
                data = bench(model, address, repository, args.out, args, raw=with_raw)
            row.update(sampler.summary())
        except (SystemExit, RuntimeError, subprocess.SubprocessError) as exc:
            results["notes"].append(f"{model} {label} failed: {exc}")
            continue
        finally:
            with log.open("a") as sink:  # every configuration's server log, in one file
                sink.write(f"\n=== {model} {label}\n")
                sink.write(server_log.read_text(errors="replace") if server_log.is_file() else "")
        if data.get("raw"):
            raw = data["raw"]
            results["raw"][model] = {
                "providers": raw["providers"],
                "points": raw["points"],
                "best_samples_per_s": raw["best"]["samples_per_s"],
                "batch1_ms": (raw.get("batch1") or {}).get("mean_ms"),
            }
        row["c1"], row["c64"] = _row(data, 1), _row(data, 64)
        results["configs"].append(row)
        c64, c1 = row["c64"].get("samples_per_s", 0), row["c1"].get("mean_ms") or 0
        print(f"    c=64 {c64:,.0f} samples/s, c=1 {c1:.2f} ms", flush=True)
    for model in MODELS:
        try:
            results["binding"][model] = binding_gain(args.repository, model)
        except Exception as exc:  # onnxruntime raises several unrelated types
            results["notes"].append(f"binding comparison for {model} failed: {exc}")
    results["seconds"] = time.monotonic() - started
    (args.out / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    page = markdown(results)
    (args.out / "bench.md").write_text(page)
    print(page)
    return 0 if results["configs"] and not any("failed" in n for n in results["notes"]) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
