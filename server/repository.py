"""Find models in a repository folder laid out as Triton lays it out.

``<repo>/<model>/config.pbtxt`` (optional) and ``<repo>/<model>/<version>/model.onnx``.
Everything read from the repository is confined to it: a model folder, version
folder or model file that is a symlink leading outside the repository is
refused, so a repository cannot be used to read arbitrary files.
"""

from __future__ import annotations

import logging
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
from onnxserve.server.config import load_config_file
from onnxserve.server.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class ModelSource:
    """A model folder: its declared config and the version files the policy selects.

    ``error`` is set when the folder is unusable; such a model is listed as
    UNAVAILABLE with the error as the reason instead of stopping the server.
    """

    name: str
    config: mc.ModelConfig = field(default_factory=mc.ModelConfig)
    versions: dict[int, Path] = field(default_factory=dict)
    error: str | None = None


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve(strict=True).relative_to(root)
    except (ValueError, OSError):
        return False
    return True


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


def scan_model(root: Path, name: str) -> ModelSource:
    """Read one model folder; never raises for a bad model, records the error instead."""
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
        filename = source.config.default_model_filename or MODEL_FILENAME
        available: dict[int, Path] = {}
        for version, entry in version_folders(folder).items():
            model_file = entry / filename
            if not model_file.is_file():
                log.warning("model '%s' version %d has no %s; skipped", name, version, filename)
                continue
            if not _inside(model_file, root):
                raise ConfigError(f"model '{name}' version {version} leads outside the repository")
            available[version] = model_file
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
    except ConfigError as exc:
        source.error = str(exc)
    return source


def scan_repository(root: Path) -> list[ModelSource]:
    """All model folders of a repository, in name order (hidden folders are ignored)."""
    root = root.resolve(strict=True)
    if not root.is_dir():
        raise NotADirectoryError(f"model repository {root} is not a directory")
    names = sorted(
        entry.name
        for entry in root.iterdir()
        if entry.is_dir() and not entry.name.startswith((".", "_"))
    )
    return [scan_model(root, name) for name in names]
