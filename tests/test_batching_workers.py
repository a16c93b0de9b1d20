"""``--workers``: several server processes on one port, supervised by one parent."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.protocol import grpc_service_pb2_grpc as pb_grpc
from tests.support.batching_models import pair_model
from tests.support.infer_requests import infer_request, outputs_of
from tests.support.server import RunningServer


def worker_processes(pid: int) -> list[int]:
    """Child processes running a server (multiprocessing also starts a resource tracker)."""
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [
        int(child)
        for child in text.split()
        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
    ]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_two_workers_share_the_port_count_together_and_stop_together(tmp_path: Path) -> None:
    pair_model(tmp_path / "pair" / "1" / "model.onnx")
    server = RunningServer(tmp_path, ["--workers", "2"])
    with server:
        assert server.process is not None
        workers = worker_processes(server.process.pid)
        assert len(workers) == 2
        # Connections, not requests, are spread: use several channels.
        for index in range(8):
            with grpc.insecure_channel(
                server.address, options=[("grpc.use_local_subchannel_pool", 1)]
            ) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                first = np.full((2, 3), float(index), dtype=np.float32)
                answer = stub.ModelInfer(
                    infer_request("pair", {"INPUT0": first, "INPUT1": first}), timeout=30
                )
                np.testing.assert_array_equal(outputs_of(answer)["OUTPUT0"], first * 2)
        # Whichever worker answers, statistics count every worker's requests.
        for _ in range(4):
            with grpc.insecure_channel(
                server.address, options=[("grpc.use_local_subchannel_pool", 1)]
            ) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="pair"), timeout=30)
            (model,) = stats.model_stats
            assert model.inference_stats.success.count == 8
            assert model.inference_count == 16  # rows
            assert sum(b.compute_infer.count for b in model.batch_stats) == model.execution_count
        code = server.stop()
    assert code == 0
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
