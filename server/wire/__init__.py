"""ModelInfer on the wire: requests parsed from their bytes, answers written as bytes.

The generated protobuf classes build a Python object per message, field and
tensor, and grpc.aio's own (de)serialisation calls cost the event loop on
every call. ModelInfer, the one RPC on the hot path, skips both:

- :mod:`.decode` reads a ModelInferRequest straight from its wire bytes into
  the :class:`~onnxserve.server.inference.ParsedRequest` that validation
  takes, its raw tensors as zero-copy views of those bytes. Anything unusual
  (typed contents, groups, malformed bytes) is left to the generated class,
  so both paths answer every request the same way.
- :mod:`.encode` writes a raw ModelInferResponse as bytes: the fields fixed
  per model and output once, then the tensors.
- :mod:`.handlers` registers the GRPCInferenceService with ModelInfer on
  these bytes and every other RPC on the generated classes, on one port and
  behind the same interceptors.
"""
