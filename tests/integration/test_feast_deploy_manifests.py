"""The deploy/ manifests parse, have the expected kinds, run real `sidstream` subcommands, and
configure only settings that exist."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
from sidstream.cli import _SUBCOMMANDS  # noqa: E402 - the CLI's own list of subcommands

SUBCOMMANDS = set(_SUBCOMMANDS)
METRICS = (
    "sidstream_records_total",
    "sidstream_dlq_total",
    "sidstream_batch_seconds",
    "sidstream_produce_to_feast_seconds",
)


def _k8s_docs() -> list[dict]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


def _pod_specs(docs: list[dict]) -> list[dict]:
    specs = []
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet"):
            specs.append(d["spec"]["template"]["spec"])
        elif d["kind"] == "CronJob":
            specs.append(d["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    return specs


def test_manifests_have_the_expected_kinds():
    docs = _k8s_docs()
    kinds = {d["kind"] for d in docs}
    assert {
        "Kafka",
        "KafkaNodePool",
        "KafkaTopic",
        "Deployment",
        "ScaledObject",
        "CronJob",
        "ConfigMap",
    } <= kinds
    assert {"StatefulSet", "Service", "PersistentVolumeClaim", "Namespace", "Kustomization"} <= kinds
    deployments = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
    assert {"text-encoder", "audio-encoder", "assigner", "feast-writer"} <= deployments
    scaled = {d["spec"]["scaleTargetRef"]["name"] for d in docs if d["kind"] == "ScaledObject"}
    hpa = {d["spec"]["scaleTargetRef"]["name"] for d in docs if d["kind"] == "HorizontalPodAutoscaler"}
    assert scaled == deployments - {"serve"} and hpa == {"serve"}  # workers on lag (KEDA), serve on CPU
    kustomization = next(d for d in docs if d["kind"] == "Kustomization")
    assert set(kustomization["resources"]) == {p.name for p in (DEPLOY / "k8s").glob("*.yaml")} - {
        "kustomization.yaml"
    }


def test_every_container_runs_a_real_sidstream_subcommand():
    from streams.topology import ROLES

    commands = []
    for spec in _pod_specs(_k8s_docs()):
        for container in spec["containers"]:
            if container.get("image") == "sidstream":
                commands.append(container["command"])
    assert len(commands) >= 5
    for command in commands:
        assert command[0] == "sidstream" and command[1] in SUBCOMMANDS, command
        if command[1] == "worker":
            assert command[2] == "run"
            roles = command[command.index("--roles") + 1].split(",")
            assert set(roles) <= set(ROLES), command
    assert ["sidstream", "train", "all"] in commands


def test_topics_match_the_code_and_have_partitions():
    from streams.admin.topics import TopicNames

    topics = {d["spec"]["topicName"]: d["spec"] for d in _k8s_docs() if d["kind"] == "KafkaTopic"}
    assert set(topics) == set(TopicNames().all())
    config = next(d for d in _k8s_docs() if d["kind"] == "ConfigMap")["data"]
    partitions = int(config["SIDSTREAM_KAFKA__PARTITIONS"])
    for name, spec in topics.items():
        assert spec["partitions"] == (1 if name == "codebooks.control" else partitions), name
    for so in (d for d in _k8s_docs() if d["kind"] == "ScaledObject"):
        assert so["spec"]["maxReplicaCount"] <= partitions


def test_environment_is_valid_settings(monkeypatch):
    from sidcore.config import Settings

    docs = _k8s_docs()
    env = dict(next(d for d in docs if d["kind"] == "ConfigMap")["data"])
    for spec in _pod_specs(docs):
        for container in spec["containers"]:
            env |= {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    sidstream_keys = [k for k in env if k.startswith("SIDSTREAM_")]
    fields = set(Settings.model_fields)
    for key in sidstream_keys:  # pydantic-settings ignores unknown top-level names: check them here
        assert key.removeprefix("SIDSTREAM_").split("__")[0].lower() in fields, key
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()  # nested keys and types are validated by the settings model itself
    assert settings.feast_profile == "redis" and settings.kafka.bootstrap == "sidstream-kafka-bootstrap:9093"
    assert settings.kafka.security_protocol == "SASL_SSL"  # Strimzi's only listener: TLS + SCRAM (docs/security.md)


def test_prometheus_and_grafana_use_the_worker_metrics():
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert {job["job_name"] for job in prometheus["scrape_configs"]} >= {"sidstream-workers"}
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "sidstream.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric in METRICS:
        assert metric in exprs, metric
    from streams import metrics  # the names the workers actually export

    exported = {
        m._name for m in (metrics.RECORDS, metrics.DLQ, metrics.BATCH_SECONDS, metrics.PRODUCE_TO_FEAST)
    }
    assert {m.removesuffix("_total") for m in METRICS} == exported
