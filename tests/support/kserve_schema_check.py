"""Check KServe resources against KServe's own API types; print the problems as JSON.

kubernetes-validate has no schema for KServe's custom resources, but KServe's
Python package carries its API as generated model classes (field names in
``attribute_map``, types in ``openapi_types``, Kubernetes' own types from the
kubernetes client). Every field of a ServingRuntime or InferenceService must be
one of those, recursively, with a value of the declared kind: a misspelt or
misplaced field (``protocolVersion`` on a runtime) is reported.

Run from .venv-kserve by tests/test_deploy_manifests.py.
Usage: python kserve_schema_check.py RENDERED.yaml
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import kubernetes.client.models as kubernetes_models
import yaml
from kserve import models as kserve_models

ROOTS = {
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "V1alpha1ClusterServingRuntime",
    ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
}
SCALARS = {"str": str, "int": int, "bool": bool, "float": (int, float)}


def _class(name: str) -> Any:
    found = getattr(kserve_models, name, None) or getattr(kubernetes_models, name, None)
    if found is None:
        raise LookupError(f"no model class {name}")
    return found


def check(value: Any, type_name: str, where: str, problems: list[str]) -> None:
    type_name = type_name.strip()
    if list_of := re.fullmatch(r"(?:list|List)\[(.+)\]", type_name):
        if not isinstance(value, list):
            problems.append(f"{where}: expected a list")
            return
        for index, item in enumerate(value):
            check(item, list_of.group(1), f"{where}[{index}]", problems)
    elif dict_of := re.fullmatch(r"(?:dict\(str, |Dict\[str, )(.+)[)\]]", type_name):
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping")
            return
        for key, item in value.items():
            check(item, dict_of.group(1), f"{where}.{key}", problems)
    elif type_name in SCALARS:
        if not isinstance(value, SCALARS[type_name]):
            problems.append(f"{where}: expected {type_name}, got {value!r}")
    elif type_name in ("object", "datetime", "Quantity", "IntOrString"):
        return
    else:
        model = _class(type_name)
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a {type_name} mapping")
            return
        fields = {json_name: attr for attr, json_name in model.attribute_map.items()}
        for key, item in value.items():
            if key not in fields:
                problems.append(f"{where}: {type_name} has no field {key!r}")
            else:
                check(item, model.openapi_types[fields[key]], f"{where}.{key}", problems)


def main(path: str) -> int:
    problems: list[str] = []
    checked = []
    for document in yaml.safe_load_all(Path(path).read_text()):
        if not document:
            continue
        root = ROOTS.get((document.get("apiVersion"), document.get("kind")))
        if root is None:
            continue
        name = f"{document['kind']}/{document['metadata']['name']}"
        check(document, root, name, problems)
        checked.append(name)
    print(json.dumps({"checked": checked, "problems": problems}))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
