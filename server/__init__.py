"""The onnxserve server: Open Inference Protocol over gRPC on onnxruntime."""
