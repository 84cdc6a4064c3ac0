"""deploy/kubernetes against the Pod Security Standards' `restricted` profile and the rollout
rules, offline (tests/deploy/test_kubernetes_manifests.py checks the schemas and the wiring).

Every pod template (Deployments, StatefulSets, DaemonSets, Jobs, CronJobs; init containers
included) must pass `restricted` as the admission controller checks it (v1.30): non-root with a
numeric uid (the Dockerfile's), no privilege escalation, every capability dropped, the runtime's
seccomp profile, only the volume types the profile allows; and, beyond the profile, a read-only
root filesystem with a writable emptyDir wherever the processes write. The rollout rules: api and
workers migrate the schema in an init container (so a new version never serves an older
schema, and a re-apply migrates again), KEDA alone sets the workers' replicas, the api outlives
its longest wait after its endpoints are gone, and `/metrics` is reachable only from Prometheus.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from relight.core.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"

# The volume types `restricted` allows.
RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
# Where the pod template sits in each workload kind.
TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
    "Pod": (),
}
# Caches the libraries write (Hugging Face, torch inductor, triton, matplotlib, CUDA's JIT):
# when a container names one, it must lie on a writable volume.
CACHE_VARIABLES = (
    "HF_HOME",
    "TORCHINDUCTOR_CACHE_DIR",
    "TRITON_CACHE_DIR",
    "MPLCONFIGDIR",
    "XDG_CACHE_HOME",
    "CUDA_CACHE_PATH",
)
# What the GPU node's libraries write unless told where: it must name each.
NODE_CACHES = ("HF_HOME", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "MPLCONFIGDIR")
# The Dockerfile stage that builds each image the manifests name.
IMAGE_TARGETS = {"relight": "service", "relight-node": "node"}


def _documents() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        found.extend(d for d in yaml.safe_load_all(path.read_text("utf-8")) if d)
    return found


DOCUMENTS = _documents()


def _pods() -> list[tuple[str, dict[str, Any]]]:
    pods = []
    for document in DOCUMENTS:
        path = TEMPLATE_PATHS.get(document["kind"])
        if path is None:
            continue
        template = document
        for key in path:
            template = template[key]
        pods.append((f"{document['kind']}/{document['metadata']['name']}", template))
    return pods


PODS = _pods()
POD_IDS = [name for name, _ in PODS]


def _containers(template: dict[str, Any]) -> list[dict[str, Any]]:
    spec = template["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def _one(kind: str, name: str) -> dict[str, Any]:
    [found] = [d for d in DOCUMENTS if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def _effective(template: dict[str, Any], container: dict[str, Any], key: str) -> Any:
    """A security setting as the container runs with it: its own, else the pod's."""
    own = container.get("securityContext", {})
    if key in own:
        return own[key]
    return template["spec"].get("securityContext", {}).get(key)


def dockerfile_users() -> dict[str, str]:
    """The `USER` each stage of the Dockerfile ends with (a stage inherits its base's)."""
    users: dict[str, str] = {}
    stage = None
    for line in (ROOT / "Dockerfile").read_text("utf-8").splitlines():
        start = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if start:
            base, stage = start.group(1), start.group(2)
            if stage is not None and base in users:
                users[stage] = users[base]
            continue
        user = re.match(r"USER\s+(\S+)", line, re.IGNORECASE)
        if user and stage is not None:
            users[stage] = user.group(1)
    return users


def test_every_workload_is_checked() -> None:
    names = set(POD_IDS)
    assert {"Deployment/relight-api", "Deployment/relight-worker"} <= names
    assert "Deployment/relight-gpu-node" in names


@pytest.mark.parametrize("template", [t for _, t in PODS], ids=POD_IDS)
def test_pods_pass_the_restricted_profile(template: dict[str, Any]) -> None:
    spec = template["spec"]
    for host in ("hostNetwork", "hostPID", "hostIPC", "hostUsers"):
        assert spec.get(host, host == "hostUsers") is (host == "hostUsers"), host
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        assert kinds <= RESTRICTED_VOLUME_TYPES, (volume["name"], kinds)
    for sysctl in spec.get("securityContext", {}).get("sysctls", []):
        pytest.fail(f"sysctl {sysctl['name']}: none is needed")

    for container in _containers(template):
        name = container["name"]
        context = container.get("securityContext", {})
        assert context.get("privileged") is not True, name
        assert context.get("allowPrivilegeEscalation") is False, name
        capabilities = context.get("capabilities", {})
        assert capabilities.get("drop") == ["ALL"], name
        assert set(capabilities.get("add", [])) <= {"NET_BIND_SERVICE"}, name
        assert context.get("procMount", "Default") == "Default", name
        assert _effective(template, container, "runAsNonRoot") is True, name
        uid = _effective(template, container, "runAsUser")
        assert isinstance(uid, int), name
        assert uid != 0, name
        seccomp = _effective(template, container, "seccompProfile") or {}
        assert seccomp.get("type") in ("RuntimeDefault", "Localhost"), name
        for port in container.get("ports", []):
            assert "hostPort" not in port, name


@pytest.mark.parametrize("template", [t for _, t in PODS], ids=POD_IDS)
def test_pods_run_as_the_images_user(template: dict[str, Any]) -> None:
    users = dockerfile_users()
    for container in _containers(template):
        image = container["image"]
        user = users[IMAGE_TARGETS[image]]
        uid, _, gid = user.partition(":")
        assert uid.isdigit(), f"the Dockerfile's {image} runs as {user}"
        assert uid != "0", f"the Dockerfile's {image} runs as root"
        assert _effective(template, container, "runAsUser") == int(uid), container["name"]
        if gid:
            assert _effective(template, container, "runAsGroup") == int(gid), container["name"]


@pytest.mark.parametrize("template", [t for _, t in PODS], ids=POD_IDS)
def test_root_filesystems_are_read_only_with_writable_scratch(template: dict[str, Any]) -> None:
    volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
    for container in _containers(template):
        name = container["name"]
        assert container.get("securityContext", {}).get("readOnlyRootFilesystem") is True, name
        writable = [
            mount["mountPath"]
            for mount in container.get("volumeMounts", [])
            if "emptyDir" in volumes[mount["name"]] and not mount.get("readOnly", False)
        ]
        # Python's tempfile, multipart uploads spooled to disk, torch inductor's cache.
        assert "/tmp" in writable, f"{name}: no writable /tmp"
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        for variable in CACHE_VARIABLES:
            if variable in env:
                path = env[variable]
                assert path, f"{name}: {variable} is empty"
                assert any(
                    path == root or path.startswith(root.rstrip("/") + "/") for root in writable
                ), f"{name}: {variable}={path} is not on a writable volume"


def test_the_gpu_node_names_its_caches_and_reads_the_config_map() -> None:
    template = _one("Deployment", "relight-gpu-node")["spec"]["template"]
    [node] = template["spec"]["containers"]
    env = {e["name"] for e in node.get("env", [])}
    assert set(NODE_CACHES) <= env, set(NODE_CACHES) - env
    sources = [s.get("configMapRef", {}).get("name") for s in node.get("envFrom", [])]
    assert "relight-config" in sources


def _migrates(container: dict[str, Any]) -> bool:
    command: list[str] = container.get("command", [])
    return command[:3] == ["alembic", "upgrade", "head"]


@pytest.mark.parametrize("name", ["relight-api", "relight-worker"])
def test_api_and_workers_migrate_in_an_init_container(name: str) -> None:
    spec = _one("Deployment", name)["spec"]["template"]["spec"]
    [migrate] = [c for c in spec.get("initContainers", []) if _migrates(c)]
    [main] = spec["containers"]
    assert migrate["image"] == main["image"]
    sources = {next(iter(s.values()))["name"] for s in migrate.get("envFrom", [])}
    assert {"relight-config", "relight-secrets"} <= sources
    # Nothing else runs the migrations (a Job is not re-run by a re-apply).
    others = [
        c
        for _, template in PODS
        for c in template["spec"]["containers"]
        if _migrates(c) and c is not main
    ]
    assert others == []


def test_keda_alone_sets_the_workers_replicas() -> None:
    targets = {
        (d["spec"]["scaleTargetRef"].get("kind", "Deployment"), d["spec"]["scaleTargetRef"]["name"])
        for d in DOCUMENTS
        if d["kind"] == "ScaledObject"
    }
    assert ("Deployment", "relight-worker") in targets
    for kind, name in targets:
        assert "replicas" not in _one(kind, name)["spec"], f"{kind}/{name} fixes its replicas"


def _seconds(value: Any) -> float:
    return float(str(value).removesuffix("s"))


def test_the_api_outlives_its_longest_wait_after_leaving_the_endpoints() -> None:
    config = _one("ConfigMap", "relight-config")["data"]
    sync_timeout = _seconds(
        config.get("RELIGHT_SYNC_TIMEOUT_S", Settings.model_fields["sync_timeout_s"].default)
    )
    spec = _one("Deployment", "relight-api")["spec"]["template"]["spec"]
    [api] = spec["containers"]
    pre_stop = api["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        delay = _seconds(pre_stop["sleep"]["seconds"])
    else:
        command = pre_stop["exec"]["command"]
        assert command[0] == "sleep", command
        delay = _seconds(command[1])
    # Endpoints and load balancers drop the pod during the preStop pause; then SIGTERM, and a
    # `POST /v1/ic-light` that just started may wait for its job the whole sync timeout.
    assert delay >= 5
    assert spec["terminationGracePeriodSeconds"] > delay + sync_timeout


def _allows(policy: dict[str, Any], port: int | str) -> list[dict[str, Any]]:
    return [
        source
        for rule in policy["spec"].get("ingress", [])
        if any(p.get("port") == port for p in rule.get("ports", []))
        for source in rule.get("from", [])
    ]


def _policy_for(app: str) -> dict[str, Any]:
    [policy] = [
        d
        for d in DOCUMENTS
        if d["kind"] == "NetworkPolicy"
        and d["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name") == app
    ]
    assert "Ingress" in policy["spec"]["policyTypes"]
    return policy


def _from_prometheus(source: dict[str, Any]) -> bool:
    namespace: dict[str, str] = source.get("namespaceSelector", {}).get("matchLabels", {})
    pods: dict[str, str] = source.get("podSelector", {}).get("matchLabels", {})
    return namespace == {"kubernetes.io/metadata.name": "monitoring"} and pods == {
        "app.kubernetes.io/name": "prometheus"
    }


def test_network_policies_keep_metrics_to_prometheus_and_the_api_to_the_ingress() -> None:
    api = _policy_for("relight-api")
    sources = _allows(api, "http")
    assert sources, "nothing may reach the api"
    for source in sources:
        # The ingress controller's namespace, or Prometheus (which scrapes /metrics there).
        namespace = source["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        assert namespace in ("ingress-nginx", "monitoring"), source
        assert namespace == "ingress-nginx" or _from_prometheus(source), source
    assert [r for r in api["spec"]["ingress"] if {p["port"] for p in r["ports"]} != {"http"}] == []

    worker = _policy_for("relight-worker")
    assert all(_from_prometheus(s) for s in _allows(worker, "metrics"))
    assert [p for r in worker["spec"]["ingress"] for p in r["ports"]] == [{"port": "metrics"}]

    node = _policy_for("relight-gpu-node")
    for source in _allows(node, "http"):
        workers = source.get("podSelector", {}).get("matchLabels", {})
        assert _from_prometheus(source) or (
            workers == {"app.kubernetes.io/name": "relight-worker"}
            and "namespaceSelector" not in source
        ), source


def test_the_ingress_never_routes_metrics() -> None:
    [ingress] = [d for d in DOCUMENTS if d["kind"] == "Ingress"]
    paths = [
        path
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
        if path["backend"]["service"]["name"] == "relight-api"
    ]
    assert paths
    for path in paths:
        assert path["pathType"] in ("Prefix", "Exact"), path
        assert path["path"] != "/", path
        assert not "/metrics".startswith(path["path"]), path
        assert path["path"] not in ("/healthz", "/readyz"), path


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders_every_manifest_into_the_namespace() -> None:
    done = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    rendered = [d for d in yaml.safe_load_all(done.stdout) if d]
    key = [(d["kind"], d["metadata"]["name"]) for d in rendered]
    assert sorted(key) == sorted((d["kind"], d["metadata"]["name"]) for d in DOCUMENTS)
    for document in rendered:
        if document["kind"] != "Namespace":
            assert document["metadata"]["namespace"] == "relight", document["metadata"]
    # The images resolve to the registry's, the same in init containers as in the others.
    images = {
        c["image"]
        for d in rendered
        if d["kind"] == "Deployment"
        for c in _containers(d["spec"]["template"])
    }
    assert all(image.startswith("registry.example.com/") for image in images), images
