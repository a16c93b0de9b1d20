"""The bench's outputs: a text table, JSON with every figure, a PNG plot.

The table puts the client's view (throughput, latency percentiles) beside the
server's (queue and compute time per request, achieved batch size) and the
raw onnxruntime baseline, so one look tells whether time goes to the protocol,
the queue or the model.
"""

from __future__ import annotations

import json
from pathlib import Path

from onnxserve.bench.results import BenchReport, StepResult

__all__ = ["format_report", "headline", "write_json", "write_plot"]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _row(step: StepResult) -> list[str]:
    latency, server = step.latency, step.server
    return [
        str(int(step.load)) if step.mode == "concurrency" else f"{step.load:g}/s",
        f"{step.infer_per_s:,.1f}",
        f"{step.samples_per_s:,.1f}",
        _ms(latency.p50_ms if latency else None),
        _ms(latency.p90_ms if latency else None),
        _ms(latency.p99_ms if latency else None),
        _ms(latency.mean_ms if latency else None),
        _ms(server.queue_us / 1000 if server else None),
        _ms(server.compute_us / 1000 if server else None),
        "-" if server is None or server.avg_batch is None else f"{server.avg_batch:.1f}",
        str(step.failures),
        "-" if step.ratio_vs_raw is None else f"{step.ratio_vs_raw:.2f}",
        "-" if step.client_cpu_percent is None else f"{step.client_cpu_percent:.0f}",
    ]


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = [" | ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def headline(report: BenchReport) -> list[str]:
    """The two comparisons the project tracks, where the run has what they need."""
    lines: list[str] = []
    raw = report.raw
    if raw is None:
        return lines
    one = report.step_at_concurrency(1)
    delta = report.latency_delta_ms(one) if one is not None else None
    if one is not None and one.latency is not None and delta is not None and raw.batch1:
        lines.append(
            f"concurrency 1: mean latency {one.latency.mean_ms:.3f} ms = raw onnxruntime "
            f"batch 1 ({raw.batch1.mean_ms:.3f} ms) {delta:+.3f} ms"
        )
    concurrency_steps = [s for s in report.steps if s.mode == "concurrency"]
    if concurrency_steps:
        top = max(concurrency_steps, key=lambda s: s.load)
        lines.append(
            f"concurrency {int(top.load)}: {top.samples_per_s:,.0f} samples/s = "
            f"{top.ratio_vs_raw:.2f} x raw onnxruntime's best batched throughput "
            f"({raw.best.samples_per_s:,.0f} samples/s at batch {raw.best.batch}), "
            f"{top.failures} failed"
        )
    return lines


def format_report(report: BenchReport) -> str:
    """The end-of-run text: settings line, raw baseline, step table, comparisons, notes."""
    settings = report.settings
    if settings.get("requests"):
        amount = f"{settings['requests']} requests"
    else:
        amount = f"{settings.get('duration', 0):g} s"
    out = [
        f"onnxserve bench: model '{report.model}'"
        + (f" version {report.model_version}" if report.model_version else "")
        + f" at {report.url}, driver {report.driver}, batch size {report.batch_size}, "
        f"{amount} per step after {settings.get('warmup', 0):g} s warm-up",
    ]
    if report.raw is not None:
        raw = report.raw
        out.append(
            f"raw onnxruntime on {raw.model_file} ({', '.join(raw.providers)}): "
            + ", ".join(
                f"batch {p.batch} {p.mean_ms:.3f} ms / {p.samples_per_s:,.0f} samples/s"
                for p in raw.points
            )
        )
    out.append("")
    header = [
        "concurrency" if all(s.mode == "concurrency" for s in report.steps) else "load",
        "infer/s",
        "samples/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "mean ms",
        "queue ms",
        "compute ms",
        "batch",
        "failed",
        "x raw",
        "client cpu%",
    ]
    if report.steps:
        out.append(_table(header, [_row(s) for s in report.steps]))
    out.append(
        "(latency: client side; queue/compute: server side, per request; batch: rows per "
        "model execution; x raw: samples/s over raw onnxruntime's best batched samples/s; "
        "client cpu%: the load generator's CPU time, in % of one core)"
    )
    comparisons = headline(report)
    if comparisons:
        out.append("")
        out += comparisons
    failed = [s for s in report.steps if s.failure_codes]
    for step in failed:
        codes = ", ".join(f"{k} {v}" for k, v in sorted(step.failure_codes.items()))
        out.append(f"{step.label}: failures: {codes}")
    notes = list(report.notes) + [f"{s.label}: {n}" for s in report.steps for n in s.notes]
    if notes:
        out.append("")
        out += [f"note: {n}" for n in notes]
    return "\n".join(out)


def write_json(report: BenchReport, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n")


def write_plot(report: BenchReport, path: Path) -> None:
    """Latency against throughput: the server's steps (p50 and p99) and raw onnxruntime's
    batch sweep (latency of one run of the batch), on log axes."""
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'onnxserve[bench]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5), dpi=110)
    steps = [s for s in report.steps if s.latency is not None]
    if steps:
        x = [s.samples_per_s for s in steps]
        axes.plot(x, [s.latency.p50_ms for s in steps if s.latency], "o-", label="server p50")
        axes.plot(x, [s.latency.p99_ms for s in steps if s.latency], "s--", label="server p99")
        for step in steps:
            assert step.latency is not None
            axes.annotate(
                step.label, (step.samples_per_s, step.latency.p50_ms),
                textcoords="offset points", xytext=(4, 4), fontsize=8,
            )  # fmt: skip
    if report.raw is not None:
        points = report.raw.points
        axes.plot(
            [p.samples_per_s for p in points], [p.mean_ms for p in points], "^:",
            color="grey", label="raw onnxruntime (batch sweep)",
        )  # fmt: skip
        for point in points:
            axes.annotate(
                f"b={point.batch}", (point.samples_per_s, point.mean_ms),
                textcoords="offset points", xytext=(4, -10), fontsize=8, color="grey",
            )  # fmt: skip
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("throughput (samples/s)")
    axes.set_ylabel("latency (ms)")
    axes.set_title(f"onnxserve bench: {report.model} ({report.driver} driver)")
    axes.grid(True, which="both", alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    plt.close(figure)
