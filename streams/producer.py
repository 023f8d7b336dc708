"""Producing catalog records (metadata, audio) with confluent-kafka, Avro single-object encoded,
and embeddings computed outside the pipeline (a user's own encoder) as `Embedding` records."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from confluent_kafka import Producer

from sidcore.catalog import Track
from streams import avro_codec
from streams.kafka_clients import Brokers, data_path_timeouts, librdkafka
from streams.records import now_ms

MODALITIES = ("text", "audio")  # the Embedding schema's Modality symbols


def checked_embeddings(modality: str, track_ids: Sequence[str], X: np.ndarray, model_id: str, dim: int | None = None) -> np.ndarray:
    """`X` as little-endian float32 [len(track_ids), d] after checking it as a whole (ValueError
    naming the problem): a known modality, a model id, non-empty track ids, a 2-d numeric array
    with one row per id, `dim` columns when given, and only finite values (after the cast)."""
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")
    if not model_id.strip():
        raise ValueError("an embedding needs the model id of the encoder that computed it")
    if any(not t for t in track_ids):
        raise ValueError("an empty track id")
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] == 0:
        raise ValueError(f"embeddings must be a 2-d array [n, dim], got shape {X.shape}")
    if X.shape[0] != len(track_ids):
        raise ValueError(f"{X.shape[0]} embedding rows for {len(track_ids)} track ids")
    if dim is not None and X.shape[1] != dim:
        raise ValueError(f"{modality} embeddings have dim {X.shape[1]}, expected {dim}")
    if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
        raise ValueError(f"embeddings must be numbers, got dtype {X.dtype}")
    with np.errstate(over="ignore"):
        V = np.ascontiguousarray(X, dtype="<f4")
    bad = ~np.isfinite(V).all(axis=1)
    if bad.any():
        first = track_ids[int(np.flatnonzero(bad)[0])]
        raise ValueError(f"{int(bad.sum())} {modality} embedding(s) with NaN/inf (or beyond float32), the first for track {first!r}")
    return V


def embedding_records(
    modality: str, track_ids: Sequence[str], X: np.ndarray, model_id: str, event_time: int,
    ingest_times: Mapping[str, int] | None = None, dim: int | None = None,
) -> list[tuple[bytes, bytes]]:
    """(key, value) `Embedding` records of `modality` for the rows of `X` (one per track id),
    tagged with `model_id`: what an encoder worker emits, for embeddings computed elsewhere.
    Nothing is encoded unless the whole array passes `checked_embeddings`; the assigner still
    checks each record against the live codebook (dim, model id)."""
    V = checked_embeddings(modality, track_ids, X, model_id, dim)
    times = ingest_times or {}
    d = int(V.shape[1])
    return [(t.encode(), avro_codec.encode("Embedding", {
        "track_id": t, "event_time": event_time, "modality": modality, "model_id": model_id, "dim": d,
        "vector": row.tobytes(), "ingest_time": times.get(t, event_time)})) for t, row in zip(track_ids, V, strict=True)]


class TrackProducer:
    def __init__(
        self, bootstrap: Brokers, metadata_topic: str, audio_topic: str, inline_audio_max_bytes: int = 0, max_message_bytes: int = 16 * 1024 * 1024,
        embedding_topics: Mapping[str, str] | None = None,
    ) -> None:
        self._producer = Producer(
            librdkafka(bootstrap, {"linger.ms": 5, "enable.idempotence": True, "acks": "all", "message.max.bytes": max_message_bytes,
                                   **data_path_timeouts(bootstrap, producer=True)})
        )
        self.metadata_topic = metadata_topic
        self.audio_topic = audio_topic
        self.inline_audio_max_bytes = inline_audio_max_bytes
        self.embedding_topics = dict(embedding_topics or {})  # modality -> embeddings.<modality> topic
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

    def send_embeddings(
        self, modality: str, track_ids: Sequence[str], X: np.ndarray, model_id: str, *,
        ingest_times: Mapping[str, int] | None = None, dim: int | None = None, event_time: int | None = None,
    ) -> int:
        """Produce embeddings computed outside the pipeline (e.g. your own audio encoder) to
        embeddings.<modality>, one `Embedding` record per track tagged with `model_id`; the
        assigner codes them like an encoder worker's, and dead-letters them (`model_mismatch`)
        when the live codebook was fitted on another model id. `ingest_times`: track_id -> the
        time its metadata was produced (send_metadata's return), for end-to-end latency.
        Validated as a whole first (embedding_records); returns the number of records."""
        topic = self.embedding_topics.get(modality)
        if topic is None:
            raise ValueError(f"this producer has no embeddings topic for {modality!r} (has: {', '.join(self.embedding_topics) or 'none'})")
        records = embedding_records(modality, track_ids, X, model_id, event_time or now_ms(), ingest_times, dim)
        for key, value in records:
            self._producer.produce(topic, key=key, value=value, on_delivery=self._on_delivery)
            self._producer.poll(0)
        return len(records)

    def send_audio_embeddings(self, track_ids: Sequence[str], X: np.ndarray, model_id: str, *,
                              ingest_times: Mapping[str, int] | None = None, dim: int | None = None) -> int:
        """`send_embeddings("audio", ...)`: your own audio encoder's outputs, in place of the audio worker's."""
        return self.send_embeddings("audio", track_ids, X, model_id, ingest_times=ingest_times, dim=dim)

    def send_raw(self, topic: str, key: bytes, value: bytes) -> None:
        self._producer.produce(topic, key=key, value=value, on_delivery=self._on_delivery)

    def flush(self, timeout_s: float = 30.0) -> None:
        left = self._producer.flush(timeout_s)
        if left:
            raise RuntimeError(f"{left} records not delivered within {timeout_s}s")
        if self.errors:
            raise RuntimeError(f"delivery failed: {self.errors[:3]}")
