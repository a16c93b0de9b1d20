"""The examples of issue 6, end to end on reduced training: data, build, serve, call (text in).

One repository is built per module with ``python -m
onnxserve.examples.build_repository --quick`` (the command ``make serve`` runs,
minus the training time) in a subprocess, from the shared copy of the Sentiment
Labelled Sentences when it exists and from the fallback sentences otherwise; a
real server serves it and the examples' own client functions call it. Quick
training learns nothing, so no test asserts high accuracy; they assert that the
figures are computed from the server's real answers and agree with what the
build measured in Keras.
"""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from onnxserve.client import Client
from onnxserve.examples.build_repository import MARKER, stale_reason
from onnxserve.examples.common import REPOSITORY_ENVIRONMENT_VARIABLE
from onnxserve.examples.digits.data import held_out_split
from onnxserve.examples.sentiment import data as sentiment_data
from onnxserve.examples.sentiment.data import (
    SHA256SUMS,
    SOURCES,
    DataError,
    Dataset,
    find_dataset,
    folder_fingerprint,
    load_fallback,
    load_uci_folder,
    split_dataset,
)
from tests.support.server import RunningServer, rest_served

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data" / "sentiment-labelled-sentences"


def shared_data() -> Path | None:
    """The shared copy of UCI's data (as the Makefile finds it), or None where absent."""
    configured = os.environ.get(sentiment_data.ENVIRONMENT_VARIABLE, "").strip()
    for folder in (Path(configured) if configured else None, SHARED_DATA):
        if folder is not None and all((folder / n).is_file() for n in SOURCES.values()):
            return folder
    return None


# --------------------------------------------------------------------- data


def test_shared_copy_loads_and_matches_uci() -> None:
    folder = shared_data()
    if folder is None:
        pytest.skip("no shared copy of the Sentiment Labelled Sentences on this machine")
    dataset = load_uci_folder(folder)
    assert dataset.origin == "uci"
    assert dataset.verified, dataset.notes
    assert len(dataset.sentences) == 3000
    for source in SOURCES:
        labels = [s.label for s in dataset.sentences if s.source == source]
        # 1,000 per file, half positive: imdb's U+0085 inside sentences split nothing.
        assert len(labels) == 1000 and sum(labels) == 500
    assert any("\x85" in s.text for s in dataset.sentences)


def test_explicit_folder_must_hold_the_data(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing"):
        find_dataset(tmp_path, download=False, cache_dir=tmp_path / "cache")


def test_changed_file_is_marked_unverified(tmp_path: Path) -> None:
    for source, name in SOURCES.items():
        (tmp_path / name).write_text(f"A fine {source} sentence.\t1\nA bad one.\t0\n", "utf-8")
    dataset = load_uci_folder(tmp_path)
    assert not dataset.verified
    assert len(dataset.notes) == 3 and "SHA-256" in dataset.notes[0]
    assert [s.label for s in dataset.sentences] == [1, 0] * 3


def test_fallback_set_when_nothing_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(sentiment_data.ENVIRONMENT_VARIABLE, raising=False)
    dataset = find_dataset(None, download=False, cache_dir=tmp_path / "empty", say=print)
    assert dataset.origin == "fallback" and not dataset.verified
    assert "FALLBACK DATA" in capsys.readouterr().err  # said loudly
    assert dataset.describe()["name"] == "fallback sentences written for onnxserve"
    assert dataset == load_fallback()
    assert len(dataset.sentences) >= 36
    for source in dataset.sources:
        labels = [s.label for s in dataset.sentences if s.source == source]
        assert 0 < sum(labels) < len(labels)
    split = split_dataset(dataset)
    assert {s.source for s in split.test} == set(dataset.sources)


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files.items():
            archive.writestr(f"sentiment labelled sentences/{name}", content)
            archive.writestr(f"__MACOSX/sentiment labelled sentences/._{name}", b"junk")
    return buffer.getvalue()


def test_download_is_checked_against_uci_sums(tmp_path: Path) -> None:
    """A served zip (file:// URL, no network) is used only when every sum is UCI's."""
    tampered = {name: b"Nice.\t1\n" for name in SHA256SUMS}
    (tmp_path / "tampered.zip").write_bytes(_zip(tampered))
    with pytest.raises(DataError, match="SHA-256"):
        sentiment_data.download_uci(tmp_path / "cache", url=(tmp_path / "tampered.zip").as_uri())
    assert not (tmp_path / "cache").exists()

    folder = shared_data()
    if folder is None:
        return  # the genuine files are needed for the accepted case
    genuine = _zip({name: (folder / name).read_bytes() for name in SHA256SUMS})
    nested = io.BytesIO()
    with zipfile.ZipFile(nested, "w") as archive:
        archive.writestr("sentiment labelled sentences.zip", genuine)
    for kind, content in (("plain", genuine), ("nested", nested.getvalue())):
        (tmp_path / f"{kind}.zip").write_bytes(content)
        target = sentiment_data.download_uci(
            tmp_path / kind, url=(tmp_path / f"{kind}.zip").as_uri()
        )
        dataset = load_uci_folder(target)
        assert dataset.verified and len(dataset.sentences) == 3000


def test_split_is_fixed_disjoint_and_per_source() -> None:
    folder = shared_data()
    dataset = load_fallback() if folder is None else load_uci_folder(folder)
    first, second = split_dataset(dataset), split_dataset(dataset)
    assert first == second
    parts = [first.train, first.validation, first.test]
    assert sum(map(len, parts)) == len(dataset.sentences)
    ids = [{id(s) for s in part} for part in parts]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    for source in dataset.sources:
        in_source = sum(1 for s in dataset.sentences if s.source == source)
        held_out = sum(1 for s in first.test if s.source == source)
        assert held_out == pytest.approx(0.2 * in_source, abs=2)


# -------------------------------------------------- built, served and called


def _build_command(repository: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "onnxserve.examples.build_repository",
        "--repository",
        str(repository),
        "--quick",
        "--threads",
        "1",
        "--no-download",
    ]


def _build_env() -> dict[str, str]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop(sentiment_data.ENVIRONMENT_VARIABLE, None)
    folder = shared_data()
    if folder is not None:
        env[sentiment_data.ENVIRONMENT_VARIABLE] = str(folder)
    return env


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A quick build, over the leftovers of an interrupted one (which it must remove)."""
    root = tmp_path_factory.mktemp("examples") / "model_repository"
    (root / "sentiment" / "9").mkdir(parents=True)
    (root / "sentiment" / "9" / "model.onnx").write_bytes(b"half written")
    (root / "digits").mkdir()
    return build_quick_repository(root)


def build_quick_repository(root: Path) -> Path:
    """``root`` built by the example's own command, quickly (other test modules use it too)."""
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
def dataset() -> Dataset:
    """The sentiment data the module's build used."""
    folder = shared_data()
    return load_uci_folder(folder) if folder is not None else load_fallback()


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[RunningServer]:
    with RunningServer(repository, http=True) as server:
        yield server


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[Client]:
    with Client(server.address, timeout=60) as client:
        yield client


def _metrics(repository: Path, name: str) -> dict[str, object]:
    return json.loads((repository / name / "metrics.json").read_text("utf-8"))


def test_build_writes_both_entries_and_the_marker_last(repository: Path) -> None:
    assert not (repository / "sentiment" / "9").exists()  # the interrupted build's leftovers
    for name in ("sentiment", "digits"):
        assert (repository / name / "1" / "model.onnx").stat().st_size > 10_000
        assert (repository / name / "config.pbtxt").is_file()
        assert _metrics(repository, name)["training"]["quick"] is True  # type: ignore[index]
    marker = repository / ".complete"
    newest_entry_file = max(
        p.stat().st_mtime_ns for p in repository.rglob("*") if p.is_file() and p != marker
    )
    assert marker.stat().st_mtime_ns >= newest_entry_file
    config = (repository / "sentiment" / "config.pbtxt").read_text()
    # Text in: the model tokenizes itself, with onnxruntime-extensions' operators.
    assert 'name: "text"' in config and "TYPE_STRING" in config and "dims: 1\n" in config
    assert 'key: "onnxserve.custom_ops"' in config
    # Trained on the fallback sentences, the config says so (and `serve` logs it).
    fallback = _metrics(repository, "sentiment")["data"]["origin"] == "fallback"  # type: ignore[index]
    assert ("onnxserve.warning" in config) == fallback
    assert "max_batch_size: 64" in config


def test_complete_repository_is_not_rebuilt(repository: Path) -> None:
    model = repository / "digits" / "1" / "model.onnx"
    before = model.stat().st_mtime_ns
    result = subprocess.run(
        _build_command(repository),
        cwd=ROOT,
        env=_build_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "is complete" in result.stdout
    assert model.stat().st_mtime_ns == before


def _write_uci_folder(folder: Path) -> Path:
    """UCI's three files in UCI's format, holding the fallback sentences (not UCI's data)."""
    folder.mkdir(parents=True)
    fallback = load_fallback()
    for source, name in zip(fallback.sources, SOURCES.values(), strict=True):
        lines = [f"{s.text}\t{s.label}\n" for s in fallback.sentences if s.source == source]
        (folder / name).write_text("".join(lines), "utf-8")
    return folder


def test_a_changed_data_source_is_noticed_and_rebuilt(repository: Path, tmp_path: Path) -> None:
    """Issue 10: after a build, pointing ONNXSERVE_SENTIMENT_DATA at other data (as the
    fallback warning advises) and running the build again served the old model."""
    copy = tmp_path / "model_repository"
    shutil.copytree(repository, copy)
    data = _write_uci_folder(tmp_path / "other-data")
    env = {**_build_env(), sentiment_data.ENVIRONMENT_VARIABLE: str(data)}
    run = functools.partial(
        subprocess.run, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    rebuilt = run(_build_command(copy), check=False)
    assert rebuilt.returncode == 0, rebuilt.stdout[-3000:] + rebuilt.stderr[-3000:]
    assert "rebuilding" in rebuilt.stdout and "the sentiment data changed" in rebuilt.stdout
    marker = json.loads((copy / MARKER).read_text("utf-8"))
    assert marker["sentiment_data"]["location"] == str(data.resolve())
    assert marker["sentiment_data"]["fingerprint"] == folder_fingerprint(data)
    trained_on = _metrics(copy, "sentiment")["data"]
    assert trained_on["fingerprint"] == folder_fingerprint(data)  # type: ignore[index]
    assert trained_on["sentences"] == len(load_fallback().sentences)  # type: ignore[index]
    # Run again with the same data: nothing to do.
    again = run(_build_command(copy), check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "is complete and up to date" in again.stdout
    assert stale_reason(copy, quick=True, data=str(data)) is None
    assert "--quick" in (stale_reason(copy, quick=False, data=str(data)) or "")


def _readme_snippet() -> str:
    """The Python block of the README's "Call it" section, as a user copies it."""
    readme = (ROOT / "README.md").read_text("utf-8")
    section = readme[readme.index("### Call it") :]
    return section[section.index("```python\n") + len("```python\n") : section.index("\n```\n")]


def test_readme_snippet_runs_as_a_file_in_another_folder(
    repository: Path, server: RunningServer, tmp_path: Path
) -> None:
    """Issue 10: saved as a file elsewhere the snippet failed (No module named
    'examples.digits': tf2onnx installs a top-level 'examples'). It runs as written with
    the project's python; only the port differs here, and the repository is the test's."""
    snippet = _readme_snippet()
    assert "127.0.0.1:8001" in snippet and "examples" not in snippet.replace(
        "onnxserve.examples", ""
    )
    script = tmp_path / "elsewhere" / "snippet.py"
    script.parent.mkdir()
    script.write_text(snippet.replace("127.0.0.1:8001", server.address), "utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env[REPOSITORY_ENVIRONMENT_VARIABLE] = str(repository)
    result = subprocess.run(
        [sys.executable, script.name],
        cwd=script.parent, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 3, result.stdout
    assert lines[0].endswith("I love this phone, the battery lasts for days.")
    assert lines[1].endswith("The food was cold and the service was terrible.")
    for line in lines[:2]:
        score, label = line.split()[:2]
        assert label == ("positive:" if float(score) > 0.5 else "negative:")
    assert lines[2].startswith(f"digit labelled {held_out_split().test_labels[0]}: predicted ")


def _readme_curl_lines() -> list[str]:
    """The commands of the README's curl block, as a user copies them."""
    readme = (ROOT / "README.md").read_text("utf-8")
    section = readme[readme.index("Or with curl") :]
    block = section[section.index("```sh\n") + len("```sh\n") : section.index("\n```\n")]
    return block.splitlines()


def test_readme_curl_lines_run_as_written(server: RunningServer) -> None:
    """Issue 20: the README's curl examples, run by a shell as written (only the port
    differs here), answer what the README shows: readiness, metadata, scores."""
    curl = shutil.which("curl")
    if curl is None or not rest_served():
        pytest.skip("needs curl and the native front end (REST)")
    answers = []
    for line in _readme_curl_lines():
        assert line.startswith("curl -s localhost:8000/"), line
        command = line.replace("localhost:8000", server.http_address, 1)
        done = subprocess.run(
            ["bash", "-c", command], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
        answers.append(json.loads(done.stdout))
    ready, metadata, inference = answers
    assert ready == {"ready": True}
    assert metadata["name"] == "sentiment" and metadata["inputs"][0]["datatype"] == "BYTES"
    [score] = inference["outputs"]
    assert score["name"] == "score" and score["shape"] == [2, 1] and len(score["data"]) == 2
    assert all(0.0 <= value <= 1.0 for value in score["data"])


def test_metrics_record_the_text_input_and_the_data(repository: Path, dataset: Dataset) -> None:
    metrics = _metrics(repository, "sentiment")
    assert metrics["input"] == {"name": "text", "datatype": "BYTES", "shape": [-1, 1]}
    assert metrics["vocabulary_size"] > 2  # type: ignore[operator]
    assert metrics["conversion"]["text_check_sentences"] > len(split_dataset(dataset).train) // 2  # type: ignore[index]
    assert metrics["data"]["origin"] == dataset.origin  # type: ignore[index]


def test_sentiment_scores_through_the_server(repository: Path, client: Client) -> None:
    from onnxserve.converter.isolated import run_isolated
    from onnxserve.examples.sentiment.predict import score_sentences

    sentences = ["I love it", "terrible service", "", "ok " * 80, "Ça marche très bien 😀"]
    scores = score_sentences(client, sentences)
    assert scores.shape == (5,) and scores.dtype == np.float32
    assert ((scores >= 0) & (scores <= 1)).all()
    # The server answers with the converted model's own output for those sentences
    # (onnxruntime with the extensions, in a process without TensorFlow).
    model = (repository / "sentiment" / "1" / "model.onnx").read_bytes()
    feed = {"text": np.asarray(sentences, dtype=object).reshape(-1, 1)}
    [[local]] = run_isolated([(model, [feed])])
    np.testing.assert_allclose(scores, local["score"].reshape(-1), atol=1e-5)


def test_sentiment_held_out_accuracy_through_the_server(
    repository: Path, client: Client, dataset: Dataset
) -> None:
    from onnxserve.examples.sentiment.predict import held_out_accuracy

    accuracy, scores = held_out_accuracy(client, dataset)
    test = split_dataset(dataset).test
    assert scores.shape == (len(test),)  # more than one 64-row request for UCI's data
    labels = np.array([s.label for s in test])
    assert accuracy["overall"]["n"] == len(test)
    assert accuracy["overall"]["accuracy"] == pytest.approx(np.mean((scores > 0.5) == labels))
    for source in dataset.sources:
        mask = np.array([s.source == source for s in test])
        expected = np.mean((scores[mask] > 0.5) == labels[mask])
        assert accuracy[source]["accuracy"] == pytest.approx(expected)
    # Keras at build time and ONNX through the server agree (a score within
    # 1e-5 of 0.5 could flip one sentence).
    measured = _metrics(repository, "sentiment")["held_out_accuracy"]
    for key, figures in accuracy.items():
        assert abs(figures["correct"] - measured[key]["correct"]) <= 1  # type: ignore[index]


def test_digits_classified_through_the_server(repository: Path, client: Client) -> None:
    from onnxserve.examples.digits.predict import classify, classify_held_out

    result = classify_held_out(client)
    split = held_out_split()
    assert result.probabilities.shape == (len(split.test_labels), 10)
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert set(np.unique(result.predicted)) <= set(range(10))
    np.testing.assert_array_equal(result.labels, split.test_labels)
    assert result.accuracy == pytest.approx(np.mean(result.predicted == split.test_labels))
    measured = _metrics(repository, "digits")["held_out_accuracy"]["overall"]  # type: ignore[index]
    assert abs(result.correct - measured["correct"]) <= 1
    # One image as sklearn gives it, (8, 8): the same answer as in the batch.
    single = classify(client, split.test_images[3])
    np.testing.assert_allclose(single[0], result.probabilities[3], atol=1e-5)


def test_digits_ensemble_returns_labels_and_classes(server: RunningServer, client: Client) -> None:
    """digits_labelled (digits, then the Python step digits_label) and the classification
    extension on digits itself (its label_filename), against the plain model's answers."""
    from onnxserve.examples.digits.labelled import LABELS
    from onnxserve.examples.digits.predict import classify, label
    from onnxserve.protocol import grpc_service_pb2 as pb
    from onnxserve.protocol import grpc_service_pb2_grpc as pb_grpc
    from onnxserve.protocol.codec import array_to_raw, deserialize_bytes_tensor

    images = held_out_split().test_images[:70]  # two requests: 64 + 6
    probabilities = classify(client, images)
    names, chosen = label(client, images)
    assert names == [LABELS[i] for i in probabilities.argmax(axis=1)]
    np.testing.assert_allclose(chosen, probabilities.max(axis=1), atol=1e-6)
    request = pb.ModelInferRequest(model_name="digits")
    request.inputs.add(name="image", datatype="FP32", shape=[2, 8, 8])
    request.raw_input_contents.append(array_to_raw(images[:2].astype(np.float32)))
    wanted = request.outputs.add(name="probabilities")
    wanted.parameters["classification"].int64_param = 3
    with server.channel() as channel:
        answer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert answer.outputs[0].datatype == "BYTES"
    assert list(answer.outputs[0].shape) == [2, 3]
    classes = deserialize_bytes_tensor(answer.raw_output_contents[0]).reshape(2, 3)
    for row, expected in zip(classes, probabilities[:2], strict=True):
        value, index, name = row[0].decode().split(":")
        assert int(index) == int(expected.argmax()) and name == LABELS[int(index)]
        assert float(value) == pytest.approx(float(expected.max()), abs=1e-6)


def test_predict_commands(
    repository: Path, server: RunningServer, client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    from onnxserve.examples.digits import predict as digits_predict
    from onnxserve.examples.sentiment import predict as sentiment_predict

    address = server.address
    sentences = ["I love it", "terrible service"]
    assert (
        sentiment_predict.main(["--url", address, "--repository", str(repository), *sentences]) == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    expected = sentiment_predict.score_sentences(client, sentences)
    assert len(lines) == 2
    for line, sentence, score in zip(lines, sentences, expected, strict=True):
        printed, label, text = line.split(maxsplit=2)
        assert text == sentence
        assert float(printed) == pytest.approx(float(score), abs=5e-4)
        assert label == ("positive" if score > 0.5 else "negative")

    assert digits_predict.main(["--url", address, "--show", "3"]) == 0
    out = capsys.readouterr().out
    result = digits_predict.classify_held_out(client)
    assert f"{result.correct}/{len(result.labels)} images" in out
    assert len([line for line in out.splitlines() if line.startswith("image")]) == 3


def test_held_out_command_uses_the_training_data(
    repository: Path,
    server: RunningServer,
    client: Client,
    dataset: Dataset,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from onnxserve.examples.sentiment import predict as sentiment_predict

    entry = repository / "sentiment"
    assert sentiment_predict.training_dataset(entry) == dataset
    argv = ["--url", server.address, "--repository", str(repository), "--held-out"]
    assert sentiment_predict.main(argv) == 0
    out = capsys.readouterr().out
    accuracy, _ = sentiment_predict.held_out_accuracy(client, dataset)
    overall = accuracy["overall"]
    assert f"overall      {overall['accuracy']:.3f} ({overall['correct']}/{overall['n']})" in out

    if dataset.origin == "uci":  # other data than the model's: refused, not mis-scored
        for source, name in SOURCES.items():
            (tmp_path / name).write_text(f"Some {source} sentence.\t1\n", "utf-8")
        with pytest.raises(DataError, match="not the same data"):
            sentiment_predict.training_dataset(entry, tmp_path)
        assert sentiment_predict.main([*argv, "--data", str(tmp_path)]) == 2
