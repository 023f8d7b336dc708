"""The codebook control topic: a promoted codebook version is published here so that
assigners reload at once instead of at their next registry poll."""

from __future__ import annotations

from confluent_kafka import Producer

from streams import avro_codec
from streams.kafka_clients import Brokers, librdkafka
from streams.records import now_ms


class PublishError(RuntimeError):
    """The control record was not delivered."""


def publish_codebook_version(bootstrap: Brokers, topic: str, version: str, path: str, timeout_s: float = 15.0) -> None:
    producer = Producer(librdkafka(bootstrap))
    value = avro_codec.encode("CodebookControl", {"codebook_version": version, "path": path, "event_time": now_ms()})
    producer.produce(topic, key=version.encode(), value=value)
    if producer.flush(timeout_s):
        raise PublishError(f"control record for {version} not delivered to {topic} within {timeout_s:.0f}s")
