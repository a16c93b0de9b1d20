"""onnxserve: serve Keras-born ONNX models over the Open Inference Protocol.

Subpackages: ``onnxserve.client`` (light: gRPC, protobuf, numpy),
``onnxserve.server`` (extra ``server``: onnxruntime) and ``onnxserve.converter``
(extra ``convert``: TensorFlow, tf2onnx). Importing this package imports none
of them.
"""

__version__ = "0.1.0"
