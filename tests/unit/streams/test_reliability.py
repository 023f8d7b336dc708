"""The pieces that make batches fault-proof, each on its own: retry-then-dead-letter, dead
letters that always fit, encoder failures isolated to their items, the exactly-once offline
log, and the bounded join table over the kept embeddings."""

from __future__ import annotations

import asyncio
import hashlib

import numpy as np
import pandas as pd
import pytest

from streams import avro_codec
from streams.batching import RetryPolicy, process_batch
from streams.codebooks import ActiveCodebooks
from streams.records import DeadLetter, RawRecord, vector_to_bytes
from streams.roles.assigner import assign_batch
from streams.roles.encoding import encode_isolating
from streams.sinks.offline import OfflineLog
from streams.state.kept import KeptEmbeddings

pytestmark = pytest.mark.unit


class _FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, s: float) -> None:
        self.now += s


def _run(coro):
    return asyncio.run(coro)


def test_transient_failures_are_retried_until_the_batch_succeeds():
    t, calls = _FakeTime(), []

    async def handle(events):
        calls.append(t.now)
        if len(calls) < 4:
            raise ConnectionError("broker unavailable")

    async def dead_letter_all(events, reason):  # pragma: no cover - must not be called
        raise AssertionError(reason)

    out = _run(process_batch([1, 2], "w", handle, dead_letter_all, RetryPolicy(budget_s=60), t.sleep, t.clock))
    assert out == "ok" and len(calls) == 4
    assert np.allclose(np.diff(calls), [0.2, 0.4, 0.8])  # exponential backoff, batch never acked in between


def test_a_batch_that_exhausts_its_budget_is_dead_lettered_whole_never_dropped():
    t, dead = _FakeTime(), []

    async def handle(events):
        raise RuntimeError("store rejects everything")

    async def dead_letter_all(events, reason):
        if not dead:
            dead.append(("failed-once", reason))
            raise ConnectionError("DLQ unreachable for a moment")
        dead.append((list(events), reason))

    out = _run(process_batch([1, 2, 3], "w", handle, dead_letter_all, RetryPolicy(budget_s=10, max_delay_s=2),
                             t.sleep, t.clock))
    assert out == "dead_lettered"
    assert dead[-1][0] == [1, 2, 3] and "retries exhausted" in dead[-1][1] and "store rejects everything" in dead[-1][1]
    assert 8 <= t.now <= 14  # the budget, then one retried dead-letter send


def _raw(value: bytes | None, key: bytes | None = b"k") -> RawRecord:
    return RawRecord("tracks.metadata", 3, 41, key, value)


def test_dead_letters_always_fit_and_say_what_they_dropped():
    big = b"x" * 2_000_000
    rec = avro_codec.decode(DeadLetter(_raw(big), "too big", "undecodable", "t").encode("text", 1024 * 1024))[1]
    assert rec["truncated"] and len(rec["original"]) == 4096 and rec["original"] == big[:4096]
    assert rec["original_size"] == len(big) and rec["original_sha256"] == hashlib.sha256(big).hexdigest()
    assert (rec["source_topic"], rec["partition"], rec["offset"]) == ("tracks.metadata", 3, 41)
    small = avro_codec.decode(DeadLetter(_raw(b"abc"), "bad", "undecodable").encode("text"))[1]
    assert small["original"] == b"abc" and not small["truncated"] and small["original_size"] == 3
    null = avro_codec.decode(DeadLetter(_raw(None), "null", "undecodable").encode("text"))[1]
    empty = avro_codec.decode(DeadLetter(_raw(b""), "empty", "undecodable").encode("text"))[1]
    assert (null["original"], null["original_size"]) == (None, -1)
    assert (empty["original"], empty["original_size"]) == (b"", 0)


class _PoisonEncoder:
    model_id, dim = "fake", 2

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, batch):
        self.calls += 1
        if any("poison" in x for x in batch):
            raise RuntimeError("model blew up")
        return np.array([[len(x), 1.0] for x in batch], dtype=np.float32)


def test_one_item_that_makes_the_model_throw_fails_alone():
    items = [f"track {i}" for i in range(16)]
    items[11] = "poison pill"
    vectors, failed = encode_isolating(_PoisonEncoder(), items)
    assert list(failed) == [11] and "model blew up" in failed[11]
    ok = [i for i in range(16) if i != 11]
    np.testing.assert_array_equal(vectors[ok], _PoisonEncoder().encode([items[i] for i in ok]))
    assert np.isnan(vectors[11]).all()


def _frame(keys):
    return pd.DataFrame({"user_id": [k[0] for k in keys], "item_id": [k[1] for k in keys],
                         "timestamp": [k[2] for k in keys], "label": [1] * len(keys)})


def _stored(folder):
    parts = sorted(folder.glob("part-*.parquet"))
    return pd.concat([pd.read_parquet(p) for p in parts]) if parts else pd.DataFrame()


def test_offline_log_keeps_each_row_once_across_retries_and_other_batch_boundaries(tmp_path):
    key = ("user_id", "item_id", "timestamp", "label")
    log = OfflineLog(tmp_path, key)
    a, b, c, d = ("u", "a", 1), ("u", "b", 2), ("u", "c", 3), ("v", "a", 4)
    at = {a: 0, b: 1, c: 2, d: 3}  # each row's record offset in partition 0

    def src(rows):
        return [("interactions", 0, at[r]) for r in rows]

    assert log.append(_frame([a, b, c]), src([a, b, c])) == 3
    assert log.append(_frame([a, b, c]), src([a, b, c])) == 0  # a retry of the same batch
    assert log.append(_frame([b, c, d]), src([b, c, d])) == 1  # a replay with other boundaries
    assert len(_stored(tmp_path)) == 4 and not _stored(tmp_path).duplicated().any()
    # a crash after a part file was written but before the batch's offsets were committed: a
    # fresh log (another process) reads how far the partition was written from the part names
    again = OfflineLog(tmp_path, key)
    assert again.count() == 4 and again.append(_frame([a, d]), src([a, d])) == 0
    assert len(_stored(tmp_path)) == 4


def _emb(track, modality, vec, event_time=100):
    v = np.asarray(vec, dtype=np.float32)
    rec = {"track_id": track, "event_time": event_time, "modality": modality, "model_id": f"{modality}-m",
           "dim": len(v), "vector": vector_to_bytes(v), "ingest_time": 1}
    return RawRecord(f"embeddings.{modality}", 2, 0, track.encode(), avro_codec.encode("Embedding", rec))


class _Q:
    def __init__(self, dim):
        self.dim, self.codebook_sizes = dim, (4, 4)


class _Codebooks:
    codebooks = {"text": _Q(3), "audio": _Q(2), "joint": _Q(5)}
    manifest: dict = {}

    def encode(self, modality, X):
        return np.clip((X[:, :2] * 4).astype(np.int64), 0, 3)


def _joint(t, a):
    return np.concatenate([t, a], axis=1)


def test_join_table_is_bounded_by_the_wait_and_late_modalities_still_join(tmp_path):
    t = _FakeTime()
    kept = KeptEmbeddings(tmp_path / "kept.sqlite", wait_s=30, clock=t.clock)
    active = ActiveCodebooks("v1", _Codebooks())
    first = assign_batch([_emb(f"t{i}", "text", [0.1, 0.6, 0.0]) for i in range(50)], kept, active, _joint)
    assert kept.waiting == 50 and len(first.kept) == 50
    assert {p for p, _, _ in first.kept} == {2}  # kept records stay in their embedding's partition
    t.now = 31.0
    assert kept.expire() == 50 and kept.waiting == 0  # memory: the join table is empty again
    late_audio = assign_batch([_emb("t7", "audio", [0.5, 0.5], event_time=200)], kept, active, _joint)
    sid = avro_codec.decode(late_audio.outputs[0][1])[1]
    assert sid["joint_sid"] is not None and sid["text_sid"] is not None  # joined against the kept text on disk
    late_text = assign_batch([_emb("t7", "text", [0.9, 0.1, 0.0], event_time=300)], kept, active, _joint)
    sid = avro_codec.decode(late_text.outputs[0][1])[1]
    assert sid["audio_sid"] is not None and sid["joint_sid"] is not None  # a text update never wipes audio SIDs
    assert kept.count() == 51 and kept.waiting == 0
