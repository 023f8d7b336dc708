"""Unique IDs: an append-only SQLite registry giving colliding items a stable suffix.

The first item seen with a full SID gets suffix 0, the next distinct item with the same
SID suffix 1, and so on; (item, SID) -> suffix never changes once written, so re-registering
is idempotent. Lookups are primary-key hits (O(1) per item, amortised); a batch is one
transaction with executemany.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np

from psrq.base import I64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sid_suffix (
    item_id TEXT NOT NULL,
    sid TEXT NOT NULL,
    suffix INTEGER NOT NULL,
    PRIMARY KEY (item_id, sid),
    UNIQUE (sid, suffix)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sid_next (sid TEXT PRIMARY KEY, next_suffix INTEGER NOT NULL) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS sid_suffix_append_only_update BEFORE UPDATE ON sid_suffix
BEGIN SELECT RAISE(ABORT, 'sid_suffix is append-only'); END;
CREATE TRIGGER IF NOT EXISTS sid_suffix_append_only_delete BEFORE DELETE ON sid_suffix
BEGIN SELECT RAISE(ABORT, 'sid_suffix is append-only'); END;
"""

_CHUNK = 500  # bound on SQL variables per statement


def sid_key(codes: Any) -> list[str]:
    """Text keys of full SIDs ("12-3-45")."""
    arr = np.asarray(codes, dtype=np.int64)
    if arr.ndim == 1:
        arr = arr[None, :]
    return ["-".join(map(str, row)) for row in arr.tolist()]


class CollisionRegistry:
    """Durable (SQLite, WAL) map (item_id, full SID) -> suffix."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> CollisionRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _existing(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
        found: dict[tuple[str, str], int] = {}
        for start in range(0, len(pairs), _CHUNK):
            chunk = pairs[start : start + _CHUNK]
            values = ",".join("(?,?)" for _ in chunk)
            flat = [v for pair in chunk for v in pair]
            for item_id, sid, suffix in self._db.execute(
                f"SELECT item_id, sid, suffix FROM sid_suffix WHERE (item_id, sid) IN (VALUES {values})", flat
            ):
                found[(item_id, sid)] = int(suffix)
        return found

    def _next(self, sids: list[str]) -> dict[str, int]:
        nxt: dict[str, int] = {}
        for start in range(0, len(sids), _CHUNK):
            chunk = sids[start : start + _CHUNK]
            marks = ",".join("?" for _ in chunk)
            for sid, n in self._db.execute(f"SELECT sid, next_suffix FROM sid_next WHERE sid IN ({marks})", chunk):
                nxt[sid] = int(n)
        return nxt

    def register(self, item_ids: list[str], codes: Any) -> I64:
        """Suffix per item (int64 [n]); new (item, SID) pairs are appended in input order."""
        sids = sid_key(codes)
        if len(sids) != len(item_ids):
            raise ValueError(f"{len(item_ids)} item ids for {len(sids)} SIDs")
        pairs = list(zip((str(i) for i in item_ids), sids, strict=True))
        with self._db:  # one transaction
            known = self._existing(list(dict.fromkeys(pairs)))
            fresh = [p for p in dict.fromkeys(pairs) if p not in known]
            if fresh:
                nxt = self._next(sorted({sid for _, sid in fresh}))
                rows = []
                for item_id, sid in fresh:
                    suffix = nxt.get(sid, 0)
                    nxt[sid] = suffix + 1
                    known[(item_id, sid)] = suffix
                    rows.append((item_id, sid, suffix))
                self._db.executemany("INSERT INTO sid_suffix (item_id, sid, suffix) VALUES (?,?,?)", rows)
                touched = {sid for _, sid, _ in rows}
                self._db.executemany(
                    "INSERT INTO sid_next (sid, next_suffix) VALUES (?,?) "
                    "ON CONFLICT(sid) DO UPDATE SET next_suffix = excluded.next_suffix",
                    [(sid, nxt[sid]) for sid in touched],
                )
        return np.fromiter((known[p] for p in pairs), dtype=np.int64, count=len(pairs))

    def lookup(self, item_id: str, codes: Any) -> int | None:
        """The suffix of (item, SID), or None if never registered."""
        found = self._existing([(str(item_id), sid_key(codes)[0])])
        return next(iter(found.values()), None)

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM sid_suffix").fetchone()[0])


def unique_ids(codes: Any, suffixes: I64) -> I64:
    """[n, L + 1]: the SID with its collision suffix appended."""
    arr = np.asarray(codes, dtype=np.int64)
    return np.concatenate([arr, np.asarray(suffixes, dtype=np.int64)[:, None]], axis=1)
