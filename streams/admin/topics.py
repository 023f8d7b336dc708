"""The pipeline's topics and their creation (confluent-kafka admin API)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka.admin import AdminClient, NewTopic

from streams.kafka_clients import Brokers, librdkafka

# the names and their properties live in the topology table (streams.topology); re-exported here
from streams.topology import (
    CODEBOOKS_CONTROL,
    DATA_TOPICS,
    EMBEDDINGS_AUDIO,
    EMBEDDINGS_KEPT,
    EMBEDDINGS_TEXT,
    INTERACTIONS,
    SIDS_ASSIGNED,
    SIDS_IDENTITY,
    TOPIC_TABLE,
    TRACKS_AUDIO,
    TRACKS_METADATA,
    TopicSpec,
    dlq,
)

log = logging.getLogger(__name__)


__all__ = ["CODEBOOKS_CONTROL", "DATA_TOPICS", "EMBEDDINGS_AUDIO", "EMBEDDINGS_KEPT", "EMBEDDINGS_TEXT", "INTERACTIONS",
           "SIDS_ASSIGNED", "SIDS_IDENTITY", "TRACKS_AUDIO", "TRACKS_METADATA", "TopicNames", "create_topics", "dlq",
           "delete_topics", "wait_until_ready"]


@dataclass(frozen=True)
class TopicNames:
    """Concrete topic names under an optional prefix (tests use a fresh prefix per test)."""

    prefix: str = ""

    def name(self, base: str) -> str:
        return f"{self.prefix}{base}"

    @property
    def metadata(self) -> str:
        return self.name(TRACKS_METADATA)

    @property
    def audio(self) -> str:
        return self.name(TRACKS_AUDIO)

    @property
    def emb_text(self) -> str:
        return self.name(EMBEDDINGS_TEXT)

    @property
    def emb_audio(self) -> str:
        return self.name(EMBEDDINGS_AUDIO)

    @property
    def sids(self) -> str:
        return self.name(SIDS_ASSIGNED)

    @property
    def interactions(self) -> str:
        return self.name(INTERACTIONS)

    @property
    def control(self) -> str:
        return self.name(CODEBOOKS_CONTROL)

    @property
    def kept(self) -> str:
        return self.name(EMBEDDINGS_KEPT)

    @property
    def identity(self) -> str:
        return self.name(SIDS_IDENTITY)

    def dlqs(self) -> list[str]:
        return [dlq(self.name(t)) for t in DATA_TOPICS]

    def all(self) -> list[str]:
        """Every topic of TOPIC_TABLE under the prefix, and the data topics' dead-letter twins."""
        return [name for _, name in self.specs()]

    def specs(self) -> list[tuple[TopicSpec | None, str]]:
        """(spec, concrete name) of every topic; a dead-letter topic's spec is None."""
        data = [(t, self.name(t.name)) for t in TOPIC_TABLE if t.data]
        other = [(t, self.name(t.name)) for t in TOPIC_TABLE if not t.data]
        return [*data, *((None, dlq(name)) for _, name in data), *other]


def topic_config(spec: TopicSpec | None, max_message_bytes: int, min_insync_replicas: int) -> dict[str, str]:
    """The broker config of one pipeline topic (`create_topics`; deploy/k8s/topics.yaml holds the same)."""
    # records carry inline audio, and dead letters carry the original bytes: allow large ones
    config = {"max.message.bytes": str(max_message_bytes), "min.insync.replicas": str(min_insync_replicas)}
    if spec is not None and spec.compacted:
        # kept: the latest embedding per (track, modality); identity: every claim (keys hold the track)
        config["cleanup.policy"] = "compact"
    return config


def create_topics(
    bootstrap: Brokers, names: TopicNames, partitions: int, timeout_s: float = 30.0, max_message_bytes: int = 16 * 1024 * 1024,
    replication_factor: int = 1, min_insync_replicas: int = 1,
) -> list[str]:
    """Create every pipeline topic that does not exist yet, with `replication_factor` replicas and
    `min_insync_replicas`; returns the names created."""
    admin = AdminClient(librdkafka(bootstrap))
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    wanted = []
    for spec, topic in names.specs():
        if topic in existing:
            continue
        # the control topic is a single ordered log; everything else is keyed by track/user id
        n = 1 if spec is not None and spec.single_partition else partitions
        config = topic_config(spec, max_message_bytes, min_insync_replicas)
        wanted.append(NewTopic(topic, num_partitions=n, replication_factor=replication_factor, config=config))
    if not wanted:
        return []
    futures = admin.create_topics(wanted, operation_timeout=timeout_s)
    created = []
    for topic, fut in futures.items():
        try:
            fut.result(timeout=timeout_s)
            created.append(topic)
        except Exception as exc:  # noqa: BLE001
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    wait_until_ready(admin, created, timeout_s)
    log.info("created %d topics (%d partitions each)", len(created), partitions)
    return created


def message_limits(bootstrap: Brokers, topics: list[str], timeout_s: float = 10.0) -> dict[str, int]:
    """Each topic's `max.message.bytes` as the broker reports it (topics it cannot describe are left
    out): a dead letter is sized against its DLQ topic's real limit, which a cluster built from
    other manifests may set lower than the settings."""
    if not topics:
        return {}
    # a broker that has not applied a new topic's metadata yet is asked again for 3 s; a topic
    # that really does not exist is then left out (its dead letters are sized by the settings)
    configs = describe_topic_configs(AdminClient(librdkafka(bootstrap)), topics, timeout_s, strict=False, unknown_retry_s=3.0)
    for t in topics:
        if t not in configs:
            log.warning("max.message.bytes of %s unknown: dead letters sized against the settings", t)
    return {t: int(c["max.message.bytes"].value) for t, c in configs.items()}


def describe_topic_configs(admin: Any, topics: list[str], timeout_s: float = 20.0, strict: bool = True,
                           unknown_retry_s: float | None = None) -> dict[str, Any]:
    """Each topic's configs as a broker reports them. DescribeConfigs goes to any broker, and one
    that has not yet applied the controller's metadata for a new topic answers "unknown topic or
    partition": those topics are asked again, every 0.5 s, for `unknown_retry_s` (default
    `timeout_s`). Then (or at any other error) `strict` raises; otherwise the topics not described
    are left out."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import ConfigResource

    out: dict[str, Any] = {}
    deadline = time.monotonic() + (timeout_s if unknown_retry_s is None else unknown_retry_s)
    while True:
        missing = []
        asked = [ConfigResource("topic", t) for t in topics if t not in out]
        for resource, fut in admin.describe_configs(asked, request_timeout=timeout_s).items():
            try:
                out[resource.name] = fut.result(timeout=timeout_s)
            except Exception as exc:  # noqa: BLE001 - any other error (a timeout too): raised when strict, else left out
                unknown = isinstance(exc, KafkaException) and exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART
                if unknown and time.monotonic() < deadline:
                    missing.append(resource.name)
                elif strict:
                    raise
                else:
                    log.warning("configs of topic %s not described: %s", resource.name, exc)
        if not missing:
            return out
        time.sleep(0.5)


def wait_until_ready(admin: Any, topics: list[str], timeout_s: float = 30.0) -> None:
    """Return once every topic is in the broker's metadata with a leader for each partition.

    A create request is acknowledged when the controller has the topic; a freshly started
    broker can still answer a metadata request without it for a moment, and a worker that
    looked then failed at start (the demo once did: "identity topic ... does not exist")."""
    deadline = time.monotonic() + timeout_s
    missing = list(topics)
    while missing:
        meta = admin.list_topics(timeout=max(1.0, deadline - time.monotonic())).topics
        missing = [t for t in missing if not _ready(meta.get(t))]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics not ready after {timeout_s:.0f}s: {sorted(missing)}")
        time.sleep(0.05)


def _ready(meta: Any) -> bool:
    return (meta is not None and meta.error is None and bool(meta.partitions)
            and all(p.leader >= 0 and p.error is None for p in meta.partitions.values()))


def delete_topics(bootstrap: Brokers, topics: list[str], timeout_s: float = 30.0) -> None:
    admin = AdminClient(librdkafka(bootstrap))
    if not topics:
        return
    for fut in admin.delete_topics(topics, operation_timeout=timeout_s).values():
        try:
            fut.result(timeout=timeout_s)
        except Exception:  # noqa: BLE001 - best effort clean-up
            pass
