"""``onnxserve bench``: a perf_analyzer-like load generator with a raw onnxruntime baseline.

It drives a running server over gRPC (``onnxserve.bench.drivers``, ``.h2load``), reads the
server's own statistics around every step, and times the same model file in
onnxruntime directly (``onnxserve.bench.raw``), so every figure comes with the
ceiling it should be compared to. Nothing is imported from here at package
import time beyond this docstring: the CLI loads the modules when it runs.
"""
