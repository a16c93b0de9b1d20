"""Explanations of the seed's LSTM (the sentiment example), through the server.

The example's repository is built as tests/test_examples.py builds it (quick:
the files, the TextVectorization inside the model and the wiring are real, the
weights barely trained) and served by a real server; the model takes sentences,
so the explanation's features are the sentence's words. Occlusion must agree
in sign with the change in score when each word is left out of the sentence
and the shorter sentence is scored on its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from onnxserve.client import Client
from onnxserve.client.explain import explain
from onnxserve.examples.common import REPOSITORY_ENVIRONMENT_VARIABLE
from onnxserve.examples.sentiment.predict import score_sentences
from tests.support.server import RunningServer
from tests.test_examples import ROOT, build_quick_repository

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
    return build_quick_repository(tmp_path_factory.mktemp("explain-examples") / "model_repository")


@pytest.fixture(scope="module")
def server_address(repository: Path) -> Iterator[str]:
    with RunningServer(repository) as server:
        yield server.address


@pytest.fixture(scope="module")
def client(server_address: str) -> Iterator[Client]:
    with Client(server_address, timeout=60) as client:
        yield client


def test_occlusion_agrees_in_sign_with_leaving_each_word_out(client: Client) -> None:
    result = explain(client, "sentiment", text=SENTENCE)
    words = SENTENCE.split()
    assert result.kind == "text"
    assert [a.label for a in result.attributions] == words  # "friendly," keeps its comma
    (full,) = score_sentences(client, [SENTENCE])
    assert result.score == pytest.approx(float(full), abs=NOISE)
    without = [" ".join(words[:i] + words[i + 1 :]) for i in range(len(words))]
    removed = float(full) - score_sentences(client, without)
    assert result.values == pytest.approx(removed, abs=1e-5)
    clear = np.abs(removed) > NOISE
    assert clear.sum() >= len(words) // 2  # the comparison says something
    assert (np.sign(result.values[clear]) == np.sign(removed[clear])).all()


@pytest.mark.parametrize("method", ["kernel-shap", "partition-shap", "lime"])
def test_sampling_methods_explain_the_lstm_within_their_samples(
    client: Client, method: str
) -> None:
    sentence = TWENTY_WORDS
    result = explain(client, "sentiment", text=sentence, method=method, samples=500)
    assert len(result.attributions) == len(sentence.split()) == 20
    assert result.inferences <= 500 + 3 and result.calls <= result.inferences
    assert np.isfinite(result.values).all()
    if method != "lime":  # Shapley values add up to the change from nothing to everything
        assert result.values.sum() == pytest.approx(result.score - result.base, abs=1e-4)


def _readme_snippet() -> str:
    """The Python block of the README's "Explanations" section, as a user copies it."""
    readme = (ROOT / "README.md").read_text("utf-8")
    section = readme[readme.index("## Explanations") :]
    return section[section.index("```python\n") + len("```python\n") : section.index("\n```\n")]


def _run(args: list[str], repository: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and k != "NO_COLOR"}
    env[REPOSITORY_ENVIRONMENT_VARIABLE] = str(repository)
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_readme_snippet_explains_through_the_server(
    repository: Path, server_address: str, tmp_path: Path
) -> None:
    snippet = _readme_snippet()
    assert "127.0.0.1:8001" in snippet
    script = tmp_path / "explain_snippet.py"
    script.write_text(snippet.replace("127.0.0.1:8001", server_address), "utf-8")
    result = _run([sys.executable, script.name], repository, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 4, result.stdout
    score, inferences, calls, _seconds, unit = lines[0].split()
    assert 0 <= float(score) <= 1 and int(inferences) <= 503 and int(calls) >= 8 and unit == "s"
    words = {"The", "food", "was", "great,", "but", "the", "service", "slow."}
    assert all(line.split()[0] in words for line in lines[1:])


def test_examples_readme_commands_run(
    repository: Path, server_address: str, tmp_path: Path
) -> None:
    """The explain steps of examples/README.md, against this build (other weights, same output
    shape): the sentiment sentence by occlusion, the held-out digit with a heat map."""
    command = [sys.executable, "-m", "onnxserve", "explain", "--url", server_address]
    sentence = "The food was great, but the service was slow and the room was dirty."
    words = _run([*command, "sentiment", "--text", sentence, "--top", "5", "--color", "never"],
                 repository, tmp_path)  # fmt: skip
    assert words.returncode == 0, words.stderr[-3000:]
    lines = words.stdout.splitlines()
    assert lines[0].startswith("occlusion on sentiment: score[0] = ")
    assert "14 text features; 15 inferences in 2 calls (<= 64 rows each" in lines[0]
    assert lines[1].split() == ["rank", "feature", "position", "value", "attribution"]
    assert len(lines) == 8 and lines[7].startswith("The(")
    save = (
        "import numpy as np; from onnxserve.examples.digits.data import held_out_split; "
        "np.save('digit.npy', held_out_split().test_images[0])"
    )
    assert _run([sys.executable, "-c", save], repository, tmp_path).returncode == 0
    digits = ["digits", "--input", "image=digit.npy", "--patch", "2", "--method", "kernel-shap"]
    image = _run([*command, *digits, "--top", "5", "--heatmap", "digit.png"], repository, tmp_path)
    assert image.returncode == 0, image.stderr[-3000:]
    assert "16 image features, 500 samples, seed 0; 503 inferences" in image.stdout
    assert (tmp_path / "digit.png").read_bytes()[:4] == b"\x89PNG"
