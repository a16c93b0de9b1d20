"""The onnxserve client SDK: numpy in, numpy out, blocking or asyncio, for any v2 server.

Speaks the Open Inference Protocol (KServe v2) over gRPC as Triton defines it,
so it works against onnxserve, Triton and KServe's model servers alike. Its
dependencies are grpcio, protobuf, numpy and ml_dtypes only: the onnxserve
wheel without extras (``make wheel``, then ``pip install dist/onnxserve-*.whl``)
gives this client without onnxruntime or TensorFlow.

Example::

    import numpy as np
    from onnxserve.client import Client, InferenceServerError

    with Client("localhost:8001", timeout=10) as client:
        print(client.server_metadata())
        image = [[[0.0]] * 8] * 8  # one 8x8 grey image; cast to the model's FP32
        try:
            out = client.infer("digits", {"image": [image]})
        except InferenceServerError as exc:
            print(exc.code, exc.message)
        else:
            print(out["probabilities"].argmax())

``AsyncClient`` has the same calls, awaited. Small answers are frozen
dataclasses (:mod:`onnxserve.client.types`); ``model_config`` returns
Triton's ``inference.ModelConfig`` protobuf message.
"""

from onnxserve.client.aio import AsyncClient
from onnxserve.client.errors import (
    AuthenticationError,
    DeadlineExceededError,
    InferenceServerError,
    InternalServerError,
    InvalidInputError,
    InvalidResponseError,
    ModelNotFoundError,
    PermissionDeniedError,
    RequestCancelledError,
    ResourceExhaustedError,
    ServerUnavailableError,
    UnimplementedError,
)
from onnxserve.client.options import KeepaliveOptions, RetryPolicy, TLSConfig
from onnxserve.client.sync import Client
from onnxserve.client.types import (
    BatchStatistics,
    Duration,
    InferRequest,
    InferResult,
    InferStatistics,
    ModelMetadata,
    ModelStatistics,
    RepositoryModel,
    ServerMetadata,
    TensorMetadata,
)

__all__ = [
    "AsyncClient",
    "AuthenticationError",
    "BatchStatistics",
    "Client",
    "DeadlineExceededError",
    "Duration",
    "InferRequest",
    "InferResult",
    "InferStatistics",
    "InferenceServerError",
    "InternalServerError",
    "InvalidInputError",
    "InvalidResponseError",
    "KeepaliveOptions",
    "ModelMetadata",
    "ModelNotFoundError",
    "ModelStatistics",
    "PermissionDeniedError",
    "RepositoryModel",
    "RequestCancelledError",
    "ResourceExhaustedError",
    "RetryPolicy",
    "ServerMetadata",
    "ServerUnavailableError",
    "TLSConfig",
    "TensorMetadata",
    "UnimplementedError",
]
