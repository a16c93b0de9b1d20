"""deploy/'s Kubernetes manifests and Dockerfiles, checked offline with the tools users run.

Every kustomization is rendered with ``kubectl kustomize``; the output is
validated with ``kubernetes-validate --strict`` against a pinned Kubernetes
version and scanned with ``checkov --framework kubernetes`` (no failed check;
every skip carries its reason in an annotation on the resource); every
Dockerfile is linted with hadolint at error level. The tools come from PyPI
into their own environment (tests/support/deploy_tools.py): a tool that cannot
be installed makes its tests skip with the reason, never pass.

Then the rendered objects are read for what a deployment depends on: ports,
probes and paths agree with the settings file; drain timing; the
autoscaler's metric is the one the adapter rule provides; the GPU overlay
asks for a GPU.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from onnxserve.server.app import INFERENCE_SERVICE
from tests.support import deploy, kserve_env
from tests.support.deploy_tools import ENVIRONMENT as TOOLS

SUPPORT = Path(__file__).parent / "support"
# The oldest Kubernetes the manifests claim: native gRPC probes are GA since
# 1.27, the preStop sleep action is on by default since 1.30.
KUBERNETES_VERSION = "1.31.0"
# Kinds that kubernetes-validate has no schema for (it skips them with a
# warning); test_kserve_resources_match_kserves_types checks these.
CUSTOM_KINDS = {"ServingRuntime", "InferenceService"}


@pytest.fixture(scope="session")
def tools() -> Path:
    """The tools' environment; skipped, with pip's reason, when it cannot be installed."""
    try:
        TOOLS.ensure()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"the deploy tools could not be installed: {str(exc.stderr)[-2000:]}")
    return TOOLS.path


def _tool(tools: Path, name: str) -> str:
    path = TOOLS.bin(name)
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is in neither {tools} nor PATH")
    return found


@pytest.fixture(scope="session")
def rendered(tools: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each kustomization rendered once, to a file."""
    kubectl = _tool(tools, "kubectl")
    folder = tmp_path_factory.mktemp("rendered")
    files = {}
    for name in deploy.KUSTOMIZATIONS:
        done = subprocess.run(
            [kubectl, "kustomize", str(deploy.KUBERNETES / name)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, f"kubectl kustomize {name}:\n{done.stderr}"
        files[name] = folder / (name.replace("/", "_") + ".yaml")
        files[name].write_text(done.stdout)
    return files


def _objects(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return _one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def test_every_folder_with_manifests_is_a_kustomization() -> None:
    assert set(deploy.KUSTOMIZATIONS) >= {
        "base", "overlays/cpu", "overlays/gpu", "overlays/local", "overlays/modelcar",
        "models-filler", "prometheus-adapter", "kserve",
    }  # fmt: skip


@pytest.mark.parametrize("name", deploy.KUSTOMIZATIONS)
def test_kubernetes_validate_strict(name: str, rendered: dict[str, Path], tools: Path) -> None:
    done = subprocess.run(
        [_tool(tools, "kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION,
         str(rendered[name])],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    objects = _objects(rendered[name])
    built_in = [o for o in objects if o["kind"] not in CUSTOM_KINDS]
    assert output.count(" passed for resource ") == len(built_in), output
    for obj in objects:
        if obj["kind"] in CUSTOM_KINDS:
            assert f"Couldn't find schema for kind {obj['kind']}" in output


@pytest.mark.parametrize("name", deploy.KUSTOMIZATIONS)
def test_checkov_finds_nothing(name: str, rendered: dict[str, Path], tools: Path) -> None:
    done = subprocess.run(
        [_tool(tools, "checkov"), "--framework", "kubernetes", "--skip-download",
         "--output", "json", "--quiet", "--file", str(rendered[name])],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr
    report = json.loads(done.stdout) if done.stdout.strip() else {}
    # checkov prints one report, or a list of them, or (no check applies to
    # the kinds given, as for KServe's) an empty summary.
    reports = report if isinstance(report, list) else [report]
    failed = [c for r in reports for c in r.get("results", {}).get("failed_checks", [])]
    skipped = [c for r in reports for c in r.get("results", {}).get("skipped_checks", [])]
    passed = sum(r.get("summary", {}).get("passed", 0) for r in reports)
    assert not failed, [(c["check_id"], c["check_name"], c["resource"]) for c in failed]
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr
    for check in skipped:
        reason = (check.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason) > 20, f"{check['check_id']} is skipped without a reason"
    if any(o["kind"] == "Deployment" for o in _objects(rendered[name])):
        assert passed > 50, f"checkov ran only {passed} checks"


@pytest.mark.parametrize("variant", [*sorted(deploy.DOCKERFILES), "models"])
def test_hadolint_finds_no_error(variant: str, tools: Path) -> None:
    dockerfile = deploy.DOCKERFILES.get(variant, deploy.MODELS_DOCKERFILE)
    done = subprocess.run(
        [_tool(tools, "hadolint"), "--failure-threshold", "error", str(dockerfile)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("variant", sorted(deploy.DOCKERFILES))
def test_dockerfiles_agree_with_the_manifests(variant: str) -> None:
    dockerfile = deploy.DOCKERFILES[variant]
    steps = deploy.instructions(dockerfile)
    settings = deploy.serve_settings()
    # Both stages on one pinned base (the venv records its interpreter's path).
    (base_arg,) = [s for s in steps if s.keyword == "ARG" and s.arguments.startswith("BASE_IMAGE=")]
    base = base_arg.arguments.split("=", 1)[1]
    assert re.fullmatch(r"[\w./-]+:\d[\w.-]*(@sha256:[0-9a-f]{64})?", base), base
    assert [s.arguments.split()[0] for s in steps if s.keyword == "FROM"] == ["${BASE_IMAGE}"] * 2
    assert deploy.last(dockerfile, "ENTRYPOINT").exec_form() == ["onnxserve", "serve"]
    cmd = deploy.last(dockerfile, "CMD").exec_form()
    assert cmd == ["--model-repository", settings["model_repository"]]
    assert re.fullmatch(r"\d+:\d+", deploy.last(dockerfile, "USER").arguments)
    exposed = deploy.last(dockerfile, "EXPOSE").arguments.split()
    for key in ("http_port", "grpc_port", "metrics_port"):
        assert str(settings[key]) in exposed, f"{dockerfile.name} does not EXPOSE {key}"
    # Every RUN is the install script.
    for run in (s for s in steps if s.keyword == "RUN"):
        commands = re.sub(r"--mount=\S+", "", run.arguments).split("&&")
        assert all(c.split()[0].endswith("install.sh") for c in commands), run.arguments
    assert f" {variant}" in " ".join(s.arguments for s in steps if s.keyword == "RUN")
    # The build stage copies every folder the wheel is built from (the CPU
    # image's install test builds from these copies; this covers the GPU one).
    copied = {
        word.rstrip("/")
        for s in steps
        if s.stage == 0 and s.keyword == "COPY"
        for word in s.arguments.split()[:-1]
    }
    package_dirs = set(deploy.pyproject()["tool"]["setuptools"]["package-dir"].values())
    assert package_dirs <= copied, f"{dockerfile.name} does not copy {package_dirs - copied}"
    # The native front end: its crate, the .proto files its build.rs reads, setup.py
    # that builds it; Rust in the build stage only (the final stage has no compiler).
    assert {"setup.py", "native", "proto"} <= copied, f"{dockerfile.name}: {sorted(copied)}"
    runs = [s for s in steps if s.keyword == "RUN"]
    assert any("install.sh rust" in s.arguments for s in runs if s.stage == 0)
    assert not any("install.sh rust" in s.arguments for s in runs if s.stage == 1)
    ignored = (dockerfile.parent / f"{dockerfile.name}.dockerignore").read_text().splitlines()
    assert "native/target" in ignored and "onnxserve/_native*.so" in ignored


def test_the_deployment_follows_the_settings_file(rendered: dict[str, Path]) -> None:
    objects = _objects(rendered["overlays/cpu"])
    settings = deploy.serve_settings()
    configmap = _one(objects, "ConfigMap")
    assert configmap["data"][deploy.SETTINGS_FILE.name] == deploy.SETTINGS_FILE.read_text()
    pod = _one(objects, "Deployment")["spec"]["template"]["spec"]
    container = _container(objects)
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    # The settings file is the ConfigMap, passed with --config.
    assert volumes["settings"]["configMap"]["name"] == configmap["metadata"]["name"]
    config_path = f"{mounts['settings']['mountPath']}/{deploy.SETTINGS_FILE.name}"
    assert container["args"] == ["--config", config_path]
    # The model repository is read-only where the settings say; /tmp is the only writable path.
    assert mounts["models"]["mountPath"] == settings["model_repository"]
    assert mounts["models"]["readOnly"] is True
    assert volumes["models"]["persistentVolumeClaim"]["readOnly"] is True
    writable = [m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")]
    assert writable == ["/tmp"] and volumes["tmp"]["emptyDir"]["medium"] == "Memory"
    # Ports and probes: numbers equal to the server's port, on every interface.
    assert settings["host"] == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["grpc"] == settings["grpc_port"]
    assert ports["http"] == settings["http_port"] == 8000  # Triton's HTTP port
    probes = [container[k] for k in ("startupProbe", "readinessProbe", "livenessProbe")]
    assert all(p["grpc"]["port"] == settings["grpc_port"] for p in probes)
    assert {p["grpc"].get("service", "") for p in probes} == {"", INFERENCE_SERVICE}
    # Drain: the preStop sleep, then the server's grace, within the pod's grace.
    sleep = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] >= sleep + settings["grace_period_s"]
    assert settings["max_connection_age_s"] > 0
    # Hardening.
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    assert _one(objects, "ServiceAccount")["automountServiceAccountToken"] is False
    for key in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][key])


def test_services_reach_the_pods(rendered: dict[str, Path]) -> None:
    objects = _objects(rendered["overlays/cpu"])
    pod_labels = _one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    grpc_port = deploy.serve_settings()["grpc_port"]
    service = _one(objects, "Service", "onnxserve")
    headless = _one(objects, "Service", "onnxserve-headless")
    assert headless["spec"]["clusterIP"] == "None"
    for svc in (service, headless):
        assert svc["spec"]["selector"].items() <= pod_labels.items()
        (grpc,) = [p for p in svc["spec"]["ports"] if p["name"] == "grpc"]
        assert grpc["port"] == grpc_port and grpc["appProtocol"] == "kubernetes.io/h2c"
    # HTTP/REST through the ClusterIP Service, to the container port named http.
    http_port = deploy.serve_settings()["http_port"]
    container_ports = {p["name"]: p["containerPort"] for p in _container(objects)["ports"]}
    (http,) = [p for p in service["spec"]["ports"] if p["name"] == "http"]
    assert http["port"] == http_port and container_ports[http["targetPort"]] == http_port
    policy = _one(objects, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    # gRPC and REST from anywhere (a rule without `from`), metrics from monitoring only.
    open_ports = {
        p["port"] for rule in policy["spec"]["ingress"] if "from" not in rule for p in rule["ports"]
    }
    assert {grpc_port, http_port} <= open_ports
    assert deploy.serve_settings()["metrics_port"] not in open_ports
    pdb = _one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_the_autoscaler_uses_the_adapters_queue_time(rendered: dict[str, Path]) -> None:
    hpa = _one(_objects(rendered["overlays/cpu"]), "HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    adapter = _one(_objects(rendered["prometheus-adapter"]), "ConfigMap")
    (rule,) = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"]
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    query = " ".join(rule["metricsQuery"].split())
    # Per pod: summed queue time over summed successes, 0 (not NaN) without traffic.
    queue = "sum by (<<.GroupBy>>) (rate(nv_inference_queue_duration_us{<<.LabelMatchers>>}[2m]))"
    success = "sum by (<<.GroupBy>>) (rate(nv_inference_request_success{<<.LabelMatchers>>}[2m]))"
    assert query == f"({queue} / ({success} > 0)) or ({queue} * 0)"


def test_the_gpu_overlay_asks_for_a_gpu(rendered: dict[str, Path]) -> None:
    gpu, cpu = (_objects(rendered[f"overlays/{v}"]) for v in ("gpu", "cpu"))
    container = _container(gpu)
    pod = _one(gpu, "Deployment")["spec"]["template"]["spec"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert container["image"].endswith("-gpu")
    assert {"name": "ONNXSERVE_DEVICE", "value": "cuda"} in container["env"]
    cpu_container = _container(cpu)
    assert cpu_container["image"].endswith("-cpu")
    assert "nvidia.com/gpu" not in cpu_container["resources"]["limits"]
    assert {"name": "ONNXSERVE_DEVICE", "value": "cpu"} in cpu_container["env"]


def test_the_kserve_runtime(rendered: dict[str, Path]) -> None:
    objects = _objects(rendered["kserve"])
    runtime = _one(objects, "ServingRuntime")["spec"]
    # REST and gRPC, as KServe's Triton runtime declares them (its HTTP port 8080 is
    # KServe's default, its gRPC port 9000).
    assert runtime["protocolVersions"] == ["v2", "grpc-v2"]
    assert {"name": "onnx", "version": "1", "autoSelect": True, "priority": 1} in runtime[
        "supportedModelFormats"
    ]
    (container,) = runtime["containers"]
    assert "--model-repository=/mnt/models" in container["args"]
    assert {"--http-port=8080", "--grpc-port=9000"} <= set(container["args"])
    # No container port: Knative routes one, 8080 (REST) unless an InferenceService
    # names its own; a gRPC one names the gRPC port h2c.
    assert "ports" not in container
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    service = _one(objects, "InferenceService")["spec"]["predictor"]["model"]
    assert service["runtime"] == _one(objects, "ServingRuntime")["metadata"]["name"]
    assert service["protocolVersion"] in runtime["protocolVersions"]
    if service["protocolVersion"] == "grpc-v2":
        (port,) = service["ports"]
        assert port["name"] == "h2c"
        assert f"--grpc-port={port['containerPort']}" in container["args"]


def test_kserve_resources_match_kserves_types(rendered: dict[str, Path]) -> None:
    """What kubernetes-validate skips: checked against KServe's own API types (.venv-kserve)."""
    try:
        python = kserve_env.ensure()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"KServe could not be installed: {str(exc.stderr)[-2000:]}")
    done = subprocess.run(
        [str(python), "-I", str(SUPPORT / "kserve_schema_check.py"), str(rendered["kserve"])],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["checked"] == ["ServingRuntime/onnxserve", "InferenceService/sentiment"]


def _volumes(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    pod = _one(objects, "Deployment")["spec"]["template"]["spec"]
    return {v["name"]: v for v in pod["volumes"]}


@pytest.mark.parametrize("overlay", ["overlays/cpu", "overlays/gpu", "overlays/local"])
def test_the_model_claim_the_pods_mount_is_created_with_them(
    overlay: str, rendered: dict[str, Path]
) -> None:
    """Issue 26: the Deployment mounted a claim no manifest created; pods stayed Pending."""
    objects = _objects(rendered[overlay])
    claim = _volumes(objects)["models"]["persistentVolumeClaim"]["claimName"]
    pvc = _one(objects, "PersistentVolumeClaim", claim)
    expected = ["ReadWriteOnce"] if overlay == "overlays/local" else ["ReadWriteMany"]
    assert pvc["spec"]["accessModes"] == expected
    assert pvc["metadata"]["namespace"] == _one(objects, "Deployment")["metadata"]["namespace"]


def test_the_filler_holds_the_claim_read_write_for_the_documented_copy(
    rendered: dict[str, Path],
) -> None:
    filler = _one(_objects(rendered["models-filler"]), "Pod")
    base = _objects(rendered["base"])
    claim = _volumes(base)["models"]["persistentVolumeClaim"]["claimName"]
    volumes = {v["name"]: v for v in filler["spec"]["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"] == {"claimName": claim}  # read-write
    (container,) = filler["spec"]["containers"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["models"]["mountPath"] == "/models" and not mounts["models"].get("readOnly")
    assert filler["metadata"]["namespace"] == _one(base, "Deployment")["metadata"]["namespace"]
    script = deploy.FILL_SCRIPT.read_text()
    assert f"pod/{filler['metadata']['name']}" in script
    assert f"{filler['metadata']['name']}:/models" in script
    assert subprocess.run(["sh", "-n", str(deploy.FILL_SCRIPT)], check=False).returncode == 0
    assert deploy.FILL_SCRIPT.stat().st_mode & 0o111, "fill-models.sh must be executable"
    missing = subprocess.run(
        ["sh", str(deploy.FILL_SCRIPT), "/nonexistent/repository"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert missing.returncode == 2 and "is not a directory" in missing.stderr


def test_the_local_overlay_runs_an_image_loaded_into_the_node(rendered: dict[str, Path]) -> None:
    local = _objects(rendered["overlays/local"])
    assert _container(local)["imagePullPolicy"] == "IfNotPresent"
    assert _container(local)["image"] == _container(_objects(rendered["overlays/cpu"]))["image"]
    assert _one(local, "HorizontalPodAutoscaler")["spec"]["minReplicas"] == 1
    filler = _one(_objects(rendered["models-filler"]), "Pod")
    assert filler["spec"]["containers"][0]["imagePullPolicy"] == "IfNotPresent"


def test_the_modelcar_overlay_serves_the_model_image_without_a_claim(
    rendered: dict[str, Path],
) -> None:
    objects = _objects(rendered["overlays/modelcar"])
    assert not [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    volume = _volumes(objects)["models"]
    assert "persistentVolumeClaim" not in volume and volume["emptyDir"]["sizeLimit"]
    pod = _one(objects, "Deployment")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["image"].startswith("onnxserve-models:")
    (mount,) = init["volumeMounts"]
    entrypoint = deploy.last(deploy.MODELS_DOCKERFILE, "ENTRYPOINT").exec_form()
    assert entrypoint[-1].rstrip("/") == mount["mountPath"] and mount["name"] == "models"
    assert entrypoint[:2] == ["cp", "-R"] and entrypoint[2] == "/models/."
    assert init["securityContext"]["readOnlyRootFilesystem"] is True
    server = {m["name"]: m for m in _container(objects)["volumeMounts"]}["models"]
    assert server["readOnly"] is True and server["mountPath"] == "/models"
    user = deploy.last(deploy.MODELS_DOCKERFILE, "USER").arguments
    assert user == f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
