"""The Feast writer: SID and user-history rows into the online store and the offline log.

One write rule for every online store: a row replaces the stored row of its entity only if
its event time is strictly newer. Redis enforces that itself; SQLite would overwrite, and it
keeps event times to the whole second only, so each view also stores its rows' event time in
milliseconds as a feature (`sid_event_time_ms`, `history_event_time_ms`). The sink reads those
first and drops stale rows, which also makes a replayed batch a no-op (at-least-once delivery,
idempotent sink) on either store. Store set-up is streams.sinks.store, reads streams.sinks.reader,
the views' schemas streams.sinks.schema (derived from feature_repo/).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from feast import FeatureStore

from streams.event_time import MAX_SAFE_MS
from streams.sinks.contract import SourceRef, WriteResult
from streams.sinks.offline import OfflineLog
from streams.sinks.reader import stored_order
from streams.sinks.schema import HISTORY_VIEW, SID_VIEW, ViewSpec, view_spec
from streams.sinks.store import is_transient_store_error, store_lock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SidRow:
    """One track's SIDs under one codebook version. A row replaces the whole stored row, so
    a later row (e.g. once audio arrived) must carry every modality again."""

    track_id: str
    event_time_ms: int
    codebook_version: str
    text_sid: tuple[int, ...] | None
    audio_sid: tuple[int, ...] | None
    joint_sid: tuple[int, ...] | None
    text_model_id: str = ""
    audio_model_id: str = ""
    # the source records' offsets (Embedding.source_offset): between rows of equal event time the
    # greater (text_offset, audio_offset) wins, the log's order; -1 unknown or none
    text_offset: int = -1
    audio_offset: int = -1
    # the latest event time its source record admits (streams.event_time): a stored row newer
    # than this was stored before the policy existed and never wins against this row
    valid_until_ms: int | None = None

    @classmethod
    def from_record(cls, rec: dict[str, Any], valid_until_ms: int | None = None) -> SidRow:
        """The row of a decoded SidAssigned record (what the writer and the backfill store)."""

        def sid(v: list[int] | None) -> tuple[int, ...] | None:
            return None if v is None else tuple(int(x) for x in v)

        return cls(rec["track_id"], rec["event_time"], rec["codebook_version"], sid(rec["text_sid"]),
                   sid(rec["audio_sid"]), sid(rec["joint_sid"]), rec["text_model_id"], rec["audio_model_id"],
                   rec.get("text_offset", -1), rec.get("audio_offset", -1), valid_until_ms)


@dataclass(frozen=True)
class UserHistoryRow:
    """A user's last positive track ids, oldest first; event time of the newest interaction."""

    user_id: str
    event_time_ms: int
    history_item_ids: tuple[str, ...]
    valid_until_ms: int | None = None  # as SidRow's


def sid_str(sid: Sequence[int] | None) -> str:
    """'12-3-45' for (12, 3, 45); '' when the SID is absent."""
    return "" if sid is None else "-".join(str(int(c)) for c in sid)



def _sid_columns(rows: Sequence[SidRow]) -> dict[str, list[Any]]:
    def sids(attr: str) -> list[list[int] | None]:
        return [None if (s := getattr(r, attr)) is None else [int(c) for c in s] for r in rows]

    return {
        "track_id": [r.track_id for r in rows],
        "event_time_ms": [int(r.event_time_ms) for r in rows],
        "codebook_version": [r.codebook_version for r in rows],
        "text_sid": sids("text_sid"),
        "audio_sid": sids("audio_sid"),
        "joint_sid": sids("joint_sid"),
        "text_sid_str": [sid_str(r.text_sid) for r in rows],
        "audio_sid_str": [sid_str(r.audio_sid) for r in rows],
        "joint_sid_str": [sid_str(r.joint_sid) for r in rows],
        "modalities": [
            ",".join(m for m, s in (("text", r.text_sid), ("audio", r.audio_sid)) if s is not None)
            for r in rows
        ],
        "text_model_id": [r.text_model_id for r in rows],
        "audio_model_id": [r.audio_model_id for r in rows],
        "sid_event_time_ms": [int(r.event_time_ms) for r in rows],
        "sid_text_offset": [int(r.text_offset) for r in rows],
        "sid_audio_offset": [int(r.audio_offset) for r in rows],
    }


def _history_columns(rows: Sequence[UserHistoryRow]) -> dict[str, list[Any]]:
    return {
        "user_id": [r.user_id for r in rows],
        "event_time_ms": [int(r.event_time_ms) for r in rows],
        "history_item_ids": [list(r.history_item_ids) for r in rows],
        "history_len": [len(r.history_item_ids) for r in rows],
        "history_event_time_ms": [int(r.event_time_ms) for r in rows],
    }


def greater(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise lexicographic a > b over int64 [n, k] arrays (the first differing column decides)."""
    differ = a != b
    first = differ.argmax(axis=1)
    rows = np.arange(a.shape[0])
    return differ.any(axis=1) & (a[rows, first] > b[rows, first])


_COLUMNS: dict[str, Callable[[Sequence[Any]], dict[str, list[Any]]]] = {SID_VIEW: _sid_columns, HISTORY_VIEW: _history_columns}


class FeastSink:
    """Writes SID and user-history rows, one call per batch; nothing is buffered across calls,
    so a failed call leaves nothing behind and the caller (which has not acked the batch)
    simply retries it.

    Per entity only the newest row of a batch goes online, and only if it is newer than the
    stored row; those rows go to the offline log exactly once (streams.sinks.offline), written
    before the online row so that a crash in between loses nothing and a replay adds nothing. A transient store
    error propagates (retry); a row the store rejects for any other reason is isolated by
    bisection and returned in `rejected` while the rest of the batch is written.
    """

    def __init__(self, store: FeatureStore, offline_dir: Path | None = None) -> None:
        self.store = store
        source_dir = Path(store.repo_path) / "data" / "offline"
        self.offline_dir = Path(offline_dir) if offline_dir is not None else source_dir
        if self.offline_dir.resolve() != source_dir.resolve():
            log.info("offline Parquet goes to %s, outside Feast's batch sources (%s)", self.offline_dir, source_dir)
        self._logs: dict[str, OfflineLog] = {}

    def _offline(self, view: ViewSpec) -> OfflineLog:
        if view.name not in self._logs:
            self._logs[view.name] = OfflineLog(self.offline_dir / view.name, view.offline_key, view.schema)
        return self._logs[view.name]

    def warm_up(self) -> None:
        """Pay the first call's costs before the first batch: the registry and online-store
        connection (a read of an id no track has) and the offline log's index. Writes nothing."""
        view = view_spec(SID_VIEW)
        with store_lock(self.store):
            stored_order(self.store, view, [{k: "__warm_up__" for k in view.join_keys}])
        self._offline(view)

    def write(self, rows: Sequence[SidRow], sources: Sequence[SourceRef] | None = None) -> WriteResult:
        """`sources`: the Kafka record each row came from (topic, partition, offset), aligned with
        the rows: the offline log's exactly-once key (streams.sinks.offline); None (the backfill)."""
        return self._write_isolating(view_spec(SID_VIEW), list(rows), None if sources is None else list(sources))

    def write_history(self, rows: Sequence[UserHistoryRow], sources: Sequence[SourceRef] | None = None) -> WriteResult:
        return self._write_isolating(view_spec(HISTORY_VIEW), list(rows), None if sources is None else list(sources))

    def _write_isolating(self, view: ViewSpec, rows: list[Any], sources: list[SourceRef] | None) -> WriteResult:
        result = WriteResult()
        if not rows:
            return result
        try:
            with store_lock(self.store):
                online, offline, superseded = self._write(view, rows, sources)
            result.online += online
            result.offline += offline
            result.superseded += superseded
        except Exception as exc:
            if is_transient_store_error(exc):
                raise
            if len(rows) == 1:
                result.rejected.append((rows[0], f"{type(exc).__name__}: {exc}"))
                return result
            half = len(rows) // 2
            for part, part_sources in ((rows[:half], None if sources is None else sources[:half]),
                                       (rows[half:], None if sources is None else sources[half:])):
                sub = self._write_isolating(view, part, part_sources)
                result.online += sub.online
                result.offline += sub.offline
                result.superseded += sub.superseded
                result.rejected.extend(sub.rejected)
        return result

    def _write(self, view: ViewSpec, rows: Sequence[Any], sources: Sequence[SourceRef] | None = None) -> tuple[int, int, int]:
        """(rows written online, rows appended offline, rows superseded)."""
        t0 = time.perf_counter()
        df = pd.DataFrame(_COLUMNS[view.name](rows))
        valid_until = np.array([MAX_SAFE_MS if r.valid_until_ms is None else r.valid_until_ms for r in rows], dtype=np.int64)
        # the greatest row per entity by (event time, tie-breaks: the source records' offsets); on
        # equal orders the row added last wins
        keys, order = list(view.join_keys), ["event_time_ms", *view.tie_features]
        df = df.sort_values(order, kind="stable").drop_duplicates(keys, keep="last")
        stored = stored_order(self.store, view, df[keys].to_dict("records"))
        # a stored time beyond what the new row's source admits was stored before the event-time
        # policy: it never wins (the row is overwritten, on SQLite and on Redis with skip_dedup)
        poisoned = stored[:, 0] > valid_until[df.index.to_numpy()]
        stored[poisoned] = [0, *([-1] * len(view.tie_features))]
        df = df[greater(df[order].to_numpy(dtype=np.int64), stored)]
        kept_sources = None if sources is None else [sources[i] for i in df.index.to_numpy()]
        df = df.reset_index(drop=True)
        superseded = len(rows) - len(df)
        if df.empty:
            return 0, 0, superseded
        df.insert(1, "event_time", pd.to_datetime(df.pop("event_time_ms"), unit="ms", utc=True))
        # offline first: a crash before the online write leaves the rows fresh, so the replay
        # writes them online and the offline log (keyed) does not take them twice
        offline = self._offline(view).append(df, kept_sources)
        self.store.write_to_online_store(view.name, df[[*keys, "event_time", *view.features]])
        log.debug("%s: %d of %d rows online, %d offline in %.1f ms", view.name, len(df), len(rows), offline,
                  1000 * (time.perf_counter() - t0))
        return len(df), offline, superseded
