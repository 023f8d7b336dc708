"""The serve SID cache (streams.sinks.sid_cache): one batched read per request's misses, hits
counted, bounded by entries with the least recently used evicted, versions as separate keys
(a switch needs no flush), absent rows not cached. The reader here is a recording function over
a dict; tests/integration/test_serve.py runs the cache over the real SQLite and Redis stores."""

from __future__ import annotations

from streams.sinks.sid_cache import SidCache


class Rows:
    def __init__(self) -> None:
        self.rows = {(f"t{i}", v): {"text_sid": [i, 1], "audio_sid": None, "joint_sid": [i, 2]}
                     for i in range(10) for v in ("v1", "v2")}
        self.rows[("t1", "v2")] = {"text_sid": [99, 9], "audio_sid": None, "joint_sid": [99, 8]}  # a refit's new codes
        self.calls: list[tuple[list[str], str]] = []

    def __call__(self, tracks, version):
        self.calls.append((list(tracks), version))
        return {t: self.rows[(t, version)] for t in tracks if (t, version) in self.rows}


def test_misses_are_one_batched_read_and_hits_none():
    rows = Rows()
    cache = SidCache(100, rows)
    first = cache.get_many(["t1", "t2", "t3", "t2", "nobody"], "v1")
    assert rows.calls == [(["t1", "t2", "t3", "nobody"], "v1")]  # once, each track once
    assert set(first) == {"t1", "t2", "t3"} and first["t1"]["text_sid"] == [1, 1]
    again = cache.get_many(["t3", "t1", "t4"], "v1")
    assert rows.calls[1:] == [(["t4"], "v1")]  # only the miss is read
    assert again["t1"] == first["t1"] and set(again) == {"t1", "t3", "t4"}
    assert (cache.hits, cache.misses, cache.store_reads, len(cache)) == (2, 5, 2, 4)
    assert cache.hit_rate == 2 / 7
    cache.get_many(["nobody"], "v1")  # absent rows are not cached: read again (it may be written later)
    assert rows.calls[-1] == (["nobody"], "v1")


def test_a_version_switch_needs_no_flush():
    rows = Rows()
    cache = SidCache(100, rows)
    assert cache.get_many(["t1"], "v1")["t1"]["text_sid"] == [1, 1]
    assert cache.get_many(["t1"], "v2")["t1"]["text_sid"] == [99, 9]  # new key, read from the store
    assert cache.get_many(["t1"], "v1")["t1"]["text_sid"] == [1, 1]  # the old version's row is still its own
    assert len(rows.calls) == 2 and len(cache) == 2


def test_bounded_by_entries_least_recently_used_out():
    rows = Rows()
    cache = SidCache(3, rows)
    cache.get_many(["t1", "t2", "t3"], "v1")
    cache.get_many(["t1"], "v1")  # t1 used: t2 is now the oldest
    cache.get_many(["t4"], "v1")
    assert len(cache) == 3
    rows.calls.clear()
    cache.get_many(["t1", "t3", "t4"], "v1")
    assert rows.calls == []  # kept
    cache.get_many(["t2"], "v1")
    assert rows.calls == [(["t2"], "v1")]  # evicted, read again


def test_zero_entries_caches_nothing():
    rows = Rows()
    cache = SidCache(0, rows)
    cache.get_many(["t1"], "v1")
    cache.get_many(["t1"], "v1")
    assert len(rows.calls) == 2 and len(cache) == 0
