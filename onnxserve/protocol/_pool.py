"""The descriptor pool that holds the protocol's messages: private, not protobuf's default.

Triton's client (tritonclient.grpc) and KServe's client register the same
proto package (``inference``) and file names (``model_config.proto``) in
protobuf's process-wide default pool, and a second registration of a file or
symbol there is a TypeError at import. The generated modules here register
into this pool instead (scripts/generate_protos.py rewrites protoc's
``_descriptor_pool.Default()``), so the SDK imports beside either client, in
either order. The wire format does not depend on the pool: the package name
``inference`` stays in every RPC path and message, as Triton's clients need.
"""

from __future__ import annotations

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
