"""Settings: flags, then environment, then the TOML file, then defaults; names per subcommand.

The user's path is ``onnxserve <command> ...``: the checks run the real
parsers and read the errors a user reads.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from onnxserve.bench.settings import BenchSettings
from onnxserve.cli import main
from onnxserve.client.cli import InferSettings
from onnxserve.server.settings import ServerSettings
from onnxserve.settings import SECTIONS, SettingsError, add_arguments, env_name, resolve


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser, ServerSettings, section="serve")
    return parser.parse_args(argv)


def test_flags_beat_environment_beat_file_beat_defaults(tmp_path: Path) -> None:
    config = tmp_path / "onnxserve.toml"
    config.write_text(
        f'[serve]\nmodel_repository = "{tmp_path}"\ngrpc_port = 9000\nhost = "10.0.0.1"\n'
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
    assert settings.model_repository == tmp_path  # file
    assert settings.device == "cpu"  # file
    assert settings.grace_period_s == 10.0  # default


def test_bad_values_name_their_source(tmp_path: Path) -> None:
    args = _parse(["--model-repository", str(tmp_path)])
    with pytest.raises(SettingsError, match="ONNXSERVE_GRPC_PORT"):
        resolve(ServerSettings, args, environ={"ONNXSERVE_GRPC_PORT": "eighty"}, section="serve")
    with pytest.raises(SettingsError, match="expected one of auto, cpu, cuda"):
        resolve(ServerSettings, args, environ={"ONNXSERVE_DEVICE": "tpu"}, section="serve")
    config = tmp_path / "bad.toml"
    config.write_text("[serve]\ngrpc_prot = 1\n")
    with pytest.raises(SettingsError, match=r"unknown setting.*grpc_prot"):
        resolve(ServerSettings, args, environ={}, config_file=config, section="serve")
    config.write_text("[serve]\ngrpc_port = 1.5\n")
    with pytest.raises(SettingsError, match=r"grpc_port.*expected an integer"):
        resolve(ServerSettings, args, environ={}, config_file=config, section="serve")


def test_server_settings_check_themselves_naming_the_flag(tmp_path: Path) -> None:
    """One place validates serve's settings: the dataclass, whatever the source."""
    with pytest.raises(SettingsError, match=r"--model-repository.*is not a directory"):
        ServerSettings(model_repository=tmp_path / "nope")
    with pytest.raises(SettingsError, match="--workers must be at least 1"):
        resolve(
            ServerSettings,
            _parse(["--model-repository", str(tmp_path)]),
            environ={"ONNXSERVE_WORKERS": "0"},
            section="serve",
        )
    completed = subprocess.run(
        [sys.executable, "-m", "onnxserve", "serve", "--model-repository", str(tmp_path),
         "--workers", "0"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert completed.returncode == 2
    assert "onnxserve serve: error: --workers must be at least 1, not 0" in completed.stderr
    with pytest.raises(SettingsError, match="--cache-dir must be outside the model repository"):
        ServerSettings(model_repository=tmp_path, cache_dir=tmp_path / "engines")
    outside = tmp_path.parent / f"{tmp_path.name}-cache"
    assert ServerSettings(model_repository=tmp_path, cache_dir=outside).cache_dir == outside


def test_missing_required_settings_say_how_to_give_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SettingsError, match="missing --model-repository") as info:
        resolve(ServerSettings, _parse([]), environ={}, section="serve")
    assert "ONNXSERVE_MODEL_REPOSITORY" in str(info.value)
    # A positional setting is named as the argument it is, not as a flag.
    with pytest.raises(SystemExit) as exit_info:
        main(["infer", "--input", "x=[1]"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "missing the MODEL argument (or ONNXSERVE_INFER_MODEL, or model in [infer])" in err
    assert "--model" not in err


def test_each_subcommand_has_its_own_variables() -> None:
    """ONNXSERVE_INFER_MODEL names a model, ONNXSERVE_BENCH_TIMEOUT is the bench's deadline:
    no variable means two things. serve keeps ONNXSERVE_<FIELD> (operators' names)."""
    assert env_name("serve", "grpc_port") == "ONNXSERVE_GRPC_PORT"
    assert env_name("convert", "model") == "ONNXSERVE_CONVERT_MODEL"
    environ = {
        "ONNXSERVE_INFER_MODEL": "digits",
        "ONNXSERVE_INFER_TIMEOUT": "5",
        "ONNXSERVE_BENCH_MODEL": "sentiment",
        "ONNXSERVE_BENCH_TIMEOUT": "9",
        "ONNXSERVE_LOG_LEVEL": "DEBUG",  # serve's: the bench leaves it alone
    }
    infer = resolve(InferSettings, None, environ=environ, section="infer")
    bench = resolve(BenchSettings, None, environ=environ, section="bench")
    assert (infer.model, infer.timeout) == ("digits", 5.0)
    assert (bench.model, bench.timeout, bench.log_level) == ("sentiment", 9.0, "WARNING")


@pytest.mark.parametrize(
    ("command", "variable", "new"),
    [
        ("infer", "ONNXSERVE_MODEL", "ONNXSERVE_INFER_MODEL"),
        ("infer", "ONNXSERVE_URL", "ONNXSERVE_INFER_URL"),
        ("bench", "ONNXSERVE_TIMEOUT", "ONNXSERVE_BENCH_TIMEOUT"),
        ("bench", "ONNXSERVE_REPOSITORY", "ONNXSERVE_BENCH_REPOSITORY"),
        ("convert", "ONNXSERVE_SEED", "ONNXSERVE_CONVERT_SEED"),
    ],
)
def test_old_shared_spellings_are_refused_with_the_new_name(
    command: str, variable: str, new: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, "1")
    argv = {"infer": ["infer", "m", "--input", "x=[1]"], "bench": ["bench", "m"]}
    argv["convert"] = ["convert", "m.keras", "--repository", "r", "--name", "n"]
    code = subprocess.run(
        [sys.executable, "-m", "onnxserve", *argv[command]],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert code.returncode == 2
    assert f"{variable} is no longer read: onnxserve {command} reads {new}" in code.stderr


def test_unknown_variables_of_a_subcommand_prefix_are_named() -> None:
    with pytest.raises(SettingsError, match="ONNXSERVE_INFER_URLS is not a setting"):
        resolve(InferSettings, None, environ={"ONNXSERVE_INFER_URLS": "x"}, section="infer")


def test_the_help_shows_each_subcommand_s_variables_and_plain_defaults() -> None:
    bench = subprocess.run(
        [sys.executable, "-m", "onnxserve", "bench", "--help"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    flat = " ".join(bench.split())
    assert "(default: 1,8,64) [env: ONNXSERVE_BENCH_CONCURRENCY]" in flat
    assert "(1, 8, 64)" not in flat and "(default: ())" not in flat
    shown = {
        "serve": "ONNXSERVE_GRPC_PORT",
        "convert": "ONNXSERVE_CONVERT_MODEL",
        "infer": "ONNXSERVE_INFER_MODEL",
        "bench": "ONNXSERVE_BENCH_MODEL",
        "explain": "ONNXSERVE_EXPLAIN_MODEL",
        "models": "ONNXSERVE_MODELS_URL",
        "describe": "ONNXSERVE_DESCRIBE_MODEL",
    }
    assert set(shown) == set(SECTIONS)
    for section, variable in shown.items():
        text = subprocess.run(
            [sys.executable, "-m", "onnxserve", section, "--help"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
        assert f"[env: {variable}]" in " ".join(text.split())


def test_toml_tables_keys_and_relative_paths(tmp_path: Path) -> None:
    """Keys outside a table, unknown tables and unknown keys name the key; relative paths
    are the file's, not the working directory's."""
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "models").mkdir()
    config = folder / "onnxserve.toml"
    config.write_text(
        '[serve]\nmodel-repository = "models"\n\n'
        '[bench]\nmodel = "m"\nrepository = "models"\ninput-data = "ids.npz"\n'
        'json = "/abs/out.json"\n\n[infer]\nmodel = "m"\nsave-dir = "out"\n'
    )
    serve = resolve(ServerSettings, None, environ={}, config_file=config, section="serve")
    assert serve.model_repository == folder / "models"
    bench = resolve(BenchSettings, None, environ={}, config_file=config, section="bench")
    assert bench.repository == folder / "models"
    assert bench.input_data == str(folder / "ids.npz")
    assert bench.json == Path("/abs/out.json")
    infer = resolve(InferSettings, None, environ={}, config_file=config, section="infer")
    assert infer.save_dir == folder / "out"
    config.write_text('[bench]\nmodel = "m"\ninput-data = "random"\n')
    bench = resolve(BenchSettings, None, environ={}, config_file=config, section="bench")
    assert bench.input_data == "random"  # a keyword, not a file

    for text, words in (
        ('grpc_port = 9001\n[serve]\nmodel_repository = "models"\n', "'grpc_port' is outside"),
        ('[server]\nmodel_repository = "models"\n', r"unknown table \[server\]"),
        ("[serve]\nmodel_repository = 'models'\nport = 1\n", r"unknown setting.*\[serve\]: port"),
        ("[serve]\nmodel-repository = 'a'\nmodel_repository = 'b'\n", "twice"),
    ):
        config.write_text(text)
        with pytest.raises(SettingsError, match=words):
            resolve(ServerSettings, None, environ={}, config_file=config, section="serve")


def test_the_readme_s_toml_example_is_valid(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text("utf-8")
    block = readme[readme.index("```toml\n") + len("```toml\n") :]
    config = tmp_path / "onnxserve.toml"
    config.write_text(block[: block.index("```")], "utf-8")
    (tmp_path / "models").mkdir()
    serve = resolve(ServerSettings, None, environ={}, config_file=config, section="serve")
    assert (serve.model_repository, serve.grpc_port) == (tmp_path / "models", 9001)
    infer_args = argparse.Namespace(model="m")
    infer = resolve(InferSettings, infer_args, environ={}, config_file=config, section="infer")
    assert infer.url == "127.0.0.1:9001"
    bench = resolve(BenchSettings, infer_args, environ={}, config_file=config, section="bench")
    assert bench.concurrency == (1, 8, 64)


def test_operations_settings_check_themselves_naming_the_flag(tmp_path: Path) -> None:
    pem = tmp_path / "x.pem"
    pem.write_text("not checked here")
    repository = ["--model-repository", str(tmp_path)]
    for argv, message in (
        (["--tls-cert", str(pem)], "TLS needs both --tls-cert and --tls-key"),
        (["--tls-client-ca", str(pem)], r"--tls-client-ca \(mutual TLS\) needs --tls-cert"),
        (["--auth-token-file", str(tmp_path / "nope")], "--auth-token-file: .* is not a readable"),
        (["--metrics-port", "8001"], "--grpc-port, --http-port, --metrics-port and --health-port"),
        (["--http-port", "8002"], "--grpc-port, --http-port, --metrics-port and --health-port"),
        (["--http-port", "-1"], "--http-port must be a port number"),
        (["--metrics-port", "70000"], "--metrics-port must be a port number"),
        (["--load-model", "a"], "--load-model needs --model-control-mode explicit"),
        (
            ["--model-control-mode", "explicit", "--workers", "2"],
            "--model-control-mode explicit needs --workers 1",
        ),
        (["--max-concurrent-rpcs", "-1"], "--max-concurrent-rpcs must not be negative"),
        (["--repository-poll-secs", "0"], "--repository-poll-secs must be positive"),
        (["--workers", "0"], "--workers must be at least 1"),
    ):
        with pytest.raises(SettingsError, match=message):
            resolve(ServerSettings, _parse([*repository, *argv]), environ={}, section="serve")
    settings = resolve(
        ServerSettings,
        _parse([*repository, "--model-control-mode", "explicit", "--load-model", "a,b"]),
        environ={"ONNXSERVE_METRICS_PORT": "0", "ONNXSERVE_LOG_FORMAT": "json"},
        section="serve",
    )
    assert settings.load_model == ("a", "b")
    assert settings.metrics_port == 0 and settings.log_format == "json"
