"""Full IDs carried over a refit (streams.identity): a track whose semantic path is unchanged claims
its old identity code before any track without a hint can take it, in one request and across
requests; a hint found taken is counted; a warm psrq_id child keeps K_id, so every kept path keeps
its full ID."""

from __future__ import annotations

import numpy as np

from psrq.fitting import fit_codebook, warm_child
from sidcore.config import CodebookSettings
from streams.identity import TableIdentities


def _near(code: int, cap: int = 8) -> np.ndarray:
    d = np.arange(cap, dtype=np.float32)[None, :] + 1.0
    d[0, code] = 0.0  # nearest: `code`; next: 0, 1, ...
    return d


def test_a_hinted_track_claims_before_a_new_track_in_the_same_request():
    ids = TableIdentities()
    ids.table("v1", "text", 8).claim((5,), "t", 3)
    d = np.concatenate([_near(3), _near(3)])
    codes, failed = ids.resolve("v2", "text", 8, ["new", "t"], np.array([[5], [5]]), d, hint_version="v1")
    assert not failed and codes[1] == 3 and codes[0] != 3
    assert ids.hint_collisions == 0


def test_a_new_track_coded_first_leaves_the_parents_codes_to_their_tracks():
    ids = TableIdentities()
    ids.table("v1", "text", 8).claim((5,), "t", 3)
    first, _ = ids.resolve("v2", "text", 8, ["new"], np.array([[5]]), _near(3), hint_version="v1")
    later, _ = ids.resolve("v2", "text", 8, ["t"], np.array([[5]]), _near(0), hint_version="v1")
    assert first[0] != 3 and later[0] == 3 and ids.hint_collisions == 0


def test_a_hint_taken_by_an_earlier_claim_is_counted_and_resolved_as_before():
    ids = TableIdentities()
    ids.table("v1", "text", 8).claim((5,), "t", 3)
    ids.table("v2", "text", 8).claim((5,), "other-assigner", 3)
    codes, failed = ids.resolve("v2", "text", 8, ["t"], np.array([[5]]), _near(3), hint_version="v1")
    assert not failed and codes[0] != 3 and ids.hint_collisions == 1


def test_a_new_track_still_gets_a_code_when_only_parent_held_codes_are_free():
    ids = TableIdentities()
    parent = ids.table("v1", "text", 2)
    parent.claim((1,), "a", 0)
    parent.claim((1,), "b", 1)
    codes, failed = ids.resolve("v2", "text", 2, ["new"], np.array([[1]]), np.array([[0.0, 1.0]], np.float32),
                                hint_version="v1")
    assert not failed and codes[0] == 0


def test_a_warm_psrq_id_refit_keeps_k_id_and_every_kept_path_keeps_its_full_id():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((30, 16)).astype(np.float32) * 2
    X = np.ascontiguousarray(centres[rng.integers(0, 30, 1600)] + 0.6 * rng.standard_normal((1600, 16)), dtype=np.float32)
    old = np.sort(rng.permutation(len(X))[:1440])  # the new tracks are interleaved in catalogue order
    spec = CodebookSettings(method="psrq_id", codebook_size=8, layers=2)
    parent = fit_codebook(X[old], spec)
    child = warm_child(X, spec, parent)
    assert child.identity_size == parent.identity_size
    ids, items = TableIdentities(), np.array([f"t{i}" for i in range(len(X))])

    def claim(q, version, rows, hint):
        sem = q.semantic_encode(X[rows])
        composite, failed = ids.resolve(version, "text", q.capacity, items[rows].tolist(), sem, q.identity_query(X[rows], sem), hint)
        assert not failed
        return np.concatenate([sem, q.split(composite)], axis=1)

    before = claim(parent, "v0", old, None)
    after = claim(child, "v1", np.arange(len(X)), "v0")[old]
    kept_path = (before[:, :2] == after[:, :2]).all(axis=1)
    assert kept_path.mean() > 0.9
    assert (before[kept_path] == after[kept_path]).all()
    assert ids.hint_collisions == 0
