"""The collision registry: stable, idempotent, durable suffixes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streams.ids import CollisionRegistry, unique_ids

pytestmark = pytest.mark.unit


def test_suffixes_are_stable_idempotent_and_durable(tmp_path: Path) -> None:
    db = tmp_path / "ids.sqlite"
    codes = np.array([[1, 2, 3], [1, 2, 3], [4, 5, 6], [1, 2, 3]])
    with CollisionRegistry(db) as reg:
        s = reg.register(["a", "b", "c", "d"], codes)
        assert s.tolist() == [0, 1, 0, 2]
        # same items again, shuffled, with a repeat inside the batch: same answers, nothing added
        again = reg.register(["d", "a", "a", "c"], codes[[3, 0, 0, 2]])
        assert again.tolist() == [2, 0, 0, 0]
        assert reg.count() == 4
        assert reg.register(["e"], codes[:1]).tolist() == [3]
    with CollisionRegistry(db) as reg:  # reopened: durable
        assert reg.lookup("b", codes[1]) == 1
        assert reg.lookup("zzz", codes[1]) is None
        assert reg.register(["f", "b"], np.array([[4, 5, 6], [1, 2, 3]])).tolist() == [1, 1]
        uid = unique_ids(codes[:2], np.array([0, 1]))
        assert uid.tolist() == [[1, 2, 3, 0], [1, 2, 3, 1]]


def test_registry_is_append_only(tmp_path: Path) -> None:
    import sqlite3

    with CollisionRegistry(tmp_path / "ids.sqlite") as reg:
        reg.register(["a"], np.array([[0, 0]]))
    con = sqlite3.connect(tmp_path / "ids.sqlite")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("UPDATE sid_suffix SET suffix = 5")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("DELETE FROM sid_suffix")
    con.close()


def test_large_batch_gives_unique_ids(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 4, size=(3000, 2))
    with CollisionRegistry(tmp_path / "ids.sqlite") as reg:
        s = reg.register([f"item{i}" for i in range(3000)], codes)
    uid = unique_ids(codes, s)
    assert len(np.unique(uid, axis=0)) == 3000  # every item now has a unique ID
    for sid in np.unique(codes, axis=0):
        mask = (codes == sid).all(axis=1)
        assert sorted(s[mask].tolist()) == list(range(mask.sum()))
