"""Small typed values passed between the Kafka plumbing and the processing functions."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class DeadLetter:
    source: RawRecord
    reason: str
    error_type: str
    track_id: str | None = None

    def encode(self, worker: str) -> bytes:
        return avro_codec.encode(
            "DeadLetter",
            {
                "track_id": self.track_id,
                "event_time": now_ms(),
                "source_topic": self.source.topic,
                "partition": self.source.partition,
                "offset": self.source.offset,
                "worker": worker,
                "reason": self.reason[:2000],
                "error_type": self.error_type,
                "original": self.source.value or b"",
            },
        )


@dataclass
class BatchResult:
    """What one processed batch produces: output records (key, Avro bytes) and dead letters."""

    outputs: list[tuple[bytes, bytes]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)


def vector_to_bytes(v: np.ndarray) -> bytes:
    return np.ascontiguousarray(v, dtype="<f4").tobytes()


def vector_from_bytes(b: bytes, dim: int) -> np.ndarray:
    if len(b) != 4 * dim:
        raise ValueError(f"vector has {len(b) // 4} values but dim says {dim}")
    return np.frombuffer(b, dtype="<f4")
