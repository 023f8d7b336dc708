import uuid

import pytest
from confluent_kafka import Consumer, Producer

from streams.admin.topics import TopicNames, create_topics

pytestmark = pytest.mark.integration


def test_broker_serves_produce_and_consume(kafka_broker):
    names = TopicNames(f"t{uuid.uuid4().hex[:6]}-")
    created = create_topics(kafka_broker.settings.bootstrap, names, partitions=2)
    assert names.metadata in created and names.name("tracks.metadata.dlq") in created
    p = Producer({"bootstrap.servers": kafka_broker.settings.bootstrap})
    for i in range(10):
        p.produce(names.metadata, key=f"k{i}".encode(), value=f"v{i}".encode())
    assert p.flush(10) == 0
    c = Consumer({"bootstrap.servers": kafka_broker.settings.bootstrap, "group.id": "g" + uuid.uuid4().hex, "auto.offset.reset": "earliest"})
    c.subscribe([names.metadata])
    got = set()
    for _ in range(100):
        m = c.poll(0.5)
        if m is not None and not m.error():
            got.add(m.value())
        if len(got) == 10:
            break
    c.close()
    assert got == {f"v{i}".encode() for i in range(10)}
    # creating again is a no-op
    assert create_topics(kafka_broker.settings.bootstrap, names, partitions=2) == []


def test_status_reports_reachable_and_version(kafka_broker):
    st = kafka_broker.status()
    assert st["running"] and st["reachable"] and st["version"].startswith("3.9.")
    ps = open(f"/proc/{st['pid']}/cmdline", "rb").read().decode().replace("\x00", " ")
    assert "kafka.Kafka" in ps


def test_missing_java_gives_clear_error(kafka_broker, monkeypatch, tmp_path):
    from streams.admin.broker import BrokerError, LocalBroker

    monkeypatch.setenv("PATH", str(tmp_path))  # neither mvn nor java
    b = LocalBroker(kafka_broker.settings, tmp_path / "home", tmp_path / "emptycache")
    with pytest.raises(BrokerError, match="not found on PATH"):
        b.resolve_jars()


def test_created_topics_are_ready_when_create_returns(kafka_broker):
    """create_topics waits until each new topic has a leader per partition in the metadata, so a
    worker started right after it finds them (the demo once failed: identity topic missing)."""
    from confluent_kafka.admin import AdminClient

    names = TopicNames(f"r{uuid.uuid4().hex[:6]}-")
    created = create_topics(kafka_broker.settings.bootstrap, names, partitions=3)
    meta = AdminClient({"bootstrap.servers": kafka_broker.settings.bootstrap}).list_topics(timeout=10).topics
    for topic in created:
        assert meta[topic].error is None and meta[topic].partitions
        assert all(p.leader >= 0 for p in meta[topic].partitions.values())


def test_identity_reader_waits_for_its_topic_then_names_it(kafka_broker):
    import time

    from streams.identity import KafkaIdentities

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="identity topic 'no-such-identity' does not exist"):
        KafkaIdentities(kafka_broker.settings.bootstrap, "no-such-identity", timeout_s=1.0)
    assert time.monotonic() - started >= 1.0  # it looked again until its timeout, then failed


def test_message_limits_are_what_the_broker_reports(kafka_broker):
    """A DLQ topic made elsewhere with a lower max.message.bytes than the settings: the runtime
    learns the topic's own limit from the broker (dead letters are sized against it)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    from streams.admin.topics import message_limits, wait_until_ready

    topic = f"limits-{uuid.uuid4().hex[:6]}.dlq"
    admin = AdminClient({"bootstrap.servers": kafka_broker.settings.bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1, config={"max.message.bytes": str(1 << 20)})])[topic].result(30)
    wait_until_ready(admin, [topic])
    assert message_limits(kafka_broker.settings.bootstrap, [topic, "no-such-topic.dlq"]) == {topic: 1 << 20}
