"""Every manifest in deploy/k8s validates: built-in kinds against the Kubernetes JSON schemas
(kubernetes-validate, strict: unknown fields fail), the operators' custom resources (Strimzi,
KEDA) structurally; and the serve Deployment runs the image's `sidstream serve`."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

pytestmark = pytest.mark.unit
K8S = Path(__file__).resolve().parents[3] / "deploy" / "k8s"
K8S_VERSION = kubernetes_validate.latest_version()
CUSTOM = {
    ("kafka.strimzi.io/v1beta2", "Kafka"): ("kafka",),
    ("kafka.strimzi.io/v1beta2", "KafkaNodePool"): ("replicas", "roles", "storage"),
    ("kafka.strimzi.io/v1beta2", "KafkaTopic"): ("topicName", "partitions", "replicas"),
    ("kafka.strimzi.io/v1beta2", "KafkaUser"): ("authentication",),
    ("keda.sh/v1alpha1", "ScaledObject"): ("scaleTargetRef", "triggers"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"): ("secretTargetRef",),
}


def _docs() -> list[tuple[str, dict]]:
    return [(p.name, d) for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml"
            for d in yaml.safe_load_all(p.read_text()) if d]


@pytest.mark.parametrize("name,doc", _docs(), ids=lambda x: x if isinstance(x, str) else f"{x['kind']}/{x['metadata']['name']}")
def test_manifest_validates(name: str, doc: dict) -> None:
    key = (doc["apiVersion"], doc["kind"])
    if key in CUSTOM:
        assert doc["metadata"].get("name"), name
        missing = [f for f in CUSTOM[key] if f not in doc.get("spec", {})]
        assert not missing, f"{name}: {doc['kind']} {doc['metadata']['name']} lacks spec.{missing}"
        if doc["kind"] == "ScaledObject":
            assert all(t.get("type") and t.get("metadata") for t in doc["spec"]["triggers"])
        return
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_every_resource_is_in_the_kustomization() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def test_serve_deployment_uses_the_image_and_the_web_port() -> None:
    from sidcore.config import Settings

    docs = {(d["kind"], d["metadata"]["name"]): d for _, d in _docs()}
    container = docs[("Deployment", "serve")]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "sidstream" and container["command"][:2] == ["sidstream", "serve"]
    assert container["ports"][0]["containerPort"] == Settings().stream.web_port
    assert docs[("HorizontalPodAutoscaler", "serve")]["spec"]["scaleTargetRef"]["name"] == "serve"
    dockerfile = (K8S.parents[1] / "Dockerfile").read_text()
    assert "COPY . /app" in dockerfile and "feature_repo" not in (K8S.parents[1] / ".dockerignore").read_text() and "CMD [\"sidstream\", \"serve\"" in dockerfile
