"""The serving fast path of a ranker (DIN or MCCA): item-side vectors precomputed when a ranker goes
live, and a request scored by row gathers, a few small matrix products in numpy and two
compiled loops.

Why it equals the model's forward (tests/unit/trainer/test_fast_rank.py holds it to
`trainer.serving.rank`, which runs `model(batch)`):
- an item's vectors (its ID embedding and each codebook's summed per-layer SID embeddings, or
  DIN's concatenation of them) depend on the item alone, so they are computed once per item by
  the model's own embedding modules and gathered per request;
- an activation unit's first layer on [key ⊕ query] is W_k·key + W_q·query + b, so it is computed
  for the T history keys and the B candidate queries separately and broadcast to [B, T, h]
  instead of running the MLP on B×T concatenated rows; the rest of the unit runs on [B, T, h];
- every candidate of one request shares the user's history, so each interest is one [B, T] @ [T, d]
  product; padded history rows have weight 0 in the model, so only the real rows are kept here;
- in eval mode Dice's batch norm uses its running statistics: an elementwise affine map.

Numpy, not torch: at this size (B = 100, T = 20, d <= 64) a torch op costs ~5-10 µs of dispatch
against ~1-2 µs for numpy's, and the whole forward is a few dozen ops (measured by
`sidstream bench online`'s `scoring_us`: the fast path against `trainer.serving.rank`). Two
compiled loops (numba) do the elementwise work that numpy would spread over dozens of calls:
`_attention_weights`, the fused path's [B, T, H] block (`_Fused.first_layer`, the only work that
grows with B·T·H) with its per-request preparation (transposes, the history's Dice arguments and
the weights' linear part), keeping nothing of size [B, T, H], where numpy's or torch's broadcast
ops wrote and read five 1 MB temporaries per request (at MCCA's defaults) and evicted the rest of
the request's working set from a 2 MB L2; and `_dice_finish`, Dice after numpy's exp (numba's exp
is scalar; numpy's is vectorised). Of fast-math only the reciprocal's refined estimate and fused
multiply-adds are on (95 -> 72 µs at MCCA's defaults, errors as large as with IEEE division,
2.5e-8 abs against float64). The matrix products stay with numpy's BLAS.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import numba
import numpy as np
import torch
from torch import nn

from trainer.models.din import DIN
from trainer.models.layers import MLP, ActivationUnit, Dice, PReLU
from trainer.models.mcca import JOINT, MCCA, SPECIFIC

SidRow = Mapping[str, Sequence[int] | None]  # {text_sid, audio_sid, joint_sid}
EXP_SPLIT = 40.0  # |x| <= this: exp(x) is a normal float32 and a product of two stays one


_JIT = {"cache": True, "nogil": True, "boundscheck": False, "error_model": "numpy", "fastmath": {"arcp", "contract"}}


@numba.njit(**_JIT)
def _attention_weights(rows: np.ndarray, kk: np.ndarray, mean: np.ndarray, neg_inv: np.ndarray, wa: np.ndarray,
                       wp: np.ndarray, last_b: np.ndarray, split_max: float, out: np.ndarray) -> np.ndarray:
    """Every attention's weights out [A·T, B] (row a·T + t: attention a, history item t), without
    forming [B, T, H]: w = ka + qa + Σ_{h in a} (K[t, h] + Q[b, h]) p[b, t, h] wp[h], with
    p = 1 / (1 + exp(kz + qz)), kz = K·(-inv), qz = (Q - mean)·(-inv), ka = K·wa, qa = Q·wa + c.

    rows [B, 2H + m1 + 1]: the candidates' query rows [Q | E = exp(qz) | tail | max |qz|];
    kk [A, T, h + m1]: the history's [K | KW] per attention (uniform width h). Where every |qz|
    and |kz| is <= split_max, exp(kz + qz) = exp(kz)·E (T·H exps here, not B·T·H: exact, two
    normal float32 and a finite product); else qz is made from Q and exp(kz + qz) taken per term
    (inf -> p = 0, as the model's sigmoid). The loops run with the B candidates innermost
    (contiguous), so they vectorise; error_model "numpy": division by 0 or inf follows IEEE with no
    Python exception check in the loop (which kept it from vectorising)."""
    B = rows.shape[0]
    A, T, h = kk.shape[0], kk.shape[1], wa.shape[0] // kk.shape[0]
    H = A * h
    one = np.float32(1.0)
    qT, eT = np.empty((H, B), np.float32), np.empty((H, B), np.float32)  # [H, B]: candidates innermost
    zmax = np.float32(0.0)
    for b in range(B):
        zmax = max(zmax, rows[b, rows.shape[1] - 1])
        for j in range(H):
            qT[j, b] = rows[b, j]
            eT[j, b] = rows[b, H + j]
    kz = np.empty((A, T, h), np.float32)
    for a in range(A):
        for t in range(T):
            for j in range(h):
                kz[a, t, j] = kk[a, t, j] * neg_inv[a * h + j]
                zmax = max(zmax, abs(kz[a, t, j]))
    split = zmax <= split_max
    if split:
        for a in range(A):
            for t in range(T):
                for j in range(h):
                    kz[a, t, j] = np.exp(kz[a, t, j])
    else:  # eT holds qz instead of exp(qz)
        for j in range(H):
            for b in range(B):
                eT[j, b] = (qT[j, b] - mean[j]) * neg_inv[j]
    qa = np.empty(B, np.float32)
    for a in range(A):
        qa[:] = last_b[a]
        for j in range(a * h, (a + 1) * h):
            qj, w = qT[j], wa[j]
            for b in range(B):
                qa[b] += qj[b] * w
        for t in range(T):
            ka = np.float32(0.0)
            for j in range(h):
                ka += kk[a, t, j] * wa[a * h + j]
            acc = out[a * T + t]
            for b in range(B):
                acc[b] = ka + qa[b]
            for j in range(h):
                kh, zh, w = kk[a, t, j], kz[a, t, j], wp[a * h + j]
                qh, eh = qT[a * h + j], eT[a * h + j]
                if split:
                    for b in range(B):
                        acc[b] += (kh + qh[b]) / (zh * eh[b] + one) * w
                else:
                    for b in range(B):
                        acc[b] += (kh + qh[b]) / (np.exp(zh + eh[b]) + one) * w
    return out


@numba.njit(**_JIT)
def _dice_finish(x: np.ndarray, e: np.ndarray, alpha: np.ndarray, one_minus_alpha: np.ndarray) -> np.ndarray:
    """Dice from e = exp((x - mean)·(-inv)) [n, d]: x·(alpha + (1 - alpha)·p), p = 1 / (1 + e), into e."""
    one = np.float32(1.0)
    for i in range(x.shape[0]):
        xi, ei = x[i], e[i]
        for j in range(x.shape[1]):
            ei[j] = xi[j] * (alpha[j] + one_minus_alpha[j] / (ei[j] + one))
    return e


class _Layer:
    def __call__(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class _Linear(_Layer):
    def __init__(self, m: nn.Linear) -> None:
        self.w = m.weight.detach().numpy().T.copy()  # [in, out]
        self.b = m.bias.detach().numpy().copy()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x @ self.w + self.b


class _Dice(_Layer):
    """Dice in eval mode: p = sigmoid((x - running_mean) / sqrt(running_var + eps))."""

    def __init__(self, m: Dice) -> None:
        bn = m.bn
        assert bn.running_mean is not None and bn.running_var is not None
        self.mean = bn.running_mean.detach().numpy().astype(np.float32)
        self.inv = (1.0 / np.sqrt(bn.running_var.detach().numpy() + bn.eps)).astype(np.float32)
        self.neg_inv = -self.inv
        self.alpha = m.alpha.detach().numpy().astype(np.float32)
        self.one_minus_alpha = (1 - self.alpha).astype(np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        # p*x + (1-p)*alpha*x = x * (alpha + p*(1-alpha)): numpy's vectorised exp, the rest in one loop
        e = x - self.mean
        e *= self.neg_inv
        with np.errstate(over="ignore"):  # exp -> inf: p = 1 / inf = 0, as the model's sigmoid
            np.exp(e, out=e)
        d = x.shape[-1]
        _dice_finish(x.reshape(-1, d), e.reshape(-1, d), self.alpha, self.one_minus_alpha)
        return e


class _PReLU(_Layer):
    def __init__(self, m: PReLU) -> None:
        self.alpha = m.alpha.detach().numpy().copy()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.where(x >= 0, x, self.alpha * x)


def _layers(mlp: MLP) -> list[_Layer]:
    out: list[_Layer] = []
    for m in mlp.net:
        if isinstance(m, nn.Linear):
            out.append(_Linear(m))
        elif isinstance(m, Dice):
            out.append(_Dice(m))
        elif isinstance(m, PReLU):
            out.append(_PReLU(m))
        else:
            raise TypeError(f"no fast path for layer {type(m).__name__}")
    return out


class _Unit:
    """An ActivationUnit split at its first layer: keys and queries projected separately."""

    def __init__(self, unit: ActivationUnit, key_dim: int) -> None:
        first, *rest = _layers(unit.mlp)
        assert isinstance(first, _Linear)
        self.wk, self.wq, self.b = first.w[:key_dim], first.w[key_dim:], first.b
        self.rest = rest
        # the usual unit, Linear -> Dice -> Linear(h, 1): Dice folded into both Linears, so the
        # [B, T, h] work is 5 elementwise passes instead of 9 (u * (alpha + (1 - alpha) p) . w
        # = u . (alpha w) + (u p) . ((1 - alpha) w), and p's argument is built from [T, h] and [B, h])
        self.folded = len(rest) == 2 and isinstance(rest[0], _Dice) and isinstance(rest[1], _Linear)
        if self.folded:
            dice, last = rest
            assert isinstance(dice, _Dice) and isinstance(last, _Linear)
            self.dice, self.last_b = dice, last.b
            self.w_alpha = (dice.alpha[:, None] * last.w).astype(np.float32)
            self.w_p = (dice.one_minus_alpha[:, None] * last.w).astype(np.float32)

    def interest(self, keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """keys [T, dk] (the real history rows), queries [B, dq] -> sum_j w(k_j, q) k_j  [B, dk]."""
        if keys.shape[0] == 0:
            return np.zeros((queries.shape[0], keys.shape[1]), dtype=np.float32)
        k, q = keys @ self.wk, queries @ self.wq + self.b  # [T, h], [B, h]
        if self.folded:
            d = self.dice
            u = k[None, :, :] + q[:, None, :]  # the pre-activation [B, T, h]
            z = (k * d.neg_inv)[None, :, :] + ((q - d.mean) * d.neg_inv)[:, None, :]
            np.exp(z, out=z)
            z += 1
            np.divide(u, z, out=z)  # u * p
            w = (u @ self.w_alpha + z @ self.w_p)[..., 0] + self.last_b  # [B, T]
            return w @ keys
        x = k[None, :, :] + q[:, None, :]  # [B, T, h]
        for layer in self.rest:
            x = layer(x)
        return x[..., 0] @ keys  # [B, T] @ [T, dk]


@dataclass(frozen=True)
class _Attention:
    key: str  # item-vector feature the history's keys are
    query: str  # item-vector feature the candidate's query is
    unit: _Unit


class _Fused:
    """Every attention at once, when each unit is the usual Linear -> Dice -> Linear(h, 1) of one
    hidden width h and every key block has one width dk (MCCA's and DIN's units always do), with
    the candidate-side work moved to the item (precomputed when a ranker goes live).

    For attention a with key block k, query block q (of the item vector v): the unit's
    pre-activation is u = k·Wk + q·Wq + b, Dice's p = 1 / (1 + exp(z)) with z = (u - mean)·(-inv),
    and w = u·(alpha w) + (u p)·((1 - alpha) w) + c. The candidate's *query row* holds what depends
    on the candidate alone: [Q = q·Wq + b | E = exp((Q - mean)·(-inv)) | tail = the MLP's first
    layer on the candidate's own inputs + bias | max |(Q - mean)·(-inv)|], computed in float64 once
    per item (2H + m1 + 1 floats). The history's [K = k·Wk | KW = k·W_interest] is one batched
    product per request over the A key blocks ([A, T, dk] @ [A, dk, h + m1]; less than keeping it
    per item would cost in memory). A request is then, for all A attentions together: the weights
    w [A·T, B] in one compiled loop (`_attention_weights`, the candidates innermost), and one
    [B, A·T] @ [A·T, m1] product for the MLP's first layer (Σ_a w_a @ (keys_a · W_interest_a) =
    (w_a @ keys_a) · W_interest_a)."""

    def __init__(self, r: FastRanker) -> None:
        units = [a.unit for a in r.attentions]
        (dk, h), m1 = units[0].wk.shape, r.first_b.shape[0]
        A = len(units)
        H = A * h
        self.H, self.A, self.h, self.m1 = H, A, h, m1
        # the query rows' products, in float64 (precomputed once per item)
        self.wq, self.bq = np.zeros((r.width, H)), np.zeros(H)
        self.wt, self.first_b = np.zeros((r.width, m1)), r.first_b.astype(np.float64)
        self.wt[r.tail_index] = r.tail_w
        f4 = np.float32
        self.wa, self.wp = np.zeros(H, f4), np.zeros(H, f4)  # each column's unit's alpha·w and (1 - alpha)·w
        self.mean, self.neg_inv, self.last_b = np.zeros(H, f4), np.zeros(H, f4), np.zeros(A, f4)
        for a, (att, u) in enumerate(zip(r.attentions, units, strict=True)):
            cols = slice(a * h, (a + 1) * h)
            self.wq[r.slices[att.query], cols], self.bq[cols] = u.wq, u.b
            self.wa[cols], self.wp[cols] = u.w_alpha[:, 0], u.w_p[:, 0]
            self.mean[cols], self.neg_inv[cols], self.last_b[a] = u.dice.mean, u.dice.neg_inv, u.last_b[0]
        # the history side: the key blocks' columns of an item vector, and [Wk | W_interest] per block
        self.key_cols = np.concatenate([np.arange(r.width)[r.slices[att.key]] for att in r.attentions])
        self.w_keys = np.stack([np.concatenate([u.wk, w_int], axis=1) for u, w_int in zip(units, r.w_interest, strict=True)]
                               ).astype(f4)  # [A, dk, h + m1]
        self.dk = dk
        self.row_width = 2 * H + m1 + 1
        # compile the loop now (or load it from numba's cache), not on the first request
        self.first_layer(np.zeros((1, self.row_width), f4), np.zeros((1, r.width), f4))

    @staticmethod
    def fits(r: FastRanker) -> bool:
        """Every unit Linear -> Dice -> Linear(h, 1), of one hidden width and one key width."""
        units = [a.unit for a in r.attentions]
        return all(u.folded for u in units) and len({u.wk.shape for u in units}) == 1

    def query_rows(self, v: np.ndarray) -> np.ndarray:
        """Item vectors [n, width] -> their query rows [n, 2H + m1 + 1] (computed in float64)."""
        v8 = v.astype(np.float64)
        q = v8 @ self.wq + self.bq
        z = (q - self.mean) * self.neg_inv.astype(np.float64)
        zmax = np.abs(z).max(axis=1, keepdims=True)
        with np.errstate(over="ignore"):  # exp(z) of a row with |z| > EXP_SPLIT is not used
            e = np.exp(np.minimum(z, 80.0))
        return np.concatenate([q, e, v8 @ self.wt + self.first_b, zmax], axis=1).astype(np.float32)

    def history_side(self, hist: np.ndarray) -> np.ndarray:
        """hist [T, width] -> [K | KW] [A, T, h + m1]: each key block through its unit's first
        layer (K, the key's pre-activation part) and the MLP's first layer (KW), one batched product."""
        keys = hist[:, self.key_cols].reshape(hist.shape[0], self.A, self.dk).transpose(1, 0, 2)
        return np.matmul(keys, self.w_keys)

    def first_layer(self, cand_rows: np.ndarray, hist: np.ndarray) -> np.ndarray:
        """cand_rows [B, 2H + m1 + 1] (query rows), hist [T, width] -> the MLP's first layer [B, m1]."""
        H, A, h, m1 = self.H, self.A, self.h, self.m1
        tail = cand_rows[:, 2 * H : 2 * H + m1]
        T, B = hist.shape[0], cand_rows.shape[0]
        if T == 0:
            return tail.copy()
        kk = self.history_side(hist)
        w = _attention_weights(cand_rows, kk, self.mean, self.neg_inv, self.wa, self.wp, self.last_b, EXP_SPLIT,
                               np.empty((A * T, B), np.float32))
        x = w.T @ kk[:, :, h:].reshape(A * T, m1)  # Σ_a w_a @ (keys_a · W_interest_a)
        x += tail
        return x


class _Ring:
    """Rows of tracks outside the precomputed table (cold tracks), computed from their SIDs on
    first use and kept after the table's N rows, at most `max_rows` of them: a ring, the oldest
    kept track's slot reused first (first in, first out: a track that leaves is computed again
    from its cached SIDs, ~1 µs of numpy a track). No invalidation: a FastRanker serves one
    codebook version, and a track's SIDs under a version never change (a track with no SID row
    is not kept, as in the SID cache). The tables are allocated with the ring's rows after the N
    (`FastRanker.allocate`: zeros, so the pages are taken only as slots fill; nothing is copied
    or grown while serving)."""

    def __init__(self, max_rows: int) -> None:
        self.max_rows, self.hand, self.used = max_rows, 0, 0
        self.tracks: list[str | None] = [None] * max_rows  # slot -> the track it holds

    def __len__(self) -> int:
        return self.used

    def keep(self, r: FastRanker, tracks: list[str], v: np.ndarray, q: np.ndarray, cold: np.ndarray) -> None:
        """Keep these tracks' vectors v, query rows q and cold flags (caller holds `r.lock`)."""
        fresh = [i for i, t in enumerate(tracks) if t not in r.rows]  # another thread may have kept one meanwhile
        if self.max_rows == 0 or not fresh:
            return
        if len(fresh) < len(tracks):
            tracks, v, q, cold = [tracks[i] for i in fresh], v[fresh], q[fresh], cold[fresh]
        tracks, v, q, cold = tracks[-self.max_rows :], v[-self.max_rows :], q[-self.max_rows :], cold[-self.max_rows :]
        k, n = len(tracks), r.n_table
        slots = (self.hand + np.arange(k)) % self.max_rows
        for slot in slots.tolist():
            old = self.tracks[slot]
            if old is not None and r.rows.get(old) == n + slot:
                del r.rows[old]
        at = n + slots
        r.table[at], r.cold[at] = v, cold
        if r.fused is not None:
            r.query_table[at] = q
        r.rows.update(zip(tracks, at.tolist(), strict=True))
        for slot, t in zip(slots.tolist(), tracks, strict=True):
            self.tracks[slot] = t
        self.hand, self.used = (self.hand + k) % self.max_rows, min(self.max_rows, self.used + k)


class FastRanker:
    """A DIN or MCCA (eval mode) as item vectors + numpy scoring. `id_rows`: track -> ID row (the
    ranker's vocabulary; others use the zero padding row 0, as `trainer.serving.rank` does);
    `layers`: codebook -> semantic layers embedded; `cold_rows`: how many tracks outside the
    precomputed table keep their rows once computed (`_Ring`; 0: computed on every request)."""

    def __init__(self, model: nn.Module, id_rows: Mapping[str, int], layers: Mapping[str, int],
                 cold_rows: int) -> None:
        self.model, self.id_rows, self.layers = model, id_rows, dict(layers)
        if isinstance(model, MCCA):
            d = model.config.emb_dim
            # "query": the shared query (MCCA._query: the joint embedding, a specific one where the
            # track has no joint code), beside the plain embeddings the history's keys are
            self.features = {"id": d, **{m: d for m in model.attended}, **({"query": d} if model.query_codebook else {})}
            atts = [(m, "query" if model.query_codebook else m, model.sid_attention[m]) for m in model.attended]
            atts.append(("id", "id", model.id_attention))
            # the MLP's item-side inputs after the interests
            self.tail = ["id", *(["query"] if model.query_codebook else model.target_codebooks)]
        elif isinstance(model, DIN):
            self.features = {"r": model.id_emb.embedding_dim * (2 if model.sid_emb is not None else 1)}
            atts = [("r", "r", model.attention)]
            self.tail = ["r"]
        else:
            raise TypeError(f"no fast path for {type(model).__name__}")
        offsets = np.cumsum([0, *self.features.values()])
        self.slices = {f: slice(int(a), int(b)) for f, a, b in zip(self.features, offsets[:-1], offsets[1:], strict=True)}
        self.width = int(offsets[-1])
        self.attentions = [_Attention(k, q, _Unit(u, self.features[k])) for k, q, u in atts]
        self.mlp = _layers(model.mlp)
        # the MLP's first layer split by input block: interests (per request) and item-side tail
        first = self.mlp[0]
        assert isinstance(first, _Linear)
        widths = [self.features[a.key] for a in self.attentions] + [self.features[f] for f in self.tail]
        cuts = np.cumsum([0, *widths])
        n_att = len(self.attentions)
        self.w_interest = [first.w[cuts[i] : cuts[i + 1]] for i in range(n_att)]
        tail_w = np.concatenate([first.w[cuts[n_att + j] : cuts[n_att + j + 1]] for j in range(len(self.tail))])
        self.tail_index = np.concatenate([np.arange(self.width)[self.slices[f]] for f in self.tail])
        self.tail_w, self.first_b = tail_w, first.b
        # the embedding tables as numpy, for items computed per request (outside `table`)
        if isinstance(model, MCCA):
            self.id_table = model.id_emb.weight.detach().numpy().copy()
            self.sid_tables = {m: [t.weight.detach().numpy().copy() for t in model.sid_emb[m].tables] for m in model.attended}
        else:
            self.id_table = model.id_emb.weight.detach().numpy().copy()
            self.sid_tables = ({model.config.sid_codebook: [t.weight.detach().numpy().copy() for t in model.sid_emb.tables]}
                               if model.sid_emb is not None else {})
        # the fused path where every unit is Linear -> Dice -> Linear(h, 1) (the default)
        self.fused = _Fused(self) if _Fused.fits(self) else None
        # the tables: item vectors, the fused path's query rows beside them row for row, whether
        # a row's track is cold (no ID row); the precomputed tracks' n_table rows, then the ring's
        self.rows: dict[str, int] = {}  # track -> row of the tables
        self.ring = _Ring(cold_rows)
        self.allocate(0)
        self.lock = threading.Lock()  # lookups and gathers against the ring's writes (pool threads)
        self.head(np.zeros((1, self.first_b.shape[0]), np.float32))  # compile (or load) Dice's loop now

    # -- item vectors --------------------------------------------------------------------------
    def codes(self, sids: Iterable[SidRow | None]) -> dict[str, np.ndarray]:
        """Per codebook, int64 [n, L]: a track's first L codes, -1s where it has no such SID (as
        `trainer.serving.rank` builds them)."""
        rows = list(sids)
        out = {}
        for m, L in self.layers.items():
            col, missing = f"{m}_sid", [-1] * L
            flat = [(v[:L] if v is not None and len(v) >= L else missing)
                    for v in (r.get(col) if r is not None else None for r in rows)]
            out[m] = np.array(flat, dtype=np.int64).reshape(len(rows), L)
        return out

    def vectors(self, tracks: Sequence[str], sids: Iterable[SidRow | None]) -> np.ndarray:
        """Item vectors [n, width] of these tracks from their SIDs, by the model's own modules."""
        ids = torch.from_numpy(np.fromiter(map(self.id_rows.get, tracks, repeat(0)), dtype=np.int64, count=len(tracks)))
        codes = {m: torch.from_numpy(c) for m, c in self.codes(sids).items()}
        model: Any = self.model
        with torch.inference_mode():
            if isinstance(model, MCCA):
                parts = {"id": model.id_emb(ids), **{m: model.sid_emb[m](codes[m]) for m in model.attended}}
                if model.query_codebook:
                    parts["query"] = model._query({f"codes:{m}": c for m, c in codes.items()}, parts)
            else:
                parts = {"r": model.item_repr(ids, {f"codes:{m}": c for m, c in codes.items()}, "codes:")}
            return torch.cat([parts[f].float() for f in self.features], dim=-1).numpy()

    def vectors_np(self, tracks: Sequence[str], sids: Iterable[SidRow | None]) -> np.ndarray:
        """`vectors` by numpy gathers (per-request misses: no torch dispatch); the same sums in the
        same order as the model's modules."""
        ids = np.fromiter(map(self.id_rows.get, tracks, repeat(0)), dtype=np.int64, count=len(tracks))
        codes = self.codes(sids)
        sid = {}
        for m, tables in self.sid_tables.items():
            c = codes[m]
            e = None
            for layer, table in enumerate(tables):
                col = c[:, layer]
                rows = table[np.where(col < 0, table.shape[0] - 1, col)]
                e = rows if e is None else e + rows
            sid[m] = e
        parts = ({"id": self.id_table[ids], **sid} if "id" in self.features
                 else {"r": np.concatenate([self.id_table[ids], *sid.values()], axis=1)})
        if "query" in self.features:
            parts["query"] = self._query_np(codes, sid)
        return np.concatenate([parts[f] for f in self.features], axis=1).astype(np.float32, copy=False)

    def _query_np(self, codes: Mapping[str, np.ndarray], sid: Mapping[str, np.ndarray]) -> np.ndarray:
        """MCCA._query in numpy: the joint embedding, else text, else audio where joint is missing."""
        model: Any = self.model
        query = sid[model.query_codebook]
        if model.query_codebook != JOINT:
            return query
        missing = codes[JOINT][:, 0] < 0
        for m in reversed([m for m in SPECIFIC if m in model.attended]):
            query = np.where((missing & (codes[m][:, 0] >= 0))[:, None], sid[m], query)
        return query

    def allocate(self, n: int) -> None:
        """Empty tables of n precomputed rows and the ring's (zeros: their pages are taken only as
        rows are written); the ring emptied."""
        rows = n + self.ring.max_rows
        self.table = np.zeros((rows, self.width), dtype=np.float32)
        self.query_table = np.zeros((rows, self.fused.row_width if self.fused else 0), dtype=np.float32)
        self.cold = np.zeros(rows, dtype=bool)
        self.n_table, self.ring = n, _Ring(self.ring.max_rows)

    def precompute(self, tracks: Sequence[str], sids: Sequence[SidRow], chunk: int = 4096) -> None:
        """The tables' rows for `tracks` (their SID rows under the ranker's version), written into
        fresh tables block by block; the ring emptied."""
        with self.lock:
            self.allocate(len(tracks))
            for i in range(0, len(tracks), chunk):
                v = self.vectors(tracks[i : i + chunk], sids[i : i + chunk])
                self.table[i : i + len(v)] = v
                if self.fused is not None:
                    self.query_table[i : i + len(v)] = self.fused.query_rows(v)
            self.cold[: len(tracks)] = np.fromiter((t not in self.id_rows for t in tracks), dtype=bool, count=len(tracks))
            self.rows = dict(zip(tracks, range(len(tracks)), strict=True))

    @property
    def nbytes(self) -> int:
        """Bytes of the tables' rows in use (precomputed and kept in the ring)."""
        rows = self.n_table + len(self.ring)
        return rows * (self.table.shape[1] + self.query_table.shape[1]) * 4

    def lookup(self, tracks: Sequence[str]) -> np.ndarray:
        """Rows of the tables for these tracks, -1 where none (one C-level map, no loop)."""
        return np.fromiter(map(self.rows.get, tracks, repeat(-1)), dtype=np.int64, count=len(tracks))

    # -- scoring -------------------------------------------------------------------------------
    def logits(self, cand: np.ndarray, hist: np.ndarray) -> np.ndarray:
        """cand [B, width], hist [T, width] (oldest first, T may be 0) -> logits [B]."""
        x = cand[:, self.tail_index] @ self.tail_w + self.first_b
        for att, w in zip(self.attentions, self.w_interest, strict=True):
            interest = att.unit.interest(hist[:, self.slices[att.key]], cand[:, self.slices[att.query]])
            x = x + interest @ w
        return self.head(x)

    def head(self, x: np.ndarray) -> np.ndarray:
        """The MLP after its first layer: [B, m1] -> logits [B]."""
        for layer in self.mlp[1:]:
            x = layer(x)
        return x[:, 0]

    def rank(self, candidates: Sequence[str], history: Sequence[str], history_len: int,
             sids: Mapping[str, SidRow] | Callable[[list[str]], Mapping[str, SidRow]]) -> dict[str, Any]:
        """`trainer.serving.rank`'s answer: candidates with rows in the tables or a SID row are
        scored, the rest listed as unknown; the history is the user's last positives (oldest
        first) that have rows or SIDs, at most `history_len`. `sids`: the SID rows of tracks
        without rows (a mapping, or a function called with those tracks only)."""
        cands = list(dict.fromkeys(candidates))
        n = len(cands)
        cand, hist, cold, rows = self.gather([*cands, *history], n, sids)
        c_rows, h_rows = rows[:n], rows[n:]
        known_idx = np.flatnonzero(c_rows >= 0)
        keep = np.flatnonzero(h_rows >= 0)[-history_len:] if history_len > 0 else np.zeros(0, dtype=np.int64)
        unknown = [cands[i] for i in np.flatnonzero(c_rows < 0).tolist()] if known_idx.size < n else []
        if known_idx.size == 0:
            return {"scored": [], "unknown": unknown, "history_len": len(keep)}
        if known_idx.size < n:
            cand = cand[known_idx]
        if keep.size < len(hist):
            hist = hist[keep]
        z = self.head(self.fused.first_layer(cand, hist)) if self.fused is not None else self.logits(cand, hist)
        p = 1.0 / (1.0 + np.exp(-z.astype(np.float64)))
        by_score = np.argsort(-p, kind="stable")
        order = known_idx[by_score]
        scored = [{"track_id": cands[i], "score": s, "cold": c}
                  for i, s, c in zip(order.tolist(), p[by_score].tolist(), cold[order].tolist(), strict=True)]
        return {"scored": scored, "unknown": unknown, "history_len": len(keep)}

    def gather(self, tracks: list[str], n: int, sids: Mapping[str, SidRow] | Callable[[list[str]], Mapping[str, SidRow]]
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """For tracks[:n] (candidates) and tracks[n:] (history): the candidates' query rows (their
        item vectors off the fused path), the history's item vectors, the candidates' cold flags,
        and a row marker per track (>= 0: has rows, -1: none). Rows in the tables are gathered
        (copies, so the ring may reuse their slots after); the others are computed from their
        SID rows, where they have one, and kept in the ring."""
        with self.lock:
            cand_table = self.query_table if self.fused is not None else self.table
            rows = self.lookup(tracks)
            at = np.maximum(rows, 0)
            if len(self.table):
                cand, hist, cold = cand_table[at[:n]], self.table[at[n:]], self.cold[at[:n]]
            else:
                cand = np.zeros((n, cand_table.shape[1]), np.float32)
                hist, cold = np.zeros((len(tracks) - n, self.width), np.float32), np.zeros(n, bool)
        miss = np.flatnonzero(rows < 0)
        if miss.size:
            names = list(dict.fromkeys(tracks[i] for i in miss.tolist()))
            found = sids(names) if callable(sids) else sids
            new = [t for t in names if t in found]
            if new:
                v = self.vectors_np(new, [found[t] for t in new])
                q = self.fused.query_rows(v) if self.fused is not None else v
                new_cold = np.fromiter((t not in self.id_rows for t in new), dtype=bool, count=len(new))
                slot = {t: i for i, t in enumerate(new)}
                pos = [i for i in miss.tolist() if tracks[i] in slot]
                src = np.array([slot[tracks[i]] for i in pos], dtype=np.int64)
                pos_arr = np.array(pos, dtype=np.int64)
                c, h = pos_arr < n, pos_arr >= n
                cand[pos_arr[c]], cold[pos_arr[c]] = q[src[c]], new_cold[src[c]]
                hist[pos_arr[h] - n] = v[src[h]]
                rows[pos_arr] = 0
                with self.lock:
                    self.ring.keep(self, new, v, q, new_cold)
        return cand, hist, cold, rows
