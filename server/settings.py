"""The server's settings: one typed object, a docstring (help) per field, checked on creation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from onnxserve.server.event_loop import EventLoop, EventLoopUnavailable, uses_uvloop
from onnxserve.settings import LogLevel, SettingsError

Device = Literal["auto", "cpu", "cuda"]
ModelControlMode = Literal["none", "poll", "explicit"]
LogFormat = Literal["text", "json"]


@dataclass(frozen=True)
class ServerSettings:
    """Everything ``onnxserve serve`` can be told, from flags, ONNXSERVE_* or [serve]."""

    model_repository: Path = field(
        metadata={
            "help": "Model repository in Triton's layout: <repo>/<model>/<version>/model.onnx "
            "and an optional <repo>/<model>/config.pbtxt",
            "metavar": "DIR",
        }
    )
    host: str = field(
        default="0.0.0.0",
        metadata={"help": "Address to listen on; 0.0.0.0 lets Kubernetes probes reach the pod IP"},
    )
    grpc_port: int = field(default=8001, metadata={"help": "gRPC port (Triton's default is 8001)"})
    http_port: int = field(
        default=8000,
        metadata={
            "help": "HTTP/REST port of the Open Inference Protocol (KServe v2 REST with Triton's "
            "binary tensor extension; HTTP/1.1 and h2c, https with --tls-cert; Triton's default "
            "is 8000); 0 turns it off. Served by the native front end only"
        },
    )
    device: Device = field(
        default="auto",
        metadata={
            "help": "Where models run: auto uses CUDA when onnxruntime can, cpu never does, "
            "cuda refuses to load a model that cannot run on CUDA"
        },
    )
    max_message_bytes: int = field(
        default=256 * 1024 * 1024,
        metadata={
            "help": "Largest request or response message in bytes; bigger requests get "
            "RESOURCE_EXHAUSTED (gRPC's own default of 4 MiB is too small for image batches)"
        },
    )
    cpu_threads: int = field(
        default=0,
        metadata={
            "help": "CPU threads for onnxruntime, shared by all model instances; 0 means "
            "the CPUs this process may use, honouring a container's CPU limit"
        },
    )
    cache_dir: Path | None = field(
        default=None,
        metadata={
            "help": "Writable directory for what onnxruntime may cache between starts "
            "(TensorRT engines, under <dir>/tensorrt/<model>); never the model repository, "
            "which is mounted read-only. Default: a temporary directory per process, so "
            "engines are rebuilt at every start",
            "metavar": "DIR",
        },
    )
    workers: int = field(
        default=1,
        metadata={
            "help": "Server processes sharing the ports (SO_REUSEPORT; the kernel spreads "
            "connections, not requests, over them); each loads every model and gets "
            "cpu_threads / workers onnxruntime threads, and joins the ports only once its "
            "models are loaded. One process already uses every core for the protocol (Rust); "
            "more processes mean more model instances and memory"
        },
    )
    worker_stall_timeout_s: float = field(
        default=15.0,
        metadata={
            "help": "With --workers: a process whose event loop has not run for this long "
            "(stopped, deadlocked) is killed and the whole server stops non-zero, so that the "
            "orchestrator restarts it instead of the kernel routing connections to a process "
            "that never answers"
        },
    )
    grace_period_s: float = field(
        default=10.0,
        metadata={
            "help": "On SIGTERM: seconds in-flight requests get to finish after readiness "
            "turns NOT_SERVING"
        },
    )
    max_connection_age_s: float = field(
        default=0.0,
        metadata={
            "help": "Close each client connection after about this many seconds (gRPC's "
            "max_connection_age, +-10%% jitter; clients reconnect by themselves), so that "
            "long-lived channels spread over new replicas behind a Kubernetes Service; "
            "0 keeps connections open"
        },
    )
    max_connection_age_grace_s: float = field(
        default=0.0,
        metadata={
            "help": "Once a connection reached max_connection_age_s: seconds its calls in "
            "flight (streams included) get before it is closed; 0 lets them finish"
        },
    )
    metrics_port: int = field(
        default=8002,
        metadata={
            "help": "Port of the Prometheus endpoint /metrics (plain HTTP, on --host; Triton's "
            "default is 8002); 0 turns metrics off. With --workers, worker 0 serves it for all"
        },
    )
    health_port: int = field(
        default=0,
        metadata={
            "help": "Also serve grpc.health.v1 alone, in plaintext, on this port (for Kubernetes "
            "gRPC probes, which speak neither TLS nor tokens, when the gRPC port uses TLS); "
            "0: health is served on the gRPC port only"
        },
    )
    tls_cert: Path | None = field(
        default=None,
        metadata={
            "help": "Server certificate chain (PEM); with --tls-key turns TLS on",
            "metavar": "PEM",
        },
    )
    tls_key: Path | None = field(
        default=None, metadata={"help": "Server private key (PEM)", "metavar": "PEM"}
    )
    tls_client_ca: Path | None = field(
        default=None,
        metadata={
            "help": "CA certificates (PEM) that client certificates must chain to: mutual TLS, "
            "a client without a valid certificate cannot connect",
            "metavar": "PEM",
        },
    )
    auth_token_file: Path | None = field(
        default=None,
        metadata={
            "help": "File of bearer tokens, one per line ('#' starts a comment): every call but "
            "grpc.health.v1 must send 'authorization: Bearer <token>' or gets UNAUTHENTICATED. "
            "Re-read on SIGHUP",
            "metavar": "FILE",
        },
    )
    model_control_mode: ModelControlMode = field(
        default="none",
        metadata={
            "help": "none: models load at start-up only; poll: the repository is rescanned every "
            "--repository-poll-secs, new and changed versions load, removed ones drain and "
            "unload; explicit: RepositoryModelLoad / RepositoryModelUnload load and unload "
            "models (refused in the other modes)"
        },
    )
    repository_poll_secs: float = field(
        default=15.0,
        metadata={"help": "With --model-control-mode poll: seconds between repository scans"},
    )
    load_model: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "With --model-control-mode explicit: models to load at start-up, "
            "comma-separated ('*': all); the others wait for RepositoryModelLoad",
            "metavar": "NAMES",
        },
    )
    allow_python_load: bool = field(
        default=False,
        metadata={
            "help": "With --model-control-mode explicit: let RepositoryModelLoad load Python "
            "models (backend python), whose model.py runs code in the server's name; without "
            "it such a call is refused (PERMISSION_DENIED) and Python models load only at "
            "start-up (--load-model) or by polling"
        },
    )
    max_concurrent_rpcs: int = field(
        default=0,
        metadata={
            "help": "Calls served at once by each server process (grpc.health.v1 excepted; each "
            "request of a ModelStreamInfer stream counts as a call); one more gets "
            "RESOURCE_EXHAUSTED at once, before its request is read. 0: no limit"
        },
    )
    max_stream_requests_in_flight: int = field(
        default=32,
        metadata={
            "help": "Requests of one ModelStreamInfer stream read and not yet answered to the "
            "client; past it the server stops reading that stream until the client reads its "
            "answers (HTTP/2 flow control then holds the client back), so a client that never "
            "reads costs at most this many answers of memory"
        },
    )
    exit_on_error: bool = field(
        default=False,
        metadata={
            "help": "Exit non-zero when a model fails to load at start-up (Triton's "
            "--exit-on-error); without it the server stays live but not ready and serves "
            "the models that loaded"
        },
    )
    log_level: LogLevel = field(default="INFO", metadata={"help": "Log level"})
    log_format: LogFormat = field(
        default="text",
        metadata={"help": "Log lines as text or as one JSON object per line"},
    )
    event_loop: EventLoop = field(
        default="auto",
        metadata={
            "help": "Event loop of the Python side (model control, the calls Rust hands to "
            "Python): uvloop, asyncio, or auto (uvloop when installed)"
        },
    )

    def __post_init__(self) -> None:
        if not self.model_repository.is_dir():
            raise SettingsError(
                f"--model-repository: model repository {self.model_repository} is not a directory"
            )
        for flag, port in (
            ("--grpc-port", self.grpc_port),
            ("--http-port", self.http_port),
            ("--metrics-port", self.metrics_port),
            ("--health-port", self.health_port),
        ):
            if not 0 <= port <= 65535:
                raise SettingsError(f"{flag} must be a port number (0 to 65535), not {port}")
        ports = (self.grpc_port, self.http_port, self.metrics_port, self.health_port)
        taken = [p for p in ports if p]
        if len(taken) != len(set(taken)):
            raise SettingsError(
                "--grpc-port, --http-port, --metrics-port and --health-port must differ"
            )
        if self.workers < 1:
            raise SettingsError(f"--workers must be at least 1, not {self.workers}")
        if self.worker_stall_timeout_s <= 0:
            raise SettingsError("--worker-stall-timeout-s must be positive")
        if self.cache_dir is not None and self.cache_dir.resolve().is_relative_to(
            self.model_repository.resolve()
        ):
            raise SettingsError(
                "--cache-dir must be outside the model repository (which is read-only and "
                "is never written to)"
            )
        if self.max_connection_age_s < 0 or self.max_connection_age_grace_s < 0:
            raise SettingsError(
                "--max-connection-age-s and --max-connection-age-grace-s must not be negative"
            )
        if self.max_message_bytes < 1:
            raise SettingsError("--max-message-bytes must be positive")
        if self.grace_period_s < 0:
            raise SettingsError("--grace-period-s must not be negative")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SettingsError("TLS needs both --tls-cert and --tls-key")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise SettingsError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
        for flag, path in (
            ("--tls-cert", self.tls_cert),
            ("--tls-key", self.tls_key),
            ("--tls-client-ca", self.tls_client_ca),
            ("--auth-token-file", self.auth_token_file),
        ):
            if path is not None and not path.is_file():
                raise SettingsError(f"{flag}: {path} is not a readable file")
        if self.repository_poll_secs <= 0:
            raise SettingsError("--repository-poll-secs must be positive")
        if self.load_model and self.model_control_mode != "explicit":
            raise SettingsError("--load-model needs --model-control-mode explicit")
        if self.allow_python_load and self.model_control_mode != "explicit":
            raise SettingsError("--allow-python-load needs --model-control-mode explicit")
        if self.model_control_mode == "explicit" and self.workers > 1:
            raise SettingsError(
                "--model-control-mode explicit needs --workers 1: a load or unload call reaches "
                "one process of several (poll mode works with --workers)"
            )
        if self.max_stream_requests_in_flight < 1:
            raise SettingsError("--max-stream-requests-in-flight must be at least 1")
        if self.max_concurrent_rpcs < 0:
            raise SettingsError("--max-concurrent-rpcs must not be negative (0: no limit)")
        try:
            uses_uvloop(self.event_loop)
        except EventLoopUnavailable as exc:
            raise SettingsError(str(exc)) from None

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None
