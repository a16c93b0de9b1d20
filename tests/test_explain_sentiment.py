"""Explanations of the seed's LSTM (the sentiment example), through the server.

The example's repository is built as tests/test_examples.py builds it (quick:
the files, the tokenizer and the wiring are real, the weights barely trained),
served by a real server, and explained with the example's own tokenizer,
which maps the ids back to words. Occlusion must agree in sign with the change
in score when each word is left out of the sentence and the shorter sentence
is scored on its own.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from onnxserve.client import Client
from onnxserve.client.explain import explain
from onnxserve.examples.sentiment.predict import score_sentences
from onnxserve.examples.sentiment.tokenizer import Tokenizer, words_of
from tests.support.server import RunningServer
from tests.test_examples import ROOT, _build_command, _build_env

pytestmark = pytest.mark.slow

SENTENCE = "The food was great and the staff friendly, but our room was dirty and loud"
TWENTY_WORDS = (
    "the staff were friendly and the food was great but the room was small and the wifi never "
    "worked well"
)
# Changes in score smaller than this are float noise (batches of other sizes round differently).
NOISE = 1e-6


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("explain-examples") / "model_repository"
    result = subprocess.run(
        _build_command(root),
        cwd=ROOT,
        env=_build_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root


@pytest.fixture(scope="module")
def tokenizer(repository: Path) -> Tokenizer:
    return Tokenizer.load(repository / "sentiment" / "vocabulary.json")


@pytest.fixture(scope="module")
def client(repository: Path) -> Iterator[Client]:
    with RunningServer(repository) as server, Client(server.address, timeout=60) as client:
        yield client


def test_occlusion_agrees_in_sign_with_leaving_each_word_out(
    client: Client, tokenizer: Tokenizer
) -> None:
    result = explain(client, "sentiment", text=SENTENCE, tokenizer=tokenizer)
    words = words_of(SENTENCE)
    assert result.kind == "tokens" and len(result.attributions) == len(words)
    known = set(tokenizer.words)
    assert [a.label for a in result.attributions] == [w if w in known else "<unk>" for w in words]
    (full,) = score_sentences(client, [SENTENCE], tokenizer)
    assert result.score == pytest.approx(float(full), abs=NOISE)
    without = [" ".join(words[:i] + words[i + 1 :]) for i in range(len(words))]
    removed = float(full) - score_sentences(client, without, tokenizer)
    assert result.values == pytest.approx(removed, abs=1e-5)
    clear = np.abs(removed) > NOISE
    assert clear.sum() >= len(words) // 2  # the comparison says something
    assert (np.sign(result.values[clear]) == np.sign(removed[clear])).all()


@pytest.mark.parametrize("method", ["kernel-shap", "partition-shap", "lime"])
def test_sampling_methods_explain_the_lstm_within_their_samples(
    client: Client, tokenizer: Tokenizer, method: str
) -> None:
    sentence = TWENTY_WORDS
    result = explain(client, "sentiment", text=sentence, tokenizer=tokenizer, method=method,
                     samples=500)  # fmt: skip
    assert len(result.attributions) == len(words_of(sentence)) == 20
    assert result.inferences <= 500 + 3 and result.calls <= result.inferences
    assert np.isfinite(result.values).all()
    if method != "lime":  # Shapley values add up to the change from nothing to everything
        assert result.values.sum() == pytest.approx(result.score - result.base, abs=1e-4)
