"""ModelInfer on the wire: requests parsed from their bytes, answers written as bytes.

The native front end hands Python the ModelInfer calls its fast path does not
take (Python models, ensembles, classification, typed contents, anything it has
not verified) as their wire bytes (``onnxserve.server.native``). Building a
Python object per message, field and tensor would cost each of them; this
package skips that:

- :mod:`.decode` reads a ModelInferRequest straight from its wire bytes into
  the :class:`~onnxserve.server.inference.ParsedRequest` that validation
  takes, its raw tensors as zero-copy views of those bytes. Anything unusual
  (typed contents, groups, malformed bytes) is left to the generated class,
  so both paths answer every request the same way.
- :mod:`.encode` writes a raw ModelInferResponse as bytes: the fields fixed
  per model and output once, then the tensors.
"""
