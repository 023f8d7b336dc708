"""An append-only Parquet log in which every row is stored once, with no shared index.

Rows come from Kafka records, and a Kafka partition has one owner at a time: so the log keeps
exactly-once *per source partition* in the part files' names, not in an index file that every
writer pod would share (a SQLite index is not safe on the NFS-like volume the writer pods share):

- the rows of one append from one source partition go to one part file named by the topic, the
  partition and the offset range they came from:
  ``part-<topic>-p<partition>-o<first offset>-<last offset>.parquet`` (temp file + rename, so a
  reader never sees half a part);
- the owner of a partition knows the highest offset already written for it (the largest `last`
  among that partition's part names: read from the folder's listing the first time and after
  every assignment of partitions, `forget`), and drops rows from offsets at or below it: a retry
  or a replay after a crash, with the same or other batch boundaries, adds nothing twice. A crash
  after a part's rename but before the batch's offsets were committed leaves exactly that part,
  whose name covers the replayed rows.

Rows with no source (the backfill's, whose chunks are deterministic) go to a part named by the
hash of their keys: a retry of the same rows rewrites the same file.

Readers read ``<folder>/*.parquet`` (pyarrow, pandas, Feast's file source) and see each row once.
"""

from __future__ import annotations

import hashlib
import re
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from streams.sinks.contract import SourceRef

_PART = re.compile(r"^part-(?P<topic>.+)-p(?P<partition>\d+)-o(?P<first>\d+)-(?P<last>\d+)\.parquet$")
_OPEN: weakref.WeakSet[OfflineLog] = weakref.WeakSet()


def forget_all() -> None:
    """Partitions were (re)assigned to this process: every open log re-reads, at its next append,
    how far each partition was written (another owner may have written it meanwhile)."""
    for log in list(_OPEN):
        log.forget()


class OfflineLog:
    def __init__(self, folder: Path, key_columns: Sequence[str], schema: pa.Schema | None = None) -> None:
        self.folder = Path(folder)
        self.key_columns = list(key_columns)
        self.schema = schema
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._upto: dict[tuple[str, int], int] | None = None  # (topic, partition) -> last offset written
        _OPEN.add(self)

    def close(self) -> None:
        _OPEN.discard(self)

    def forget(self) -> None:
        with self._lock:
            self._upto = None

    def written_upto(self) -> dict[tuple[str, int], int]:
        """(topic, partition) -> the highest source offset stored, from the part names."""
        with self._lock:
            return dict(self._scan())

    def _scan(self) -> dict[tuple[str, int], int]:
        if self._upto is None:
            upto: dict[tuple[str, int], int] = {}
            for path in self.folder.glob("part-*.parquet"):
                m = _PART.match(path.name)
                if m is not None:
                    key = (m["topic"], int(m["partition"]))
                    upto[key] = max(upto.get(key, -1), int(m["last"]))
            self._upto = upto
        return self._upto

    def _keys(self, df: pd.DataFrame) -> list[str]:
        """Each row's key: its key columns as str, joined by \\x1f."""
        columns = [df[c].tolist() for c in self.key_columns]
        return ["\x1f".join(map(str, values)) for values in zip(*columns, strict=True)]

    def _write(self, df: pd.DataFrame, name: str) -> None:
        path = self.folder / name
        # with a schema, from_pandas takes the schema's columns by name, in its order
        table = pa.Table.from_pandas(df, schema=self.schema, preserve_index=False)
        tmp = path.with_name(path.name + ".tmp")  # readers never see a half-written part
        pq.write_table(table, tmp)
        tmp.replace(path)

    def append(self, df: pd.DataFrame, sources: Sequence[SourceRef] | None = None) -> int:
        """Write the rows of `df` not written before; returns how many were written. `sources`:
        the record each row came from (aligned with the rows); None for rows without one."""
        if df.empty:
            return 0
        df = df.reset_index(drop=True)
        if sources is not None and len(sources) != len(df):
            raise ValueError(f"{len(sources)} sources for {len(df)} rows")
        last = {key: i for i, key in enumerate(self._keys(df))}  # a key twice in df: its last row
        if len(last) < len(df):
            rows = sorted(last.values())
            df = df.iloc[rows].reset_index(drop=True)
            sources = None if sources is None else [sources[i] for i in rows]
        with self._lock:
            if sources is None:
                digest = hashlib.sha1("\n".join(sorted(last)).encode()).hexdigest()[:24]
                name = f"part-{digest}.parquet"
                if (self.folder / name).exists():
                    return 0  # a retry of the same rows
                self._write(df, name)
                return len(df)
            upto = self._scan()
            src = pd.DataFrame(sources, columns=["topic", "partition", "offset"])
            written = 0
            for (topic, partition), group in src.groupby(["topic", "partition"], sort=True):
                done = upto.get((str(topic), int(partition)), -1)
                fresh = group[group["offset"] > done]
                if fresh.empty:
                    continue
                first, end = int(fresh["offset"].min()), int(fresh["offset"].max())
                self._write(df.iloc[fresh.index.to_numpy()], f"part-{topic}-p{int(partition)}-o{first}-{end}.parquet")
                upto[(str(topic), int(partition))] = end
                written += len(fresh)
            return written

    def count(self) -> int:
        """Rows stored (from the parts' Parquet footers)."""
        return sum(pq.ParquetFile(p).metadata.num_rows for p in self.folder.glob("part-*.parquet"))
