#!/usr/bin/env python3
"""An empty ModelInfer handler on grpc.aio: what the Python gRPC stack alone costs per call.

It answers every ModelInfer at once with a response naming the model, and
serves nothing else. The benchmark drives it exactly as it drives the servers
(the protocol floor): no Python server can answer faster than this one on the
same event loop and handler kind.

- ``--handler protobuf``: a servicer on the generated classes (grpc.aio parses
  the request and serialises the response);
- ``--handler bytes``: a handler on the raw bytes, as onnxserve registers
  ModelInfer (it reads the model name from the request's bytes).

    python benchmarks/empty_server.py 127.0.0.1:PORT [--event-loop uvloop] [--handler bytes]

Prints ``ready`` on stdout once it listens.
"""

from __future__ import annotations

import argparse
import sys

import grpc

from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.server import event_loop

_METHOD = "ModelInfer"
SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]


async def _protobuf_infer(
    request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
) -> pb.ModelInferResponse:
    return pb.ModelInferResponse(model_name=request.model_name)


async def _bytes_infer(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
    # The model name is the request's first field; answer it back as field 1.
    length = data[1] if len(data) > 1 and data[0] == 0x0A and data[1] < 0x80 else 0
    return data[: 2 + length] if length else b""


def handler(kind: str) -> grpc.RpcMethodHandler:
    if kind == "bytes":
        return grpc.unary_unary_rpc_method_handler(_bytes_infer)
    return grpc.unary_unary_rpc_method_handler(
        _protobuf_infer,
        request_deserializer=pb.ModelInferRequest.FromString,
        response_serializer=pb.ModelInferResponse.SerializeToString,
    )


async def serve(address: str, kind: str) -> None:
    server = grpc.aio.server()
    handlers = {_METHOD: handler(kind)}
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),)
    )
    server.add_registered_method_handlers(SERVICE.full_name, handlers)
    server.add_insecure_port(address)
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("address", help="host:port to listen on")
    parser.add_argument("--event-loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    parser.add_argument("--handler", choices=("protobuf", "bytes"), default="bytes")
    args = parser.parse_args(argv)
    event_loop.run(serve(args.address, args.handler), args.event_loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
