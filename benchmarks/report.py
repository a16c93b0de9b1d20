"""The comparison page of benchmarks/run_benchmark.py: medians over rounds, ranges, verdicts.

Kept apart from the measuring so that its arithmetic is tested on figures
built by hand (tests/test_bench_script.py): the README's table is copied from it.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxserve.bench.drivers import DriverRun
from onnxserve.bench.results import RawResult, StepResult

LABELS = {
    "onnxserve": "onnxserve (this commit)",
    "triton": "Triton 2.51 (python backend, onnxruntime's defaults, 2 ms queue delay)",
    "empty": "empty ModelInfer handler (grpc.aio, raw bytes, default loop)",
    "empty-asyncio": "empty ModelInfer handler (grpc.aio, protobuf classes, asyncio)",
}


@dataclass(frozen=True)
class Measurement:
    """One server in one round: 64 concurrent calls, then 1."""

    name: str
    c64_infer_per_s: float
    c64_requests: int
    c64_failures: int
    avg_batch: float | None
    cpu_us_per_request: float | None
    c1_mean_ms: float | None
    c1_p99_ms: float | None
    c1_requests: int
    c1_failures: int

    @classmethod
    def of(cls, name: str, busy: StepResult, lone: StepResult, cpu_us: float | None) -> Measurement:
        """From the two steps of ``onnxserve bench``'s runner."""
        return cls(
            name=name,
            c64_infer_per_s=busy.infer_per_s,
            c64_requests=busy.requests,
            c64_failures=busy.failures,
            avg_batch=busy.server.avg_batch if busy.server else None,
            cpu_us_per_request=cpu_us,
            c1_mean_ms=lone.latency.mean_ms if lone.latency else None,
            c1_p99_ms=lone.latency.p99_ms if lone.latency else None,
            c1_requests=lone.requests,
            c1_failures=lone.failures,
        )

    @classmethod
    def of_run(
        cls, name: str, busy: DriverRun, lone: DriverRun, cpu_us: float | None
    ) -> Measurement:
        """From two driver runs (the empty handler, which keeps no statistics)."""

        def answered(run: DriverRun) -> int:
            return run.successes if run.successes is not None else int(run.latencies_ns.size)

        lone_ms = lone.latencies_ns / 1e6
        return cls(
            name=name,
            c64_infer_per_s=answered(busy) / max(busy.seconds, 1e-9),
            c64_requests=busy.requests,
            c64_failures=busy.requests - answered(busy),
            avg_batch=None,
            cpu_us_per_request=cpu_us,
            c1_mean_ms=float(lone_ms.mean()) if lone_ms.size else None,
            c1_p99_ms=float(np.percentile(lone_ms, 99)) if lone_ms.size else None,
            c1_requests=lone.requests,
            c1_failures=lone.requests - answered(lone),
        )

    @property
    def failures(self) -> int:
        return self.c64_failures + self.c1_failures

    def summary(self) -> str:
        cpu = f", {self.cpu_us_per_request:.0f} us CPU/request" if self.cpu_us_per_request else ""
        batch = f", batch {self.avg_batch:.1f}" if self.avg_batch else ""
        c1 = f"{self.c1_mean_ms:.3f} ms" if self.c1_mean_ms is not None else "-"
        return (
            f"{self.name}: c=64 {self.c64_infer_per_s:,.0f}/s{batch}{cpu}; c=1 {c1}; "
            f"{self.failures} failed"
        )


@dataclass(frozen=True)
class RawFigures:
    """Raw onnxruntime in one round: batch 1 and the best batch."""

    batch1_ms: float
    best_samples_per_s: float
    best_batch: int

    @classmethod
    def of(cls, raw: RawResult) -> RawFigures:
        batch1 = raw.batch1
        return cls(
            batch1_ms=batch1.mean_ms if batch1 else float("nan"),
            best_samples_per_s=raw.best.samples_per_s,
            best_batch=raw.best.batch,
        )


def _spread(values: Sequence[float], text: Callable[[float], str]) -> str:
    """The median, and the range over the rounds when there are several."""
    if not values:
        return "-"
    middle = text(statistics.median(values))
    if len(values) == 1:
        return middle
    return f"{middle} ({text(min(values))} to {text(max(values))})"


def _number(value: float | None, form: str) -> str:
    return "-" if value is None else form.format(value)


def _label(name: str) -> str:
    if name.startswith("before "):
        return f"onnxserve before ({name.removeprefix('before ')})"
    if name.startswith("triton "):
        return f"Triton 2.51 ({name.removeprefix('triton ')})"
    if name.startswith("onnxserve "):
        return f"onnxserve `{name.removeprefix('onnxserve ')}`"
    return LABELS.get(name, name)


def _is_triton(name: str) -> bool:
    return name == "triton" or name.startswith("triton ")


def _is_ours(name: str) -> bool:
    return name == "onnxserve" or name.startswith("onnxserve ")


def _by_name(rounds: Sequence[Sequence[Measurement]]) -> dict[str, list[Measurement]]:
    found: dict[str, list[Measurement]] = {}
    for row in rounds:
        for measurement in row:
            found.setdefault(measurement.name, []).append(measurement)
    return found


def _per_round(
    rounds: Sequence[Sequence[Measurement]], raws: Sequence[RawFigures], name: str
) -> tuple[list[float], list[float]]:
    """Per round where both exist: throughput / raw best, c=1 mean - raw batch 1 (ms)."""
    ratios, deltas = [], []
    for row, raw in zip(rounds, raws, strict=False):
        for m in row:
            if m.name != name:
                continue
            ratios.append(m.c64_infer_per_s / raw.best_samples_per_s)
            if m.c1_mean_ms is not None:
                deltas.append(m.c1_mean_ms - raw.batch1_ms)
    return ratios, deltas


def summary_table(
    names: Sequence[str], rounds: Sequence[Sequence[Measurement]], raws: Sequence[RawFigures]
) -> list[str]:
    by_name = _by_name(rounds)
    lines = [
        "| server | concurrency 64: requests/s (x raw best) | concurrency 1: mean ms "
        "(over raw batch 1) | server CPU per request | average batch | failed |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        runs = by_name.get(name, [])
        if not runs:
            continue
        ratios, deltas = _per_round(rounds, raws, name)
        throughput = _spread([m.c64_infer_per_s for m in runs], lambda v: f"{v:,.0f}")
        if ratios:
            throughput += f" ({statistics.median(ratios):.2f}x)"
        c1 = _spread([m.c1_mean_ms for m in runs if m.c1_mean_ms is not None], lambda v: f"{v:.2f}")
        if deltas:
            c1 += f" ({statistics.median(deltas):+.2f} ms)"
        cpu = _spread(
            [m.cpu_us_per_request for m in runs if m.cpu_us_per_request is not None],
            lambda v: f"{v:.0f} us",
        )
        batch = _spread([m.avg_batch for m in runs if m.avg_batch], lambda v: f"{v:.1f}")
        requests = sum(m.c64_requests + m.c1_requests for m in runs)
        failed = sum(m.failures for m in runs)
        lines.append(
            f"| {_label(name)} | {throughput} | {c1} | {cpu} | {batch} | {failed} of {requests:,} |"
        )
    if raws:
        best = _spread([r.best_samples_per_s for r in raws], lambda v: f"{v:,.0f}")
        batch = statistics.median(r.best_batch for r in raws)
        one = _spread([r.batch1_ms for r in raws], lambda v: f"{v:.2f}")
        lines.append(
            f"| raw onnxruntime, same file, same rounds | best {best} samples/s "
            f"(batch {batch:.0f}) | batch 1: {one} | | | |"
        )
    return lines


def verdicts(names: Sequence[str], rounds: Sequence[Sequence[Measurement]]) -> list[str]:
    """The targets, judged on the medians, against the best Triton variant measured.

    Each onnxserve contestant (its defaults, and each ``--variant``) is compared
    with the Triton variant of the highest median throughput: a peer tuned down
    to onnxserve's own choices would flatter it (about 1.5x on 2 cores).
    """
    by_name = _by_name(rounds)
    ours = by_name.get("onnxserve", [])
    lines = []

    def median(name: str, pick: Callable[[Measurement], float | None]) -> float | None:
        values = [v for v in (pick(m) for m in by_name.get(name, [])) if v is not None]
        return statistics.median(values) if values else None

    tritons = [
        (value, name)
        for name in names
        if _is_triton(name) and (value := median(name, lambda m: m.c64_infer_per_s)) is not None
    ]
    if tritons:
        triton_c64, best = max(tritons)
        for name in (n for n in names if _is_ours(n)):
            ours_c64 = median(name, lambda m: m.c64_infer_per_s)
            if ours_c64 is None:
                continue
            met = "yes" if ours_c64 >= triton_c64 else "no"
            lines.append(
                f"| {_label(name)} at concurrency 64 at or above the best Triton "
                f"({_label(best)}; medians) | {ours_c64:,.0f} against {triton_c64:,.0f} "
                f"requests/s ({ours_c64 / triton_c64:.2f}x) | {met} |"
            )
    failed = sum(m.failures for m in ours)
    met = "yes" if not failed else "no"
    lines.append(f"| onnxserve: no failed call | {failed} failed | {met} |")
    before = next((n for n in names if n.startswith("before ")), None)
    ours_c1 = median("onnxserve", lambda m: m.c1_mean_ms)
    before_c1 = median(before, lambda m: m.c1_mean_ms) if before else None
    if ours_c1 is not None and before_c1 is not None:
        met = "yes" if ours_c1 <= before_c1 * 1.05 else "no"
        lines.append(
            f"| concurrency-1 latency no worse than before (within 5 %) | {ours_c1:.3f} ms "
            f"against {before_c1:.3f} ms | {met} |"
        )
    return ["| target | measured | met |", "|---|---|---|", *lines]


def markdown(
    model: str,
    names: Sequence[str],
    rounds: Sequence[Sequence[Measurement]],
    raws: Sequence[RawFigures],
    environment: Mapping[str, Any],
    notes: Sequence[str],
    args: argparse.Namespace,
    settings: Mapping[str, str] | None = None,
    origin: str | None = None,
) -> str:
    load = environment.get("load_average_at_start"), environment.get("load_average_at_end")
    lines = [
        "# onnxserve against Triton and raw onnxruntime: the seed LSTM",
        "",
        f"- Model: `{model}` (Embedding(1000, 32) -> LSTM(128, return_sequences) -> LSTM(128) "
        "-> Dense(1, sigmoid), 50 tokens), one sample per request"
        + (f"; from {origin}" if origin else ""),
        f"- Run: {environment.get('started_at')}, commit {environment.get('commit')}, "
        f"{len(rounds)} rounds (the servers' order rotating), each: h2load, "
        f"{args.warmup:g} s warm-up, {args.duration:g} s at 64 concurrent calls, the same at 1",
        f"- Machine: {environment.get('cpus')} CPUs, Python {environment.get('python')}; "
        "load generator and servers on the same CPUs; load average "
        + " -> ".join("/".join(f"{v:.1f}" for v in a) if a else "?" for a in load),
        "- Server CPU per request: the CPU time of the server's processes (kernel "
        "included, model included) over the answers at concurrency 64",
        "",
        *summary_table(names, rounds, raws),
        "",
        "## Each contestant's settings",
        "",
        *(f"- {_label(name)}: {(settings or {}).get(name, 'as started')}" for name in names),
        "",
        "## Targets (against the best Triton measured)",
        "",
        *verdicts(names, rounds),
        "",
        "## Every round",
        "",
        "| round | server | c=64 requests/s | c=1 mean ms | c=1 p99 ms | CPU us/request | "
        "average batch | failed | raw best samples/s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for index, row in enumerate(rounds):
        raw = raws[index] if index < len(raws) else None
        for m in row:
            cells = [
                str(index + 1),
                m.name,
                f"{m.c64_infer_per_s:,.0f}",
                _number(m.c1_mean_ms, "{:.3f}"),
                _number(m.c1_p99_ms, "{:.3f}"),
                _number(m.cpu_us_per_request, "{:.0f}"),
                _number(m.avg_batch, "{:.1f}"),
                str(m.failures),
                _number(raw.best_samples_per_s if raw else None, "{:,.0f}"),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines += ["", *(f"- note: {n}" for n in notes)]
    peers = ",".join(args.peers) or '""'
    command = [
        "python benchmarks/run_benchmark.py",
        f"--rounds {len(rounds)}",
        f"--duration {args.duration:g}",
        f"--peers {peers}",
        f"--connections {args.connections}",
    ]
    if getattr(args, "protocol", "grpc") != "grpc":
        command += [f"--protocol {args.protocol}", f"--body {args.body}"]
    if args.before:
        command.append(f"--before {args.before}")
    command += [f"--server-arg={a}" for a in args.server_arg]
    command += [f"--variant='{v}'" for v in getattr(args, "variant", [])]
    command += [f"--triton {t}" for t in getattr(args, "triton_spec", [])]
    lines += ["", f"Reproduce: `{' '.join(command)}` (or `make bench`)."]
    return "\n".join(lines) + "\n"
