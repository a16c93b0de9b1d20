"""Drive a server with Triton's own Python client, unmodified; print what it saw as JSON.

Run in a subprocess by tests/test_triton_client.py: tritonclient registers the
protobuf package `inference` too, so it cannot share a process with our stubs.
Usage: python triton_client_check.py HOST:PORT
"""

from __future__ import annotations

import asyncio
import json
import queue
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException


def _inputs(a: np.ndarray, b: np.ndarray) -> list[grpcclient.InferInput]:
    inputs = [
        grpcclient.InferInput("INPUT0", list(a.shape), "FP32"),
        grpcclient.InferInput("INPUT1", list(b.shape), "FP32"),
    ]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return inputs


def sync_checks(url: str) -> dict[str, Any]:
    client = grpcclient.InferenceServerClient(url)
    seen: dict[str, Any] = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready("simple"),
        "model_ready_missing": client.is_model_ready("no_such_model"),
        "server_metadata": client.get_server_metadata(as_json=True),
        "model_metadata": client.get_model_metadata("simple", as_json=True),
        "model_config": client.get_model_config("simple_config", as_json=True),
    }
    a = np.arange(32, dtype=np.float32).reshape(2, 16)
    b = np.ones((2, 16), dtype=np.float32)
    result = client.infer(
        "simple",
        _inputs(a, b),
        outputs=[grpcclient.InferRequestedOutput("OUTPUT0")],
        request_id="sync-1",
    )
    seen["infer"] = {
        "id": result.get_response().id,
        "output0": result.as_numpy("OUTPUT0").tolist(),
        "output1_absent": result.as_numpy("OUTPUT1") is None,
        "expected": (a + b).tolist(),
    }

    # async_infer: completion callback on Triton's thread.
    done: queue.Queue[Any] = queue.Queue()
    client.async_infer(
        "simple",
        _inputs(a, b),
        lambda result, error: done.put((result, error)),
        request_id="async-1",
    )
    async_result, async_error = done.get(timeout=30)
    seen["async_infer"] = {
        "error": str(async_error) if async_error else None,
        "output1": async_result.as_numpy("OUTPUT1").tolist(),
        "expected": (a - b).tolist(),
    }

    # Streaming: several requests on one ModelStreamInfer stream.
    streamed: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: streamed.put((result, error)))
    for i in range(3):
        client.async_stream_infer("simple", _inputs(a * i, b), request_id=f"stream-{i}")
    stream = {}
    for _ in range(3):
        r, e = streamed.get(timeout=30)
        assert e is None, e
        stream[r.get_response().id] = r.as_numpy("OUTPUT0").tolist()
    client.stop_stream()
    seen["stream"] = {k: v == (a * int(k[-1]) + b).tolist() for k, v in stream.items()}

    # BYTES round trip through an Identity model.
    words = np.array([[b"alpha", b"", "grüße".encode(), b"z"]], dtype=np.object_)
    text_input = grpcclient.InferInput("INPUT0", [1, 4], "BYTES")
    text_input.set_data_from_numpy(words)
    text_result = client.infer("identity_bytes", [text_input])
    seen["bytes"] = [x.decode() for x in text_result.as_numpy("OUTPUT0").reshape(-1)]

    # FP16 travels raw.
    halves = np.array([[0.5, -2.0, 65504.0, 0.0]], dtype=np.float16)
    half_input = grpcclient.InferInput("INPUT0", [1, 4], "FP16")
    half_input.set_data_from_numpy(halves)
    seen["fp16"] = client.infer("identity_fp16", [half_input]).as_numpy("OUTPUT0").tolist()

    seen["statistics"] = client.get_inference_statistics("simple", as_json=True)
    seen["index"] = client.get_model_repository_index(as_json=True)

    errors = {}
    for label, call in (
        ("unknown_model", lambda: client.infer("no_such_model", _inputs(a, b))),
        ("bad_shape", lambda: client.infer("simple", _inputs(a[:, :8], b[:, :8]))),
        ("load", lambda: client.load_model("simple")),
    ):
        try:
            call()
            errors[label] = None
        except InferenceServerException as exc:
            errors[label] = {"status": exc.status(), "message": exc.message()}
    seen["errors"] = errors
    client.close()
    return seen


async def aio_checks(url: str) -> dict[str, Any]:
    client = aioclient.InferenceServerClient(url)
    a = np.full((1, 16), 2.0, dtype=np.float32)
    b = np.full((1, 16), 3.0, dtype=np.float32)
    inputs = [
        aioclient.InferInput("INPUT0", [1, 16], "FP32"),
        aioclient.InferInput("INPUT1", [1, 16], "FP32"),
    ]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    results = await asyncio.gather(*(client.infer("simple", inputs) for _ in range(20)))
    sums = {float(r.as_numpy("OUTPUT0")[0, 0]) for r in results}
    ready = await client.is_server_ready()
    await client.close()
    return {"aio_sums": sorted(sums), "aio_ready": ready}


def main() -> None:
    url = sys.argv[1]
    seen = sync_checks(url)
    seen.update(asyncio.run(aio_checks(url)))
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
