"""The settings of ``onnxserve bench``: one typed object, a help text per field.

They resolve like every other subcommand's (flag > ONNXSERVE_BENCH_* >
``[bench]`` table of ``--config`` > default), so a benchmark can be written
down once in a TOML file and rerun identically; the object checks itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from onnxserve.client.connection_settings import ConnectionSettings
from onnxserve.settings import LogLevel, SettingsError

Driver = Literal["auto", "h2load", "python"]
BenchProtocol = Literal["grpc", "http"]
RestBody = Literal["binary", "json"]
HttpVersion = Literal["1.1", "2"]
RawDevice = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True, kw_only=True)
class BenchSettings(ConnectionSettings):
    """Everything ``onnxserve bench`` can be told."""

    model: str = field(metadata={"help": "Name of the model to load-test", "metavar": "MODEL"})
    url: str = field(
        default="127.0.0.1:8001",
        metadata={
            "help": "The server's address: host:port, grpc://host:port or grpcs://host:port "
            "(TLS; h2load then does not check the server's certificate), or "
            "http://host:port / https://host:port for its REST port (implies --protocol http)"
        },
    )
    protocol: BenchProtocol = field(
        default="grpc",
        metadata={
            "help": "grpc (ModelInfer), or http: POST /v2/models/MODEL/infer on the REST port "
            "(KServe v2 REST; --url host:port of --http-port, 8000 by default)"
        },
    )
    body: RestBody = field(
        default="binary",
        metadata={
            "help": "REST request bodies: binary (Triton's binary tensor extension both ways, "
            "as the SDK sends them) or json (inputs as JSON data, outputs answered as JSON)"
        },
    )
    http_version: HttpVersion = field(
        default="1.1",
        metadata={
            "help": "REST over HTTP/1.1 (one connection per request in flight, as REST "
            "clients call; h2load --h1) or 2 (h2c, or h2 by ALPN with TLS: requests in "
            "flight multiplexed over --connections, h2load only)"
        },
    )
    model_version: str = field(
        default="", metadata={"help": "Model version to call; empty means the server's choice"}
    )
    concurrency: tuple[int, ...] = field(
        default=(1, 8, 64),
        metadata={
            "help": "Concurrent requests in flight, one measurement step per value "
            "(comma-separated sweep)",
            "metavar": "N[,N...]",
        },
    )
    request_rate: tuple[float, ...] = field(
        default=(),
        metadata={
            "help": "Send at a fixed rate (requests/s) instead of a fixed concurrency, one "
            "step per value; the largest --concurrency value caps requests in flight",
            "metavar": "R[,R...]",
        },
    )
    batch_size: int = field(
        default=1, metadata={"help": "Samples (rows) per request, for batchable models"}
    )
    duration: float = field(
        default=5.0, metadata={"help": "Seconds measured per step (unless --requests)"}
    )
    requests: int = field(
        default=0, metadata={"help": "Requests per step instead of a duration; 0: use --duration"}
    )
    warmup: float = field(
        default=1.0,
        metadata={"help": "Seconds of unmeasured load before each step (first-run costs, JIT)"},
    )
    input_data: str = field(
        default="random",
        metadata={
            "help": "Request data: random, zero, or a .npz / .json file of arrays by input "
            "name (with or without the batch dim), or a .txt file of sentences, one per line, "
            "for a text model's BYTES input (random: generated sentences of 1-40 words)",
            "metavar": "random|zero|FILE",
            "path": True,
            "keywords": ("random", "zero"),
        },
    )
    int_range: tuple[int, ...] = field(
        default=(),
        metadata={
            "help": "Inclusive LOW,HIGH of random integer inputs, for every integer input. "
            "Default: the range the model's config declares per input (parameter "
            "onnxserve.input_range.<input>), else 0,99 (token ids of an Embedding must stay "
            "below its vocabulary size)",
            "metavar": "LOW,HIGH",
        },
    )
    shape: str = field(
        default="",
        metadata={
            "help": "Sizes of variable (-1) non-batch dims: NAME:D1,D2[;NAME:D1...], "
            "without the batch dim",
            "metavar": "SHAPES",
        },
    )
    driver: Driver = field(
        default="auto",
        metadata={
            "help": "Load generator: h2load (light, from nghttp2-client; gRPC failures counted "
            "from server statistics), python (grpc.aio, or asyncio HTTP/1.1 for REST, in this "
            "process), auto (h2load if installed)"
        },
    )
    connections: int = field(
        default=1,
        metadata={
            "help": "HTTP/2 connections the requests in flight are spread over; a server "
            "of several processes (serve --workers N) balances connections, not requests "
            "(REST over HTTP/1.1 opens one per request in flight instead)"
        },
    )
    timeout: float = field(
        default=30.0, metadata={"help": "Per-request gRPC deadline in seconds (python driver)"}
    )
    raw_baseline: bool = field(
        default=True,
        metadata={
            "help": "Also time the model file in onnxruntime in this process, and report "
            "the server's throughput and latency relative to it"
        },
    )
    model_file: Path | None = field(
        default=None,
        metadata={"help": "The model's .onnx file, for the raw baseline", "metavar": "PATH"},
    )
    repository: Path | None = field(
        default=None,
        metadata={
            "help": "Model repository to find the .onnx file in "
            "(<repo>/<model>/<version>/model.onnx), for the raw baseline",
            "metavar": "DIR",
        },
    )
    raw_batch_sizes: tuple[int, ...] = field(
        default=(1, 8, 32, 64, 128),
        metadata={"help": "Batch sizes of the raw onnxruntime sweep", "metavar": "B[,B...]"},
    )
    raw_seconds: float = field(
        default=1.0, metadata={"help": "Seconds of raw onnxruntime timing per batch size"}
    )
    raw_device: RawDevice = field(
        default="auto",
        metadata={"help": "Where the raw baseline runs: auto (CUDA if usable), cpu or cuda"},
    )
    raw_threads: int = field(
        default=0,
        metadata={"help": "intra-op threads of the raw session; 0: onnxruntime's default"},
    )
    plot: Path | None = field(
        default=None,
        metadata={
            "help": "Write a latency/throughput plot here (PNG, needs matplotlib)",
            "metavar": "PNG",
        },
    )
    json: Path | None = field(
        default=None, metadata={"help": "Write every figure as JSON here", "metavar": "PATH"}
    )
    progress: bool = field(
        default=True,
        metadata={"help": "Show a progress bar on stderr (a line per step when not a terminal)"},
    )
    seed: int = field(default=0, metadata={"help": "Seed of random input data"})
    log_level: LogLevel = field(default="WARNING", metadata={"help": "Log level"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.concurrency or min(self.concurrency) < 1:
            raise SettingsError("--concurrency: every value must be at least 1")
        if self.request_rate and min(self.request_rate) <= 0:
            raise SettingsError("--request-rate: every value must be positive")
        if self.connections < 1:
            raise SettingsError("--connections must be at least 1")
        if self.batch_size < 1:
            raise SettingsError("--batch-size must be at least 1")
        if self.requests < 0 or (self.requests == 0 and self.duration <= 0):
            raise SettingsError("give a positive --duration or --requests")
        if self.warmup < 0:
            raise SettingsError("--warmup must be 0 or more")
        if self.raw_seconds <= 0:
            raise SettingsError("--raw-seconds must be positive")
        if self.timeout <= 0:
            raise SettingsError("--timeout must be positive")
        if self.int_range and (len(self.int_range) != 2 or self.int_range[0] > self.int_range[1]):
            raise SettingsError("--int-range must be LOW,HIGH with LOW <= HIGH")
        if not self.raw_batch_sizes or min(self.raw_batch_sizes) < 1:
            raise SettingsError("--raw-batch-sizes: every value must be at least 1")
        from onnxserve.client.options import url_protocol

        try:
            spoken = url_protocol(self.url)
        except ValueError as exc:
            raise SettingsError(f"--url: {exc}") from None
        if spoken == "grpc" and self.protocol == "http":
            raise SettingsError(f"--protocol http needs a REST URL, not {self.url}")

    @property
    def rest(self) -> bool:
        """Whether the bench calls the REST port (--protocol http, or an http(s):// URL)."""
        from onnxserve.client.options import url_protocol

        return self.protocol == "http" or url_protocol(self.url) == "http"
