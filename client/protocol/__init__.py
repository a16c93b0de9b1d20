"""Generated protobuf and gRPC code for the Open Inference Protocol (do not edit; run scripts/generate_protos.py)."""
