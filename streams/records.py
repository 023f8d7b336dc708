"""Small typed values passed between the Kafka plumbing and the processing functions."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streams import avro_codec


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class RawRecord:
    """A consumed Kafka record as the processing functions see it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None  # the Kafka record's timestamp (None or <= 0: none)


DLQ_EXCERPT_BYTES = 4096
DLQ_OVERHEAD_BYTES = 64 * 1024  # headroom for the dead letter's own fields and Kafka's record overhead


@dataclass(frozen=True)
class DeadLetter:
    source: RawRecord
    reason: str
    error_type: str
    track_id: str | None = None

    def encode(self, worker: str, max_message_bytes: int = 16 * 1024 * 1024) -> bytes:
        """The DeadLetter record; the original value travels whole when it fits in a message of
        `max_message_bytes`, else as its first DLQ_EXCERPT_BYTES with size and sha256."""
        value = self.source.value
        key = self.source.key
        fits = value is None or len(value) + len(key or b"") + DLQ_OVERHEAD_BYTES <= max_message_bytes
        original = value if fits else value[:DLQ_EXCERPT_BYTES]  # type: ignore[index]
        return avro_codec.encode(
            "DeadLetter",
            {
                "track_id": self.track_id,
                "event_time": now_ms(),
                "source_topic": self.source.topic,
                "partition": self.source.partition,
                "offset": self.source.offset,
                "worker": worker,
                "reason": " ".join(self.reason.split())[:2000],
                "error_type": self.error_type,
                "original": original,
                "original_key": key if key is None or len(key) <= DLQ_EXCERPT_BYTES else key[:DLQ_EXCERPT_BYTES],
                "original_size": -1 if value is None else len(value),
                "original_sha256": "" if value is None else hashlib.sha256(value).hexdigest(),
                "truncated": not fits,
            },
        )


@dataclass
class BatchResult:
    """What one processed batch produces: output records (key, Avro bytes) and dead letters."""

    outputs: list[tuple[bytes, bytes]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    # assigner only: (partition, key, Embedding bytes) for the compacted embeddings.kept topic
    kept: list[tuple[int, bytes, bytes]] = field(default_factory=list)
    # items the batch finished into a sink rather than as outputs (writer, logger): counted as ok
    stored: int = 0
    # items neither output nor dead-lettered because a newer version is already kept or stored,
    # by reason (`sidstream_superseded_total{worker, reason}`): nothing is dropped without a count
    superseded: dict[str, int] = field(default_factory=dict)

    def supersede(self, reason: str, n: int = 1) -> None:
        if n:
            self.superseded[reason] = self.superseded.get(reason, 0) + n


def vector_to_bytes(v: np.ndarray) -> bytes:
    return np.ascontiguousarray(v, dtype="<f4").tobytes()


def vector_from_bytes(b: bytes, dim: int) -> np.ndarray:
    if len(b) != 4 * dim:
        raise ValueError(f"vector has {len(b) // 4} values but dim says {dim}")
    return np.frombuffer(b, dtype="<f4")


def decode_or_dead(raw: RawRecord, schema: str, what: str, dead: list[DeadLetter]) -> dict[str, Any] | None:
    """The record, or None after adding an `undecodable` dead letter naming `what`."""
    try:
        return avro_codec.decode(raw.value, expected=schema)[1]
    except avro_codec.DecodeError as exc:
        dead.append(DeadLetter(raw, f"{what}: {exc}", "undecodable", key_text(raw)))
        return None


def key_text(raw: RawRecord) -> str | None:
    """The record's key as text (a track id), or None when it has none or it is not UTF-8."""
    if raw.key is None:
        return None
    try:
        return raw.key.decode("utf-8")
    except UnicodeDecodeError:
        return None


class RestoreIncomplete(TimeoutError):
    """A state asked to catch up to the high watermark (kept embeddings, identity claims) could not
    get there: no record came for `stall_s` while some were still behind, or the broker did not
    answer. What was read is kept (a retry continues from it); the caller must not act as if the
    state were complete (the assigner does not process, the backfill does not switch versions)."""

    def __init__(self, what: str, behind: dict[int, tuple[int, int]], stall_s: float, cause: str = "") -> None:
        self.what, self.behind, self.stall_s = what, behind, stall_s
        detail = ", ".join(f"partition {p}: at {at} of {high}" for p, (at, high) in sorted(behind.items()))
        super().__init__(f"{what}: not caught up after {stall_s:g} s without progress ({detail or 'watermarks unknown'})"
                         + (f": {cause}" if cause else ""))


def next_messages(consumer: Any, wait_s: float, max_messages: int = 5000) -> list[Any]:
    """What the consumer has ready (up to `max_messages`), else the first message within `wait_s`.

    confluent-kafka's consume(n, timeout) waits out its whole timeout unless n messages came, so it
    only drains what is already here; poll() returns as soon as one message arrives."""
    msgs = consumer.consume(num_messages=max_messages, timeout=0)
    if msgs:
        return list(msgs)
    msg = consumer.poll(wait_s)
    return [] if msg is None else [msg]
