"""The Feast writer role: sids.assigned (SidAssigned) -> the Feast feature view track_sids
(online store, and the offline log), one row per (track, codebook version).

A record that does not decode, or a row the store rejects for good, is dead-lettered with the
reason; a store that is unavailable raises, and the runtime retries the batch un-acked."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from streams import metrics
from streams.event_time import DEFAULT_POLICY, TimePolicy, admit
from streams.records import BatchResult, DeadLetter, RawRecord, decode_or_dead, now_ms
from streams.runtime import RoleHandler, Runtime
from streams.sinks.writer import FeastSink, SidRow
from streams.state import OfflineLogsState, RestorableState


def decode_sid_batch(records: Sequence[RawRecord], policy: TimePolicy = DEFAULT_POLICY
                     ) -> tuple[list[tuple[RawRecord, dict[str, Any]]], list[DeadLetter]]:
    """sids.assigned records -> ((raw, decoded record) pairs, dead letters: undecodable, or an
    event time outside `policy`, which a producer other than the assigner may write)."""
    rows: list[tuple[RawRecord, dict[str, Any]]] = []
    dead: list[DeadLetter] = []
    for raw in records:
        rec = decode_or_dead(raw, "SidAssigned", "undecodable SID record", dead)
        if rec is not None and admit(raw, rec, policy, dead):
            rows.append((raw, rec))
    return rows, dead


def write_sid_batch(records: Sequence[RawRecord], sink: FeastSink, policy: TimePolicy = DEFAULT_POLICY
                    ) -> tuple[BatchResult, list[int]]:
    """Decode, write to the store, and turn the rows it rejected into dead letters. Returns the
    result (dead letters; `stored` rows written; rows superseded by a row at least as new) and
    the written records' ingest times."""
    decoded, dead = decode_sid_batch(records, policy)
    # +1: a SID's time is its newest modality's + (modalities - 1) ms
    rows = [SidRow.from_record(rec, valid_until_ms=policy.upper(raw) + 1) for raw, rec in decoded]
    written = sink.write(rows, [(raw.topic, raw.partition, raw.offset) for raw, _ in decoded])
    source = {id(row): raw for row, (raw, _) in zip(rows, decoded, strict=True)}
    for row, reason in written.rejected:
        metrics.STORE_REJECTED.labels("track_sids").inc()
        dead.append(DeadLetter(source[id(row)], f"track {row.track_id}: the online store rejected the row: {reason}",
                               "store_rejected", row.track_id))
    rejected = {id(row) for row, _ in written.rejected}
    ingest = [rec["ingest_time"] for row, (_, rec) in zip(rows, decoded, strict=True) if id(row) not in rejected]
    result = BatchResult(dead=dead, stored=written.online)
    result.supersede("not_newer_than_stored", written.superseded)
    return result, ingest


class WriterRole(RoleHandler):
    role = "writer"

    def __init__(self, sink: FeastSink, policy: TimePolicy = DEFAULT_POLICY) -> None:
        self.sink, self.policy = sink, policy

    async def process(self, rt: Runtime, raws: list[RawRecord]) -> BatchResult:
        result, ingest_times = await rt.blocking(self.role, write_sid_batch, raws, self.sink, self.policy)
        written_at = now_ms()
        for ingest in ingest_times:
            metrics.PRODUCE_TO_FEAST.observe(max(0, written_at - ingest) / 1000)
        return result

    def warm_up(self) -> None:
        self.sink.warm_up()

    def states(self) -> Sequence[RestorableState]:
        return [OfflineLogsState()]
