"""The h2load driver: nghttp2's HTTP/2 load tester posting pre-encoded ModelInfer frames,
or pre-encoded REST inference bodies (``--protocol http``: HTTP/1.1 with ``--h1``,
one connection per request in flight, or h2c).

h2load (written in C) spends a few microseconds of CPU per call where the
python driver spends tens, so on a machine it shares with the server it
takes little from it. It sees HTTP status only, and gRPC answers errors with
HTTP 200 and a ``grpc-status`` trailer, so its gRPC failures are counted by
the runner from the server's statistics (or from the DATA bytes it received,
when every answer has one size). REST answers failures with their HTTP status,
so there h2load's per-request log counts them exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import resource
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxserve.bench.drivers import DriverRun, ProgressFn
from onnxserve.bench.workload import INFER_METHOD, RestRequest, encode_frame

__all__ = [
    "H2LoadDriver",
    "H2LoadError",
    "find_h2load",
    "parse_h2load_log",
    "parse_h2load_output",
]


class H2LoadError(RuntimeError):
    """h2load failed or printed something this module cannot read."""


def find_h2load() -> str | None:
    """The h2load executable on PATH, or None (Debian/Ubuntu: apt-get install nghttp2-client)."""
    return shutil.which("h2load")


_FINISHED = re.compile(r"finished in ([\d.]+)(us|ms|s|m|h)?, ([\d.]+) req/s")
_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout"
)
_TRAFFIC = re.compile(r"traffic: .*?\((\d+)\) total, .*?\((\d+)\) headers.*?\((\d+)\) data")
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


@dataclass(frozen=True)
class H2LoadSummary:
    """The lines of h2load's report that matter here."""

    seconds: float
    requests_per_s: float
    total: int
    started: int
    done: int
    succeeded: int
    failed: int
    errored: int
    timeout: int
    data_bytes: int | None  # response DATA bytes: gRPC messages with their 5-byte headers


def parse_h2load_output(text: str) -> H2LoadSummary:
    """Read h2load's summary (its 'finished in' and 'requests:' lines)."""
    finished = _FINISHED.search(text)
    counts = _REQUESTS.search(text)
    traffic = _TRAFFIC.search(text)
    if finished is None or counts is None:
        raise H2LoadError(f"h2load's output has no summary:\n{text[-2000:]}")
    total, started, done, succeeded, failed, errored, timeout = map(int, counts.groups())
    return H2LoadSummary(
        seconds=float(finished.group(1)) * _UNITS[finished.group(2)],
        requests_per_s=float(finished.group(3)),
        total=total,
        started=started,
        done=done,
        succeeded=succeeded,
        failed=failed,
        errored=errored,
        timeout=timeout,
        data_bytes=int(traffic.group(3)) if traffic else None,
    )


def parse_h2load_log(text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """h2load's --log-file: per request, start (us since the epoch), HTTP status,
    duration (us). Returned as three arrays."""
    rows = [line.split("\t") for line in text.splitlines() if line.strip()]
    if not rows:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    data = np.asarray(rows, dtype=np.int64)
    return data[:, 0], data[:, 1], data[:, 2]


class H2LoadDriver:
    """h2load, one thread, ``concurrency`` streams spread over ``connections``
    connections (``-c`` clients with ``-m`` streams each).

    Duration-based steps are turned into a request count (the warm-up's rate
    times the duration) so that h2load finishes every request it starts: with
    ``-D`` it drops the calls in flight at the end, which the server still
    counts, and the client's and the server's counts would not match.
    """

    name = "h2load"

    def __init__(
        self,
        executable: str,
        target: str,
        payload: bytes,
        connections: int = 1,
        response_bytes: int | None = None,
        *,
        tls: bool = False,
        headers: Sequence[tuple[str, str]] = (),
        rest: RestRequest | None = None,
        http1: bool = False,
    ) -> None:
        """``rest``: post this REST request instead of ``payload`` as gRPC; ``http1``: over
        HTTP/1.1 (h2load --h1), each request in flight on its own connection."""
        if connections < 1:
            raise ValueError("connections must be at least 1")
        self.executable = executable
        self.target = target
        self.connections = connections
        # The size of one successful answer's gRPC frame (5-byte header and the
        # ModelInferResponse), when known: h2load sees HTTP 200 for gRPC errors
        # too, but an error carries no message, so its DATA byte count tells
        # how many calls succeeded, for a request whose answer has a fixed size.
        self.response_bytes = response_bytes
        self._dir = tempfile.TemporaryDirectory(prefix="onnxserve-bench-")
        self.body = Path(self._dir.name) / "request.bin"
        self.rest = rest is not None
        self.http1 = http1
        # h2load speaks TLS (ALPN h2, or http/1.1 with --h1) without checking the
        # server's certificate, and sends headers from its command line (a bearer
        # token is visible in the process list while it runs).
        scheme = "https" if tls else "http"
        if rest is None:
            self.body.write_bytes(encode_frame(payload))
            self.url = f"{scheme}://{target}{INFER_METHOD}"
            content = [("content-type", "application/grpc"), ("te", "trailers")]
        else:
            self.body.write_bytes(rest.body)
            self.url = f"{scheme}://{target}{rest.path}"
            content = list(rest.headers)
        self.headers = [f"{name}: {value}" for name, value in [*content, *headers]]
        self._rate_estimate: float | None = None

    async def __aenter__(self) -> H2LoadDriver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._dir.cleanup()

    def command(
        self,
        concurrency: int,
        *,
        requests: int = 0,
        duration_ms: int = 0,
        rate: float | None = None,
        log_file: Path | None = None,
    ) -> list[str]:
        """The h2load command line for one phase."""
        clients, streams = self.layout(concurrency, requests)
        cmd = [
            self.executable,
            "-c", str(clients),
            "-t", "1",
            "-m", str(streams),
            "-d", str(self.body),
        ]  # fmt: skip
        if self.http1:
            cmd.append("--h1")
        for header in self.headers:
            cmd += ["-H", header]
        cmd += ["-D", f"{duration_ms}ms"] if duration_ms else ["-n", str(requests)]
        if rate is not None:
            cmd += ["--rps", f"{rate / clients:g}"]  # h2load's rate is per client
        if log_file is not None:
            cmd += ["--log-file", str(log_file)]
        return [*cmd, self.url]

    def layout(self, concurrency: int, requests: int = 0) -> tuple[int, int]:
        """(clients, streams per client) for ``concurrency`` calls in flight.

        h2load needs at least one request per client, and every client gets the
        same number of streams, so the total is rounded up to a multiple. Over
        HTTP/1.1 every request in flight has its own connection (no pipelining).
        """
        if self.http1:
            return min(concurrency, requests or concurrency), 1
        clients = min(self.connections, concurrency, requests or concurrency)
        return clients, -(-concurrency // clients)

    async def _execute(
        self, cmd: list[str], expected_s: float, progress: ProgressFn | None
    ) -> tuple[str, float]:
        """h2load's output and the CPU seconds it used."""
        # h2load has no per-request deadline: a server that stops answering
        # would hold it forever, so the whole phase gets a generous limit.
        limit_s = 60.0 + 10 * expected_s
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        process = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        assert process.stdout is not None
        started = time.perf_counter()
        lines: list[str] = []
        percent = 0.0
        try:
            while True:
                try:
                    raw = await asyncio.wait_for(process.stdout.readline(), timeout=0.2)
                except asyncio.TimeoutError:
                    raw = None
                if raw == b"":
                    break
                if time.perf_counter() - started > limit_s:
                    raise H2LoadError(
                        f"h2load still running after {limit_s:.0f} s (expected about "
                        f"{expected_s:.1f} s): is the server answering?"
                    )
                if raw:
                    line = raw.decode(errors="replace")
                    lines.append(line)
                    match = re.match(r"progress: (\d+)% done", line)
                    if match:
                        percent = int(match.group(1)) / 100
                if progress is not None:
                    elapsed = time.perf_counter() - started
                    fraction = max(percent, min(elapsed / max(expected_s, 1e-3), 0.99))
                    progress(fraction, f"h2load, {elapsed:.1f}s")
            code = await process.wait()
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        output = "".join(lines)
        if code != 0:
            raise H2LoadError(f"h2load exited with {code}:\n{output[-2000:]}")
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
        return output, cpu

    def _successes(self, summary: H2LoadSummary, notes: list[str]) -> int | None:
        """Calls answered with a message, from the DATA bytes; None when that cannot tell."""
        if not self.response_bytes or summary.data_bytes is None:
            return None
        count, rest = divmod(summary.data_bytes, self.response_bytes)
        if rest or count > summary.succeeded:
            notes.append(
                f"h2load received {summary.data_bytes} response bytes, not a whole number of "
                f"{self.response_bytes}-byte answers: gRPC failures come from server statistics"
            )
            return None
        return count

    async def warmup(self, concurrency: int, rate: float | None, seconds: float) -> None:
        """Unmeasured load; also learns the rate used to size duration-based steps."""
        seconds = max(seconds, 0.5)  # the rate estimate needs a little time
        output, _ = await self._execute(
            self.command(concurrency, duration_ms=int(seconds * 1000), rate=rate), seconds, None
        )
        summary = parse_h2load_output(output)
        self._rate_estimate = summary.requests_per_s

    async def run(
        self,
        concurrency: int,
        rate: float | None,
        *,
        seconds: float,
        requests: int,
        progress: ProgressFn | None = None,
    ) -> DriverRun:
        """One measured phase of exactly ``requests`` calls (or about ``seconds``' worth)."""
        notes = []
        if not requests:
            estimate = rate if rate is not None else self._rate_estimate
            if not estimate:
                raise H2LoadError("h2load: call warmup() before a duration-based run")
            requests = max(concurrency, round(estimate * seconds))
            source = "the request rate" if rate is not None else "the warm-up's rate"
            notes.append(f"{requests} requests: {source} times {seconds:g} s")
        clients, streams = self.layout(concurrency, requests)
        if clients * streams != concurrency:
            notes.append(
                f"{clients * streams} streams in flight: {concurrency} rounded up to "
                f"{clients} connections x {streams}"
            )
        log_file = Path(self._dir.name) / "requests.log"
        log_file.unlink(missing_ok=True)
        expected = requests / (rate or self._rate_estimate or requests)
        output, cpu = await self._execute(
            self.command(concurrency, requests=requests, rate=rate, log_file=log_file),
            expected,
            progress,
        )
        summary = parse_h2load_output(output)
        starts, statuses, durations = parse_h2load_log(
            log_file.read_text() if log_file.exists() else ""
        )
        codes: dict[str, int] = {}
        if self.rest:
            return self._rest_run(summary, starts, statuses, durations, cpu, notes)
        http_failures = summary.total - summary.succeeded
        if http_failures:
            codes["HTTP"] = http_failures
        successes = self._successes(summary, notes)
        if successes is not None and summary.total - http_failures - successes > 0:
            codes["gRPC error (answer without a message)"] = (
                summary.total - http_failures - successes
            )
        if starts.size:
            seconds_taken = float((starts + durations).max() - starts.min()) / 1e6
        else:
            seconds_taken = summary.seconds
        ok = statuses == 200
        return DriverRun(
            requests=summary.total,
            successes=successes,
            failure_codes=codes,
            latencies_ns=durations[ok] * 1000,
            seconds=seconds_taken,
            client_cpu_s=cpu,
            notes=notes,
        )

    def _rest_run(
        self,
        summary: H2LoadSummary,
        starts: np.ndarray,
        statuses: np.ndarray,
        durations: np.ndarray,
        cpu: float,
        notes: list[str],
    ) -> DriverRun:
        """A REST phase: each request's HTTP status says whether it succeeded."""
        ok = statuses == 200
        codes: dict[str, int] = {}
        for status in sorted(set(statuses[~ok].tolist())):
            codes[f"HTTP {status}"] = int((statuses == status).sum())
        unanswered = summary.total - len(statuses)
        if unanswered > 0:
            codes["no answer (connection failed or timed out)"] = unanswered
        if starts.size:
            seconds_taken = float((starts + durations).max() - starts.min()) / 1e6
        else:
            seconds_taken = summary.seconds
        return DriverRun(
            requests=summary.total,
            successes=int(ok.sum()),
            failure_codes=codes,
            latencies_ns=durations[ok] * 1000,
            seconds=seconds_taken,
            client_cpu_s=cpu,
            notes=notes,
        )
