"""Keras text models (TextVectorization first) convert whole and serve sentences like Keras.

Real Keras models, trained for a step, converted by ``convert`` (tf2onnx for
the network, the converter's string subgraph in front), served by a real
server process, and asked over gRPC with BYTES tensors: one sentence per
request, mixed-length batches, and concurrent single sentences that the
dynamic batcher merges. Scores must be within 1e-4 of Keras. Settings the
converter cannot reproduce are refused with the reason and nothing written.
The subgraph's building blocks are checked against TensorFlow on every
Unicode code point.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import text_format

from onnxserve.layout import CUSTOM_OPS_EXTENSIONS, CUSTOM_OPS_PARAMETER
from onnxserve.protocol import grpc_service_pb2 as pb
from onnxserve.protocol import grpc_service_pb2_grpc as pb_grpc
from onnxserve.protocol import model_config_pb2 as mc
from onnxserve.protocol.codec import array_to_raw, raw_to_array
from tests.support.models import add_sub_model
from tests.support.server import RunningServer

pytestmark = pytest.mark.slow

SERVING_ATOL = 1e-4
SEQUENCE_LENGTH = 12
TRAIN = [
    "I loved this movie, it was GREAT!",
    "Terrible food; the service was slow.",
    "Not bad at all... would come back :)",
    "The worst phone I have ever owned",
    "Excellent value & friendly staff",
    "Café au lait was naïve but élégant",
    "Ugh. Never again!!!",
    "five stars \U0001f600 highly recommended",
]
LABELS = [1, 0, 1, 0, 1, 1, 0, 1]
# What the server is asked: the hard cases and sentences unlike the training ones.
ASKED = [
    "",
    " ",
    "\t\n  \r",
    "?!...,",
    "I LOVED it",
    "ÉCOLE élégant CAFÉ",
    "\U0001f600\U0001f600 emoji only \U0001f44d\U0001f3fd",
    "line one\nline two\ttabbed",
    "great " * 30,
    "zzz qqq unknownish words",
    "non\u00a0breaking space",
    "The service was slow but the food was GREAT, really great.",
]
MODES: dict[str, dict[str, Any]] = {
    "text_lower_strip": {"standardize": "lower_and_strip_punctuation"},
    "text_lower": {"standardize": "lower"},
    "text_strip": {"standardize": "strip_punctuation"},
    "text_raw": {"standardize": None},
    "text_characters": {"split": "character"},
}


def _text_model(**settings: Any) -> Any:
    import keras

    keras.utils.set_random_seed(3)
    vectorize = keras.layers.TextVectorization(
        max_tokens=80, output_sequence_length=SEQUENCE_LENGTH, **settings
    )
    vectorize.adapt(TRAIN)
    text = keras.Input(shape=(1,), dtype="string", name="text")
    x = vectorize(text)
    x = keras.layers.Embedding(80, 8)(x)
    x = keras.layers.LSTM(8)(x)
    score = keras.layers.Dense(1, activation="sigmoid", name="score")(x)
    model = keras.Model(text, score)
    model.compile("adam", "binary_crossentropy")
    # Strings cannot go through fit's array conversion on every backend: a dataset.
    import tensorflow as tf

    data = tf.data.Dataset.from_tensor_slices(
        (np.asarray(TRAIN, dtype=object).reshape(-1, 1), np.asarray(LABELS, np.float32))
    )
    model.fit(data.batch(4), epochs=1, verbose=0, shuffle=False)
    return model


def _keras_scores(model: Any, sentences: list[str]) -> np.ndarray:
    import tensorflow as tf

    return np.asarray(model(tf.constant(np.asarray(sentences, dtype=object).reshape(-1, 1))))


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """One repository with a model per mode, and Keras' scores for ASKED."""
    from onnxserve.converter import convert

    repository = tmp_path_factory.mktemp("text_repository")
    expected = {}
    for name, settings in MODES.items():
        model = _text_model(**settings)
        report = convert(model, repository, name, max_batch_size=8, sentences=TRAIN)
        assert report.text_check is not None and report.text_check.sentences >= len(TRAIN)
        assert report.inputs[0].data_type == "TYPE_STRING"
        expected[name] = _keras_scores(model, ASKED)
    return repository, expected


@pytest.fixture(scope="module")
def server(converted: tuple[Path, Any]) -> Iterator[RunningServer]:
    # A plain numeric model beside the text ones: it must not get the extensions.
    add_sub_model(converted[0] / "plain" / "1" / "model.onnx")
    with RunningServer(converted[0]) as running:
        yield running


@pytest.fixture(scope="module")
def stub(server: RunningServer) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def _request(model: str, sentences: list[str]) -> pb.ModelInferRequest:
    array = np.asarray([s.encode("utf-8") for s in sentences], dtype=object).reshape(-1, 1)
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="text", datatype="BYTES", shape=list(array.shape))
    request.raw_input_contents.append(array_to_raw(array))
    return request


def _score(stub: pb_grpc.GRPCInferenceServiceStub, model: str, sentences: list[str]) -> np.ndarray:
    response = stub.ModelInfer(_request(model, sentences), timeout=60)
    (out,) = response.outputs
    return raw_to_array(response.raw_output_contents[0], out.datatype, list(out.shape))


@pytest.mark.parametrize("name", list(MODES))
def test_each_mode_scores_sentences_as_keras_does(
    converted: tuple[Path, dict[str, np.ndarray]], stub: pb_grpc.GRPCInferenceServiceStub, name: str
) -> None:
    expected = converted[1][name]
    # One sentence per request.
    for index, sentence in enumerate(ASKED):
        got = _score(stub, name, [sentence])
        np.testing.assert_allclose(got, expected[index : index + 1], atol=SERVING_ATOL, rtol=0)
    # Mixed lengths in one request (empty, a word, 180 characters...).
    for start in range(0, len(ASKED), 5):
        got = _score(stub, name, ASKED[start : start + 5])
        np.testing.assert_allclose(got, expected[start : start + 5], atol=SERVING_ATOL, rtol=0)
    # Concurrent single sentences: the dynamic batcher merges sentences of any length.
    with ThreadPoolExecutor(len(ASKED)) as pool:
        answers = list(pool.map(lambda s: _score(stub, name, [s]), ASKED * 2))
    np.testing.assert_allclose(
        np.concatenate(answers), np.concatenate([expected, expected]), atol=SERVING_ATOL, rtol=0
    )


def test_the_text_input_is_bytes_in_metadata_and_config(
    converted: tuple[Path, Any], stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="text_lower_strip"), timeout=10)
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("text", "BYTES", [-1, 1])
    ]
    config = stub.ModelConfig(pb.ModelConfigRequest(name="text_lower_strip"), timeout=10).config
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [
        ("text", mc.TYPE_STRING, [1])
    ]
    written = text_format.Parse(
        (converted[0] / "text_lower_strip" / "config.pbtxt").read_text(), mc.ModelConfig()
    )
    assert written.parameters[CUSTOM_OPS_PARAMETER].string_value == CUSTOM_OPS_EXTENSIONS


def test_text_that_is_not_utf8_is_invalid_argument(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    request = pb.ModelInferRequest(model_name="text_lower")
    request.inputs.add(name="text", datatype="BYTES", shape=[1, 1])
    request.raw_input_contents.append(array_to_raw(np.asarray([[b"caf\xe9 \xff"]], dtype=object)))
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "UTF-8" in (caught.value.details() or "")
    # The server still answers.
    assert _score(stub, "text_lower", ["fine"]).shape == (1, 1)


def test_the_extensions_are_loaded_for_text_models_only(
    server: RunningServer, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    stub.ModelReady(pb.ModelReadyRequest(name="plain"), timeout=10)
    log = server.log()
    for name in MODES:
        assert f"model '{name}': loading onnxruntime-extensions' custom operators" in log
    assert "model 'plain': loading onnxruntime-extensions" not in log


def test_the_sdk_and_the_cli_send_python_strings(
    converted: tuple[Path, dict[str, np.ndarray]],
    server: RunningServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from onnxserve.cli import main
    from onnxserve.client import Client

    expected = converted[1]["text_lower_strip"]
    with Client(server.address, timeout=30) as client:
        one = client.infer("text_lower_strip", {"text": ASKED[4]})["score"]
        many = client.infer("text_lower_strip", {"text": ASKED[:5]})["score"]
    np.testing.assert_allclose(one, expected[4:5], atol=SERVING_ATOL, rtol=0)
    np.testing.assert_allclose(many, expected[:5], atol=SERVING_ATOL, rtol=0)
    url = ["--url", server.address, "--format", "json"]
    assert main(["infer", "text_lower_strip", *url, "--input", f"text={ASKED[4]}"]) == 0
    printed = json.loads(capsys.readouterr().out)["score"]
    assert printed["shape"] == [1, 1]
    np.testing.assert_allclose(printed["data"], expected[4:5], atol=SERVING_ATOL, rtol=0)
    listed = json.dumps(ASKED[4:7])
    assert main(["infer", "text_lower_strip", *url, "--input", f"text={listed}"]) == 0
    printed = json.loads(capsys.readouterr().out)["score"]
    np.testing.assert_allclose(printed["data"], expected[4:7], atol=SERVING_ATOL, rtol=0)


def test_the_bench_drives_a_text_model(
    converted: tuple[Path, Any], server: RunningServer, tmp_path: Path
) -> None:
    """Sentences from a file and generated ones, with the raw onnxruntime baseline."""
    from onnxserve.cli import main

    sentences = tmp_path / "sentences.txt"
    sentences.write_text("\n".join(ASKED) + "\n", encoding="utf-8")
    common = ["--url", server.address, "--driver", "python", "--concurrency", "1,4",
              "--requests", "24", "--warmup", "0", "--no-progress", "--repository",
              str(converted[0]), "--raw-seconds", "0.05"]  # fmt: skip
    for data in (str(sentences), "random"):
        out = tmp_path / f"bench-{Path(data).stem}.json"
        code = main(["bench", "text_lower", *common, "--input-data", data, "--json", str(out)])
        assert code == 0
        result = json.loads(out.read_text())
        assert [s["failures"] for s in result["steps"]] == [0, 0]
        assert [s["server"]["success"] for s in result["steps"]] == [24, 24]


# ------------------------------------------------------------------ refusals


def _vectorizer(**settings: Any) -> Any:
    import keras

    layer = keras.layers.TextVectorization(**settings)
    layer.adapt(TRAIN)
    return layer


def _model_with(layer: Any) -> Any:
    import keras

    text = keras.Input(shape=(1,), dtype="string", name="text")
    x = layer(text)
    x = keras.ops.cast(x, "float32")
    if len(x.shape) == 3:  # ngrams with ragged=False etc. keep int ids; modes give 2-D
        x = keras.layers.Flatten()(x)
    return keras.Model(text, keras.layers.Dense(1)(x))


def _lowercase(text: Any) -> Any:
    import tensorflow as tf

    return tf.strings.lower(text)


def _split_commas(text: Any) -> Any:
    import tensorflow as tf

    return tf.strings.split(text, ",")


REFUSED: dict[str, tuple[Callable[[], Any], str]] = {
    "custom standardize": (
        lambda: _vectorizer(standardize=_lowercase, output_sequence_length=4),
        "standardize is a custom callable (_lowercase)",
    ),
    "custom split": (
        lambda: _vectorizer(split=_split_commas, output_sequence_length=4),
        "split is a custom callable (_split_commas)",
    ),
    "tf-idf": (lambda: _vectorizer(output_mode="tf_idf"), "output_mode='tf_idf'"),
    "multi-hot": (lambda: _vectorizer(output_mode="multi_hot"), "output_mode='multi_hot'"),
    "count": (lambda: _vectorizer(output_mode="count"), "output_mode='count'"),
    "ngrams": (lambda: _vectorizer(ngrams=2, output_sequence_length=4), "ngrams=2"),
    "ragged": (lambda: _vectorizer(ragged=True), "ragged=True"),
    "no sequence length": (lambda: _vectorizer(), "it has no output_sequence_length"),
    "no split": (
        lambda: _vectorizer(split=None, output_sequence_length=1),
        "split=None makes each whole sentence one token",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_settings_that_cannot_be_reproduced_are_refused(tmp_path: Path, case: str) -> None:
    from onnxserve.converter import UnsupportedModelError, convert
    from onnxserve.converter.load import from_keras_model

    build, reason = REFUSED[case]
    layer = build()
    try:
        model = _model_with(layer)
    except Exception:  # a ragged layer cannot feed a Dense: refuse the layer alone
        import keras

        text = keras.Input(shape=(1,), dtype="string", name="text")
        model = keras.Model(text, layer(text))
    with pytest.raises(UnsupportedModelError) as caught:
        from_keras_model(model)
    assert reason in str(caught.value) and layer.name in str(caught.value)
    with pytest.raises(UnsupportedModelError):
        convert(model, tmp_path / "repository", "refused")
    assert not (tmp_path / "repository").exists()


def test_a_tokenization_difference_is_refused_naming_the_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check can fail: with the wrong punctuation class the ONNX ids differ from Keras'."""
    from onnxserve.converter import VerificationError, convert
    from onnxserve.converter import text as text_module

    monkeypatch.setattr(text_module, "PUNCTUATION_PATTERN", r"[!]")
    model = _text_model(standardize="strip_punctuation")
    with pytest.raises(VerificationError) as caught:
        convert(model, tmp_path / "repository", "wrong", max_batch_size=4)
    message = str(caught.value)
    assert "tokenizes" in message and "nothing was written" in message
    assert "'...?!,;:'" in message  # the first hard case with other punctuation
    assert not (tmp_path / "repository").exists()


# ------------------------------------------------------------------ the building blocks


def _code_point_chunks() -> list[str]:
    points = [c for c in range(1, 0x110000) if not 0xD800 <= c < 0xE000]
    return ["".join(map(chr, points[i : i + 997])) for i in range(0, len(points), 997)]


def test_the_string_ops_match_tensorflow_on_every_code_point() -> None:
    """ASCII-only lowercasing, Keras' punctuation regex and both splits, on U+0001..U+10FFFF."""
    import tensorflow as tf
    from onnx import TensorProto, helper

    from onnxserve.converter import text as t
    from onnxserve.converter.isolated import run_isolated

    chunks = [*_code_point_chunks(), " a  b\t\nc ", "", "   ", "x\u3000y\u00a0z"]

    def constant(name: str, value: str) -> Any:
        tensor = helper.make_tensor(name, TensorProto.STRING, [], [value.encode()])
        return helper.make_node("Constant", [], [name], value=tensor)

    def split(prefix: str, source: str, pattern: str, keep: str) -> list[Any]:
        return [
            constant(f"{prefix}_pattern", pattern),
            constant(f"{prefix}_keep", keep),
            helper.make_node(
                "StringRegexSplitWithOffsets",
                [source, f"{prefix}_pattern", f"{prefix}_keep"],
                [f"{prefix}_tokens", f"{prefix}_begins", f"{prefix}_ends", f"{prefix}_rows"],
                domain=t.CONTRIB_DOMAIN,
            ),
        ]

    nodes = [
        helper.make_node(
            "StringNormalizer", ["x"], ["lower"], case_change_action="LOWER", locale="C"
        ),
        constant("punctuation", t.PUNCTUATION_PATTERN),
        constant("nothing", ""),
        helper.make_node(
            "StringRegexReplace", ["x", "punctuation", "nothing"], ["stripped"],
            domain=t.CONTRIB_DOMAIN,
        ),
        *split("words", "x", t.WHITESPACE_PATTERN, ""),
        *split("chars", "x", t.CHARACTER_PATTERN, t.CHARACTER_PATTERN),
    ]  # fmt: skip
    outputs = ["lower", "stripped", "words_tokens", "words_rows", "chars_tokens", "chars_rows"]
    graph = helper.make_graph(
        nodes,
        "string_ops",
        [helper.make_tensor_value_info("x", TensorProto.STRING, [None])],
        [helper.make_value_info(name, helper.TypeProto()) for name in outputs],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(t.CONTRIB_DOMAIN, 1)],
        ir_version=8,
    )
    [[got]] = run_isolated([(model.SerializeToString(), [{"x": np.asarray(chunks, object)}])])

    def texts(values: Any) -> list[str]:
        return [v.decode("utf-8") for v in np.asarray(values).reshape(-1)]

    assert got["lower"].tolist() == texts(tf.strings.lower(chunks))
    assert got["stripped"].tolist() == texts(
        tf.strings.regex_replace(chunks, t.PUNCTUATION_PATTERN, "")
    )
    words = tf.strings.split(chunks)
    assert got["words_tokens"].tolist() == texts(words.flat_values)
    assert got["words_rows"].tolist() == words.row_splits.numpy().tolist()
    characters = tf.strings.unicode_split(chunks, "UTF-8")
    assert got["chars_tokens"].tolist() == texts(characters.flat_values)
    assert got["chars_rows"].tolist() == characters.row_splits.numpy().tolist()
