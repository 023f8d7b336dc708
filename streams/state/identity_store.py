"""The identity claims an assigner has read, on disk: memory bounded, a restart reads only the tail.

`streams.identity.KafkaIdentities` replays the ``sids.identity`` log into the decision rules of
`psrq.identity` (first claim of a code wins; a track's code in a bucket is its first winning
claim). Held in Python dicts that costs about 240 bytes a claim and a re-read of the whole topic
at every start. Here the same rules run on an embedded SQLite file:

- ``claims(version, modality, bucket, code) -> track``: INSERT OR IGNORE in log order, so the
  first claim of a code is the one kept;
- ``held(version, modality, bucket, track) -> code``: a track's first winning claim, INSERT OR
  IGNORE in log order from the claims it won;
- ``applied(partition) -> next offset``: written **in the same transaction** as the rows of the
  claims read up to it, so after a restart or a rebalance the reader starts there and reads only
  the topic's tail, and a crash between the two is impossible.

Memory: SQLite's page cache (`cache_mb`) plus a bounded LRU of the buckets' taken-code masks
(`mask_cache_mb`: one byte a code of a bucket's capacity), whatever the catalogue's size.

Why SQLite (and not LMDB or RocksDB bindings): it is in the standard library (no extra wheel for
every platform the project installs on), the kept embeddings already live in it, a claim apply
is two indexed statements inside one transaction per batch of up to 5,000 claims, and one
process writes each file (a file lock, `slot`, keeps a second assigner on the same home off it).
Its write rate here is about 100k claims/s, above the Avro decode rate of the reader.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from psrq.identity import bucket_full, nearest_free_code


def bucket_text(key: Hashable) -> str:
    return "-".join(str(int(c)) for c in key)  # type: ignore[attr-defined]


def open_slot(folder: Path, name: str = "identity") -> tuple[Path, Any]:
    """The first `<name>-<n>.sqlite` under `folder` that no live process holds (an exclusive
    flock held for this process's life): a restarted assigner gets its old file back, a second
    assigner on the same home gets its own."""
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(64):
        lock = open(folder / f"{name}-{n}.lock", "a")  # noqa: SIM115 - held for the process's life
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        return folder / f"{name}-{n}.sqlite", lock
    raise RuntimeError(f"64 identity stores under {folder} are held by live processes")


class IdentityStore:
    """Claims applied in log order, on disk (`path`; None: in memory, for one-off readers)."""

    def __init__(self, path: Path | None, cache_mb: int = 64, mask_cache_mb: int = 64) -> None:
        self.path = path
        self._conn = sqlite3.connect(":memory:" if path is None else str(path), check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(f"PRAGMA cache_size=-{int(cache_mb) * 1024}")
        self._conn.executescript("""
            CREATE TABLE IF NOT EXISTS claims (version TEXT, modality TEXT, bucket TEXT, code INTEGER, track TEXT,
                                               PRIMARY KEY (version, modality, bucket, code)) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS held (version TEXT, modality TEXT, bucket TEXT, track TEXT, code INTEGER,
                                             PRIMARY KEY (version, modality, bucket, track)) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS capacity (version TEXT, modality TEXT, capacity INTEGER,
                                                 PRIMARY KEY (version, modality));
            CREATE TABLE IF NOT EXISTS applied (topic TEXT, partition INTEGER, next_offset INTEGER,
                                                PRIMARY KEY (topic, partition));
        """)
        self._conn.commit()
        self._masks: OrderedDict[tuple[str, str, str], np.ndarray] = OrderedDict()
        self._mask_bytes, self._mask_limit = 0, int(mask_cache_mb) << 20

    def close(self) -> None:
        self._conn.close()

    def reset(self) -> None:
        """Forget everything (the topic was recreated: its offsets no longer name these claims)."""
        with self._conn:
            for table in ("claims", "held", "capacity", "applied"):
                self._conn.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed names
        self._masks.clear()
        self._mask_bytes = 0

    # -- offsets ------------------------------------------------------------------------------
    def next_offsets(self, topic: str) -> dict[int, int]:
        return {p: o for p, o in self._conn.execute("SELECT partition, next_offset FROM applied WHERE topic = ?", (topic,))}

    # -- applying claims ----------------------------------------------------------------------
    def apply_log(self, topic: str, entries: Sequence[dict[str, Any] | tuple[str, str, str, int, str]],
                  next_offsets: dict[int, int]) -> None:
        """Apply a stretch of the log in order, in one transaction: decoded IdentityClaim records
        (dicts) and tombstones (version, modality, bucket, code, track: a pruned version's claims,
        streams.sinks.prune, deleted from the store); then move the partitions' next offsets."""
        with self._conn:
            run: list[dict[str, Any]] = []
            for entry in entries:
                if isinstance(entry, dict):
                    run.append(entry)
                    continue
                self._insert(run)
                run = []
                self._conn.execute("DELETE FROM claims WHERE version = ? AND modality = ? AND bucket = ? AND code = ? AND track = ?",
                                   entry)
                self._conn.execute("DELETE FROM held WHERE version = ? AND modality = ? AND bucket = ? AND code = ? AND track = ?",
                                   entry)
                mask = self._masks.pop(entry[:3], None)
                if mask is not None:
                    self._mask_bytes -= mask.nbytes
            self._insert(run)
            self._conn.executemany(
                "INSERT INTO applied VALUES (?, ?, ?) ON CONFLICT(topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
                [(topic, p, o) for p, o in next_offsets.items()])

    def apply(self, topic: str, claims: Sequence[dict[str, Any]], next_offsets: dict[int, int]) -> None:
        """Apply decoded IdentityClaim records in log order and move the partitions' next offsets,
        in one transaction."""
        self.apply_log(topic, claims, next_offsets)

    def _insert(self, claims: Sequence[dict[str, Any]]) -> None:
        """Claims in log order (inside the caller's transaction); cached masks follow."""
        if not claims:
            return
        rows = [(c["codebook_version"], c["modality"], bucket_text(c["prefix"]), int(c["code"]), c["track_id"]) for c in claims]
        self._conn.executemany("INSERT OR IGNORE INTO capacity VALUES (?, ?, ?)",
                               {(c["codebook_version"], c["modality"], int(c["capacity"])) for c in claims})
        self._conn.executemany("INSERT OR IGNORE INTO claims VALUES (?, ?, ?, ?, ?)", rows)
        self._conn.executemany(
            "INSERT OR IGNORE INTO held SELECT version, modality, bucket, track, code FROM claims "
            "WHERE version = ? AND modality = ? AND bucket = ? AND code = ? AND track = ?", rows)
        for v, m, b, code, _ in rows:
            mask = self._masks.get((v, m, b))
            if mask is not None and code < len(mask):
                mask[code] = True

    # -- the decision rules (psrq.identity.IdentityTable's interface, per version and modality) --
    def table(self, version: str, modality: str, capacity: int | None = None) -> StoredTable | None:
        row = self._conn.execute("SELECT capacity FROM capacity WHERE version = ? AND modality = ?", (version, modality)).fetchone()
        if row is None and capacity is None:
            return None
        return StoredTable(self, version, modality, int(row[0]) if row is not None else int(capacity))  # type: ignore[arg-type]

    def held(self, version: str, modality: str, bucket: str, track: str) -> int | None:
        row = self._conn.execute("SELECT code FROM held WHERE version = ? AND modality = ? AND bucket = ? AND track = ?",
                                 (version, modality, bucket, track)).fetchone()
        return None if row is None else int(row[0])

    def owner(self, version: str, modality: str, bucket: str, code: int) -> str | None:
        row = self._conn.execute("SELECT track FROM claims WHERE version = ? AND modality = ? AND bucket = ? AND code = ?",
                                 (version, modality, bucket, int(code))).fetchone()
        return None if row is None else str(row[0])

    def taken(self, version: str, modality: str, bucket: str, capacity: int) -> np.ndarray:
        """bool [capacity]: the bucket's taken codes (an LRU of masks, bounded in bytes)."""
        key = (version, modality, bucket)
        mask = self._masks.get(key)
        if mask is not None:
            self._masks.move_to_end(key)
            return mask
        mask = np.zeros(capacity, dtype=bool)
        codes = [c for (c,) in self._conn.execute(
            "SELECT code FROM claims WHERE version = ? AND modality = ? AND bucket = ?", key)]
        if codes:
            mask[np.asarray(codes, dtype=np.int64)] = True
        self._masks[key] = mask
        self._mask_bytes += mask.nbytes
        while self._mask_bytes > self._mask_limit and len(self._masks) > 1:
            _, old = self._masks.popitem(last=False)
            self._mask_bytes -= old.nbytes
        return mask

    def claim_count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM claims").fetchone()[0])

    def size_bytes(self) -> int:
        """The file and its write-ahead log on disk (0 in memory)."""
        if self.path is None:
            return 0
        return sum(os.path.getsize(p) for p in (Path(self.path), Path(f"{self.path}-wal")) if p.exists())


class StoredTable:
    """One (version, modality)'s claims in an IdentityStore, with the methods the decision rules
    use (psrq.identity.IdentityTable: held, owner, nearest_free); claims are applied by the store."""

    def __init__(self, store: IdentityStore, version: str, modality: str, capacity: int) -> None:
        self.store, self.version, self.modality, self.capacity = store, version, modality, int(capacity)

    def held(self, bucket: Hashable, item: str) -> int | None:
        return self.store.held(self.version, self.modality, bucket_text(bucket), item)

    def owner(self, bucket: Hashable, code: int) -> str | None:
        return self.store.owner(self.version, self.modality, bucket_text(bucket), code)

    def taken_mask(self, bucket: Hashable) -> np.ndarray:
        return self.store.taken(self.version, self.modality, bucket_text(bucket), self.capacity)

    def nearest_free(self, bucket: Hashable, distances: np.ndarray, reserved: Sequence[int] = ()) -> int:
        """argmin of `distances` [capacity] over the bucket's free codes (minus `reserved`), the
        rule of psrq.identity.IdentityTable.nearest_free."""
        code = nearest_free_code(distances, self.taken_mask(bucket), reserved)
        if code is None:
            raise bucket_full(bucket, self.capacity)
        return code
