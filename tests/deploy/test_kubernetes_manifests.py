"""The Kubernetes manifests (deploy/kubernetes) validated offline: every core resource against
the Kubernetes OpenAPI schemas bundled with `kubernetes-validate`, the KEDA ScaledObject by
structure (its CRD schema is not bundled), and the wiring between them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from relight.core.config import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"


def _documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text("utf-8")):
            if document:
                found.append((path.name, document))
    return found


DOCUMENTS = _documents()


def _one(kind: str, name: str) -> dict[str, Any]:
    [found] = [d for _, d in DOCUMENTS if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text("utf-8"))
    files = sorted(p.name for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == files


@pytest.mark.parametrize(
    ("source", "document"),
    [(s, d) for s, d in DOCUMENTS if not d["apiVersion"].startswith("keda.sh/")],
    ids=[
        f"{s}:{d['kind']}/{d['metadata']['name']}"
        for s, d in DOCUMENTS
        if "keda" not in d["apiVersion"]
    ],
)
def test_core_resources_match_the_kubernetes_schema(source: str, document: dict[str, Any]) -> None:
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_workers_autoscale_on_runnable_jobs() -> None:
    [scaled] = [d for _, d in DOCUMENTS if d["kind"] == "ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    target = scaled["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "relight-worker")
    _one("Deployment", target["name"])
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    # Relight jobs only: not `relight_queue_depth`, which counts webhook retries too (issue 27).
    assert "relight_runnable_jobs" in trigger["metadata"]["query"]
    assert float(trigger["metadata"]["threshold"]) > 0


def test_probes_point_at_the_health_endpoints() -> None:
    api = _one("Deployment", "relight-api")["spec"]["template"]["spec"]["containers"][0]
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    node = _one("Deployment", "relight-gpu-node")["spec"]["template"]["spec"]["containers"][0]
    assert node["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert node["resources"]["limits"]["nvidia.com/gpu"] == "1"
    worker = _one("Deployment", "relight-worker")["spec"]["template"]["spec"]["containers"][0]
    assert worker["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_worker_pods_outlive_the_shutdown_grace() -> None:
    config = _one("ConfigMap", "relight-config")["data"]
    grace = int(config["RELIGHT_SHUTDOWN_GRACE_S"])
    pod = _one("Deployment", "relight-worker")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > grace


def test_the_config_map_holds_only_real_settings_and_no_secrets() -> None:
    data = _one("ConfigMap", "relight-config")["data"]
    known = {f"RELIGHT_{name.upper()}" for name in Settings.model_fields}
    assert set(data) <= known, set(data) - known
    for secret in ("RELIGHT_SECRET_KEY", "RELIGHT_DATABASE_URL", "RELIGHT_ADMIN_TOKEN"):
        assert secret not in data


def test_every_pod_disruption_budget_selects_a_deployment() -> None:
    deployments = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
        for _, d in DOCUMENTS
        if d["kind"] == "Deployment"
    }
    budgets = [d for _, d in DOCUMENTS if d["kind"] == "PodDisruptionBudget"]
    assert {b["metadata"]["name"] for b in budgets} == set(deployments)
    for budget in budgets:
        labels = deployments[budget["metadata"]["name"]]
        assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
