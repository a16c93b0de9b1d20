"""benchmarks/python_models.py runs and reports what it promises (figures are not asserted)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import python_models


def test_the_python_model_benchmark_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    assert (
        python_models.main(
            ["--calls", "20", "--concurrency", "4", "--rounds", "5", "--json", str(out)]
        )
        == 0
    )
    figures = json.loads(out.read_text())
    assert [row["width"] for row in figures["ipc"]] == [50, 1024, 16384]
    assert all(
        row["ipc_us_median"] > 0 and row["server_cpu_us_median"] > 0 for row in figures["ipc"]
    )
    rows = {(row["model"], row["concurrency"]) for row in figures["server"]}
    assert rows == {(m, c) for m in ("onnx", "python", "ensemble") for c in (1, 4)}
    python = next(r for r in figures["server"] if r["model"] == "python" and r["concurrency"] == 1)
    assert python["input_output_us_per_request"] > 0  # the IPC, from ModelStatistics
