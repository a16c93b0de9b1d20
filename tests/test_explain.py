"""Explanations through real servers: onnxserve and KServe's own model server.

The models (tests/support/explain_models.py) are real ONNX graphs whose answer
depends on known positions: a linear model over token counts (ids and words),
an image model whose output is one 2x2 region's mean, a linear model over two
of six columns. Every method must rank those positions first; the server's own
statistics count the rows the explanation says it sent.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from onnxserve.cli import main as cli_main
from onnxserve.client import AsyncClient, Client, InvalidInputError, ModelNotFoundError
from onnxserve.client.explain import DEFAULT_MAX_ROWS, Explanation, explain, explain_async
from onnxserve.client.explain.features import FeatureSpace, masks_of_texts
from onnxserve.client.explain.transport import Predictor, ThreadSender
from tests.support import kserve_env
from tests.support.explain_models import (
    COLUMN_WEIGHTS,
    MAX_BATCH,
    REGION,
    TOKEN_WEIGHTS,
    WORD_WEIGHTS,
    build_explain_repository,
)
from tests.support.server import RunningServer

SUPPORT = Path(__file__).parent / "support"
# Pre-padded ids: id 5 at position 5 (+2), id 9 at position 8 (-1.5), the rest weigh 0.
TOKENS = np.array([[0, 0, 0, 0, 3, 5, 7, 2, 9, 4, 6, 8]], np.int32)
TOKEN_POSITIONS = {5: +1, 8: -1}
SENTENCE = "the movie was good but the plot was bad"
WORD_POSITIONS = {3: +1, 8: -1}  # good, bad
IMAGE = np.random.default_rng(7).uniform(1.0, 2.0, size=(8, 8)).astype(np.float32)
REGION_PIXELS = {(r, c) for r in range(8)[REGION[0]] for c in range(8)[REGION[1]]}
SAMPLES = 300
SAMPLING = ("kernel-shap", "partition-shap", "lime")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repository = build_explain_repository(tmp_path_factory.mktemp("explain") / "repository")
    with RunningServer(repository) as server:
        yield server


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[Client]:
    with Client(server.address, timeout=60) as client:
        yield client


def _served_rows(client: Client, model: str) -> int:
    (stats,) = client.statistics(model)
    return stats.inference_count


def _explain_counted(client: Client, model: str, inputs: dict | None, **kwargs) -> Explanation:
    """explain(), checking the rows it reports against the server's own statistics."""
    before = _served_rows(client, model)
    result = explain(client, model, inputs, **kwargs)
    assert _served_rows(client, model) - before == result.inferences
    assert result.max_rows == min(kwargs.get("batch_size") or MAX_BATCH, MAX_BATCH)
    assert result.calls >= math.ceil(result.inferences / result.max_rows)
    if result.method == "occlusion":
        assert result.inferences == len(result.attributions) + 1  # + the input itself
    else:
        assert result.inferences <= kwargs["samples"] + 3  # shap also scores x and the background
    return result


def _top(result: Explanation, n: int) -> dict[tuple[int, ...], float]:
    return {a.position: a.attribution for a in result.ranked()[:n]}


def _assert_ranked_first(result: Explanation, expected: dict[int, int]) -> None:
    top = _top(result, len(expected))
    assert {p[0] for p in top} == set(expected), result.ranked()[:4]
    for position, sign in expected.items():
        assert np.sign(top[(position,)]) == sign, result.ranked()[:4]


# ---------------------------------------------------------------- known positions


@pytest.mark.parametrize("method", ["occlusion", *SAMPLING])
def test_token_ids_rank_the_weighted_tokens_first(client: Client, method: str) -> None:
    result = _explain_counted(
        client, "token_counts", {"tokens": TOKENS}, method=method, samples=SAMPLES
    )
    assert result.kind == "tokens" and result.score == pytest.approx(0.5)
    assert [a.position[0] for a in result.attributions] == list(
        range(4, 12)
    )  # padding is no feature
    assert result.attributions[1].label == "#5"  # no tokenizer: ids for labels
    _assert_ranked_first(result, TOKEN_POSITIONS)
    if method in ("occlusion", "kernel-shap", "partition-shap"):
        # a linear model: occlusion and Shapley values are each token's weight
        expected = [TOKEN_WEIGHTS.get(int(t), 0.0) for t in TOKENS[0, 4:]]
        assert result.values == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("method", ["occlusion", *SAMPLING])
def test_text_input_ranks_the_weighted_words_first(client: Client, method: str) -> None:
    result = _explain_counted(client, "text_counts", None, text=SENTENCE, method=method,
                              samples=SAMPLES)  # fmt: skip
    assert result.kind == "text"
    assert [a.label for a in result.attributions] == SENTENCE.split()
    _assert_ranked_first(result, WORD_POSITIONS)
    if method != "lime":
        expected = [WORD_WEIGHTS.get(w, 0.0) for w in SENTENCE.split()]
        assert result.values == pytest.approx(expected, abs=1e-4)


def test_text_input_without_an_element_dimension(client: Client) -> None:
    config = client.model_config("text_counts_flat")  # filled in by the server
    result = explain(client, "text_counts_flat", None, text=SENTENCE)
    assert config.max_batch_size > 0 and result.max_rows == config.max_batch_size
    _assert_ranked_first(result, WORD_POSITIONS)
    assert result.values.tolist() == [WORD_WEIGHTS.get(w, 0.0) for w in SENTENCE.split()]


@pytest.mark.parametrize("method", ["occlusion", "kernel-shap"])
def test_image_pixels_of_the_region_rank_first(client: Client, method: str) -> None:
    result = _explain_counted(client, "region_mean", {"image": IMAGE}, method=method,
                              samples=500)  # fmt: skip
    assert result.kind == "image" and len(result.attributions) == 64
    assert set(_top(result, 4)) == REGION_PIXELS
    assert all(value > 0 for value in _top(result, 4).values())
    heat = result.pixel_map()
    assert heat.shape == (8, 8) and np.argmax(heat) // 8 in (2, 3)


@pytest.mark.parametrize("method", ["occlusion", "kernel-shap", "lime"])
def test_image_patch_of_the_region_ranks_first(client: Client, method: str) -> None:
    result = _explain_counted(client, "region_mean", {"image": IMAGE[np.newaxis]}, method=method,
                              samples=SAMPLES, patch=2)  # fmt: skip
    assert len(result.attributions) == 16
    (best,) = result.ranked()[:1]
    assert best.position == (2, 4) and best.label == "rows2:4,cols4:6" and best.attribution > 0
    if method == "occlusion":  # removing the patch removes the whole mean
        assert best.attribution == pytest.approx(result.score, rel=1e-5)


@pytest.mark.parametrize("method", ["occlusion", "kernel-shap"])
def test_tabular_columns_rank_the_weighted_columns_first(client: Client, method: str) -> None:
    row = np.arange(1, 7, dtype=np.float32)
    result = _explain_counted(client, "columns", {"row": row}, method=method, samples=SAMPLES,
                              feature_names=list("abcdef"))  # fmt: skip
    _assert_ranked_first(result, {1: +1, 4: -1})
    assert [a.label for a in result.ranked()[:2]] == ["e", "b"]  # -2 * 5, then 3 * 2
    assert result.values == pytest.approx(COLUMN_WEIGHTS * row, abs=1e-4)


def test_a_method_that_cannot_explain_the_kind_says_which_can(client: Client) -> None:
    with pytest.raises(ValueError, match=r"lime does not explain tabular inputs; .*occlusion"):
        explain(client, "columns", {"row": np.ones(6, np.float32)}, method="lime")


# ---------------------------------------------------------------- bounds and seeds


def test_batch_size_and_concurrency_bound_the_requests(client: Client) -> None:
    result = _explain_counted(client, "token_counts", {"tokens": TOKENS}, method="kernel-shap",
                              samples=200, batch_size=3, concurrency=2)  # fmt: skip
    assert result.max_rows == 3 and result.concurrency == 2
    # the explanation asks for rows in a few large groups: each one cut into requests of 3
    assert math.ceil(result.inferences / 3) <= result.calls <= result.inferences
    sender = ThreadSender(client, "token_counts", "score", concurrency=3)
    predictor = Predictor(sender, "tokens", "score", max_rows=MAX_BATCH, target=0)
    scores = predictor.scores(np.repeat(TOKENS, 50, axis=0))
    assert scores == pytest.approx(np.full(50, 0.5))
    assert predictor.calls == math.ceil(50 / MAX_BATCH) and predictor.inferences == 50
    assert 1 <= sender.peak <= 3


@pytest.mark.parametrize("method", SAMPLING)
def test_samples_and_seed_decide_the_sampling_methods(client: Client, method: str) -> None:
    small = explain(client, "token_counts", {"tokens": TOKENS}, method=method, samples=20)
    assert small.inferences <= 20 + 3 and small.samples == 20
    again = explain(client, "token_counts", {"tokens": TOKENS}, method=method, samples=20)
    assert small.values.tolist() == again.values.tolist()  # seeded: the same answer twice


def test_async_explain_answers_as_the_blocking_one(server: RunningServer, client: Client) -> None:
    blocking = explain(client, "token_counts", {"tokens": TOKENS}, method="kernel-shap",
                       samples=100, seed=3)  # fmt: skip

    async def run() -> Explanation:
        async with AsyncClient(server.address) as aclient:
            return await explain_async(aclient, "token_counts", {"tokens": TOKENS},
                                       method="kernel-shap", samples=100, seed=3,
                                       concurrency=2)  # fmt: skip

    result = asyncio.run(run())
    assert result.values.tolist() == blocking.values.tolist()
    assert result.inferences == blocking.inferences and result.concurrency == 2


# ---------------------------------------------------------------- bad input


def test_unknown_model_and_wrong_shape_raise_the_servers_error(client: Client) -> None:
    with pytest.raises(ModelNotFoundError, match="no_such_model"):
        explain(client, "no_such_model", {"image": IMAGE})
    with pytest.raises(InvalidInputError, match="image") as wrong:
        explain(client, "region_mean", {"image": np.ones((7, 7), np.float32)})
    assert "[7, 7]" in str(wrong.value) or "7" in wrong.value.message


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "onnxserve", "explain", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("ONNXSERVE_EXPLAIN_")},
            "NO_COLOR": "1",
        },
    )


def test_cli_bad_input_prints_the_servers_error_without_a_traceback(
    server: RunningServer, tmp_path: Path
) -> None:
    unknown = _cli("no_such_model", "--url", server.address, "--input", "x=[1, 2]")
    assert unknown.returncode == 1, unknown.stderr
    assert "onnxserve explain: error: [NOT_FOUND]" in unknown.stderr
    np.save(tmp_path / "small.npy", np.ones((7, 7), np.float32))
    wrong = _cli("region_mean", "--url", server.address, "--input", f"image={tmp_path}/small.npy")
    assert wrong.returncode == 1 and "[INVALID_ARGUMENT]" in wrong.stderr, wrong.stderr
    for result in (unknown, wrong):
        assert "Traceback" not in result.stderr and not result.stdout


# ---------------------------------------------------------------- the command


def test_cli_prints_a_table_and_the_words_by_sign(
    server: RunningServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    args = ["explain", "text_counts", "--url", server.address, "--text", SENTENCE, "--top", "3"]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("occlusion on text_counts: score[0] = 0.5000")
    assert "10 inferences in 3 calls (<= 8 rows each" in lines[0]
    assert lines[2].split()[:2] == ["1", "good"] and lines[3].split()[:2] == ["2", "bad"]
    assert len(lines) == 6 and "\033[" not in out  # header, 3 rows, sentence; NO_COLOR
    assert (
        lines[5] == "the(+0) movie(+0) was(+0) good(+2) but(+0) the(+0) plot(+0) was(+0) bad(-1.5)"
    )
    assert cli_main([*args, "--color", "always"]) == 0
    coloured = capsys.readouterr().out
    assert "\033[32m\033[1mgood\033[0m" in coloured and "\033[31m\033[1mbad\033[0m" in coloured


def test_cli_settings_come_from_the_environment_and_the_file(
    server: RunningServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = tmp_path / "onnxserve.toml"
    config.write_text(f'[explain]\nurl = "{server.address}"\nmethod = "lime"\nsamples = 40\n')
    monkeypatch.setenv("ONNXSERVE_EXPLAIN_METHOD", "kernel-shap")  # beats the file
    argv = ["explain", "token_counts", "--config", str(config), "--format", "json"]
    assert cli_main([*argv, "--input", f"tokens={TOKENS.tolist()}"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["method"] == "kernel-shap" and document["samples"] == 40
    assert document["inferences"] <= 43 and document["max_rows"] == MAX_BATCH
    assert document["attributions"][0]["position"] == [4]
    monkeypatch.setenv("ONNXSERVE_EXPLAIN_SAMPLES", "0")
    with pytest.raises(SystemExit) as refused:
        cli_main(argv)
    assert refused.value.code == 2
    assert "--samples must be 1 or more" in capsys.readouterr().err


def test_cli_writes_a_png_heat_map(server: RunningServer, tmp_path: Path) -> None:
    np.save(tmp_path / "image.npy", IMAGE)
    png = tmp_path / "heat" / "map.png"
    result = _cli("region_mean", "--url", server.address, "--input", f"image={tmp_path}/image.npy",
                  "--patch", "2", "--heatmap", str(png))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "rows2:4,cols4:6" in result.stdout.splitlines()[2]


def test_cli_help_lists_the_methods_and_variables() -> None:
    result = _cli("--help")
    assert result.returncode == 0
    for text in ("kernel-shap", "partition-shap", "ONNXSERVE_EXPLAIN_SAMPLES", "--heatmap"):
        assert text in result.stdout


# ---------------------------------------------------------------- features, no server


def test_token_rows_leave_the_removed_ids_out_and_pad_again() -> None:
    space = FeatureSpace.of_tokens(TOKENS[0])
    rows = space.rows(np.array([[1, 0, 1, 1, 1, 1, 1, 0]], bool))
    assert rows.tolist() == [[0, 0, 0, 0, 0, 0, 3, 7, 2, 9, 4, 6]]
    post = FeatureSpace.of_tokens(np.array([4, 5, 6, 0, 0], np.int32))
    assert post.padding == "post"
    assert post.rows(np.array([[0, 1, 1]], bool)).tolist() == [[5, 6, 0, 0, 0]]


def test_masks_come_back_from_the_texts_the_estimators_build() -> None:
    space = FeatureSpace.of_text(np.array(["a  b\tc d"], dtype=object))
    assert space.labels == ("a", "b", "c", "d")
    texts = ["a \u2400 \u2400d", "\u2400 b c d"]  # shap joins a mark to the next word
    assert masks_of_texts(texts, 4).tolist() == [[1, 0, 0, 1], [0, 1, 1, 1]]
    with pytest.raises(RuntimeError, match="3 pieces for 4 features"):
        masks_of_texts(["a b c"], 4)


# ---------------------------------------------------------------- KServe's server


@pytest.fixture(scope="module")
def kserve_address() -> Iterator[str]:
    """KServe's ModelServer with the same models written against kserve.Model."""
    try:
        python = kserve_env.ensure()
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"could not install KServe into {kserve_env.VENV}:\n{exc.stderr[-4000:]}")
    with kserve_env.model_server(python, SUPPORT / "kserve_explain_server.py", "region_mean") as a:
        yield a


@pytest.mark.parametrize("method", ["occlusion", "kernel-shap", "lime"])
def test_kserve_server_explanations_rank_the_known_positions(
    kserve_address: str, method: str
) -> None:
    with Client(kserve_address, timeout=60) as client:
        tokens = explain(client, "token_counts", {"tokens": TOKENS}, method=method,
                         samples=SAMPLES)  # fmt: skip
        image = explain(client, "region_mean", {"image": IMAGE}, method=method, samples=SAMPLES,
                        patch=2)  # fmt: skip
    _assert_ranked_first(tokens, TOKEN_POSITIONS)
    assert image.ranked()[0].position == (2, 4)
    # KServe answers no ModelConfig: requests carry the default number of rows at most
    assert tokens.max_rows == DEFAULT_MAX_ROWS
    if method == "occlusion":
        assert tokens.calls == 2  # the input, then its 8 occlusions in one request


def test_kserve_server_unknown_model_is_its_error(kserve_address: str) -> None:
    with Client(kserve_address) as client, pytest.raises(ModelNotFoundError):
        explain(client, "no_such_model", {"tokens": TOKENS})
