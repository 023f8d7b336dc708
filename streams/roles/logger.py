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

from streams.records import BatchResult, DeadLetter, RawRecord, decode_or_dead
from streams.runtime import RoleHandler, Runtime
from streams.sinks.interaction_log import write_interactions
from streams.sinks.writer import FeastSink, UserHistoryRow
from streams.state import RestorableState, TableState

HISTORY_LEN = 20
HISTORY_TABLE = "user-history"


def decode_interactions(records: Sequence[RawRecord]) -> tuple[list[tuple[RawRecord, dict[str, Any]]], list[DeadLetter]]:
    ok: list[tuple[RawRecord, dict[str, Any]]] = []
    dead: list[DeadLetter] = []
    for raw in records:
        rec = decode_or_dead(raw, "Interaction", "undecodable interaction", dead)
        if rec is None:
            continue
        if rec["label"] not in (0, 1):
            dead.append(DeadLetter(raw, f"label {rec['label']} is not 0 or 1", "bad_label", rec["track_id"]))
            continue
        ok.append((raw, rec))
    return ok, dead


def history_version(stored: Any, rec: dict[str, Any]) -> dict[str, Any] | None:
    """The user's next history row, or None when `rec` changes nothing (a replay, a negative).

    The row's event time is max(newest positive, previous row's time + 1 ms): it grows with
    every change, so a late, older positive that changes the list still replaces the stored
    row in Feast (whose stores keep only newer rows)."""
    if isinstance(stored, list):  # rows written before the time counter existed
        stored = {"items": stored, "written_ms": int(stored[-1][0]) if stored else 0}
    stored = stored or {"items": [], "written_ms": 0}
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

    def __init__(self, log_dir: Path, history_sink: FeastSink | None) -> None:
        self.log_dir, self.history_sink = log_dir, history_sink
        self.history: Any = None

    def bind(self, app: faust.App, rt: Runtime) -> None:
        self.history = app.Table(HISTORY_TABLE, default=None, partitions=rt.partitions, key_type=bytes, value_type=bytes)

    def states(self) -> Sequence[RestorableState]:
        return [TableState("user history", self.history)]

    async def process(self, rt: Runtime, raws: list[RawRecord]) -> BatchResult:
        ok, dead = decode_interactions(raws)
        await rt.blocking(self.role, write_interactions, self.log_dir, [rec for _, rec in ok])
        changed: dict[str, dict[str, Any]] = {}
        for raw, rec in ok:
            key = rec["user_id"].encode()
            rt.make_current(self.role, raw)  # the table's changelog write goes to this record's partition
            stored = self.history.get(key)
            updated = history_version(json.loads(stored) if stored else None, rec)
            if updated is None:
                continue  # a replay or a negative: the stored list stands
            self.history[key] = json.dumps(updated).encode()
            changed[rec["user_id"]] = updated
        if changed and self.history_sink is not None:
            rows = [UserHistoryRow(u, h["written_ms"], tuple(t for _, t in h["items"])) for u, h in changed.items()]
            await rt.blocking(self.role, self.history_sink.write_history, rows)
        return BatchResult(dead=dead, stored=len(ok))
