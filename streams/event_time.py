"""One event-time policy, applied where records enter (decoded, before anything is kept).

An event time is accepted when it lies in ``[min_event_time_ms, record timestamp +
max_future_skew_s]``. The upper bound is taken against the Kafka record's own timestamp (carried
in `RawRecord.timestamp_ms`), not the wall clock, so a replay decides the same way; a record
without a timestamp is held to ``max_event_time_ms`` alone. Every time that passes is at most
2^53 - 1 ms (`max_event_time_ms`, which settings cannot raise above it), so no later arithmetic (a SID's time is the newest modality's + 1 ms, a history row's
the previous row's + 1 ms) can overflow Avro's long or pandas' nanosecond range.

`ingest_time` only feeds latency figures: a value outside ``[0, the record's timestamp]`` (or,
without one, outside the event-time bounds) is clamped into that range and counted
(`sidstream_clamped_total{field="ingest_time"}`), not dead-lettered: the track's content is good.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streams import metrics
from streams.records import DeadLetter, RawRecord

BAD_EVENT_TIME = "bad_event_time"
# a record timestamp the broker or a producer may leave unset (Kafka's NO_TIMESTAMP is -1)
_NO_TIMESTAMP = 0


@dataclass(frozen=True)
class TimePolicy:
    """The accepted range of event times (settings.stream: min_event_time_ms, max_future_skew_s,
    max_event_time_ms)."""

    min_event_time_ms: int
    max_future_skew_ms: int
    max_event_time_ms: int

    @classmethod
    def from_settings(cls, stream: Any) -> TimePolicy:
        return cls(int(stream.min_event_time_ms), int(stream.max_future_skew_s * 1000), int(stream.max_event_time_ms))

    def upper(self, raw: RawRecord) -> int:
        """The latest event time `raw` may carry."""
        ts = raw.timestamp_ms
        if ts is None or ts <= _NO_TIMESTAMP:
            return self.max_event_time_ms
        return min(self.max_event_time_ms, ts + self.max_future_skew_ms)

    def problem(self, raw: RawRecord, event_time: int) -> str | None:
        """Why `event_time` is refused (naming the value and the bounds), or None."""
        low, high = self.min_event_time_ms, self.upper(raw)
        if low <= event_time <= high:
            return None
        basis = "the record's timestamp + max_future_skew_s" if high < self.max_event_time_ms else "max_event_time_ms"
        return f"event_time {event_time} is outside [{low}, {high}] (min_event_time_ms; {basis})"

    def ingest_time(self, raw: RawRecord, ingest_time: int) -> int:
        """`ingest_time` clamped into [0, the record's timestamp or the upper bound]; counted when changed."""
        ts = raw.timestamp_ms
        high = ts if ts is not None and ts > _NO_TIMESTAMP else self.max_event_time_ms
        clamped = min(max(int(ingest_time), 0), high)
        if clamped != ingest_time:
            metrics.CLAMPED.labels("ingest_time").inc()
        return clamped


# Tests and offline tools that build batches without settings: the defaults of settings.stream.
MAX_SAFE_MS = 2**53 - 1  # below pandas' nanosecond limit (year 2262) and far below int64's
DEFAULT_POLICY = TimePolicy(min_event_time_ms=1, max_future_skew_ms=3_600_000, max_event_time_ms=MAX_SAFE_MS)


def admit(raw: RawRecord, rec: dict[str, Any], policy: TimePolicy, dead: list[DeadLetter], key: str = "track_id") -> bool:
    """The edge check of a decoded record: False after adding a `bad_event_time` dead letter;
    True with `rec["ingest_time"]` (when it has one) clamped into range."""
    problem = policy.problem(raw, int(rec["event_time"]))
    if problem is not None:
        dead.append(DeadLetter(raw, f"{key.split('_')[0]} {rec[key]}: {problem}", BAD_EVENT_TIME, rec.get("track_id")))
        return False
    if "ingest_time" in rec:
        rec["ingest_time"] = policy.ingest_time(raw, int(rec["ingest_time"]))
    return True
