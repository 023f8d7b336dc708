"""An append-only Parquet log in which every row is stored exactly once.

Retried and replayed flushes (other batch boundaries included) must not duplicate rows, and a
crash at any point must not lose one. So each log folder has an index (SQLite, beside the
Parquet parts) of the row keys already written and of the part files that hold them:

1. rows whose key is in the index are dropped (a replay);
2. the rest go to one part file whose name is the hash of their keys (a retry of the same
   rows rewrites the same file, atomically: temp file + rename);
3. the keys and the file name go into the index in one transaction.

A crash between 2 and 3 leaves a part file that the index does not know; the next open of the
log adds such orphans' keys to the index before anything is written, so their rows are not
written again. Readers read ``<folder>/*.parquet`` and see each row once.
"""

from __future__ import annotations

import fcntl
import hashlib
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

INDEX_NAME = "_index.sqlite"


class OfflineLog:
    def __init__(self, folder: Path, key_columns: Sequence[str], schema: pa.Schema | None = None) -> None:
        self.folder = Path(folder)
        self.key_columns = list(key_columns)
        self.schema = schema
        self.folder.mkdir(parents=True, exist_ok=True)
        # One connection for the log's life (opening one per append cost a third of an append);
        # appends from several threads take turns on it, several processes on the file lock.
        self._conn = sqlite3.connect(self.folder / INDEX_NAME, timeout=30.0, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._thread_lock = threading.Lock()
        with self._thread_lock, self._locked():
            conn = self._conn
            conn.execute("CREATE TABLE IF NOT EXISTS rows (key TEXT PRIMARY KEY)")
            conn.execute("CREATE TABLE IF NOT EXISTS files (name TEXT PRIMARY KEY)")
            self._adopt_orphans(conn)
            conn.commit()

    def close(self) -> None:
        with self._thread_lock:
            self._conn.close()

    def _locked(self) -> _FileLock:
        return _FileLock(self.folder / ".lock")

    def _keys(self, df: pd.DataFrame) -> list[str]:
        """Each row's key: its key columns as str, joined by \\x1f (the index stores these)."""
        columns = [df[c].tolist() for c in self.key_columns]
        return ["\x1f".join(map(str, values)) for values in zip(*columns, strict=True)]

    def _adopt_orphans(self, conn: sqlite3.Connection) -> None:
        known = {name for (name,) in conn.execute("SELECT name FROM files")}
        for path in sorted(self.folder.glob("part-*.parquet")):
            if path.name in known:
                continue
            keys = self._keys(pd.read_parquet(path, columns=self.key_columns))
            conn.executemany("INSERT OR IGNORE INTO rows(key) VALUES (?)", [(k,) for k in keys])
            conn.execute("INSERT OR IGNORE INTO files(name) VALUES (?)", (path.name,))

    def append(self, df: pd.DataFrame) -> int:
        """Write the rows of `df` not written before; returns how many were written."""
        if df.empty:
            return 0
        last = {key: i for i, key in enumerate(self._keys(df))}  # a key twice in df: its last row
        with self._thread_lock, self._locked():
            conn = self._conn
            try:
                seen = self._known(conn, list(last))
                fresh = {key: i for key, i in last.items() if key not in seen}
                if not fresh:
                    return 0
                digest = hashlib.sha1("\n".join(sorted(fresh)).encode()).hexdigest()[:24]
                path = self.folder / f"part-{digest}.parquet"
                out = df if len(fresh) == len(df) else df.iloc[sorted(fresh.values())]
                # with a schema, from_pandas takes the schema's columns by name, in its order
                table = pa.Table.from_pandas(out, schema=self.schema, preserve_index=False)
                tmp = path.with_suffix(".tmp")  # readers never see a half-written part
                pq.write_table(table, tmp)
                tmp.replace(path)
                conn.executemany("INSERT OR IGNORE INTO rows(key) VALUES (?)", [(k,) for k in fresh])
                conn.execute("INSERT OR IGNORE INTO files(name) VALUES (?)", (path.name,))
                conn.commit()
                return len(fresh)
            except BaseException:
                conn.rollback()
                raise

    @staticmethod
    def _known(conn: sqlite3.Connection, keys: list[str], chunk: int = 500) -> set[str]:
        """Which of `keys` the index holds (IN lists of at most `chunk`: SQLite's variable limit)."""
        seen: set[str] = set()
        for start in range(0, len(keys), chunk):
            part = keys[start : start + chunk]
            marks = ",".join("?" * len(part))
            seen.update(k for (k,) in conn.execute(f"SELECT key FROM rows WHERE key IN ({marks})", part))  # noqa: S608
        return seen

    def count(self) -> int:
        with self._thread_lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM rows").fetchone()[0])


class _FileLock:
    """An exclusive lock across processes (several writers may share one log folder)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> _FileLock:
        self._fh = open(self.path, "a")  # noqa: SIM115 - closed in __exit__
        fcntl.flock(self._fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fh, fcntl.LOCK_UN)
        self._fh.close()
