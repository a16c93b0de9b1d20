"""config.pbtxt parsing, auto-completion from ONNX, version policies, repository confinement."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from onnxserve.protocol import model_config_pb2 as mc
from onnxserve.server.config import TensorSpec, complete_config, parse_config_text
from onnxserve.server.errors import ConfigError
from onnxserve.server.repository import scan_model, scan_repository, select_versions
from tests.support.models import add_sub_model, write_config

INPUTS = (TensorSpec("INPUT0", "FP32", (-1, 16)), TensorSpec("INPUT1", "FP32", (-1, 16)))
OUTPUTS = (TensorSpec("OUTPUT0", "FP32", (-1, 16)),)


def test_unsupported_fields_are_refused_by_name() -> None:
    text = """
    name: "m"
    sequence_batching { max_sequence_idle_microseconds: 5000 }
    input [ { name: "x" data_type: TYPE_FP32 dims: [4] reshape: { shape: [2, 2] } } ]
    model_transaction_policy { decoupled: true }
    """
    with pytest.raises(ConfigError) as info:
        parse_config_text(text, "m")
    message = str(info.value)
    assert "sequence_batching" in message
    assert "input.reshape" in message
    assert "model_transaction_policy.decoupled" in message


def test_supported_triton_config_parses() -> None:
    config = parse_config_text(
        """
        name: "m" platform: "onnxruntime_onnx" max_batch_size: 8
        dynamic_batching { preferred_batch_size: [4, 8] max_queue_delay_microseconds: 100
          default_queue_policy { max_queue_size: 16 timeout_action: REJECT } }
        instance_group [ { count: 2 kind: KIND_CPU } ]
        parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
        version_policy { latest { num_versions: 2 } }
        """,
        "m",
    )
    assert config.max_batch_size == 8
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('name: "other"', "folder is 'm'"),
        ('platform: "tensorflow_savedmodel"', "platform 'tensorflow_savedmodel'"),
        ('backend: "python"', "backend 'python'"),
        ("max_batch_size: -1", "must not be negative"),
        ('default_model_filename: "../escape.onnx"', "plain file name"),
        ("max_batch_size: eight", "does not parse"),
        ("no_such_field: 1", "does not parse"),
    ],
)
def test_bad_configs_say_what_is_wrong(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match="m") as info:
        parse_config_text(text, "m")
    assert fragment in str(info.value)


def test_complete_config_makes_dynamic_first_dim_models_batchable() -> None:
    config = complete_config(mc.ModelConfig(), "m", INPUTS, OUTPUTS)
    assert config.max_batch_size == 64
    assert config.HasField("dynamic_batching")
    assert [list(i.dims) for i in config.input] == [[16], [16]]
    assert config.version_policy.latest.num_versions == 1
    assert [(g.count, g.name) for g in config.instance_group] == [(1, "m_0")]


def test_complete_config_without_dynamic_batch_dim_is_not_batchable() -> None:
    fixed = (TensorSpec("x", "FP32", (2, 16)),)
    config = complete_config(mc.ModelConfig(), "m", fixed, fixed)
    assert config.max_batch_size == 0
    assert list(config.input[0].dims) == [2, 16]
    asked = mc.ModelConfig(max_batch_size=4)
    with pytest.raises(ConfigError, match="no dynamic first dimension"):
        complete_config(asked, "m", fixed, fixed)


def test_complete_config_checks_declared_tensors_against_onnx() -> None:
    declared = parse_config_text(
        'max_batch_size: 4 input [ { name: "INPUT0" data_type: TYPE_INT64 dims: [16] } ]', "m"
    )
    with pytest.raises(ConfigError, match="TYPE_INT64 but the ONNX graph has TYPE_FP32"):
        complete_config(declared, "m", INPUTS, OUTPUTS)
    wrong_dims = parse_config_text(
        'max_batch_size: 4 input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [8] } ]', "m"
    )
    with pytest.raises(ConfigError, match=r"dims \[8\].*exclude the batch"):
        complete_config(wrong_dims, "m", INPUTS, OUTPUTS)
    unknown = parse_config_text('input [ { name: "nope" data_type: TYPE_FP32 dims: [8] } ]', "m")
    with pytest.raises(ConfigError, match="'nope' is not an input"):
        complete_config(unknown, "m", INPUTS, OUTPUTS)
    partial = parse_config_text(
        'max_batch_size: 4 input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [16] } ]', "m"
    )
    with pytest.raises(ConfigError, match=r"needs input.*INPUT1"):
        complete_config(partial, "m", INPUTS, OUTPUTS)


def test_version_policies() -> None:
    def policy(text: str) -> mc.ModelVersionPolicy:
        return parse_config_text(f"version_policy {{ {text} }}", "m").version_policy

    available = [3, 1, 10, 2]
    assert select_versions(available, mc.ModelVersionPolicy()) == [10]
    assert select_versions(available, policy("latest { num_versions: 2 }")) == [3, 10]
    assert select_versions(available, policy("all {}")) == [1, 2, 3, 10]
    assert select_versions(available, policy("specific { versions: [2, 3, 7] }")) == [2, 3]


def test_repository_scan_picks_versions_and_records_errors(tmp_path: Path) -> None:
    for version in (1, 2, 3):
        add_sub_model(tmp_path / "multi" / str(version) / "model.onnx")
    write_config(tmp_path / "multi", "version_policy { latest { num_versions: 2 } }")
    (tmp_path / "empty" / "1").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    sources = {s.name: s for s in scan_repository(tmp_path)}
    assert set(sources) == {"multi", "empty"}
    assert sorted(sources["multi"].versions) == [2, 3]
    assert sources["multi"].error is None
    assert "no version folder with a model.onnx" in (sources["empty"].error or "")


def test_symlinks_leaving_the_repository_are_refused(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    outside = tmp_path / "outside"
    add_sub_model(outside / "1" / "model.onnx")
    repository.mkdir()
    os.symlink(outside, repository / "escaped")
    (repository / "sneaky" / "1").mkdir(parents=True)
    os.symlink(outside / "1" / "model.onnx", repository / "sneaky" / "1" / "model.onnx")
    escaped = scan_model(repository.resolve(), "escaped")
    sneaky = scan_model(repository.resolve(), "sneaky")
    assert escaped.error and "outside the model repository" in escaped.error
    assert sneaky.error and "outside the repository" in sneaky.error
    assert str(tmp_path) not in escaped.error + sneaky.error
