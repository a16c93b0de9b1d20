"""Register GRPCInferenceService on a server, ModelInfer on raw bytes.

The handlers are built from the service's descriptor, as the generated
``add_GRPCInferenceServiceServicer_to_server`` builds them, except that
ModelInfer gets no (de)serialiser: its handler receives the request's bytes and
returns the answer's (``onnxserve.server.wire``). They are registered as the
service's methods on the same server, so interceptors see ModelInfer like any
other RPC, and clients see one service on one port.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from onnxserve.protocol import grpc_service_pb2 as pb

__all__ = ["BYTES_METHOD", "add_inference_service"]

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
# The RPC served on raw bytes, and the servicer method that serves it.
BYTES_METHOD = ("ModelInfer", "ModelInferBytes")

_KINDS: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def method_handlers(servicer: Any) -> dict[str, grpc.RpcMethodHandler]:
    """Every RPC of the service: the servicer's method of the same name, on
    the generated classes, and ModelInfer on bytes."""
    rpc, bytes_handler = BYTES_METHOD
    handlers = {}
    for method in SERVICE.methods:
        make = _KINDS[(method.client_streaming, method.server_streaming)]
        if method.name == rpc:
            handlers[method.name] = make(getattr(servicer, bytes_handler))
            continue
        request = getattr(pb, method.input_type.name)
        response = getattr(pb, method.output_type.name)
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=request.FromString,
            response_serializer=response.SerializeToString,
        )
    return handlers


def add_inference_service(servicer: Any, server: grpc.aio.Server) -> None:
    """What ``add_GRPCInferenceServiceServicer_to_server`` does, ModelInfer on bytes."""
    handlers = method_handlers(servicer)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),)
    )
    server.add_registered_method_handlers(SERVICE.full_name, handlers)
