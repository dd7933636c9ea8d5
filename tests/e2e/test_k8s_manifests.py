"""The Kubernetes manifests, offline: ``kubectl kustomize`` renders them, ``kubernetes-validate --strict`` checks
them against the API schemas, and the properties the deployment relies on are asserted on the rendered objects
(RBAC exactly get/list/watch on endpointslices, stateless proxies, a valid GoBalancer config)."""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.config import load_config
from tests.conftest import unavailable
from tests.e2e.docker_env import ROOT

K8S = ROOT / "k8s"
BASE = K8S / "base"
EXAMPLE = K8S / "overlays" / "example"
SERVICES = ("proxy", "admin", "discovery", "health")


def _kubectl() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        unavailable("kubectl is not installed (only its offline `kubectl kustomize` is used)")
    assert kubectl is not None
    return kubectl


def _validator() -> str:
    here = Path(sys.executable).parent / "kubernetes-validate"
    found = str(here) if here.exists() else shutil.which("kubernetes-validate")
    if found is None:
        unavailable("kubernetes-validate is not installed (it is a dev dependency: make install)")
    assert found is not None
    return found


def render(directory: Path) -> str:
    done = subprocess.run([_kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def example() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(render(EXAMPLE)) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = find(docs, kind, name)
    return found


def pod_spec(docs: list[dict[str, Any]], deployment: str) -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, "Deployment", deployment)["spec"]["template"]["spec"]
    return spec


@pytest.mark.parametrize("directory", [BASE, EXAMPLE], ids=["base", "example"])
def test_rendered_manifests_pass_strict_schema_validation(directory: Path, tmp_path: Path) -> None:
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(render(directory))
    done = subprocess.run(
        [_validator(), "--strict", "--quiet", str(rendered)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_strict_validation_rejects_an_unknown_field(tmp_path: Path) -> None:
    """The check above has teeth: a misspelt field fails it."""
    docs = [d for d in yaml.safe_load_all(render(EXAMPLE)) if d]
    deployment = one(docs, "Deployment", "gobalancer-proxy")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"tcpSocket": {"port": 8080}}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(deployment))
    done = subprocess.run([_validator(), "--strict", "--quiet", str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "readinesProbe" in done.stdout + done.stderr


def test_every_service_runs_from_the_one_image(example: list[dict[str, Any]]) -> None:
    assert {d["metadata"]["namespace"] for d in example if d["kind"] != "Namespace"} == {"gobalancer"}
    for service in SERVICES:
        (container,) = pod_spec(example, f"gobalancer-{service}")["containers"]
        assert container["image"] == "registry.example.com/gobalancer/gobalancer:0.1.0"
        assert container["command"] == ["python3", "-m", f"services.{service}"]
    assert find(example, "Deployment", "gobalancer-redis")
    assert {s["metadata"]["name"] for s in find(example, "Service")} >= {
        "gobalancer-proxy",
        "gobalancer-admin",
        "gobalancer-redis",
    }


def test_discovery_rbac_is_exactly_get_list_watch_on_endpointslices(example: list[dict[str, Any]]) -> None:
    assert find(example, "ClusterRole") == [] and find(example, "ClusterRoleBinding") == []
    (role,) = find(example, "Role")
    assert role["rules"] == [
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]}
    ]
    (binding,) = find(example, "RoleBinding")
    role_ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "gobalancer-discovery"}
    assert binding["roleRef"] == role_ref
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "gobalancer-discovery", "namespace": "gobalancer"}
    ]
    (account,) = find(example, "ServiceAccount")
    assert account["metadata"]["name"] == "gobalancer-discovery"
    # Only discovery gets a token; every other pod runs without one.
    for deployment in find(example, "Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        if deployment["metadata"]["name"] == "gobalancer-discovery":
            assert spec["serviceAccountName"] == "gobalancer-discovery"
        else:
            assert "serviceAccountName" not in spec
            assert spec["automountServiceAccountToken"] is False


def test_proxies_are_stateless_and_drain(example: list[dict[str, Any]]) -> None:
    assert find(example, "PersistentVolumeClaim") == [] and find(example, "StatefulSet") == []
    proxy = one(example, "Deployment", "gobalancer-proxy")
    spec = proxy["spec"]["template"]["spec"]
    assert "volumes" not in spec
    (container,) = spec["containers"]
    assert "volumeMounts" not in container
    assert proxy["spec"]["replicas"] == 3  # the example overlay's count
    assert container["readinessProbe"] and container["livenessProbe"]
    assert container["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    assert set(container["resources"]) == {"requests", "limits"}
    selector = proxy["spec"]["selector"]["matchLabels"]
    assert one(example, "PodDisruptionBudget", "gobalancer-proxy")["spec"]["selector"]["matchLabels"] == selector
    hpa = one(example, "HorizontalPodAutoscaler", "gobalancer-proxy")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gobalancer-proxy"}
    assert hpa["minReplicas"] <= proxy["spec"]["replicas"] <= hpa["maxReplicas"]
    # Grace period covers the preStop pause plus the proxy's own drain.
    config = one_config(example)
    grace = spec["terminationGracePeriodSeconds"]
    assert grace > int(container["lifecycle"]["preStop"]["exec"]["command"][1]) + config.timeout.drain_sec


def test_every_pod_runs_as_non_root_with_a_read_only_root(example: list[dict[str, Any]]) -> None:
    for deployment in find(example, "Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, deployment["metadata"]["name"]
        for container in spec["containers"]:
            ctx = container["securityContext"]
            assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False
            assert ctx["capabilities"]["drop"] == ["ALL"]


def one_config(docs: list[dict[str, Any]]) -> Any:
    """The GoBalancer config the pods get: the ConfigMap and the Secret, as environment variables."""
    (configmap,) = find(docs, "ConfigMap")
    (secret,) = find(docs, "Secret")
    environ = dict(configmap["data"])
    environ.update({k: base64.b64decode(v).decode() for k, v in secret["data"].items()})
    return load_config(None, environ=environ)


def test_configmap_and_secret_make_a_valid_config(example: list[dict[str, Any]]) -> None:
    config = one_config(example)  # raises ConfigError on any unknown or invalid setting
    assert config.redis.url == "redis://gobalancer-redis:6379/0"
    assert config.admin.listen_address == "0.0.0.0:8081" and config.admin.token  # a token, not allow_insecure
    assert config.discovery.type == "kubernetes"
    k8s = config.discovery.kubernetes
    assert k8s.namespace == "gobalancer"
    service = one(example, "Service", k8s.service)  # the Service discovery follows exists, with that port name
    assert k8s.port_name in {p["name"] for p in service["spec"]["ports"]}
    # Every pod that reads the config reads it whole (renamed with its content hash by kustomize).
    for deployment in find(example, "Deployment"):
        name = deployment["metadata"]["name"]
        if name.removeprefix("gobalancer-") in SERVICES:
            (container,) = deployment["spec"]["template"]["spec"]["containers"]
            refs = [ref.get("configMapRef", {}).get("name") for ref in container["envFrom"]]
            assert find(example, "ConfigMap")[0]["metadata"]["name"] in refs, name
    (admin,) = pod_spec(example, "gobalancer-admin")["containers"]
    assert {"secretRef": {"name": find(example, "Secret")[0]["metadata"]["name"]}} in admin["envFrom"]
