"""The server's settings: one typed object, a docstring (help) per field."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from onnxserve.settings import LogLevel, SettingsError

Device = Literal["auto", "cpu", "cuda"]


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
    workers: int = field(
        default=1,
        metadata={
            "help": "Server processes sharing the gRPC port (SO_REUSEPORT; the kernel spreads "
            "connections, not requests, over them); each loads every model and gets "
            "cpu_threads / workers onnxruntime threads, and joins the port only once its "
            "models are loaded. One Python process serves a few thousand small calls per "
            "second; more processes use more cores for the protocol"
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
    log_level: LogLevel = field(default="INFO", metadata={"help": "Log level"})

    def __post_init__(self) -> None:
        if not self.model_repository.is_dir():
            raise SettingsError(
                f"--model-repository: model repository {self.model_repository} is not a directory"
            )
        if self.workers < 1:
            raise SettingsError(f"--workers must be at least 1, not {self.workers}")
        if self.max_connection_age_s < 0 or self.max_connection_age_grace_s < 0:
            raise SettingsError(
                "--max-connection-age-s and --max-connection-age-grace-s must not be negative"
            )
