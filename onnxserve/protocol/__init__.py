"""The wire contract, shared by client, server, converter and bench (always installed).

- ``grpc_service_pb2`` / ``model_config_pb2`` (and ``*_grpc``): generated from
  proto/ by scripts/generate_protos.py, committed, registered in a private
  descriptor pool (``_pool``) so that Triton's and KServe's clients can be
  imported in the same process.
- :mod:`onnxserve.protocol.codec`: numpy arrays <-> wire tensors.
- :mod:`onnxserve.protocol.datatypes`: datatype names across config.pbtxt, the
  wire, numpy and onnxruntime.

Needs grpcio, protobuf, numpy and ml_dtypes only, like the client.
"""
