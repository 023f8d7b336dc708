"""Producing catalog records (metadata, audio) with confluent-kafka, Avro single-object encoded."""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import Producer

from sidcore.catalog import Track
from streams import avro_codec
from streams.kafka_clients import Brokers, data_path_timeouts, librdkafka
from streams.records import now_ms


class TrackProducer:
    def __init__(
        self, bootstrap: Brokers, metadata_topic: str, audio_topic: str, inline_audio_max_bytes: int = 0, max_message_bytes: int = 16 * 1024 * 1024
    ) -> None:
        self._producer = Producer(
            librdkafka(bootstrap, {"linger.ms": 5, "enable.idempotence": True, "acks": "all", "message.max.bytes": max_message_bytes,
                                   **data_path_timeouts(bootstrap, producer=True)})
        )
        self.metadata_topic = metadata_topic
        self.audio_topic = audio_topic
        self.inline_audio_max_bytes = inline_audio_max_bytes
        self.errors: list[str] = []

    def _on_delivery(self, err: object, msg: object) -> None:
        if err is not None:
            self.errors.append(str(err))

    def send_metadata(self, tracks: Iterable[Track], ingest_time: int | None = None) -> dict[str, int]:
        """Produce one metadata record per track; returns track_id -> ingest time (ms)."""
        sent: dict[str, int] = {}
        for t in tracks:
            ts = ingest_time or now_ms()
            value = avro_codec.encode("TrackMetadata", {"track_id": t.track_id, "event_time": ts, **t.metadata(), "ingest_time": ts})
            self._producer.produce(self.metadata_topic, key=t.track_id.encode(), value=value, on_delivery=self._on_delivery)
            self._producer.poll(0)
            sent[t.track_id] = ts
        return sent

    def send_audio(self, tracks: Iterable[Track], ingest_times: dict[str, int] | None = None) -> int:
        n = 0
        for t in tracks:
            if t.audio_path is None:
                continue
            ts = now_ms()
            record = {"track_id": t.track_id, "event_time": ts, "ingest_time": (ingest_times or {}).get(t.track_id, ts)}
            size = t.audio_path.stat().st_size
            if size <= self.inline_audio_max_bytes:
                record.update(data=t.audio_path.read_bytes(), format=t.audio_path.suffix.lstrip("."))
            else:
                record["uri"] = t.audio_path.resolve().as_uri()
            self._producer.produce(self.audio_topic, key=t.track_id.encode(), value=avro_codec.encode("TrackAudio", record), on_delivery=self._on_delivery)
            self._producer.poll(0)
            n += 1
        return n

    def send_raw(self, topic: str, key: bytes, value: bytes) -> None:
        self._producer.produce(topic, key=key, value=value, on_delivery=self._on_delivery)

    def flush(self, timeout_s: float = 30.0) -> None:
        left = self._producer.flush(timeout_s)
        if left:
            raise RuntimeError(f"{left} records not delivered within {timeout_s}s")
        if self.errors:
            raise RuntimeError(f"delivery failed: {self.errors[:3]}")
