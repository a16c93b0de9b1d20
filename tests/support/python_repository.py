"""Model repositories with Python models and ensembles, for the tests (and for real Triton).

The model.py files live in tests/support/pymodels/ (add_sub.py is the shape of
Triton's own add_sub example, unchanged). :func:`build_triton_comparable`
writes only what Triton 2.51's python backend runs as well (no ONNX: the
PyTriton wheel has no onnxruntime backend), so the same folder serves both.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from tests.support.models import OPSET, add_sub_model, write_config

SOURCES = Path(__file__).parent / "pymodels"
VOCABULARY = ("good", "great", "bad", "awful", "movie", "the", "was", "a")
# The scorer's weight of each word id (0 is padding and unknown words).
WEIGHTS = {"good": 1.0, "great": 2.0, "bad": -1.0, "awful": -2.0}
LABELS = ("zero", "one", "two", "three")


def python_model(root: Path, name: str, source: str, config: str, version: int = 1) -> Path:
    """``<root>/<name>/<version>/model.py`` from pymodels/<source>.py, and its config."""
    folder = root / name
    (folder / str(version)).mkdir(parents=True, exist_ok=True)
    shutil.copy(SOURCES / f"{source}.py", folder / str(version) / "model.py")
    write_config(folder, f'name: "{name}"\nbackend: "python"\n{config}')
    return folder


ADD_SUB_CONFIG = """
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
]
instance_group [{ kind: KIND_CPU }]
"""

JUDGE_CONFIG = """
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1 ] },
  { name: "BATCHES" data_type: TYPE_INT32 dims: [ 1 ] }
]
dynamic_batching { max_queue_delay_microseconds: 20000 }
instance_group [{ kind: KIND_CPU }]
"""

LABELLED_CONFIG = """
max_batch_size: 4
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] label_filename: "labels.txt" } ]
instance_group [{ kind: KIND_CPU }]
"""


def build_triton_comparable(root: Path) -> Path:
    """add_sub (Triton's example), judge (errors by value), labelled (classification) and
    twice, an ensemble of add_sub twice: (a + b) + (a - b) = 2a, (a + b) - (a - b) = 2b."""
    python_model(root, "add_sub", "add_sub", ADD_SUB_CONFIG)
    python_model(root, "add_sub_auto", "add_sub_auto", "")
    tensor = "data_type: TYPE_FP32 dims: [ 4 ] }"
    ensemble(
        root,
        "twice",
        f'input [ {{ name: "A" {tensor}, {{ name: "B" {tensor} ]\n'
        f'output [ {{ name: "TWICE_A" {tensor}, {{ name: "TWICE_B" {tensor} ]',
        [
            _step("add_sub", {"INPUT0": "A", "INPUT1": "B"}, {"OUTPUT0": "sum", "OUTPUT1": "diff"}),
            _step(
                "add_sub",
                {"INPUT0": "sum", "INPUT1": "diff"},
                {"OUTPUT0": "TWICE_A", "OUTPUT1": "TWICE_B"},
            ),
        ],
    )
    python_model(root, "judge", "judge", JUDGE_CONFIG)
    labelled = python_model(root, "labelled", "identity", LABELLED_CONFIG)
    (labelled / "labels.txt").write_text("\n".join(LABELS) + "\n")
    return root


def token_scorer_model(path: Path, length: int = 8) -> Path:
    """An ONNX model: score = the sum of each token's weight (INT64 [batch, length] -> FP32)."""
    table = np.zeros((len(VOCABULARY) + 1, 1), dtype=np.float32)
    for index, word in enumerate(VOCABULARY, 1):
        table[index, 0] = WEIGHTS.get(word, 0.0)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["weights", "tokens"], ["picked"]),
            helper.make_node("ReduceSum", ["picked", "axes"], ["score"], keepdims=0),
        ],
        "token_scorer",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", length])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])],
        initializer=[
            helper.make_tensor("weights", TensorProto.FLOAT, table.shape, table.reshape(-1)),
            helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def expected_score(sentence: str) -> float:
    words = sentence.lower().replace(".", " ").split()[:8]
    return sum(WEIGHTS.get(word, 0.0) for word in words)


def _step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
    maps = "".join(f' input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items())
    maps += "".join(f' output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items())
    return f'{{ model_name: "{model}" model_version: -1{maps} }}'


def ensemble(root: Path, name: str, head: str, steps: list[str]) -> Path:
    """An ensemble's folder: config.pbtxt and the empty version folder Triton's layout has."""
    folder = root / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    write_config(
        folder,
        f'name: "{name}"\nplatform: "ensemble"\n{head}\n'
        f"ensemble_scheduling {{ step [ {', '.join(steps)} ] }}\n",
    )
    return folder


TOKENIZER_CONFIG = """
max_batch_size: 8
input [ { name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "TOKENS" data_type: TYPE_INT64 dims: [ 8 ] } ]
"""

SENTIMENT_HEAD = """
max_batch_size: 8
input [ { name: "SENTENCE" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "SCORE" data_type: TYPE_FP32 dims: [ 1 ] } ]
"""


def build_onnxserve_repository(root: Path) -> Path:
    """Everything onnxserve serves in the tests: the comparable models, BLS and ensembles.

    - adder: ONNX add/sub (width 1), dynamic batching that waits 50 ms for company;
    - bls_async / bls_sync: Python models calling adder (async_exec / exec);
    - bls_missing: a Python model whose BLS target does not exist;
    - tokenizer (Python) and scorer (ONNX), and the ensemble sentiment of the two.
    """
    build_triton_comparable(root)
    add_sub_model(root / "adder" / "1" / "model.onnx", width=1)
    write_config(
        root / "adder",
        "max_batch_size: 32\ndynamic_batching { max_queue_delay_microseconds: 50000 }",
    )
    bls_config = """
max_batch_size: 16
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1 ] } ]
dynamic_batching { max_queue_delay_microseconds: 50000 }
parameters { key: "target" value { string_value: "%s" } }
parameters { key: "mode" value { string_value: "%s" } }
"""
    python_model(root, "bls_async", "bls", bls_config % ("adder", "async"))
    python_model(root, "bls_sync", "bls", bls_config % ("adder", "sync"))
    python_model(root, "bls_missing", "bls", bls_config % ("no_such_model", "sync"))
    tokenizer = python_model(
        root, "tokenizer", "tokenizer", TOKENIZER_CONFIG + "dynamic_batching { }"
    )
    (tokenizer / "vocab.txt").write_text("\n".join(VOCABULARY) + "\n")
    token_scorer_model(root / "scorer" / "1" / "model.onnx")
    write_config(root / "scorer", "max_batch_size: 8\ndynamic_batching { }")
    ensemble(
        root,
        "sentiment",
        SENTIMENT_HEAD,
        [
            _step("tokenizer", {"TEXT": "SENTENCE"}, {"TOKENS": "tokens"}),
            _step("scorer", {"tokens": "tokens"}, {"score": "SCORE"}),
        ],
    )
    return root


def build_bad_ensembles(root: Path) -> dict[str, str]:
    """Ensembles that must be refused at load, by name; returns name -> expected reason part."""
    add_sub_model(root / "adder" / "1" / "model.onnx", width=1)
    tokenizer = python_model(root, "tokenizer", "tokenizer", TOKENIZER_CONFIG)
    (tokenizer / "vocab.txt").write_text("good\n")
    head = """
max_batch_size: 8
input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]
"""
    adder = {"INPUT0": "X", "INPUT1": "X"}
    ensemble(root, "bad_unknown", head, [_step("nope", {"INPUT0": "X"}, {"OUTPUT0": "Y"})])
    ensemble(
        root,
        "bad_types",
        head.replace("TYPE_FP32 dims: [ 1 ] } ]\noutput", "TYPE_STRING dims: [ 1 ] } ]\noutput"),
        [
            _step("tokenizer", {"TEXT": "X"}, {"TOKENS": "t"}),
            _step("adder", {"INPUT0": "t", "INPUT1": "t"}, {"OUTPUT0": "Y"}),
        ],
    )
    ensemble(
        root,
        "bad_cycle",
        head,
        [
            _step("adder", {"INPUT0": "b", "INPUT1": "X"}, {"OUTPUT0": "Y"}),
            _step("adder", {"INPUT0": "Y", "INPUT1": "X"}, {"OUTPUT0": "b"}),
        ],
    )
    ensemble(root, "bad_unmapped", head, [_step("adder", {"INPUT0": "X"}, {"OUTPUT0": "Y"})])
    ensemble(root, "bad_output", head, [_step("adder", adder, {"OUTPUT1": "Z"})])
    return {
        "bad_unknown": "step 1 (model 'nope') cannot be used: model 'nope' is not served",
        "bad_types": "tensor 't' (step 1 (model 'tokenizer') -> step 2 (model 'adder') input "
        "'INPUT0') is INT64 but FP32 is expected",
        "bad_cycle": "the steps form a cycle: step 1 (model 'adder') -> step 2 (model 'adder') "
        "-> step 1 (model 'adder')",
        "bad_unmapped": "step 1 (model 'adder') leaves input 'INPUT1' of model 'adder' unmapped",
        "bad_output": "ensemble output 'Y' is produced by no step",
    }
