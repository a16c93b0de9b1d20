"""deploy/ as the tests read it: where things are, the settings file, Dockerfile instructions.

Facts that the images and manifests state (the settings file, the entrypoint,
the user, what the build stage copies) are read from the files themselves, so
that a test checks what a user deploys rather than a copy of it.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKER = DEPLOY / "docker"
KUBERNETES = DEPLOY / "kubernetes"
INSTALL_SCRIPT = DOCKER / "install.sh"
CONSTRAINTS = DOCKER / "constraints.txt"
SETTINGS_FILE = KUBERNETES / "base" / "onnxserve.toml"
DOCKERFILES = {"cpu": DOCKER / "Dockerfile", "gpu": DOCKER / "Dockerfile.gpu"}
# The model image (a repository at /models, for overlays/modelcar).
MODELS_DOCKERFILE = DOCKER / "Dockerfile.models"
FILL_SCRIPT = KUBERNETES / "fill-models.sh"
KUSTOMIZATIONS = sorted(
    str(p.parent.relative_to(KUBERNETES)) for p in KUBERNETES.rglob("kustomization.yaml")
)
# What the Dockerfiles' .dockerignore files keep out of the build context: caches,
# environments, and the native front end's build folder and locally built module.
_IGNORED_NAMES = shutil.ignore_patterns(
    "__pycache__", "*.pyc", "*.egg-info", ".venv*", "_native*.so"
)


def _ignored(directory: str, names: list[str]) -> set[str]:
    """shutil.copytree's ignore: the names above anywhere, and native/target."""
    ignored = set(_IGNORED_NAMES(directory, names))
    if Path(directory).resolve() == (ROOT / "native").resolve() and "target" in names:
        ignored.add("target")
    return ignored


def pyproject() -> dict[str, Any]:
    """The project's pyproject.toml."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def serve_settings() -> dict[str, Any]:
    """The [serve] table of the ConfigMap's settings file."""
    with open(SETTINGS_FILE, "rb") as handle:
        return dict(tomllib.load(handle)["serve"])


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined, in its stage."""

    stage: int
    keyword: str
    arguments: str

    def exec_form(self) -> list[str]:
        """The JSON (exec) form's list, as ENTRYPOINT and CMD should be written."""
        value = json.loads(self.arguments)
        assert isinstance(value, list), f"{self.keyword} is not in exec form: {self.arguments}"
        return [str(v) for v in value]


def instructions(dockerfile: Path) -> list[Instruction]:
    """The instructions of ``dockerfile``; stage 0 is the first FROM's."""
    result: list[Instruction] = []
    stage = -1
    pending = ""
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, arguments = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        result.append(Instruction(stage, keyword, arguments.strip()))
    return result


def last(dockerfile: Path, keyword: str) -> Instruction:
    """The last instruction of a kind (the one that counts for ENTRYPOINT, CMD, USER)."""
    found = [i for i in instructions(dockerfile) if i.keyword == keyword]
    assert found, f"{dockerfile.name} has no {keyword}"
    return found[-1]


def stage_build_context(dockerfile: Path, destination: Path) -> Path:
    """Copy what the build stage's COPY lines copy from the repository into ``destination``.

    Returns the build stage's WORKDIR inside ``destination``: running the
    install script there sees exactly the files the image build sees, so a
    package the Dockerfile forgets to copy breaks the test too.
    """
    workdir = Path("/")
    copies: list[tuple[list[str], str]] = []
    for instruction in instructions(dockerfile):
        if instruction.stage != 0:
            continue
        if instruction.keyword == "WORKDIR":
            workdir = workdir / instruction.arguments
        elif instruction.keyword == "COPY":
            words = shlex.split(instruction.arguments)
            assert not any(w.startswith("--") for w in words), "build-stage COPY flags"
            copies.append((words[:-1], words[-1]))
    root = destination / workdir.relative_to("/")
    root.mkdir(parents=True, exist_ok=True)
    # Docker's rules: a directory's contents go into the target; files go
    # into a target ending in / (or given with other sources), else become it.
    for sources, target in copies:
        for source in sources:
            origin = ROOT / source
            dest = root / target
            if origin.is_dir():
                shutil.copytree(origin, dest, ignore=_ignored, dirs_exist_ok=True)
            elif target.endswith("/") or len(sources) > 1:
                dest.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, dest / origin.name)
            else:
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, dest)
    return root


def pinned_versions() -> dict[str, str]:
    """constraints.txt as {normalised name: version}."""
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[normalise(name)] = version.strip()
    return pins


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return name.lower().replace("_", "-").replace(".", "-")
