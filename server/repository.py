"""Find models in a repository folder laid out as Triton lays it out.

``<repo>/<model>/config.pbtxt`` (optional) and ``<repo>/<model>/<version>/model.onnx``.
Everything read from the repository is confined to it: a model folder, version
folder or model file that is a symlink leading outside the repository is
refused, so a repository cannot be used to read arbitrary files (external data
and checksums are checked at load time: onnxserve.server.model_files).
Entries that are not models are skipped and reported (:class:`Skipped`), and
reasons name files relative to the repository, never by the server's paths.

A scan is cheap (directory listings, config.pbtxt, file sizes and times), so
the repository poller can run one every few seconds; each version carries a
fingerprint of its files that changes when any of them does.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from onnxserve.layout import (
    CONFIG_FILENAME,
    MODEL_FILENAME,
    MODEL_NAME_RULE,
    is_valid_model_name,
    version_folders,
)
from onnxserve.protocol import model_config_pb2 as mc
from onnxserve.server.config import load_config_file, model_kind
from onnxserve.server.errors import ConfigError
from onnxserve.server.model_files import resolve_inside

# A Python model's file in its version folder (Triton's name).
PYTHON_MODEL_FILENAME = "model.py"

Fingerprint = tuple[tuple[str, int, int], ...]


@dataclass
class ModelSource:
    """A model folder: its declared config and the version files the policy selects.

    ``error`` is set when the folder is unusable; such a model is listed as
    UNAVAILABLE with the error as the reason instead of stopping the server.
    ``fingerprints``: per selected version, its files' names, sizes and
    modification times, config.pbtxt's included.
    """

    name: str
    config: mc.ModelConfig = field(default_factory=mc.ModelConfig)
    versions: dict[int, Path] = field(default_factory=dict)
    error: str | None = None
    fingerprints: dict[int, Fingerprint] = field(default_factory=dict)


@dataclass(frozen=True)
class Skipped:
    """An entry of the repository that is not served, and why (``entry`` is relative)."""

    entry: str
    why: str
    hidden: bool = False  # a dot or underscore name: skipped on purpose, worth less noise


@dataclass
class RepositoryScan:
    models: list[ModelSource]
    skipped: list[Skipped]


def _inside(path: Path, root: Path) -> bool:
    return resolve_inside(path, root) is not None


def select_versions(available: list[int], policy: mc.ModelVersionPolicy) -> list[int]:
    """Apply a version policy: latest(n) (default n=1), all, or specific."""
    ordered = sorted(available)
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return ordered
    if choice == "specific":
        wanted = set(policy.specific.versions)
        return [v for v in ordered if v in wanted]
    count = policy.latest.num_versions if choice == "latest" else 1
    return ordered[-max(count, 1) :]


def _stamp(path: Path, root: Path) -> tuple[str, int, int]:
    info = path.stat()
    return (path.relative_to(root).as_posix(), info.st_mtime_ns, info.st_size)


def _fingerprint(version_folder: Path, config_path: Path, root: Path) -> Fingerprint:
    """Names, times and sizes of config.pbtxt and every file under the version folder."""
    stamps = []
    if config_path.is_file():
        stamps.append(_stamp(config_path, root))
    for folder, _, files in os.walk(version_folder):
        stamps.extend(_stamp(Path(folder) / name, root) for name in files)
    return tuple(sorted(stamps))


def scan_model(root: Path, name: str, skipped: list[Skipped] | None = None) -> ModelSource:
    """Read one model folder; never raises for a bad model, records the error instead.

    Entries of the folder that look like misplaced versions are added to ``skipped``.
    """
    skipped = [] if skipped is None else skipped
    source = ModelSource(name=name)
    folder = root / name
    try:
        if not is_valid_model_name(name):
            raise ConfigError(
                f"model folder name '{name}' is not a valid model name ({MODEL_NAME_RULE})"
            )
        if not _inside(folder, root):
            raise ConfigError(f"model '{name}' leads outside the model repository")
        config_path = folder / CONFIG_FILENAME
        if config_path.exists():
            if not _inside(config_path, root):
                raise ConfigError(f"config.pbtxt of model '{name}' leads outside the repository")
            source.config = load_config_file(config_path, name)
        kind = model_kind(source.config)
        default = PYTHON_MODEL_FILENAME if kind == "python" else MODEL_FILENAME
        filename = source.config.default_model_filename or default
        available: dict[int, Path] = {}
        versions = version_folders(folder)
        _skip_non_versions(folder, set(versions.values()), filename, skipped)
        for version, entry in versions.items():
            if kind == "ensemble":  # an ensemble's version folder is empty, as in Triton
                available[version] = entry
                continue
            model_file = entry / filename
            if not model_file.is_file():
                skipped.append(Skipped(f"{name}/{version}", f"it has no {filename}"))
                continue
            if not _inside(model_file, root):
                raise ConfigError(f"model '{name}' version {version} leads outside the repository")
            available[version] = model_file
        if not available and kind == "ensemble":
            raise ConfigError(
                f"ensemble '{name}' has no version folder; create an empty {name}/1/ "
                "(Triton's layout)"
            )
        if not available:
            raise ConfigError(
                f"model '{name}' has no version folder with a {filename} "
                "(expected <model>/<version>/" + filename + ")"
            )
        chosen = select_versions(list(available), source.config.version_policy)
        if not chosen:
            raise ConfigError(
                f"model '{name}': the version policy selects none of the versions present "
                f"({', '.join(map(str, sorted(available)))})"
            )
        source.versions = {v: available[v] for v in chosen}
        source.fingerprints = {
            v: _fingerprint(
                available[v] if kind == "ensemble" else available[v].parent, config_path, root
            )
            for v in chosen
        }
    except ConfigError as exc:
        source.error = str(exc)
    except OSError as exc:  # a file vanished or became unreadable while being read
        source.error = f"model '{name}' could not be read: {exc.strerror or exc}"
    return source


def _skip_non_versions(
    folder: Path, versions: set[Path], filename: str, skipped: list[Skipped]
) -> None:
    """Report the folders of a model folder that are not version folders."""
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and entry not in versions:
            hidden = entry.name.startswith((".", "_"))
            why = "hidden" if hidden else "not a version folder (versions are positive integers)"
            skipped.append(Skipped(f"{folder.name}/{entry.name}", why, hidden))
        elif entry.name == filename and entry.is_file():
            skipped.append(
                Skipped(
                    f"{folder.name}/{entry.name}",
                    f"a {filename} belongs in a version folder: {folder.name}/1/{filename}",
                )
            )


def scan_repository(root: Path) -> RepositoryScan:
    """All model folders of a repository, in name order, and the entries skipped."""
    root = root.resolve(strict=True)
    if not root.is_dir():
        raise NotADirectoryError(f"model repository {root} is not a directory")
    names = []
    skipped: list[Skipped] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith((".", "_")):
            skipped.append(Skipped(entry.name, "hidden", hidden=True))
        elif not entry.is_dir():
            hint = (
                f": put it in <model>/1/{MODEL_FILENAME}"
                if entry.suffix == ".onnx"
                else " (a model is a folder <model>/<version>/model.onnx)"
            )
            skipped.append(Skipped(entry.name, f"a file, not a model folder{hint}"))
        else:
            names.append(entry.name)
    models = [scan_model(root, name, skipped) for name in names]
    return RepositoryScan(models, skipped)


def scan_one(root: Path, name: str) -> RepositoryScan:
    """One model folder of the repository (for an explicit load)."""
    root = root.resolve(strict=True)
    skipped: list[Skipped] = []
    if not (root / name).is_dir():
        return RepositoryScan([], skipped)
    return RepositoryScan([scan_model(root, name, skipped)], skipped)


# An absolute path in a message: a slash, then non-space characters without quotes.
_ABSOLUTE_PATH = re.compile(r"""(?<![\w.])/[^\s"'`,;:]+""")


def relative_reason(message: str, root: Path) -> str:
    """``message`` with the repository's paths made relative and any other path hidden.

    onnxruntime's errors name files by absolute path (its external-data check
    prints the path it resolved and the folder it allows); a caller of
    RepositoryIndex must learn what is wrong without learning the server's
    layout.
    """
    prefixes = {str(root.resolve()), str(root.absolute()), str(root)}
    for prefix in sorted(prefixes, key=len, reverse=True):
        message = message.replace(prefix + os.sep, "").replace(prefix, ".")
    return _ABSOLUTE_PATH.sub("<a path outside the repository>", message)
