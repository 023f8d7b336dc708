"""The on-disk identity store (streams.state.identity_store) applies the same decision rules as
psrq.identity.IdentityTable: for a random log of claims (codes taken twice, tracks claiming twice,
several buckets), owners, held codes and the nearest free code agree, also after the store is
reopened from its file, and the offsets it applied are kept with the rows."""

from __future__ import annotations

import numpy as np
import pytest

from psrq.identity import BucketFull, IdentityTable
from streams.state.identity_store import IdentityStore, open_slot

pytestmark = pytest.mark.unit

CAPACITY = 16


def _log(seed: int, n: int = 400) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"codebook_version": "v1", "modality": "text", "prefix": [int(rng.integers(3)), int(rng.integers(2))],
             "code": int(rng.integers(CAPACITY)), "capacity": CAPACITY, "track_id": f"t{int(rng.integers(120))}"}
            for _ in range(n)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_store_decides_as_the_in_memory_table(tmp_path, seed) -> None:
    claims = _log(seed)
    table = IdentityTable(CAPACITY)
    for c in claims:
        table.claim(tuple(c["prefix"]), c["track_id"], c["code"])
    store = IdentityStore(tmp_path / "id.sqlite", mask_cache_mb=1)
    for start in range(0, len(claims), 37):  # applied in batches, as read from the topic
        store.apply("ids", claims[start : start + 37], {0: start + 37})
    store.close()
    stored = IdentityStore(tmp_path / "id.sqlite").table("v1", "text")  # reopened from the file
    assert stored is not None and stored.capacity == CAPACITY
    rng = np.random.default_rng(seed + 10)
    for b0 in range(3):
        for b1 in range(2):
            bucket = (b0, b1)
            for code in range(CAPACITY):
                assert stored.owner(bucket, code) == table.owner(bucket, code)
            for t in range(120):
                assert stored.held(bucket, f"t{t}") == table.held(bucket, f"t{t}")
            d = rng.random(CAPACITY).astype(np.float32)
            try:
                want = table.nearest_free(bucket, d, [3])
            except BucketFull:
                with pytest.raises(BucketFull):
                    stored.nearest_free(bucket, d, [3])
            else:
                assert stored.nearest_free(bucket, d, [3]) == want
    assert IdentityStore(tmp_path / "id.sqlite").next_offsets("ids") == {0: 37 * ((len(claims) + 36) // 37)}


def test_a_claim_applied_later_updates_a_cached_mask(tmp_path) -> None:
    store = IdentityStore(None)
    c = {"codebook_version": "v", "modality": "text", "prefix": [0], "capacity": 4, "track_id": "a", "code": 0}
    store.apply("ids", [c], {0: 1})
    t = store.table("v", "text")
    assert t.nearest_free((0,), np.array([0.0, 1, 2, 3], dtype=np.float32)) == 1  # mask now cached
    store.apply("ids", [{**c, "track_id": "b", "code": 1}], {0: 2})
    assert t.nearest_free((0,), np.array([0.0, 1, 2, 3], dtype=np.float32)) == 2


def test_a_second_process_on_the_same_home_gets_its_own_slot(tmp_path) -> None:
    first, lock1 = open_slot(tmp_path)
    second, lock2 = open_slot(tmp_path)
    assert first.name == "identity-0.sqlite" and second.name == "identity-1.sqlite"
    lock1.close()  # the first process ends: a restart gets its file back
    again, lock3 = open_slot(tmp_path)
    assert again == first
    lock2.close()
    lock3.close()


def test_a_tombstone_deletes_its_claim_and_the_tracks_held_code(tmp_path) -> None:
    """A pruned version's claims come back as tombstones (streams.sinks.prune): applied in log
    order, each deletes its claim and, if it was the track's held code, the held row."""
    store = IdentityStore(tmp_path / "id.sqlite")
    c = {"codebook_version": "v1", "modality": "text", "prefix": [1, 2], "capacity": 8, "track_id": "a", "code": 3}
    store.apply("ids", [c, {**c, "track_id": "b", "code": 4}], {0: 2})
    t = store.table("v1", "text")
    assert t.taken_mask((1, 2)).nonzero()[0].tolist() == [3, 4]  # mask cached
    store.apply_log("ids", [("v1", "text", "1-2", 3, "a")], {0: 3})
    assert t.held((1, 2), "a") is None and t.owner((1, 2), 3) is None and t.held((1, 2), "b") == 4
    assert t.taken_mask((1, 2)).nonzero()[0].tolist() == [4]  # the cached mask was dropped, re-read
    assert store.claim_count() == 1 and store.next_offsets("ids") == {0: 3}
