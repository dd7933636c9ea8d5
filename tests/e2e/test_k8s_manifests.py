"""The Kubernetes manifests, offline: ``kubectl kustomize`` renders them, ``kubernetes-validate --strict`` checks
them against the API schemas, and the properties the deployment relies on are asserted on the rendered objects
(RBAC exactly get/list/watch on endpointslices, stateless proxies that drain, liveness independent of Redis,
NetworkPolicies, Redis as a StatefulSet with a claim and a password from a Secret, no known secret, a valid
GoBalancer config)."""

from __future__ import annotations

import http.client
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.config import load_config
from shared.processes import service_env, stop_process
from shared.redis_server import free_port
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


def pod_spec(docs: list[dict[str, Any]], deployment: str, kind: str = "Deployment") -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, kind, deployment)["spec"]["template"]["spec"]
    return spec


def workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return find(docs, "Deployment") + find(docs, "StatefulSet")


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
    assert find(example, "StatefulSet", "gobalancer-redis")
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
    for deployment in workloads(example):
        spec = deployment["spec"]["template"]["spec"]
        if deployment["metadata"]["name"] == "gobalancer-discovery":
            assert spec["serviceAccountName"] == "gobalancer-discovery"
        else:
            assert "serviceAccountName" not in spec
            assert spec["automountServiceAccountToken"] is False


def test_proxies_are_stateless_and_drain(example: list[dict[str, Any]]) -> None:
    proxy = one(example, "Deployment", "gobalancer-proxy")
    spec = proxy["spec"]["template"]["spec"]
    assert "volumes" not in spec
    (container,) = spec["containers"]
    assert "volumeMounts" not in container
    # The HPA owns the count: neither the base nor the overlay pins replicas (an apply would reset it).
    assert "replicas" not in proxy["spec"]
    hpa = one(example, "HorizontalPodAutoscaler", "gobalancer-proxy")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gobalancer-proxy"}
    assert 3 == hpa["minReplicas"] < hpa["maxReplicas"]
    # Readiness is the proxy's own /ready (503 from SIGTERM on), on the port the config serves it on.
    config = one_config(example)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "metrics"}
    assert config.metrics.proxy_listen_address == f"0.0.0.0:{ports['metrics']}"
    assert container["livenessProbe"]["tcpSocket"] == {"port": "http"}
    assert container["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    assert set(container["resources"]) == {"requests", "limits"}
    assert proxy["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    # A drain evicts at most one proxy at a time.
    selector = proxy["spec"]["selector"]["matchLabels"]
    pdb = one(example, "PodDisruptionBudget", "gobalancer-proxy")["spec"]
    assert pdb["selector"]["matchLabels"] == selector
    assert pdb == {"maxUnavailable": 1, "selector": pdb["selector"]}
    # Grace period covers the preStop pause, the shutdown delay and the proxy's own drain.
    grace = spec["terminationGracePeriodSeconds"]
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert grace > pause + config.proxy.shutdown_delay_sec + config.timeout.drain_sec


def test_liveness_of_discovery_and_health_does_not_depend_on_redis(example: list[dict[str, Any]]) -> None:
    """Liveness means "this process is stuck": the service's own /metrics, which no Redis call stands behind.
    Readiness may follow Redis (the heartbeat check)."""
    config = one_config(example)
    for service, address in (
        ("discovery", config.metrics.discovery_listen_address),
        ("health", config.metrics.health_listen_address),
    ):
        (container,) = pod_spec(example, f"gobalancer-{service}")["containers"]
        liveness = container["livenessProbe"]
        assert set(liveness) & {"exec", "grpc", "tcpSocket"} == set(), service
        assert liveness["httpGet"] == {"path": "/metrics", "port": "metrics"}, service
        port = {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"]
        assert address == f"0.0.0.0:{port}", service
        assert "gobalancer_healthcheck.py" in " ".join(container["readinessProbe"]["exec"]["command"])


def test_redis_is_a_statefulset_with_a_claim_a_password_and_maxmemory_under_its_limit(
    example: list[dict[str, Any]],
) -> None:
    assert find(example, "Deployment", "gobalancer-redis") == []
    redis = one(example, "StatefulSet", "gobalancer-redis")
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in container["volumeMounts"]
    assert "volumes" not in redis["spec"]["template"]["spec"]  # no emptyDir
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes" and args[args.index("--dir") + 1] == "/data"
    maxmemory = args[args.index("--maxmemory") + 1]
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    limit = container["resources"]["limits"]["memory"]
    assert _bytes(maxmemory) < _bytes(limit) * 0.9, (maxmemory, limit)
    # The ACL user's password comes from the Secret; the default user may only PING.
    assert ">$(REDIS_PASSWORD)" in args
    assert _secret_ref(container, "REDIS_PASSWORD") == ("gobalancer", "REDIS_PASSWORD")
    assert " ".join(args).count("--user default on nopass resetchannels -@all +ping") == 1


def _bytes(size: str) -> float:
    m = re.fullmatch(r"(\d+)\s*(mb|gb|Mi|Gi)", size)
    assert m, size
    return int(m.group(1)) * {"mb": 1e6, "gb": 1e9, "Mi": 2**20, "Gi": 2**30}[m.group(2)]


def _secret_ref(container: dict[str, Any], name: str) -> tuple[str, str] | None:
    for var in container.get("env", []):
        if var["name"] == name and "valueFrom" in var:
            ref = var["valueFrom"]["secretKeyRef"]
            return ref["name"], ref["key"]
    return None


def test_no_known_secret_is_shipped(example: list[dict[str, Any]]) -> None:
    """The admin token and the Redis password live in a Secret the operator creates: none is rendered."""
    assert find(example, "Secret") == []
    for workload in workloads(example):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            for var in container.get("env", []):
                if var["name"] in ("GOBALANCER_ADMIN_TOKEN", "REDIS_PASSWORD"):
                    assert "value" not in var and _secret_ref(container, var["name"]), workload["metadata"]["name"]
    (admin,) = pod_spec(example, "gobalancer-admin")["containers"]
    assert _secret_ref(admin, "GOBALANCER_ADMIN_TOKEN") == ("gobalancer", "GOBALANCER_ADMIN_TOKEN")
    for service in ("proxy", "discovery", "health"):
        (container,) = pod_spec(example, f"gobalancer-{service}")["containers"]
        assert _secret_ref(container, "GOBALANCER_ADMIN_TOKEN") is None, service  # only the admin has it


def test_network_policies_close_redis_and_the_admin(example: list[dict[str, Any]]) -> None:
    suite = {"proxy", "admin", "discovery", "health"}
    redis = one(example, "NetworkPolicy", "gobalancer-redis")["spec"]
    assert redis["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "gobalancer",
        "app.kubernetes.io/component": "redis",
    }
    assert redis["policyTypes"] == ["Ingress"]
    (rule,) = redis["ingress"]
    (source,) = rule["from"]
    assert set(source) == {"podSelector"}  # pods of this namespace only, no ipBlock or namespaceSelector
    expressions = {e["key"]: (e["operator"], set(e["values"])) for e in source["podSelector"]["matchExpressions"]}
    assert expressions == {
        "app.kubernetes.io/name": ("In", {"gobalancer"}),
        "app.kubernetes.io/component": ("In", suite),
    }
    assert rule["ports"] == [{"port": 6379}]
    # The demo backends do not match that selector.
    backend_labels = one(example, "Deployment", "backend")["spec"]["template"]["metadata"]["labels"]
    assert backend_labels.get("app.kubernetes.io/name") != "gobalancer"
    # Every suite pod matches it (the labels it selects on are on their pod templates).
    for service in suite:
        labels = one(example, "Deployment", f"gobalancer-{service}")["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "gobalancer" and labels["app.kubernetes.io/component"] == service
    admin = one(example, "NetworkPolicy", "gobalancer-admin")["spec"]
    assert admin["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "admin"
    sources = [s for rule in admin["ingress"] for s in rule["from"]]
    assert {"podSelector": {"matchLabels": {"gobalancer.io/admin-client": "true"}}} in sources
    assert {"ipBlock": {"cidr": "10.20.0.0/16"}} in sources  # what the example overlay adds
    assert all(rule.get("ports") == [{"port": 8081}] for rule in admin["ingress"])
    base = [d for d in yaml.safe_load_all(render(BASE)) if d]
    base_admin = one(base, "NetworkPolicy", "gobalancer-admin")["spec"]
    assert [s for rule in base_admin["ingress"] for s in rule["from"]] == [
        {"podSelector": {"matchLabels": {"gobalancer.io/admin-client": "true"}}}
    ]


def test_the_load_balancer_keeps_the_client_address(example: list[dict[str, Any]]) -> None:
    service = one(example, "Service", "gobalancer-proxy")["spec"]
    assert service["type"] == "LoadBalancer" and service["externalTrafficPolicy"] == "Local"


def test_every_pod_runs_as_non_root_with_a_read_only_root(example: list[dict[str, Any]]) -> None:
    for deployment in workloads(example):
        spec = deployment["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, deployment["metadata"]["name"]
        for container in spec["containers"]:
            ctx = container["securityContext"]
            assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False
            assert ctx["capabilities"]["drop"] == ["ALL"]


SECRET = {"GOBALANCER_ADMIN_TOKEN": "t0ken", "REDIS_PASSWORD": "0123abcd"}  # what the operator's Secret holds


def one_config(docs: list[dict[str, Any]], deployment: str = "gobalancer-admin") -> Any:
    """The GoBalancer config a pod gets: the ConfigMap (envFrom), then its container's env (which wins), with
    secretKeyRefs read from the operator's Secret and $(VAR) references expanded as the kubelet does."""
    (configmap,) = find(docs, "ConfigMap")
    environ = dict(configmap["data"])
    (container,) = pod_spec(docs, deployment)["containers"]
    for var in container.get("env", []):
        if "valueFrom" in var:
            ref = var["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "gobalancer"
            environ[var["name"]] = SECRET[ref["key"]]
        else:
            environ[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: environ[m.group(1)], var["value"])
    return load_config(None, environ={k: v for k, v in environ.items() if k.startswith("GOBALANCER_")})


def test_configmap_and_secret_make_a_valid_config(example: list[dict[str, Any]]) -> None:
    config = one_config(example)  # raises ConfigError on any unknown or invalid setting
    assert config.redis.url == "redis://gobalancer:0123abcd@gobalancer-redis:6379/0"
    assert config.admin.listen_address == "0.0.0.0:8081" and config.admin.token == "t0ken"  # not allow_insecure
    for service in SERVICES:
        assert one_config(example, f"gobalancer-{service}").redis.url == config.redis.url, service
    assert "gobalancer-admin" in config.admin.allowed_hosts  # in-cluster clients reach it by its Service name
    assert config.discovery.type == "kubernetes"
    k8s = config.discovery.kubernetes
    assert k8s.namespace == "gobalancer"
    followed = one(example, "Service", k8s.service)  # the Service discovery follows exists, with that port name
    assert k8s.port_name in {p["name"] for p in followed["spec"]["ports"]}
    # Several Services, each into its pool: every one exists with its port, its pool is routed to.
    assert [(s.service, s.pool) for s in k8s.services] == [("api", "api")]
    for entry in k8s.services:
        assert entry.namespace == k8s.namespace
        assert entry.port in {p["name"] for p in one(example, "Service", entry.service)["spec"]["ports"]}
        assert entry.pool in config.pools and entry.pool in {r.pool for r in config.routes}
    assert config.unmatched_pool == "default"
    # Every pod that reads the config reads it whole (renamed with its content hash by kustomize).
    for deployment in find(example, "Deployment"):
        name = deployment["metadata"]["name"]
        if name.removeprefix("gobalancer-") in SERVICES:
            (container,) = deployment["spec"]["template"]["spec"]["containers"]
            refs = [ref.get("configMapRef", {}).get("name") for ref in container["envFrom"]]
            assert find(example, "ConfigMap")[0]["metadata"]["name"] in refs, name


@pytest.mark.parametrize("service", ["discovery", "health"])
def test_the_liveness_endpoint_answers_while_redis_is_down(service: str, tmp_path: Path) -> None:
    """What the liveness probe asks (the service's own GET /metrics) is answered by a process whose Redis is
    unreachable: an outage does not make the kubelet restart discovery or health."""
    metrics_port, dead_redis = free_port(), free_port()
    config = tmp_path / "config.yaml"
    config.write_text("discovery: {type: static}\n")
    env = service_env(
        GOBALANCER_REDIS_URL=f"redis://127.0.0.1:{dead_redis}/0",
        **{f"GOBALANCER_METRICS_{service.upper()}_LISTEN_ADDRESS": f"127.0.0.1:{metrics_port}"},
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", f"services.{service}", "--config", str(config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while _metrics_status(metrics_port) != 200:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, f"{service} /metrics never answered with Redis down"
            time.sleep(0.1)
        for _ in range(5):  # and keeps answering (a probe every 10 s in the manifests; here every 0.5 s)
            time.sleep(0.5)
            assert _metrics_status(metrics_port) == 200
        assert proc.poll() is None
    finally:
        stop_process(proc)
        if proc.stderr is not None:
            proc.stderr.close()


def _metrics_status(port: int) -> int:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/metrics")
            return conn.getresponse().status
        finally:
            conn.close()
    except OSError:
        return 0
