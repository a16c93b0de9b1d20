"""The typed results the client returns, and the request type of a stream.

Small answers (metadata, the repository index, statistics) come back as frozen
dataclasses rather than protobuf messages: they have type hints, print
readably, compare by value and do not tie callers to the generated code. The
one exception is :meth:`Client.model_config`, which returns the
``inference.ModelConfig`` message itself, because its schema is large, it is
Triton's own, and users already know it from ``config.pbtxt`` (print it with
``google.protobuf.text_format.MessageToString``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from onnxserve.protocol import codec

if TYPE_CHECKING:
    from onnxserve.client.errors import InferenceServerError

__all__ = [
    "BatchStatistics",
    "Duration",
    "InferRequest",
    "InferResult",
    "InferStatistics",
    "ModelMetadata",
    "ModelStatistics",
    "ParameterValue",
    "RepositoryModel",
    "ServerMetadata",
    "TensorMetadata",
]

#: A request or response parameter: the protocol's InferParameter choices.
ParameterValue = bool | int | float | str


@dataclass(frozen=True)
class ServerMetadata:
    """Who the server is: name, version and the protocol extensions it supports."""

    name: str
    version: str
    extensions: tuple[str, ...]


@dataclass(frozen=True)
class TensorMetadata:
    """One input or output of a model; ``-1`` in ``shape`` is a variable dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype[Any]:
        """The numpy dtype that holds this tensor (object for BYTES)."""
        return codec.numpy_dtype(self.datatype)


@dataclass(frozen=True)
class ModelMetadata:
    """A model's name, available versions, platform, inputs and outputs."""

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorMetadata, ...]
    outputs: tuple[TensorMetadata, ...]

    def input(self, name: str) -> TensorMetadata:
        """The input called ``name``; KeyError if the model has none."""
        for tensor in self.inputs:
            if tensor.name == name:
                return tensor
        raise KeyError(name)

    def output(self, name: str) -> TensorMetadata:
        """The output called ``name``; KeyError if the model has none."""
        for tensor in self.outputs:
            if tensor.name == name:
                return tensor
        raise KeyError(name)


@dataclass(frozen=True)
class RepositoryModel:
    """One entry of the repository index: a model version and its state (e.g. READY)."""

    name: str
    version: str
    state: str
    reason: str


@dataclass(frozen=True)
class Duration:
    """A count of events and the total nanoseconds they took."""

    count: int
    ns: int

    @property
    def mean_ms(self) -> float:
        """Mean milliseconds per event; 0.0 when there were none."""
        return self.ns / self.count / 1e6 if self.count else 0.0


@dataclass(frozen=True)
class InferStatistics:
    """Cumulative per-request timings of a model (Triton's InferStatistics)."""

    success: Duration
    fail: Duration
    queue: Duration
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration
    cache_hit: Duration
    cache_miss: Duration


@dataclass(frozen=True)
class BatchStatistics:
    """Timings of the executions that ran with one batch size."""

    batch_size: int
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration


@dataclass(frozen=True)
class ModelStatistics:
    """Statistics of one model version since it was loaded.

    ``inference_count`` counts samples, ``execution_count`` batch executions,
    so their ratio is the mean batch size the scheduler achieved.
    """

    name: str
    version: str
    last_inference_ms: int
    inference_count: int
    execution_count: int
    inference_stats: InferStatistics
    batch_stats: tuple[BatchStatistics, ...]


@dataclass(frozen=True)
class InferResult:
    """One inference answer with its identity, as a stream yields it.

    ``error`` is set (and ``outputs`` empty) when the server answered this
    request of the stream with an error instead; the stream itself goes on.
    """

    model_name: str
    model_version: str
    id: str
    outputs: dict[str, np.ndarray]
    parameters: dict[str, ParameterValue] = field(default_factory=dict)
    error: InferenceServerError | None = None

    @property
    def ok(self) -> bool:
        """True when this is an answer, not an error."""
        return self.error is None

    def raise_for_error(self) -> InferResult:
        """Raise :attr:`error` if set; else return self (for chaining)."""
        if self.error is not None:
            raise self.error
        return self


@dataclass(frozen=True)
class InferRequest:
    """One request of a stream (:meth:`Client.stream_infer`).

    Example::

        InferRequest("digits", {"image": image}, request_id="42")
    """

    model_name: str
    inputs: Mapping[str, npt.ArrayLike]
    outputs: Sequence[str] | None = None
    model_version: str | int | None = None
    request_id: str | None = None
    parameters: Mapping[str, ParameterValue] | None = None
