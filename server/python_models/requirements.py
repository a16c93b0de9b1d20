"""A Python model's extra packages: ``<model>/requirements.txt``, installed by the operator.

The server never installs anything (no network at load time, and a model
repository must not be able to change the server's environment). A model that
needs packages lists them, pip's format, in ``requirements.txt`` beside its
config.pbtxt, and the operator installs them where the model finds them,
before the server loads it, either

- into the model's own folder: ``pip install --target <repo>/<model>/site-packages
  -r <repo>/<model>/requirements.txt`` (the model's process puts that folder
  first on ``sys.path``; the server image has no pip and needs none), or
- into the server's environment, when building a derived image.

At load, every listed distribution must be installed (in either place) at a
version the line allows, else the model is UNAVAILABLE with the missing ones
named, instead of failing later inside ``initialize`` with an ImportError.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

from onnxserve.server.errors import ConfigError
from onnxserve.server.model_files import resolve_inside

REQUIREMENTS_FILENAME = "requirements.txt"
#: A model's own packages (``pip install --target``), first on its process's sys.path.
PACKAGES_FOLDER = "site-packages"


def _installed(name: str, paths: Sequence[str]) -> str | None:
    for distribution in metadata.distributions(name=name, path=[*paths, *sys.path]):
        return str(distribution.version)
    return None


def unmet_requirements(text: str, paths: Sequence[str] = ()) -> list[str]:
    """The lines of a requirements file that the installed distributions do not satisfy.

    ``paths``: folders searched before the server's own (a model's site-packages).
    """
    unmet = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-"):
            unmet.append(f"{line} (options are not read: list distributions only)")
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            unmet.append(f"{line} (not a requirement pip understands)")
            continue
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        installed = _installed(requirement.name, paths)
        if installed is None:
            unmet.append(f"{line} (not installed)")
            continue
        if requirement.specifier and not requirement.specifier.contains(
            installed, prereleases=True
        ):
            unmet.append(f"{line} ({installed} is installed)")
    return unmet


def check_requirements(model_folder: Path, model_name: str, root: Path) -> None:
    """Raise ConfigError naming what ``<model>/requirements.txt`` asks for and is missing.

    A ``site-packages`` folder of the model must stay inside the repository ``root``.
    """
    packages = model_folder / PACKAGES_FOLDER
    paths = []
    if packages.exists():
        if resolve_inside(packages, root) is None:
            raise ConfigError(
                f"model '{model_name}': {PACKAGES_FOLDER} leads outside the repository"
            )
        paths.append(str(packages))
    listing = model_folder / REQUIREMENTS_FILENAME
    if not listing.is_file():
        return
    unmet = unmet_requirements(listing.read_text(encoding="utf-8", errors="replace"), paths)
    if unmet:
        raise ConfigError(
            f"model '{model_name}': {REQUIREMENTS_FILENAME} asks for packages that are not "
            f"installed: {'; '.join(unmet)}. The server installs nothing; install them "
            f"(pip install --target {model_name}/{PACKAGES_FOLDER} -r "
            f"{model_name}/{REQUIREMENTS_FILENAME}) and load the model again"
        )
