#!/usr/bin/env python3
"""CPU time per ModelInfer request of onnxserve's own Python, without gRPC or a real model.

Throughput on a shared machine moves with whatever else runs there; the CPU
time a piece of code takes per request moves much less, so this is how the
front end's changes are judged (interleaved A/B, several rounds, medians):

1. ``codec``: one request of the seed LSTM's shape (INT32 [1, 50] tokens, an
   FP32 [1, 1] answer) decoded and its answer encoded, (a) with the generated
   protobuf classes as grpc.aio's (de)serialisers and the servicer would, and
   (b) from and to the wire bytes (``onnxserve.server.wire``).
2. ``service``: 64 concurrent callers through the servicer's ModelInfer on
   bytes, the registry and the dynamic batcher, to a model of the seed's
   signature that costs next to nothing (a Cast and a ReduceMean), on each
   event loop: everything onnxserve's Python adds per request, batching included;
   ``generated`` as grpc.aio calls the servicer's ModelInfer (its request parsed
   and its answer serialised by the generated classes), ``wire`` as it calls
   ModelInfer on bytes.

An earlier revision is measured the same way by putting its package tree
first on the path (benchmarks/contestants.py's ``revision_tree`` builds one);
what it lacks (the wire path, uvloop) is left out of its table.

    python benchmarks/frontend_cpu.py [--rounds 5] [--requests 20000]
    PYTHONPATH=build/bench-before/<commit>/site python benchmarks/frontend_cpu.py
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from onnxserve.protocol import codec
from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.server.config import TensorSpec
from onnxserve.server.inference import ModelSignature, decode_request, encode_response

try:
    from onnxserve.server.inference import decode_parsed
    from onnxserve.server.wire.decode import parse_infer_request
    from onnxserve.server.wire.encode import encode_infer_response
except ImportError:  # an earlier revision, without the wire path
    parse_infer_request = None  # type: ignore[assignment]

SEQUENCE = 50
CONCURRENCY = 64
SIGNATURE = ModelSignature(
    "seed",
    {"tokens": TensorSpec("tokens", "INT32", (SEQUENCE,))},
    {"score": TensorSpec("score", "FP32", (1,))},
    64,
    {"tokens": (0, 999)},
)


def seed_request() -> bytes:
    tokens = np.random.default_rng(0).integers(1, 999, size=(1, SEQUENCE)).astype(np.int32)
    request = pb.ModelInferRequest(model_name="seed")
    request.inputs.add(name="tokens", datatype="INT32", shape=tokens.shape)
    request.raw_input_contents.append(codec.array_to_raw(tokens))
    return request.SerializeToString()


def codec_paths(data: bytes) -> dict[str, Callable[[], bytes]]:
    outputs = {"score": np.ones((64, 1), np.float32)[3:4]}

    def generated() -> bytes:
        decoded = decode_request(pb.ModelInferRequest.FromString(data), SIGNATURE, "1")
        return encode_response(decoded, outputs, SIGNATURE).SerializeToString()

    if parse_infer_request is None:
        return {"generated": generated}

    def wire() -> bytes:
        parsed = parse_infer_request(data)
        assert parsed is not None
        return encode_infer_response(decode_parsed(parsed, SIGNATURE, "1"), outputs, SIGNATURE)

    assert generated() == wire(), "both paths write the same bytes"
    return {"generated": generated, "wire": wire}


def cheap_seed_repository(root: Path) -> Path:
    """A model of the seed's signature that costs next to nothing, with dynamic batching."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["tokens"], ["floats"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["floats"], ["score"], axes=[1], keepdims=1),
        ],
        "seed_signature",
        [helper.make_tensor_value_info("tokens", TensorProto.INT32, ["batch", SEQUENCE])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder = root / "seed"
    (folder / "1").mkdir(parents=True)
    onnx.save(model, str(folder / "1" / "model.onnx"))
    (folder / "config.pbtxt").write_text("max_batch_size: 64\ndynamic_batching { }\n")
    return root


class _Context:
    """What ModelInferBytes asks of a gRPC context on a request that succeeds."""

    def time_remaining(self) -> float | None:
        return None


async def service_cpu_us(repository: Path, data: bytes, requests: int, path: str) -> float:
    """CPU us per request of ``requests`` calls from CONCURRENCY callers through the servicer,
    ``path`` ``wire`` (ModelInfer on bytes) or ``generated``."""
    from onnxserve.server.registry import ModelRegistry
    from onnxserve.server.service import InferenceService

    registry = ModelRegistry(repository, "cpu", 2)
    await registry.load_all()
    try:  # the servicer's model control (not in earlier revisions)
        from onnxserve.server.control import ModelControl
    except ImportError:
        service = InferenceService(registry)  # type: ignore[call-arg]
    else:
        service = InferenceService(registry, ModelControl(registry, "none"))
    context = _Context()
    remaining = requests

    async def call_wire() -> None:
        await service.ModelInferBytes(data, context)  # type: ignore[arg-type]

    async def call_generated() -> None:
        request = pb.ModelInferRequest.FromString(data)
        response = await service.ModelInfer(request, context)  # type: ignore[arg-type]
        response.SerializeToString()

    call = call_wire if path == "wire" else call_generated

    async def caller() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    async def burst(count: int) -> None:
        nonlocal remaining
        remaining = count
        await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))

    await burst(2000)  # warm-up: first runs, the load estimator's figures
    started = time.process_time()
    await burst(requests)
    used = time.process_time() - started
    await registry.close()
    return used / requests * 1e6


def _loops() -> dict[str, Callable[[object], object]]:
    loops: dict[str, Callable[[object], object]] = {"asyncio": asyncio.run}  # type: ignore[dict-item]
    try:
        import uvloop
    except ImportError:
        return loops
    loops["uvloop"] = uvloop.run  # type: ignore[assignment]
    return loops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=20000)
    args = parser.parse_args(argv)
    data = seed_request()
    results: dict[str, list[float]] = {}
    paths = codec_paths(data)
    with tempfile.TemporaryDirectory() as folder:
        repository = cheap_seed_repository(Path(folder))
        for round_index in range(args.rounds):
            names = list(paths)
            for name in names if round_index % 2 == 0 else names[::-1]:
                started = time.process_time()
                for _ in range(args.requests):
                    paths[name]()
                used = time.process_time() - started
                results.setdefault(f"codec, {name}", []).append(used / args.requests * 1e6)
            for loop_name, run in _loops().items():
                for path in paths:
                    cpu = run(service_cpu_us(repository, data, args.requests, path))
                    results.setdefault(f"service, {path}, {loop_name}", []).append(cpu)  # type: ignore[arg-type]
            print(f"round {round_index + 1} of {args.rounds} done", file=sys.stderr)
    print("| CPU us per request | median | rounds |")
    print("|---|---:|---|")
    for name, values in results.items():
        rounds = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {name} | {statistics.median(values):.1f} | {rounds} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
