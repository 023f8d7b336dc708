"""An in-process cache of tracks' SIDs for `sidstream serve`, keyed by (track, codebook version).

A track's SIDs under a codebook version never change (online rows are keyed by track and
version; a refit writes a new version), so a cached row needs no invalidation: a version switch
asks for new keys and the old version's entries age out of the LRU order. Bounded by entry count
(`serve.sid_cache_entries`); a miss is filled by one batched store read of all the request's
missing tracks. Tracks with no row are not cached (their row may be written later)."""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from itertools import repeat

from streams.sinks.reader import read_track_sids

SidRow = dict[str, list[int] | None]
Reader = Callable[[Sequence[str], str], dict[str, SidRow]]  # (tracks, version) -> rows of those found


class SidCache:
    def __init__(self, max_entries: int, reader: Reader) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0")
        self.max_entries, self.reader = max_entries, reader
        self._rows: OrderedDict[tuple[str, str], SidRow] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.store_reads = 0

    @classmethod
    def over_store(cls, store: object, max_entries: int) -> SidCache:
        return cls(max_entries, lambda tracks, version: read_track_sids(store, tracks, version))  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def hit_rate(self) -> float:
        n = self.hits + self.misses
        return self.hits / n if n else float("nan")

    def get_many(self, tracks: Sequence[str], version: str) -> dict[str, SidRow]:
        """{track: row} for the tracks with a row under `version`: cached rows, and the misses
        read from the store in one call (and cached)."""
        unique = list(dict.fromkeys(tracks))
        keys = list(zip(unique, repeat(version)))
        with self._lock:
            rows = list(map(self._rows.get, keys))
            out = {t: r for t, r in zip(unique, rows, strict=True) if r is not None}
            deque(map(self._rows.move_to_end, [k for k, r in zip(keys, rows, strict=True) if r is not None]), maxlen=0)
            self.hits += len(out)
            self.misses += len(keys) - len(out)
        missing = [t for t, r in zip(unique, rows, strict=True) if r is None] if len(out) < len(keys) else []
        if missing:
            read = self.reader(missing, version)
            self.store_reads += 1
            out.update(read)
            if self.max_entries:
                with self._lock:
                    for t, row in read.items():
                        self._rows[(t, version)] = row
                    while len(self._rows) > self.max_entries:
                        self._rows.popitem(last=False)
        return out

    def clear_counts(self) -> None:
        with self._lock:
            self.hits = self.misses = self.store_reads = 0
