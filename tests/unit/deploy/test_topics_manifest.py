"""The Kubernetes topics (deploy/k8s/topics.yaml, Strimzi KafkaTopics) are exactly what
`sidstream topics create` makes with the manifests' own settings (deploy/k8s/config.yaml):
same topics, partitions, replicas, min.insync.replicas, max.message.bytes and compaction, so a
record the settings allow is never refused by a cluster built from the manifests."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from sidcore.config import KafkaSettings
from streams.admin.topics import TopicNames, topic_config

pytestmark = pytest.mark.unit

K8S = Path(__file__).resolve().parents[3] / "deploy" / "k8s"


def _config_map() -> dict[str, str]:
    doc = next(d for d in yaml.safe_load_all((K8S / "config.yaml").read_text()) if d and d.get("kind") == "ConfigMap")
    return {k: str(v) for k, v in doc["data"].items()}


def test_the_manifests_topics_are_what_topics_create_makes() -> None:
    env = _config_map()
    kafka = KafkaSettings(partitions=int(env["SIDSTREAM_KAFKA__PARTITIONS"]),
                          replication_factor=int(env["SIDSTREAM_KAFKA__REPLICATION_FACTOR"]),
                          min_insync_replicas=int(env["SIDSTREAM_KAFKA__MIN_INSYNC_REPLICAS"]))
    assert kafka.replication_factor >= 3 and kafka.min_insync_replicas == kafka.replication_factor - 1
    topics = {d["spec"]["topicName"]: d["spec"] for d in yaml.safe_load_all((K8S / "topics.yaml").read_text())
              if d and d.get("kind") == "KafkaTopic"}
    for spec, name in TopicNames("").specs():
        manifest = topics.pop(name, None)
        assert manifest is not None, f"{name}: created by `sidstream topics create`, missing from topics.yaml"
        partitions = 1 if spec is not None and spec.single_partition else kafka.partitions
        assert (manifest["partitions"], manifest["replicas"]) == (partitions, kafka.replication_factor), name
        for key, value in topic_config(spec, kafka.max_message_bytes, kafka.min_insync_replicas).items():
            assert str(manifest["config"].get(key)) == value, f"{name}: {key} {manifest['config'].get(key)} != {value}"
    assert topics == {}, f"topics.yaml has topics the pipeline does not create: {sorted(topics)}"


def test_more_insync_replicas_than_replicas_is_refused() -> None:
    with pytest.raises(ValidationError, match="min_insync_replicas"):
        KafkaSettings(replication_factor=1, min_insync_replicas=2)
