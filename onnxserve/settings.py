"""Layered settings: command-line flags, then environment variables, then a TOML file.

Every subcommand describes its settings as a dataclass whose fields carry their
help text in ``metadata["help"]`` and which validates itself in
``__post_init__`` (raising :class:`SettingsError` that names the flag).
:func:`add_arguments` turns the fields into flags (defaulting to "not given"),
and :func:`resolve` picks each value from the first source that has it: flag,
environment variable, the subcommand's table of the TOML file given by
``--config``, then the field's default. Values from the environment and the
file are converted to the field's type, and a bad value is an error that names
its source.

Names, per subcommand (:data:`SECTIONS`): ``serve`` reads
``ONNXSERVE_<FIELD>`` (``ONNXSERVE_GRPC_PORT``; the names operators and the
Kubernetes manifests use), every other subcommand ``ONNXSERVE_<COMMAND>_<FIELD>``
(``ONNXSERVE_INFER_MODEL`` is a model name, ``ONNXSERVE_CONVERT_MODEL`` a Keras
file), so no variable means two things. The old shared spelling
``ONNXSERVE_<FIELD>`` of a field of ``convert``, ``infer`` or ``bench`` is
refused with the new name, except where it is one of ``serve``'s own variables
(``ONNXSERVE_LOG_LEVEL``), which belong to ``serve`` and are left to it.

The TOML file holds one table per subcommand (``[serve]``, ``[convert]``,
``[infer]``, ``[bench]``, ``[explain]``) whose keys are the flags' names without the dashes in
front (``grpc-port`` or ``grpc_port``). A key outside a table, an unknown table
and an unknown key of the subcommand's table are errors that name the key.
Relative paths in the file are relative to the file's folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "ENV_PREFIX",
    "SECTIONS",
    "LogLevel",
    "SettingsError",
    "add_arguments",
    "env_name",
    "flag_name",
    "resolve",
]

ENV_PREFIX = "ONNXSERVE_"
#: The subcommands that read settings: each one's TOML table and environment prefix.
SECTIONS: dict[str, str] = {
    "serve": ENV_PREFIX,
    "convert": ENV_PREFIX + "CONVERT_",
    "infer": ENV_PREFIX + "INFER_",
    "bench": ENV_PREFIX + "BENCH_",
    "explain": ENV_PREFIX + "EXPLAIN_",
    "models": ENV_PREFIX + "MODELS_",
    "describe": ENV_PREFIX + "DESCRIBE_",
}
#: The log levels every subcommand offers.
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]

T = TypeVar("T")
_NOT_GIVEN = None
# Where add_arguments leaves the names of positional fields for resolve's messages.
_POSITIONAL = "_settings_positional"


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names its source."""


def _section_prefix(section: str) -> str:
    try:
        return SECTIONS[section]
    except KeyError:
        raise ValueError(f"unknown settings section {section!r}") from None


def env_name(section: str, field_name: str) -> str:
    """The environment variable of a field: ``("infer", "url")`` -> ``ONNXSERVE_INFER_URL``."""
    return _section_prefix(section) + field_name.upper()


def flag_name(field_name: str) -> str:
    """``model_repository`` -> ``--model-repository``."""
    return "--" + field_name.replace("_", "-")


def _base_type(annotation: Any) -> Any:
    """Strip ``X | None`` / Optional to X."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _base_type(args[0])
    return annotation


def _convert(value: Any, annotation: Any, source: str, name: str) -> Any:
    base = _base_type(annotation)
    origin = typing.get_origin(base)
    try:
        if origin is typing.Literal:
            choices = typing.get_args(base)
            text = str(value)
            if text not in choices:
                raise ValueError(f"expected one of {', '.join(map(str, choices))}")
            return text
        if origin in (list, tuple):
            (item_type, *_) = typing.get_args(base) or (str,)
            items = value if isinstance(value, (list, tuple)) else str(value).split(",")
            converted = [_convert(i, item_type, source, name) for i in items if str(i).strip()]
            return tuple(converted) if origin is tuple else converted
        if base is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if base in (int, float) and isinstance(value, bool):
            raise ValueError("expected a number")
        if base is int and isinstance(value, float):
            raise ValueError("expected an integer")
        if base in (int, float, str):
            return base(value)
        if base is Path:
            return Path(str(value))
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"{name} from {source}: {value!r} is not valid ({exc})") from None
    return value


def _show_default(value: Any) -> str | None:
    """A default as the user would type it (``1,8,64``, not ``(1, 8, 64)``); None: not shown."""
    if value is None or value == "" or value == () or isinstance(value, bool):
        return None
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return str(value)


def add_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    positional: tuple[str, ...] = (),
    section: str | None = None,
) -> None:
    """Add one flag per dataclass field (``model_repository`` -> ``--model-repository``).

    ``section`` names the subcommand (for the environment variables the help
    shows); by default it is the subparser's own name (``onnxserve infer`` ->
    ``infer``). Fields named in ``positional`` become optional positional
    arguments (their value may also come from the environment or the file).
    """
    section = section or parser.prog.rsplit(maxsplit=1)[-1]
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        help_text = field.metadata.get("help", "")
        default = field.default if field.default is not dataclasses.MISSING else None
        shown = _show_default(default)
        if shown is not None:
            help_text += f" (default: {shown})"
        help_text += f" [env: {env_name(section, field.name)}]"
        base = _base_type(hints[field.name])
        kwargs: dict[str, Any] = {"help": help_text, "default": _NOT_GIVEN}
        if typing.get_origin(base) is typing.Literal:
            kwargs["choices"] = typing.get_args(base)
        if field.metadata.get("metavar"):
            kwargs["metavar"] = field.metadata["metavar"]
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        if field.name in positional:
            kwargs["nargs"] = "?"
            parser.add_argument(field.name, **kwargs)
        else:
            parser.add_argument(flag_name(field.name), dest=field.name, **kwargs)
    parser.set_defaults(**{_POSITIONAL: tuple(positional)})


def _file_table(path: Path, section: str) -> dict[str, Any]:
    """The ``[section]`` table of a TOML file, keys with underscores; checks the file's shape."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise SettingsError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None
    tables = ", ".join(f"[{name}]" for name in SECTIONS)
    for key, value in data.items():
        if key in SECTIONS and isinstance(value, dict):
            continue
        if key in SECTIONS:
            raise SettingsError(f"config file {path}: [{key}] must be a table")
        if isinstance(value, dict):
            raise SettingsError(
                f"config file {path}: unknown table [{key}]; the tables are {tables}"
            )
        raise SettingsError(
            f"config file {path}: '{key}' is outside a table; put it in one of {tables}"
        )
    table: dict[str, Any] = {}
    for key, value in data.get(section, {}).items():
        name = key.replace("-", "_")
        if name in table:
            raise SettingsError(f"config file {path}: [{section}] gives '{key}' twice")
        table[name] = value
    return table


def _relative_to(folder: Path, value: Any, annotation: Any, metadata: Mapping[str, Any]) -> Any:
    """A path value from the file, made relative to the file's folder."""
    is_path = _base_type(annotation) is Path or metadata.get("path", False)
    if not is_path or not isinstance(value, str) or value in metadata.get("keywords", ()):
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else folder / path)


def _serve_variables() -> set[str]:
    """``onnxserve serve``'s environment variables (imported late: no cycle)."""
    from onnxserve.server.settings import ServerSettings

    return {env_name("serve", f.name) for f in dataclasses.fields(ServerSettings)}


def _check_environment(cls: type, environ: Mapping[str, str], section: str) -> None:
    """Refuse old spellings and unknown names of a subcommand's own prefix."""
    if section == "serve":
        return
    prefix = _section_prefix(section)
    names = {f.name for f in dataclasses.fields(cls)}
    for variable in sorted(environ):
        if variable.startswith(prefix) and variable[len(prefix) :].lower() not in names:
            raise SettingsError(
                f"{variable} is not a setting of onnxserve {section} (see onnxserve {section} "
                "--help for the [env: ...] names)"
            )
    old = {ENV_PREFIX + name.upper(): name for name in names}
    given = [variable for variable in old if variable in environ]
    if not given:
        return
    serve = _serve_variables()
    for variable in sorted(given):
        if variable not in serve:
            raise SettingsError(
                f"{variable} is no longer read: onnxserve {section} reads "
                f"{env_name(section, old[variable])} (each subcommand has its own prefix, "
                f"{prefix}; ONNXSERVE_<NAME> alone is onnxserve serve's)"
            )


def _missing(
    cls: type, values: Mapping[str, Any], args: argparse.Namespace | None, section: str
) -> str:
    positional = getattr(args, _POSITIONAL, ()) if args is not None else ()
    parts = []
    for field in dataclasses.fields(cls):
        if (
            field.name in values
            or field.default is not dataclasses.MISSING
            or field.default_factory is not dataclasses.MISSING
        ):
            continue
        if field.name in positional:
            given = f"the {field.metadata.get('metavar', field.name.upper())} argument"
        else:
            given = flag_name(field.name)
        parts.append(
            f"{given} (or {env_name(section, field.name)}, or {field.name} in [{section}])"
        )
    return "missing " + "; ".join(parts)


def resolve(
    cls: type[T],
    args: argparse.Namespace | None = None,
    *,
    section: str,
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> T:
    """Build the settings object from flags > environment > file > defaults.

    The object validates itself; its SettingsError names the flag.
    """
    environ = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    _check_environment(cls, environ, section)
    file_values = _file_table(config_file, section) if config_file is not None else {}
    unknown = sorted(set(file_values) - names)
    if unknown:
        raise SettingsError(
            f"config file {config_file}: unknown setting(s) in [{section}]: {', '.join(unknown)}"
        )
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        flag = getattr(args, field.name, _NOT_GIVEN) if args is not None else _NOT_GIVEN
        variable = env_name(section, field.name)
        if flag is not _NOT_GIVEN:
            values[field.name] = _convert(flag, hints[field.name], "the command line", field.name)
        elif variable in environ:
            values[field.name] = _convert(
                environ[variable], hints[field.name], variable, field.name
            )
        elif field.name in file_values:
            assert config_file is not None
            value = _relative_to(
                config_file.parent, file_values[field.name], hints[field.name], field.metadata
            )
            values[field.name] = _convert(value, hints[field.name], str(config_file), field.name)
    if any(
        f.name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        for f in dataclasses.fields(cls)
    ):
        raise SettingsError(_missing(cls, values, args, section))
    return cls(**values)
