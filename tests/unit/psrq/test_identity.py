"""psrq_id: unique full IDs, unchanged semantic layers, informative identity codes, and the
claim rules (first claim wins, a track keeps its code, codes are never reused)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from psrq import load_codebook, save_codebook
from psrq.health import cosine_rows, id_report, nmi, purity, random_partition
from psrq.identity import BucketFull, IdentityPSRQ, IdentityTable, counter_suffix
from psrq.progressive import PSRQ
from streams.assign import code_tracks
from streams.codebooks import ActiveCodebooks
from streams.identity import TableIdentities
from streams.records import BatchResult

pytestmark = pytest.mark.unit


def _clustered(n: int = 3000, d: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((12, d)) * 3
    return (centres[rng.integers(0, 12, n)] + rng.standard_normal((n, d))).astype(np.float32)


def test_full_ids_are_unique_and_semantic_layers_are_psrqs() -> None:
    """Every row of a collapsed PSRQ gets its own ID; codes[:, :L] equal plain PSRQ's codes."""
    X = _clustered()
    q = IdentityPSRQ([16, 16, 16], seed=0).fit(X)
    codes = q.encode(X)
    assert codes.shape == (len(X), 5)
    assert len(np.unique(codes, axis=0)) == len(X)
    plain = PSRQ([16, 16, 16], seed=0).fit(X).encode(X)
    assert len(np.unique(plain, axis=0)) < len(X) // 2  # the collapse the identity codes fix
    assert np.array_equal(codes[:, :3], plain)


def test_identity_codes_carry_information() -> None:
    """The full ID reconstructs better than the semantic layers alone (TIGER's counter adds nothing)."""
    X = _clustered()
    q = IdentityPSRQ([16, 16, 16], seed=0).fit(X)
    codes = q.encode(X)
    semantic = cosine_rows(X, q.decode_prefix(codes, 3)).mean()
    full = cosine_rows(X, q.decode(codes)).mean()
    assert full > semantic + 0.01, (semantic, full)


def test_identity_size_grows_with_the_largest_bucket() -> None:
    X = _clustered(n=2000)
    q = IdentityPSRQ([4, 4], seed=0).fit(X)
    assert q.identity_size**2 >= 4 * q.fit_largest_bucket
    with pytest.raises(ValueError, match="largest semantic bucket"):
        IdentityPSRQ([4, 4], seed=0, identity_size=4).fit(X)


def test_artifact_round_trip_keeps_codes(tmp_path) -> None:
    X = _clustered(n=1500)
    q = IdentityPSRQ([8, 8], seed=3).fit(X)
    save_codebook(q, tmp_path / "cb")
    q2, manifest = load_codebook(tmp_path / "cb")
    assert manifest["method"] == "psrq_id" and q2.semantic_layers == 2
    assert np.array_equal(q2.encode(X), q.encode(X))
    assert np.allclose(q2.decode(q.encode(X)), q.decode(q.encode(X)))


def test_table_first_claim_wins_and_codes_are_never_reused() -> None:
    t = IdentityTable(4)
    assert t.claim((1,), "a", 2)
    assert not t.claim((1,), "b", 2)  # taken: b lost
    assert t.claim((1,), "a", 3)  # a second win of a only burns a code
    assert t.held((1,), "a") == 2  # the first winning claim is a's code
    assert t.owner((1,), 3) == "a"
    d = np.array([0.0, 1.0, 0.1, 0.2], dtype=np.float32)
    assert t.nearest_free((1,), d) == 0
    assert t.claim((1,), "c", 0) and t.nearest_free((1,), d) == 1
    assert t.claim((1,), "d", 1)
    with pytest.raises(BucketFull, match="full"):
        t.nearest_free((1,), d)


def test_counter_suffix_counts_within_each_semantic_id() -> None:
    codes = np.array([[1, 2], [1, 2], [0, 0], [1, 2], [0, 0]])
    assert counter_suffix(codes).tolist() == [0, 1, 0, 2, 1]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 30)), min_size=1, max_size=120), st.integers(0, 10_000))
def test_resolver_is_unique_idempotent_and_order_deterministic(requests: list[tuple[int, int]], seed: int) -> None:
    """Fuzz: whatever the requests (bucket, track), no two tracks share a code in a bucket, a
    repeated request returns the same code, and a second resolver fed the same sequence agrees."""
    rng = np.random.default_rng(seed)
    cap = 64
    a, b = TableIdentities(), TableIdentities()
    seen: dict[tuple[int, str], int] = {}
    for bucket, track in requests:
        prefixes = np.array([[bucket]])
        d = rng.random((1, cap)).astype(np.float32)
        code_a, failed = a.resolve("v1", "text", cap, [f"t{track}"], prefixes, d)
        code_b, _ = b.resolve("v1", "text", cap, [f"t{track}"], prefixes, d)
        assert not failed and code_a[0] == code_b[0]
        key = (bucket, f"t{track}")
        assert seen.setdefault(key, int(code_a[0])) == int(code_a[0])
    per_bucket: dict[int, list[int]] = {}
    for (bucket, _), code in seen.items():
        per_bucket.setdefault(bucket, []).append(code)
    assert all(len(v) == len(set(v)) for v in per_bucket.values())


def test_hint_keeps_the_parent_versions_code_when_free() -> None:
    ids = TableIdentities()
    d = np.zeros((1, 8), dtype=np.float32)
    d[0, 0] = -1.0  # nearest is code 0
    ids.table("v1", "text", 8).claim((5,), "t", 6)
    code, _ = ids.resolve("v2", "text", 8, ["t"], np.array([[5]]), d, hint_version="v1")
    assert code[0] == 6  # kept across the (aligned) refit
    code, _ = ids.resolve("v2", "text", 8, ["u"], np.array([[5]]), d, hint_version="v1")
    assert code[0] == 0


class _Set:
    def __init__(self, q: IdentityPSRQ) -> None:
        self.codebooks = {"text": q}
        self.manifest: dict = {}

    def encode(self, modality: str, X: np.ndarray) -> np.ndarray:
        return self.codebooks[modality].encode(X)


def test_code_tracks_hands_out_unique_ids_and_keeps_them_on_resend() -> None:
    """The assigner's function: unique text IDs across batches, same ID when a track is re-coded,
    and a psrq_id codebook without a resolver is a clear error."""
    from streams.avro_codec import decode

    X = _clustered(n=600)
    q = IdentityPSRQ([8, 8], seed=0).fit(X)
    active = ActiveCodebooks("v1", _Set(q))
    state = {f"t{i}": {"text": {"event_time": 1, "model_id": "m", "vector": X[i].astype("<f4").tobytes().hex(), "ingest_time": 1}}
             for i in range(600)}
    ids = TableIdentities()

    def run(tracks: list[str]) -> dict[str, tuple[int, ...]]:
        result = BatchResult()
        code_tracks(result, tracks, state, active, None, ids)
        return {rec["track_id"]: tuple(rec["text_sid"]) for rec in (decode(v)[1] for _, v in result.outputs)}

    first = {**run([f"t{i}" for i in range(300)]), **run([f"t{i}" for i in range(300, 600)])}
    assert len(set(first.values())) == 600
    again = run([f"t{i}" for i in range(0, 600, 7)])
    assert all(first[t] == sid for t, sid in again.items())
    with pytest.raises(ValueError, match="identity registry"):
        code_tracks(BatchResult(), ["t0"], state, active, None, None)


class _CountingIdentities(TableIdentities):
    def __init__(self) -> None:
        super().__init__()
        self.submits = 0

    def _submit(self, claims: list) -> None:
        self.submits += 1
        super()._submit(claims)


class _OneAtATime:
    """A resolver that takes one request (modality) at a time: `resolve` per request."""

    def __init__(self) -> None:
        self.inner = TableIdentities()

    def resolve_many(self, requests):  # noqa: ANN001, ANN201
        return [self.inner.resolve(r.version, r.modality, r.capacity, r.track_ids, r.prefixes, r.distances, r.hint_version)
                for r in requests]


def test_code_tracks_claims_every_modality_in_one_round_trip() -> None:
    """Text, audio and joint codes of a batch are claimed together (one produce + read-back per
    round, not one per modality), and the IDs are the ones a modality-at-a-time resolver gives."""
    from streams.avro_codec import decode

    X = _clustered(n=400)
    q = IdentityPSRQ([8, 8], seed=0).fit(X)

    class Three(_Set):
        def __init__(self) -> None:
            self.codebooks = {"text": q, "audio": q, "joint": q}
            self.manifest = {}

    active = ActiveCodebooks("v1", Three())

    def entry(v: np.ndarray) -> dict:
        return {"event_time": 1, "model_id": "m", "vector": v.astype("<f4").tobytes().hex(), "ingest_time": 1}

    state = {f"t{i}": {"text": entry(X[i]), "audio": entry(X[-1 - i])} for i in range(200)}
    tracks = list(state)

    def sids(ids: object) -> dict[str, tuple]:
        result = BatchResult()
        code_tracks(result, tracks, state, active, lambda T, A: T, ids)  # joint = text: same buckets as text's
        assert not result.dead
        return {r["track_id"]: (tuple(r["text_sid"]), tuple(r["audio_sid"]), tuple(r["joint_sid"]))
                for r in (decode(v)[1] for _, v in result.outputs)}

    counting = _CountingIdentities()
    together = sids(counting)
    assert counting.submits == 1
    assert together == sids(_OneAtATime())
    assert len({s[0] for s in together.values()}) == len({s[1] for s in together.values()}) == 200


def test_id_report_against_a_random_partition() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 2000)
    groups = labels * 10 + rng.integers(0, 2, 2000)  # groups nested in labels: pure
    assert purity(groups, labels) == 1.0 and nmi(groups, labels) > 0.6
    rnd = random_partition(groups, labels)
    assert rnd["purity"] < 0.4 and rnd["nmi"] < 0.05
    codes = np.stack([labels, rng.integers(0, 2, 2000), np.arange(2000)], axis=1)
    rep = id_report(codes, 2, [5, 2, 2000], labels)
    assert rep["distinct_ratio"] == 1.0 and rep["layers"][0]["purity_lift"] > 0.5
    assert 0.95 < rep["layers"][1]["cond_entropy"] <= 1.0  # layer 2 independent of layer 1


def test_blocked_encode_equals_one_block(monkeypatch) -> None:
    """A whole-catalogue encode runs in ENCODE_BLOCK-row slices (flat memory); codes are the same."""
    import psrq.base as base
    from psrq.rq import RQ

    X = _clustered(n=2500)
    for q in (PSRQ([8, 8, 8], seed=0).fit(X), RQ([8, 8], seed=0).fit(X)):
        whole = q.encode(X)
        monkeypatch.setattr(base, "ENCODE_BLOCK", 300)
        assert np.array_equal(q.encode(X), whole)
        monkeypatch.setattr(base, "ENCODE_BLOCK", 65536)


@pytest.mark.parametrize("layers", [1, 2])
def test_the_best_first_search_gives_the_full_scans_code_without_the_matrix(layers) -> None:
    """CompositeQuery (no [n, K_id^2] matrix) picks exactly DenseQuery's code over the full
    distance rows, with buckets filling up (taken codes) and reserved codes, and visits a few rows."""
    from psrq.identity import CompositeQuery, DenseQuery, IdentityPSRQ

    rng = np.random.default_rng(layers)
    X = rng.standard_normal((600, 16)).astype(np.float32)
    q = IdentityPSRQ([4, 4], seed=0, identity_layers=layers, identity_size=24 if layers == 2 else 600).fit(X)
    sem = q.semantic_encode(X)
    dense, fast = DenseQuery(q.identity_distances(X, sem)), q.identity_query(X, sem)
    assert isinstance(fast, CompositeQuery)
    taken = np.zeros(q.capacity, dtype=bool)
    for i in range(len(X)):
        reserved = [int(c) for c in rng.integers(0, q.capacity, 3)]
        want = dense.nearest_free(i, taken, reserved)
        assert fast.nearest_free(i, taken, reserved) == want
        if want is not None:
            taken[want] = True  # one shared bucket filling up: the search must step over taken codes
    if layers == 2:
        assert fast.rows_visited < len(X) * q.identity_size / 2  # far from every row of every item
