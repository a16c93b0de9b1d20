"""Drive a server with KServe's own Python gRPC client, unmodified; print what it saw as JSON.

Run from .venv-kserve by tests/test_client_kserve.py (KServe registers the
protobuf package `inference` too, and needs protobuf 6).
Usage: python kserve_client_check.py HOST:PORT
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import grpc
import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest


def _request(model: str, a: np.ndarray, b: np.ndarray, request_id: str) -> InferRequest:
    inputs = [
        InferInput(name="INPUT0", shape=list(a.shape), datatype="FP32"),
        InferInput(name="INPUT1", shape=list(b.shape), datatype="FP32"),
    ]
    inputs[0].set_data_from_numpy(a, binary_data=True)
    inputs[1].set_data_from_numpy(b, binary_data=True)
    return InferRequest(model_name=model, infer_inputs=inputs, request_id=request_id)


async def checks(url: str) -> dict[str, Any]:
    a = np.arange(32, dtype=np.float32).reshape(2, 16)
    b = np.full((2, 16), 0.5, dtype=np.float32)
    async with InferenceGRPCClient(url, timeout=30, retries=0) as client:
        seen: dict[str, Any] = {
            "live": await client.is_server_live(),
            "ready": await client.is_server_ready(),
            "model_ready": await client.is_model_ready("simple"),
        }
        response = await client.infer(_request("simple", a, b, "kserve-1"))
        seen["id"] = response.id
        seen["model_name"] = response.model_name
        seen["outputs"] = {
            o.name: {"datatype": o.datatype, "shape": list(o.shape), "data": o.as_numpy().tolist()}
            for o in response.outputs
        }
        # Many requests at once, each checked against its own inputs.
        many = await asyncio.gather(
            *(client.infer(_request("simple", a + i, b, f"c{i}")) for i in range(20))
        )
        seen["concurrent_ok"] = all(
            np.array_equal(r.outputs[0].as_numpy(), a + i + b) for i, r in enumerate(many)
        )
        text = InferInput(name="INPUT0", shape=[1, 4], datatype="BYTES")
        text.set_data_from_numpy(np.array([["a", "bc", "é", ""]], dtype=object), binary_data=True)
        strings = await client.infer(InferRequest("identity_bytes", [text], request_id="s"))
        seen["bytes"] = [
            v.decode() if isinstance(v, bytes) else v
            for v in strings.outputs[0].as_numpy().reshape(-1).tolist()
        ]
        try:
            await client.infer(_request("no_such_model", a, b, "x"))
            seen["missing_model_error"] = None
        except grpc.RpcError as exc:
            seen["missing_model_error"] = {"code": exc.code().name, "details": exc.details()}
    return seen


if __name__ == "__main__":
    print(json.dumps(asyncio.run(checks(sys.argv[1]))))
