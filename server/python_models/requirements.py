"""A Python model's extra packages: ``<model>/requirements.txt``, installed by the operator.

The server never installs anything (no network at load time, and a model
repository must not be able to change the server's environment). A model that
needs packages lists them, pip's format, in ``requirements.txt`` beside its
config.pbtxt; the operator installs them into the server's environment when
building the image (``pip install -r <repo>/<model>/requirements.txt``). At
load, every listed distribution must be installed at a version the line
allows, else the model is UNAVAILABLE with the missing ones named, instead of
failing later inside ``initialize`` with an ImportError.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

from onnxserve.server.errors import ConfigError

REQUIREMENTS_FILENAME = "requirements.txt"


def unmet_requirements(text: str) -> list[str]:
    """The lines of a requirements file that the installed distributions do not satisfy."""
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
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            unmet.append(f"{line} (not installed)")
            continue
        if requirement.specifier and not requirement.specifier.contains(
            installed, prereleases=True
        ):
            unmet.append(f"{line} ({installed} is installed)")
    return unmet


def check_requirements(model_folder: Path, model_name: str) -> None:
    """Raise ConfigError naming what ``<model>/requirements.txt`` asks for and is missing."""
    listing = model_folder / REQUIREMENTS_FILENAME
    if not listing.is_file():
        return
    unmet = unmet_requirements(listing.read_text(encoding="utf-8", errors="replace"))
    if unmet:
        raise ConfigError(
            f"model '{model_name}': {REQUIREMENTS_FILENAME} asks for packages this server's "
            f"environment lacks: {'; '.join(unmet)}. The server installs nothing; install them "
            f"into its environment (pip install -r {model_name}/{REQUIREMENTS_FILENAME}) and "
            "load the model again"
        )
