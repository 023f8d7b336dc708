"""The one contract of sidstream's sinks: `write(rows, sources) -> WriteResult`, and `warm_up()`.

A sink writes one batch per call and buffers nothing across calls, so a failed call leaves
nothing behind and the caller, which has not acked the batch, retries it. A transient store error
propagates (retry); a row refused for good comes back in `rejected` with its reason, and the
role turns it into a dead letter (streams.records.DeadLetter). `sources` are the Kafka records the
rows came from (topic, partition, offset), aligned with the rows: the offline logs' exactly-once
key (streams.sinks.offline). Implementations: streams.sinks.writer.FeastSink (SID and
user-history rows: online + offline) and streams.sinks.interaction_log.InteractionLog (the
interaction log, offline only)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

SourceRef = tuple[str, int, int]  # the Kafka record a row came from: topic, partition, offset


@dataclass
class WriteResult:
    """What one write did: rows written online, rows appended offline, and the rows the store
    rejected for good (with the reason), which the caller dead-letters."""

    online: int = 0
    offline: int = 0
    rejected: list[tuple[Any, str]] = field(default_factory=list)
    # rows not written because a row at least as new is there (stored, in the batch, or a replay)
    superseded: int = 0


class Sink(Protocol):
    def write(self, rows: Sequence[Any], sources: Sequence[SourceRef] | None = None) -> WriteResult: ...

    def warm_up(self) -> None: ...
