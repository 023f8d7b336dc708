"""The serving fast path (trainer.fast_rank) against the reference: `trainer.serving.rank`, which
builds the padded batch and runs the model's own forward. Same tracks scored, same unknowns, same
history length, scores equal within float tolerance, for MCCA (and its ablations) and DIN, with
Dice and PReLU, trained-looking batch-norm statistics, cold and unknown tracks, missing SIDs,
short, empty and over-long histories, precomputed vectors or none."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.fast_rank import FastRanker
from trainer.features import HISTORY_LEN
from trainer.models import ModelConfig, build_model
from trainer.serving import Snapshot, rank

SIZES = {"text": [8, 8, 6], "audio": [8, 5], "joint": [8, 8, 8]}


def _model(config: ModelConfig, n_vocab: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(config, n_vocab + 1 + 7, SIZES)  # + padding row + a few hashed rows
    with torch.no_grad():  # make every parameter and batch-norm statistic matter
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(0.2 * torch.randn_like(m.running_mean))
                m.running_var.copy_(0.5 + torch.rand_like(m.running_var))
    return model.eval()


def _catalogue(rng: np.random.Generator, n: int) -> dict[str, dict[str, list[int] | None]]:
    sids: dict[str, dict[str, list[int] | None]] = {}
    for i in range(n):
        row: dict[str, list[int] | None] = {}
        for m, k in SIZES.items():
            codes = [int(rng.integers(0, kk)) for kk in k] + [int(rng.integers(0, 50))]  # + an identity code
            row[f"{m}_sid"] = None if rng.random() < 0.1 else codes
        sids[f"t{i}"] = row
    return sids


CONFIGS = {
    "mcca": ModelConfig(kind="mcca", emb_dim=8, att_hidden=(6,), mlp_hidden=(12, 5)),
    "mcca-prelu": ModelConfig(kind="mcca", emb_dim=8, att_hidden=(6, 4), mlp_hidden=(10,), activation="prelu"),
    "mcca-no-msc": ModelConfig(kind="mcca", emb_dim=8, att_hidden=(6,), mlp_hidden=(12,), use_specific=False),
    "mcca-no-mjc": ModelConfig(kind="mcca", emb_dim=8, att_hidden=(6,), mlp_hidden=(12,), use_joint=False),
    "din": ModelConfig(kind="din", emb_dim=8, att_hidden=(6,), mlp_hidden=(12, 5)),
    "din-sid": ModelConfig(kind="din", emb_dim=8, att_hidden=(6,), mlp_hidden=(12, 5), sid_codebook="joint"),
}


@pytest.mark.parametrize("precompute", [True, False], ids=["precomputed", "from-sids"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_fast_path_scores_equal_the_models_forward(name, precompute):
    rng = np.random.default_rng(7)
    sids = _catalogue(rng, 300)
    vocab = [f"t{i}" for i in range(200)]  # t200.. are cold: SIDs, no ID row
    id_rows = {t: i + 1 for i, t in enumerate(vocab)}
    layers = {m: len(k) for m, k in SIZES.items()}
    model = _model(CONFIGS[name], len(vocab), seed=len(name))
    snap = Snapshot("v1", "r1", "v1", model, id_rows, layers, HISTORY_LEN)
    fast = FastRanker(model, id_rows, layers, cold_rows=1000)
    assert (fast.fused is not None) == (name != "mcca-prelu")  # units of one shape, Linear -> Dice -> Linear(h, 1), run fused
    if precompute:
        known = [t for t in vocab[:150] if t in sids]  # part of the vocabulary, as with serve.item_vectors
        fast.precompute(known, [sids[t] for t in known])
        assert fast.n_table == len(known) and fast.table.shape[1] == fast.width

    all_tracks = list(sids)
    for case in range(12):
        n_hist = [0, 1, 5, HISTORY_LEN, 35][case % 5]
        history = list(rng.choice(all_tracks, n_hist)) + (["nobody:h"] if case % 3 == 0 else [])
        candidates = list(rng.choice(all_tracks, 60, replace=False)) + ["nobody:1", "nobody:2"]
        candidates += candidates[:3]  # duplicates are scored once
        # what serve does: the history is cut to the last T before the SIDs are looked up
        history = history[-HISTORY_LEN:]
        seen = {t: sids[t] for t in [*candidates, *history] if t in sids}
        ref = rank(snap, seen, history, candidates)
        outside = [t for t in [*candidates, *history] if t not in fast.rows]
        got = fast.rank(candidates, history, HISTORY_LEN, {t: seen[t] for t in outside if t in seen})
        assert got["unknown"] == ref["unknown"] == ["nobody:1", "nobody:2"]
        assert got["history_len"] == ref["history_len"]
        ref_scores = {x["track_id"]: x["score"] for x in ref["scored"]}
        got_scores = {x["track_id"]: x["score"] for x in got["scored"]}
        assert got_scores.keys() == ref_scores.keys() and len(got_scores) == 60
        tracks = list(ref_scores)
        np.testing.assert_allclose([got_scores[t] for t in tracks], [ref_scores[t] for t in tracks], rtol=1e-5, atol=1e-6)
        assert {x["track_id"]: x["cold"] for x in got["scored"]} == {x["track_id"]: x["cold"] for x in ref["scored"]}
        scores = [x["score"] for x in got["scored"]]
        assert scores == sorted(scores, reverse=True)
        assert len(set(np.round(scores, 6))) > 10  # the scores differ: the comparison is not of constants


def test_the_comparison_can_fail():
    """A fast path whose weights drift from the model's gives scores the tolerance rejects."""
    rng = np.random.default_rng(1)
    sids = _catalogue(rng, 50)
    vocab = list(sids)
    id_rows = {t: i + 1 for i, t in enumerate(vocab)}
    layers = {m: len(k) for m, k in SIZES.items()}
    model = _model(CONFIGS["mcca"], len(vocab), seed=3)
    fast = FastRanker(model, id_rows, layers, cold_rows=1000)
    fast.precompute(vocab, list(sids.values()))
    fast.mlp[-1].b += 1e-3  # type: ignore[attr-defined]
    history, candidates = vocab[:10], vocab[10:40]
    ref = {x["track_id"]: x["score"] for x in rank(Snapshot("v", "r", "v", model, id_rows, layers, HISTORY_LEN),
                                                   sids, history, candidates)["scored"]}
    got = {x["track_id"]: x["score"] for x in fast.rank(candidates, history, HISTORY_LEN, {})["scored"]}
    with pytest.raises(AssertionError):
        np.testing.assert_allclose([got[t] for t in ref], list(ref.values()), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("var", [1e-4, 1.0], ids=["saturated-dice", "plain"])
def test_fused_attention_equals_the_model_when_dice_saturates(var):
    """The fused path splits exp(kz + qz) into exp(kz) exp(qz) only while both are small; a Dice
    whose batch-norm variance is tiny (|z| in the hundreds) takes the exact branch and still
    equals the model's forward, and so does the split branch."""
    rng = np.random.default_rng(3)
    sids = _catalogue(rng, 120)
    vocab = list(sids)[:100]
    id_rows = {t: i + 1 for i, t in enumerate(vocab)}
    layers = {m: len(k) for m, k in SIZES.items()}
    model = _model(CONFIGS["mcca"], len(vocab), seed=5)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            assert m.running_var is not None
            m.running_var.fill_(var)
    fast = FastRanker(model, id_rows, layers, cold_rows=1000)
    assert fast.fused is not None
    fast.precompute(vocab[:80], [sids[t] for t in vocab[:80]])
    history, candidates = list(sids)[:HISTORY_LEN], list(sids)[20:120]
    hist_vecs = fast.gather(history, 0, sids)[1]  # [T, width]: all of them history
    fu = fast.fused
    kz = fu.history_side(hist_vecs)[:, :, : fu.h] * fu.neg_inv.reshape(fu.A, 1, fu.h)  # [A, T, h]
    assert (np.abs(kz).max() > 40) == (var < 1)  # the branch this case is about is the one taken
    ref = {x["track_id"]: x["score"] for x in rank(Snapshot("v", "r", "v", model, id_rows, layers, HISTORY_LEN),
                                                   sids, history, candidates)["scored"]}
    got = {x["track_id"]: x["score"] for x in fast.rank(candidates, history, HISTORY_LEN, sids)["scored"]}
    assert got.keys() == ref.keys() and len(got) == 100
    np.testing.assert_allclose([got[t] for t in ref], list(ref.values()), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["mcca", "mcca-prelu"], ids=["fused", "per-attention"])
@pytest.mark.parametrize("ring", [0, 5, 1000], ids=["keep-none", "ring-of-5", "ring-of-1000"])
def test_tracks_outside_the_table_are_kept_in_a_bounded_ring(ring, name):
    """Tracks without precomputed rows (cold ones) are computed from their SIDs, kept in a ring
    of at most `cold_rows` slots (the oldest out first), and score as the model's forward on
    every request: before they are kept, while kept, and after they left the ring. The SIDs are
    asked only for tracks without rows."""
    rng = np.random.default_rng(11)
    sids = _catalogue(rng, 260)
    vocab = [f"t{i}" for i in range(200)]
    id_rows = {t: i + 1 for i, t in enumerate(vocab)}
    layers = {m: len(k) for m, k in SIZES.items()}
    model = _model(CONFIGS[name], len(vocab), seed=13)
    snap = Snapshot("v1", "r1", "v1", model, id_rows, layers, HISTORY_LEN)
    fast = FastRanker(model, id_rows, layers, cold_rows=ring)
    assert (fast.fused is not None) == (name == "mcca")
    known = [t for t in vocab[:150] if sids[t] is not None]
    fast.precompute(known, [sids[t] for t in known])
    outside = [t for t in sids if t not in fast.rows]
    asked: list[list[str]] = []

    def read(tracks: list[str]) -> dict:
        asked.append(tracks)
        return {t: sids[t] for t in tracks}

    for _ in range(15):
        candidates = list(rng.choice(vocab[:150], 30, replace=False)) + list(rng.choice(outside, 12, replace=False))
        history = list(rng.choice(list(sids), HISTORY_LEN))
        without_rows = {t for t in [*candidates, *history] if t not in fast.rows}
        n_asked = len(asked)
        got = fast.rank(candidates, history, HISTORY_LEN, read)
        assert [sorted(a) for a in asked[n_asked:]] == ([sorted(without_rows)] if without_rows else [])
        ref = rank(snap, {t: sids[t] for t in [*candidates, *history]}, history, candidates)
        ref_scores = {x["track_id"]: x["score"] for x in ref["scored"]}
        got_scores = {x["track_id"]: x["score"] for x in got["scored"]}
        assert got_scores.keys() == ref_scores.keys()
        np.testing.assert_allclose([got_scores[t] for t in ref_scores], list(ref_scores.values()), rtol=1e-5, atol=1e-6)
        assert {x["track_id"]: x["cold"] for x in got["scored"]} == {x["track_id"]: x["cold"] for x in ref["scored"]}
        # the ring holds at most `ring` tracks, each at the slot the row map points to
        kept = {t: r for t, r in fast.rows.items() if r >= fast.n_table}
        assert len(kept) == len(fast.ring) <= ring
        assert all(fast.ring.tracks[r - fast.n_table] == t for t, r in kept.items())
        assert len(fast.table) == len(fast.query_table) == len(fast.cold) == fast.n_table + ring  # allocated once
    every = [t for a in asked for t in a]
    if ring == 1000:  # a ring larger than the tracks outside: each is computed once
        assert len(every) == len(set(every))
    else:  # a track that left the ring (or was never kept) is asked for again
        assert len(every) > len(set(every))
