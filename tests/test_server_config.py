"""config.pbtxt parsing, auto-completion from ONNX, version policies, repository confinement."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from onnxserve.protocol import model_config_pb2 as mc
from onnxserve.server.config import (
    SUPPORTED_FIELDS,
    TensorSpec,
    complete_config,
    parse_config_text,
    set_field_paths,
)
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
        ('backend: "tensorflow"', "backend 'tensorflow'"),
        ('platform: "ensemble"', "needs ensemble_scheduling"),
        ('backend: "python" platform: "onnxruntime_onnx"', "takes no platform"),
        ('ensemble_scheduling { step [ { model_name: "a" } ] }', "needs platform"),
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
    sources = {s.name: s for s in scan_repository(tmp_path).models}
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


def _field_paths(descriptor: Descriptor, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every field of a message type, recursively, as paths (maps as key and value).

    An enum field whose only value is its default cannot be set (proto3), so
    it has no path of its own: its message's path stands for it.
    """
    for field in descriptor.fields:
        if field.enum_type is not None and len(field.enum_type.values) == 1:
            continue
        path = (*prefix, field.name)
        yield path
        message = field.message_type
        if message is None:
            continue
        if message.GetOptions().map_entry:
            yield (*path, "key")
            yield (*path, "value")
            value = message.fields_by_name["value"].message_type
            if value is not None:
                yield from _field_paths(value, (*path, "value"))
        else:
            yield from _field_paths(message, path)


def _scalar(field: FieldDescriptor) -> object:
    """A value that differs from the field's default."""
    if field.type == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values[-1].number
    if field.type == FieldDescriptor.TYPE_BOOL:
        return True
    if field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        return "x" if field.type == FieldDescriptor.TYPE_STRING else b"x"
    if field.cpp_type in (FieldDescriptor.CPPTYPE_FLOAT, FieldDescriptor.CPPTYPE_DOUBLE):
        return 1.5
    return 1


def _config_setting(path: tuple[str, ...]) -> mc.ModelConfig:
    """A ModelConfig where the field at ``path`` (and so its parents) is set."""
    config = mc.ModelConfig()
    message: Message = config
    index = 0
    while index < len(path):
        field = message.DESCRIPTOR.fields_by_name[path[index]]
        last = index == len(path) - 1
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field = field.message_type.fields_by_name["key"]
            value_field = field.message_type.fields_by_name["value"]
            container = getattr(message, field.name)
            key = _scalar(key_field)
            if value_field.message_type is None:
                container[key] = _scalar(value_field)
                return config
            entry = container[key]
            if index + 2 >= len(path):  # "x", "x.key" or "x.value": an entry is enough
                return config
            message, index = entry, index + 2
            continue
        if field.message_type is not None:
            child = getattr(message, field.name)
            if field.is_repeated:
                child = child.add()
            else:
                child.SetInParent()
            message, index = child, index + 1
            continue
        assert last
        value = _scalar(field)
        if field.is_repeated:
            getattr(message, field.name).append(value)
        else:
            setattr(message, field.name, value)
        index += 1
    return config


@pytest.mark.parametrize("path", sorted(_field_paths(mc.ModelConfig.DESCRIPTOR)), ids=".".join)
def test_every_config_field_is_either_supported_or_refused_by_name(path: tuple[str, ...]) -> None:
    dotted = ".".join(path)
    config = _config_setting(path)
    assert dotted in set(set_field_paths(config))
    text = text_format.MessageToString(config)
    if dotted in SUPPORTED_FIELDS:
        try:
            parse_config_text(text, "x")
        except ConfigError as error:  # other checks may object to the value, never the field
            assert "does not support" not in str(error)
        return
    with pytest.raises(ConfigError, match="does not support") as info:
        parse_config_text(text, "x")
    parents = [".".join(path[:n]) for n in range(1, len(path) + 1)]
    outermost = next(p for p in parents if p not in SUPPORTED_FIELDS)
    assert outermost in str(info.value)


def test_supported_fields_all_exist() -> None:
    known = {".".join(path) for path in _field_paths(mc.ModelConfig.DESCRIPTOR)}
    assert known >= SUPPORTED_FIELDS


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (
            'platform: "ensemble" ensemble_scheduling { step [ { model_namespace: "n" } ] }',
            "namespaces",
        ),
        ('metric_tags { key: "team" value: "a" }', "metric_tags"),
        ("optimization { input_pinned_memory { enable: true } }", "pinned memory"),
        ("instance_group [ { gpus: [0] }, { gpus: [1] } ]", "one GPU"),
        ("instance_group [ { kind: KIND_MODEL } ]", "KIND_MODEL"),
        ('runtime: "libtriton_onnxruntime.so"', "runtime"),
    ],
)
def test_fields_triton_configs_carry_are_refused_with_the_reason(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config_text(text, "m")
    assert fragment in str(info.value)


def test_default_valued_switches_and_input_formats_are_accepted() -> None:
    parse_config_text(
        "optimization { input_pinned_memory { enable: false } }\n"
        "model_transaction_policy { decoupled: false }\nresponse_cache { enable: false }",
        "m",
    )
    images = (TensorSpec("image", "FP32", (-1, 8, 8, 3)),)
    nhwc = parse_config_text(
        'max_batch_size: 4 input [ { name: "image" format: FORMAT_NHWC } ]', "m"
    )
    config = complete_config(nhwc, "m", images, OUTPUTS)
    assert config.input[0].format == mc.ModelInput.FORMAT_NHWC
    flat = (TensorSpec("image", "FP32", (-1, 64)),)
    with pytest.raises(ConfigError, match="FORMAT_NHWC, which needs 3 dims"):
        complete_config(nhwc, "m", flat, OUTPUTS)
