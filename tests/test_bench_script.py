"""benchmarks/run_benchmark.py: how it recognises the seed model, the page it writes, a run.

The page's tables and verdicts are what the README's figures are copied from,
so their arithmetic (medians and ranges over rounds, ratios to raw
onnxruntime, the comparison with Triton and with an earlier revision) is
checked on figures built by hand. One short real run (a seed-shaped LSTM with
tiny weights, h2load, this checkout against its own HEAD and the empty
handler) checks that the driver, the servers and the accounting fit together.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmarks import run_benchmark, seed_model
from benchmarks.contestants import process_tree_cpu_s
from benchmarks.report import Measurement, RawFigures, markdown
from benchmarks.run_benchmark import choose_seed, find_seed
from benchmarks.seed_model import onnx_seed_lstm as lstm_model
from tests.support.models import add_sub_model


def test_the_seed_is_found_by_its_graph_and_others_are_not(tmp_path: Path) -> None:
    add_sub_model(tmp_path / "a_simple" / "1" / "model.onnx")
    lstm_model(tmp_path / "small_lstm" / "1" / "model.onnx", hidden=16)
    lstm_model(tmp_path / "sentiment" / "1" / "model.onnx")
    lstm_model(tmp_path / "sentiment" / "2" / "model.onnx", length="sequence")
    seed = find_seed(tmp_path, None)
    assert seed is not None
    assert (seed.name, seed.input_name, seed.input_dtype) == ("sentiment", "tokens", np.int32)
    assert find_seed(tmp_path / "missing", None) is None
    with pytest.raises(SystemExit, match="not the seed"):
        find_seed(tmp_path, "small_lstm")
    empty = tmp_path / "empty"
    add_sub_model(empty / "simple" / "1" / "model.onnx")
    assert find_seed(empty, None) is None


def _tiny_seed(repository: Path, say: seed_model.Say) -> None:
    """What ensure_bench_repository's writer writes, without TensorFlow: the seed's shape."""
    entry = repository / seed_model.MODEL_NAME
    lstm_model(entry / "1" / "model.onnx", vocabulary=100)
    (entry / "config.pbtxt").write_text("max_batch_size: 64\ndynamic_batching { }\n")
    say("tiny seed written")


def test_the_benchmark_builds_its_own_seed_once_and_rebuilds_a_stale_one(tmp_path: Path) -> None:
    repository = tmp_path / "build" / "bench_repository"
    said: list[str] = []
    assert seed_model.ensure_bench_repository(repository, write=_tiny_seed, say=said.append) == (
        repository
    )
    assert said[0].startswith(f"building the benchmark's seed model into {repository}")
    assert seed_model.is_current(repository)
    assert [p.name for p in repository.parent.iterdir()] == ["bench_repository"]  # no staging
    seed = find_seed(repository, seed_model.MODEL_NAME)
    assert seed is not None and (seed.input_name, seed.input_dtype) == ("tokens", np.int32)

    def fails(folder: Path, say: seed_model.Say) -> None:
        raise AssertionError("a current build is reused, never written again")

    seed_model.ensure_bench_repository(repository, write=fails, say=said.append)
    # An older recipe (or a half-written build, which has no marker) is built again.
    (repository / seed_model.MARKER).write_text('{"fingerprint": "older"}')
    assert not seed_model.is_current(repository)
    said.clear()
    seed_model.ensure_bench_repository(repository, write=_tiny_seed, say=said.append)
    assert seed_model.is_current(repository) and "tiny seed written" in said

    def interrupted(folder: Path, say: seed_model.Say) -> None:
        _tiny_seed(folder, say)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        seed_model.ensure_bench_repository(repository, force=True, write=interrupted)
    assert seed_model.is_current(repository)  # the complete build is kept
    assert [p.name for p in repository.parent.iterdir()] == ["bench_repository"]


def test_a_repository_without_a_token_id_seed_gets_the_benchmarks_own(tmp_path: Path) -> None:
    own = tmp_path / "bench_repository"

    def build() -> Path:
        return seed_model.ensure_bench_repository(own, write=_tiny_seed, say=lambda _: None)

    # The example repository as it is now: a text-in sentiment model (no LSTM on token ids).
    examples = tmp_path / "model_repository"
    add_sub_model(examples / "sentiment" / "1" / "model.onnx")
    notes: list[str] = []
    seed = choose_seed(examples, None, notes, build)
    assert (seed.repository, seed.name) == (own, seed_model.MODEL_NAME)
    assert "built by benchmarks/seed_model.py" in seed.origin
    assert len(notes) == 1 and "holds no token-id seed LSTM" in notes[0]
    # Without --repository: the benchmark's own, without a note.
    notes.clear()
    assert choose_seed(None, None, notes, build).repository == own and notes == []
    # A repository that holds a seed is measured as it is.
    lstm_model(tmp_path / "mine" / "lstm" / "1" / "model.onnx")
    assert choose_seed(tmp_path / "mine", None, notes, build).name == "lstm" and notes == []
    with pytest.raises(SystemExit, match="no model 'missing'"):
        choose_seed(examples, "missing", notes, build)
    with pytest.raises(SystemExit, match="not the seed"):
        choose_seed(examples, "sentiment", notes, build)
    with pytest.raises(SystemExit, match="give --repository too"):
        choose_seed(None, "lstm", notes, build)


@pytest.mark.slow
def test_the_real_seed_is_the_articles_lstm_with_the_examples_batching(tmp_path: Path) -> None:
    from google.protobuf import text_format

    from onnxserve.protocol import model_config_pb2 as mc

    repository = seed_model.ensure_bench_repository(tmp_path / "bench", say=lambda _: None)
    seed = find_seed(repository, None)
    assert seed is not None and seed.name == seed_model.MODEL_NAME
    assert (seed.input_name, seed.input_dtype) == ("tokens", np.int32)
    entry = repository / seed_model.MODEL_NAME
    config = text_format.Parse((entry / "config.pbtxt").read_text(), mc.ModelConfig())
    assert config.max_batch_size == 64 and config.HasField("dynamic_batching")
    assert not config.dynamic_batching.max_queue_delay_microseconds
    assert [list(t.dims) for t in config.input] == [[50]]
    assert [list(t.dims) for t in config.output] == [[1]]


def measurement(name: str, c64: float, c1_ms: float, failures: int = 0) -> Measurement:
    return Measurement(name, c64, 1000, failures, 20.0, 400.0, c1_ms, c1_ms * 2, 100, 0)


RAWS = [RawFigures(0.5, 5000.0, 64), RawFigures(0.6, 4000.0, 128), RawFigures(0.5, 5000.0, 64)]
ROUNDS = [
    [measurement("onnxserve", 3000, 1.0), measurement("before main", 2500, 1.1),
     measurement("triton", 2900, 4.0)],
    [measurement("onnxserve", 2000, 1.2, failures=2), measurement("before main", 2000, 1.3),
     measurement("triton", 3100, 4.2)],
    [measurement("onnxserve", 3500, 0.9), measurement("before main", 2600, 1.0),
     measurement("triton", 3000, 4.1)],
]  # fmt: skip
NAMES = ["onnxserve", "before main", "triton"]
ARGS = argparse.Namespace(
    warmup=2.0,
    duration=10.0,
    peers=["triton"],
    before="main",
    server_arg=["--workers=2"],
    connections=16,
)
ENVIRONMENT = {"started_at": "now", "commit": "abc", "cpus": 2, "python": "3.11",
               "load_average_at_start": (1.0, 2.0, 3.0), "load_average_at_end": None}  # fmt: skip


def test_the_page_reports_medians_ranges_and_ratios_to_raw() -> None:
    page = markdown("sentiment", NAMES, ROUNDS, RAWS, ENVIRONMENT, ["a note"], ARGS)
    # ratios per round: 3000/5000, 2000/4000, 3500/5000 -> median 0.60;
    # c=1 over raw batch 1: 0.5, 0.6, 0.4 -> median +0.50 ms
    assert (
        "| onnxserve (this commit) | 3,000 (2,000 to 3,500) (0.60x) | 1.00 (0.90 to 1.20) "
        "(+0.50 ms) | 400 us (400 us to 400 us) | 20.0 (20.0 to 20.0) | 2 of 3,300 |" in page
    )
    assert "| onnxserve before (main) | 2,500 (2,000 to 2,600) (0.50x) |" in page
    triton = "| Triton 2.51 (python backend, onnxruntime's defaults, 2 ms queue delay) | 3,000"
    assert triton in page
    assert (
        "| raw onnxruntime, same file, same rounds | best 5,000 (4,000 to 5,000) samples/s "
        "(batch 64) | batch 1: 0.50 (0.50 to 0.60) | | | |" in page
    )
    assert "| 2 | onnxserve | 2,000 | 1.200 | 2.400 | 400 | 20.0 | 2 | 4,000 |" in page
    assert "- note: a note" in page
    assert (
        "--peers triton --connections 16 --before main --server-arg=--workers=2` (or `make bench`)"
        in page
    )


def test_the_verdicts_compare_medians_with_triton_and_the_earlier_revision() -> None:
    page = markdown("sentiment", NAMES, ROUNDS, RAWS, ENVIRONMENT, [], ARGS)
    assert (
        "| onnxserve (this commit) at concurrency 64 at or above the best Triton (Triton 2.51 "
        "(python backend, onnxruntime's defaults, 2 ms queue delay); medians) | 3,000 against "
        "3,000 requests/s (1.00x) | yes |" in page
    )
    assert "| onnxserve: no failed call | 2 failed | no |" in page
    assert "| 1.000 ms against 1.100 ms | yes |" in page
    slower = [[measurement("onnxserve", 2000, 1.5), measurement("before main", 2000, 1.0),
               measurement("triton", 2500, 4.0)]]  # fmt: skip
    page = markdown("sentiment", NAMES, slower, RAWS[:1], ENVIRONMENT, [], ARGS)
    assert "2,000 against 2,500 requests/s (0.80x) | no |" in page
    assert "| 1.500 ms against 1.000 ms | no |" in page
    assert "| onnxserve: no failed call | 0 failed | yes |" in page


def test_the_targets_are_judged_against_the_best_triton_variant_and_settings_are_named() -> None:
    names = ["onnxserve", "onnxserve --workers=2", "triton", "triton threads=1"]
    rounds = [
        [measurement("onnxserve", 3000, 1.0), measurement("onnxserve --workers=2", 3600, 1.0),
         measurement("triton", 5000, 3.0), measurement("triton threads=1", 4000, 3.0)],
    ]  # fmt: skip
    settings = {"triton": "threads onnxruntime's default", "onnxserve": "flags: (defaults)"}
    page = markdown("sentiment", names, rounds, RAWS[:1], ENVIRONMENT, [], ARGS, settings)
    # the tuned-down Triton (4,000) would have flattered onnxserve: the best (5,000) decides
    assert "| 3,000 against 5,000 requests/s (0.60x) | no |" in page
    assert "| onnxserve `--workers=2` at concurrency 64 at or above the best Triton" in page
    assert "| 3,600 against 5,000 requests/s (0.72x) | no |" in page
    assert "- Triton 2.51 (threads=1): as started" in page
    assert "- onnxserve (this commit): flags: (defaults)" in page
    assert "threads onnxruntime's default" in page


def test_triton_settings_parse_name_and_reach_its_config() -> None:
    from benchmarks.triton_peer import TritonSettings, triton_config
    from onnxserve.protocol import model_config_pb2 as mc

    default = TritonSettings.parse("default")
    assert default.is_default and default.name() == "triton"
    assert "onnxruntime's default (the cores)" in default.describe()
    tuned = TritonSettings.parse("threads=1,spinning=off,instances=2,delay=500")
    assert tuned.name() == "triton threads=1,spinning=off,instances=2,delay=500"
    bad_settings = [
        ("cores=2", "expected one of"),
        ("spinning=maybe", "on or off"),
        ("instances=0", "whole number"),
        ("threads=-1", "whole number"),
    ]
    for bad, message in bad_settings:
        with pytest.raises(ValueError, match=message):
            TritonSettings.parse(bad)
    served = mc.ModelConfig(name="seed", max_batch_size=8)
    config = triton_config(served, default)
    assert config.parameters["intra_op_thread_count"].string_value == "0"
    assert "allow_spinning" not in config.parameters
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    config = triton_config(served, tuned)
    assert config.parameters["allow_spinning"].string_value == "0"
    assert config.instance_group[0].count == 2
    assert config.dynamic_batching.max_queue_delay_microseconds == 500


def test_onnxserve_settings_are_read_from_its_log() -> None:
    from onnxserve.protocol import model_config_pb2 as mc

    config = mc.ModelConfig(name="seed", max_batch_size=64)
    config.instance_group.add(count=1)
    log = (
        "loaded model 'seed' version 1: max_batch_size 64, providers ['CPU'], intra-op threads 1\n"
        "loaded model 'seed' version 1: max_batch_size 64, providers ['CPU'], intra-op threads 1\n"
    )
    text = run_benchmark.onnxserve_settings(log, ["--workers=2"], config)
    assert text.startswith("flags: --workers=2; onnxruntime intra-op threads 1 per instance")
    assert "1 instance(s) per process, 2 process(es) loaded the model" in text
    assert "without a queue delay" in text


def test_a_workers_variant_with_fewer_connections_than_processes_gets_a_note() -> None:
    assert run_benchmark.workers_of(["--workers=2"]) == 2
    assert run_benchmark.workers_of(["--cpu-threads", "1", "--workers", "3"]) == 3
    assert run_benchmark.workers_of([]) == 1
    args = argparse.Namespace(
        server_arg=[], variants={"onnxserve --workers=2": ["--workers=2"]}, connections=1
    )
    (note,) = run_benchmark.connection_notes(args)
    assert note.startswith("onnxserve --workers=2: 2 processes but 1 h2load connection(s)")
    args.connections = 16
    assert run_benchmark.connection_notes(args) == []


def test_process_tree_cpu_counts_this_process() -> None:
    import os

    used = process_tree_cpu_s(os.getpid())
    assert used is None or used > 0
    assert process_tree_cpu_s(2**22 + 12345) is None


@pytest.mark.skipif(shutil.which("h2load") is None, reason="needs h2load (nghttp2-client)")
def test_a_short_run_measures_this_checkout_its_head_and_the_empty_handler(
    tmp_path: Path,
) -> None:
    lstm_model(tmp_path / "repo" / "seed" / "1" / "model.onnx", vocabulary=100)
    (tmp_path / "repo" / "seed" / "config.pbtxt").write_text(
        "max_batch_size: 8\ndynamic_batching { }\n"
    )
    results = tmp_path / "results"
    code = run_benchmark.main(
        ["--repository", str(tmp_path / "repo"), "--results", str(results), "--rounds", "1",
         "--duration", "0.5", "--warmup", "0.2", "--raw-seconds", "0.2", "--peers", "empty",
         "--before", "HEAD"]
    )  # fmt: skip
    assert code == 0
    data = json.loads((results / "latest.json").read_text())
    (row,) = data["rounds"]
    assert [m["name"] for m in row] == ["onnxserve", "before HEAD", "empty"]
    for m in row:
        assert m["c64_requests"] > 0 and m["c1_requests"] > 0
        assert m["c64_failures"] == 0 and m["c1_failures"] == 0
        assert m["cpu_us_per_request"] > 0
    assert row[0]["avg_batch"] >= 1
    assert data["raw"][0]["best_samples_per_s"] > 0
    page = (results / "latest.md").read_text()
    assert "| onnxserve: no failed call | 0 failed | yes |" in page


def test_triton_is_skipped_with_a_note_where_it_cannot_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ONNXSERVE_TRITON_VENV", str(tmp_path / "no-such-venv"))
    notes: list[str] = []
    assert run_benchmark._available(["triton", "empty"], ["triton"], notes) == ["empty"]
    assert len(notes) == 1 and notes[0].startswith("Triton was not measured: ")
    assert "has no bin/python" in notes[0]


def _triton_installed() -> bool:
    from benchmarks import triton_peer

    return bool(os.environ.get(triton_peer.OWN_VENV)) or triton_peer.ENV.is_current()


@pytest.mark.skipif(not _triton_installed(), reason="no Triton environment (make triton-env)")
def test_the_triton_peer_answers_what_onnxruntime_does(tmp_path: Path) -> None:
    import grpc
    import onnxruntime as ort

    from benchmarks.triton_peer import TritonSettings, running_triton
    from onnxserve.protocol import grpc_service_pb2_grpc as pb_grpc
    from onnxserve.protocol import model_config_pb2 as mc
    from tests.support.infer_requests import infer_request, outputs_of

    model_file = lstm_model(tmp_path / "seed.onnx", vocabulary=100)
    served = mc.ModelConfig(name="seed", max_batch_size=8)
    served.input.add(name="tokens", data_type=mc.TYPE_INT32, dims=[50])
    served.output.add(name="positive", data_type=mc.TYPE_FP32, dims=[128])
    tokens = np.random.default_rng(0).integers(0, 100, size=(3, 50)).astype(np.int32)
    expected = ort.InferenceSession(str(model_file)).run(None, {"tokens": tokens})[0]
    with (
        running_triton(model_file, served, TritonSettings(), tmp_path / "triton.log") as (
            address,
            pid,
            _,
        ),
        grpc.insecure_channel(address) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        answer = stub.ModelInfer(infer_request("seed", {"tokens": tokens}), timeout=60)
        assert process_tree_cpu_s(pid) is not None
    np.testing.assert_allclose(outputs_of(answer)["positive"], expected, rtol=1e-5, atol=1e-6)
