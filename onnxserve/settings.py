"""Layered settings: command-line flags, then ONNXSERVE_* environment, then a file.

Every subcommand describes its settings as a dataclass whose fields carry their
help text in ``metadata["help"]``. :func:`add_arguments` turns the fields into
flags (defaulting to "not given"), and :func:`resolve` picks each value from
the first source that has it: flag, environment variable
``ONNXSERVE_<FIELD_NAME>``, the TOML file given by ``--config`` (its
``[<section>]`` table or top level), then the field's default. Values from the
environment and the file are converted to the field's type, and a bad value is
an error that names its source.
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
from typing import Any, TypeVar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["ENV_PREFIX", "SettingsError", "add_arguments", "resolve"]

ENV_PREFIX = "ONNXSERVE_"
T = TypeVar("T")
_NOT_GIVEN = None


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names its source."""


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


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
        if base in (int, float, str):
            return base(value)
        if base is Path:
            return Path(str(value))
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"{name} from {source}: {value!r} is not valid ({exc})") from None
    return value


def add_arguments(
    parser: argparse.ArgumentParser, cls: type, *, positional: tuple[str, ...] = ()
) -> None:
    """Add one flag per dataclass field (``model_repository`` -> ``--model-repository``)."""
    hints = _field_types(cls)
    for field in dataclasses.fields(cls):
        help_text = field.metadata.get("help", "")
        default = field.default if field.default is not dataclasses.MISSING else None
        if default is not None and default != "" and not isinstance(default, bool):
            help_text += f" (default: {default})"
        help_text += f" [env: {ENV_PREFIX}{field.name.upper()}]"
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
            parser.add_argument("--" + field.name.replace("_", "-"), dest=field.name, **kwargs)


def _file_values(path: Path | None, section: str) -> Mapping[str, Any]:
    if path is None:
        return {}
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise SettingsError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None
    table = data.get(section, data)
    if not isinstance(table, dict):
        raise SettingsError(f"config file {path}: [{section}] must be a table")
    return {k.replace("-", "_"): v for k, v in table.items()}


def resolve(
    cls: type[T],
    args: argparse.Namespace | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
    section: str = "",
) -> T:
    """Build the settings object from flags > environment > file > defaults."""
    environ = os.environ if environ is None else environ
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    file_values = _file_values(config_file, section)
    unknown = sorted(set(file_values) - names)
    if unknown and section:
        raise SettingsError(
            f"config file {config_file}: unknown setting(s) in [{section}]: {', '.join(unknown)}"
        )
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        flag = getattr(args, field.name, _NOT_GIVEN) if args is not None else _NOT_GIVEN
        env_name = ENV_PREFIX + field.name.upper()
        if flag is not _NOT_GIVEN:
            values[field.name] = _convert(flag, hints[field.name], "the command line", field.name)
        elif env_name in environ:
            values[field.name] = _convert(
                environ[env_name], hints[field.name], env_name, field.name
            )
        elif field.name in file_values:
            values[field.name] = _convert(
                file_values[field.name], hints[field.name], str(config_file), field.name
            )
    try:
        return cls(**values)
    except TypeError as exc:
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in values
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            flags = ", ".join("--" + m.replace("_", "-") for m in missing)
            raise SettingsError(f"missing required setting(s): {flags}") from None
        raise SettingsError(str(exc)) from None
