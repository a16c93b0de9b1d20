"""The small parts of text-in that need no TensorFlow: which models get onnxruntime-extensions,
what the SDK, the CLI and the bench make of sentences."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxserve.bench.workload import ModelInfo, build_inputs
from onnxserve.client.calls import build_infer_request
from onnxserve.client.cli import parse_input
from onnxserve.client.types import TensorMetadata
from onnxserve.layout import CUSTOM_OPS_EXTENSIONS, CUSTOM_OPS_PARAMETER
from onnxserve.protocol import model_config_pb2 as mc
from onnxserve.protocol.codec import raw_to_array
from onnxserve.server.errors import ConfigError
from onnxserve.server.model_files import opset_domains
from onnxserve.server.runtime import needs_custom_ops
from onnxserve.sessions import EXTENSIONS_DOMAIN, create_session


def _regex_model(path: Path) -> Path:
    """Sentences in, Keras' punctuation stripped out: one onnxruntime-extensions op."""
    pattern = helper.make_tensor("pattern", TensorProto.STRING, [], [rb"[!?.,]"])
    nothing = helper.make_tensor("nothing", TensorProto.STRING, [], [b""])
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["p"], value=pattern),
            helper.make_node("Constant", [], ["r"], value=nothing),
            helper.make_node(
                "StringRegexReplace", ["text", "p", "r"], ["clean"], domain=EXTENSIONS_DOMAIN
            ),
        ],
        "strip",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch", 1])],
        [helper.make_tensor_value_info("clean", TensorProto.STRING, ["batch", 1])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(EXTENSIONS_DOMAIN, 1)],
        ir_version=8,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def _plain_model(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_the_graph_domains_decide_and_the_config_can_say_so(tmp_path: Path) -> None:
    text = _regex_model(tmp_path / "text.onnx")
    plain = _plain_model(tmp_path / "plain.onnx")
    assert opset_domains(text) == {"", EXTENSIONS_DOMAIN}
    assert opset_domains(plain) == {""}
    assert opset_domains(tmp_path / "missing.onnx") == set()
    config = mc.ModelConfig(name="m")
    assert needs_custom_ops(config, text) and not needs_custom_ops(config, plain)
    config.parameters[CUSTOM_OPS_PARAMETER].string_value = CUSTOM_OPS_EXTENSIONS
    assert needs_custom_ops(config, plain)
    config.parameters[CUSTOM_OPS_PARAMETER].string_value = "libmystery.so"
    with pytest.raises(ConfigError, match=r"libmystery\.so"):
        needs_custom_ops(config, plain)


def test_a_contrib_model_runs_only_with_the_library_registered(tmp_path: Path) -> None:
    from onnxserve.converter.isolated import run_isolated
    from onnxserve.sessions import SessionError

    text = _regex_model(tmp_path / "text.onnx")
    with pytest.raises(SessionError):
        create_session(text)
    create_session(text, custom_ops=True)
    # Run where TensorFlow is not loaded: another test in this worker may have imported it,
    # and then the extensions' regex ops answer wrongly (converter/isolated.py).
    feed = {"text": np.asarray([["Hi, you!"]], dtype=object)}
    [[out]] = run_isolated([(text.read_bytes(), [feed])])
    assert out["clean"].tolist() == [["Hi you"]]


def test_the_sdk_sends_a_str_as_one_sentence_and_a_list_as_rows() -> None:
    def sent(value: object) -> np.ndarray:
        request = build_infer_request("m", {"text": value})
        (tensor,) = request.inputs
        return raw_to_array(request.raw_input_contents[0], tensor.datatype, list(tensor.shape))

    assert sent("I loved it").tolist() == [[b"I loved it"]]
    assert sent(["a", "", "ça va"]).tolist() == [[b"a"], [b""], ["ça va".encode()]]
    # Arrays and nested lists are sent as they are.
    assert sent(np.asarray(["a", "b"], dtype=object)).shape == (2,)
    assert sent([["a", "b", "c"]]).shape == (1, 3)


def test_the_cli_takes_plain_text_or_json_for_a_text_input() -> None:
    declared = {"text": ("BYTES", (-1, 1))}
    _, one = parse_input("text=I loved it, really", declared)
    assert one.shape == (1, 1) and one[0, 0] in ("I loved it, really", b"I loved it, really")
    _, many = parse_input('text=["good", "bad", ""]', declared)
    assert many.shape == (3, 1)


def test_the_bench_reads_sentences_from_a_file_or_generates_them(tmp_path: Path) -> None:
    info = ModelInfo(
        name="sentiment",
        versions=("1",),
        max_batch_size=8,
        inputs=(TensorMetadata("text", "BYTES", (1,)),),
        default_model_filename="model.onnx",
    )
    lines = ["first sentence", "", "ümlaut and emoji \U0001f600"]
    path = tmp_path / "sentences.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    requests = build_inputs(info, 2, str(path), count=4)
    assert [r["text"].shape for r in requests] == [(2, 1)]
    assert [v.decode() for v in requests[0]["text"].reshape(-1)] == lines[:2]
    generated = build_inputs(info, 4, "random", count=3)
    words = [len(v.split()) for r in generated for v in r["text"].reshape(-1)]
    assert len(words) == 12 and min(words) >= 1 and max(words) <= 40 and len(set(words)) > 1
