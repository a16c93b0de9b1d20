"""Parameters onnxserve adds to the protocol's messages: wire-compatible additions.

Every one travels in a message's ``parameters`` map, which the protocol
already has, so Triton's and KServe's clients, which do not know them, ignore
them. Each is named once here and read or written through this module.
"""

from __future__ import annotations

import grpc

from onnxserve.protocol import grpc_service_pb2 as pb

__all__ = ["STREAM_STATUS_PARAMETER", "stream_status_of", "with_stream_status"]

#: In a failed ModelStreamInfer answer (``infer_response.parameters``): the name
#: of the gRPC status code the same request gets as a unary ModelInfer call
#: (``INVALID_ARGUMENT``...). The protocol's ``error_message`` is text only.
STREAM_STATUS_PARAMETER = "onnxserve.status_code"


def with_stream_status(response: pb.ModelInferResponse, code: grpc.StatusCode) -> None:
    """Mark a failed stream answer with the status code of its error."""
    response.parameters[STREAM_STATUS_PARAMETER].string_param = code.name


def stream_status_of(response: pb.ModelInferResponse) -> grpc.StatusCode | None:
    """The status code a failed stream answer carries; None where the server sent none."""
    if STREAM_STATUS_PARAMETER not in response.parameters:
        return None
    name = response.parameters[STREAM_STATUS_PARAMETER].string_param
    return grpc.StatusCode.__members__.get(name)
