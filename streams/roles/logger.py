"""The interaction logger role: interactions (Interaction) -> the interaction log (Parquet,
exactly once) and each user's last positives in the Faust table user-history, whose changed rows
go to the Feast feature view user_history.

A record that does not decode or whose label is not 0/1 is dead-lettered with the reason."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faust

from streams.event_time import DEFAULT_POLICY, TimePolicy, admit
from streams.records import BatchResult, DeadLetter, RawRecord, decode_or_dead
from streams.runtime import RoleHandler, Runtime
from streams.sinks.interaction_log import InteractionLog
from streams.sinks.writer import FeastSink, UserHistoryRow
from streams.state import OfflineLogsState, RestorableState, TableState

HISTORY_LEN = 20
HISTORY_TABLE = "user-history"


def decode_interactions(records: Sequence[RawRecord], policy: TimePolicy = DEFAULT_POLICY
                        ) -> tuple[list[tuple[RawRecord, dict[str, Any]]], list[DeadLetter]]:
    """interactions records -> ((raw, record) pairs, dead letters: undecodable, an event time
    outside `policy`, a label that is not 0 or 1)."""
    ok: list[tuple[RawRecord, dict[str, Any]]] = []
    dead: list[DeadLetter] = []
    for raw in records:
        rec = decode_or_dead(raw, "Interaction", "undecodable interaction", dead)
        if rec is None or not admit(raw, rec, policy, dead, key="user_id"):
            continue
        if rec["label"] not in (0, 1):
            dead.append(DeadLetter(raw, f"label {rec['label']} is not 0 or 1", "bad_label", rec["track_id"]))
            continue
        ok.append((raw, rec))
    return ok, dead


def history_version(stored: Any, rec: dict[str, Any], valid_until_ms: int | None = None) -> dict[str, Any] | None:
    """The user's next history row, or None when `rec` changes nothing (a replay, a negative).

    The row's event time is max(newest positive, previous row's time + 1 ms): it grows with
    every change, so a late, older positive that changes the list still replaces the stored
    row in Feast (whose stores keep only newer rows). Items and a row time later than
    `valid_until_ms` (what `rec`'s source admits) were stored before the event-time policy:
    they are dropped (the history heals with the user's next valid interaction)."""
    if isinstance(stored, list):  # rows written before the time counter existed
        stored = {"items": stored, "written_ms": int(stored[-1][0]) if stored else 0}
    stored = stored or {"items": [], "written_ms": 0}
    if valid_until_ms is not None and int(stored["written_ms"]) > valid_until_ms:
        stored = {"items": [i for i in stored["items"] if int(i[0]) <= valid_until_ms], "written_ms": 0}
    items = update_history(stored["items"], rec)
    if items == stored["items"]:
        return None
    return {"items": items, "written_ms": max(int(items[-1][0]), int(stored["written_ms"]) + 1)}


def update_history(history: list[list[Any]] | None, rec: dict[str, Any]) -> list[list[Any]]:
    """Last HISTORY_LEN positives as [event_time, track_id], time-ordered; replays are no-ops."""
    items = list(history or [])
    if rec["label"] != 1:
        return items
    entry = [rec["event_time"], rec["track_id"]]
    if entry in items:
        return items
    items.append(entry)
    items.sort(key=lambda e: (e[0], e[1]))
    return items[-HISTORY_LEN:]


class LoggerRole(RoleHandler):
    """Order within a batch: the interaction log first (exactly once, so a retry adds nothing),
    then the history table (its changelog records are produced with the batch), then Feast."""

    role = "logger"

    def __init__(self, log_dir: Path, history_sink: FeastSink | None, policy: TimePolicy = DEFAULT_POLICY) -> None:
        self.log_dir, self.history_sink, self.policy = log_dir, history_sink, policy
        self.log = InteractionLog(log_dir)
        self.history: Any = None

    def bind(self, app: faust.App, rt: Runtime) -> None:
        self.history = app.Table(HISTORY_TABLE, default=None, partitions=rt.partitions, key_type=bytes, value_type=bytes)

    def states(self) -> Sequence[RestorableState]:
        return [TableState("user history", self.history), OfflineLogsState()]

    async def process(self, rt: Runtime, raws: list[RawRecord]) -> BatchResult:
        ok, dead = decode_interactions(raws, self.policy)
        logged = await rt.blocking(self.role, self.log.write, [rec for _, rec in ok],
                                   [(raw.topic, raw.partition, raw.offset) for raw, _ in ok])
        changed: dict[str, tuple[RawRecord, dict[str, Any]]] = {}
        for raw, rec in ok:
            key = rec["user_id"].encode()
            rt.make_current(self.role, raw)  # the table's changelog write goes to this record's partition
            stored = self.history.get(key)
            updated = history_version(json.loads(stored) if stored else None, rec, self.policy.upper(raw))
            if updated is None:
                continue  # a replay or a negative: the stored list stands
            self.history[key] = json.dumps(updated).encode()
            changed[rec["user_id"]] = (raw, updated)
        if changed and self.history_sink is not None:
            # a row's time may pass its newest positive by 1 ms per late change (history_version):
            # its bound allows HISTORY_LEN such steps beyond what the record admits
            rows = [UserHistoryRow(u, h["written_ms"], tuple(t for _, t in h["items"]), self.policy.upper(raw) + HISTORY_LEN)
                    for u, (raw, h) in changed.items()]
            sources = [(raw.topic, raw.partition, raw.offset) for raw, _ in changed.values()]
            written = await rt.blocking(self.role, self.history_sink.write_history, rows, sources)
            for row, reason in written.rejected:  # the user's last record of the batch carries the reason
                dead.append(DeadLetter(changed[row.user_id][0], f"user {row.user_id}: the online store rejected the "
                                       f"history row: {reason}", "store_rejected", None))
        result = BatchResult(dead=dead, stored=len(ok))
        result.supersede("already_logged", logged.superseded)
        return result
