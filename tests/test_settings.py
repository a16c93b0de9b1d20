"""Settings precedence: flags, then ONNXSERVE_* environment, then the TOML file, then defaults."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from onnxserve.server.settings import ServerSettings
from onnxserve.settings import SettingsError, add_arguments, resolve


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser, ServerSettings)
    return parser.parse_args(argv)


def test_flags_beat_environment_beat_file_beat_defaults(tmp_path: Path) -> None:
    config = tmp_path / "onnxserve.toml"
    config.write_text(
        '[serve]\nmodel_repository = "/from/file"\ngrpc_port = 9000\nhost = "10.0.0.1"\n'
        'device = "cpu"\n'
    )
    environ = {"ONNXSERVE_GRPC_PORT": "9100", "ONNXSERVE_HOST": "127.0.0.2"}
    settings = resolve(
        ServerSettings,
        _parse(["--grpc-port", "9200"]),
        environ=environ,
        config_file=config,
        section="serve",
    )
    assert settings.grpc_port == 9200  # flag
    assert settings.host == "127.0.0.2"  # environment
    assert settings.model_repository == Path("/from/file")  # file
    assert settings.device == "cpu"  # file
    assert settings.grace_period_s == 10.0  # default


def test_bad_values_name_their_source(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="ONNXSERVE_GRPC_PORT"):
        resolve(
            ServerSettings,
            _parse(["--model-repository", "x"]),
            environ={"ONNXSERVE_GRPC_PORT": "eighty"},
        )
    with pytest.raises(SettingsError, match="expected one of auto, cpu, cuda"):
        resolve(
            ServerSettings,
            _parse(["--model-repository", "x"]),
            environ={"ONNXSERVE_DEVICE": "tpu"},
        )
    config = tmp_path / "bad.toml"
    config.write_text("[serve]\ngrpc_prot = 1\n")
    with pytest.raises(SettingsError, match=r"unknown setting.*grpc_prot"):
        resolve(ServerSettings, _parse([]), environ={}, config_file=config, section="serve")


def test_missing_required_setting_names_the_flag() -> None:
    with pytest.raises(SettingsError, match="--model-repository"):
        resolve(ServerSettings, _parse([]), environ={})
