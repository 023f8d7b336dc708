"""The ranker gate: a trained ranker goes live only when it is better than chance, and not worse
than the live ranker, on the same held-out window of the system's own interaction log.

Both rankers score the same test rows (the newest interactions: `train.holdout_days`, or the
job's test fraction). The uncertainty comes from the listeners: a paired bootstrap resamples
users with replacement (`train.gate_rounds` rounds, seeded), and each round recomputes the
candidate's AUC and the difference to the live ranker's AUC on the same resample, with user
weights (vectorised over rounds; ties count one half).

A candidate is refused when
- the lower end of its AUC interval is not above 0.5 + `train.gate_min_auc_lift` (it is not
  shown to beat a coin: a ranker trained on noise is refused even when its point AUC is 0.53), or
- the upper end of the (candidate - live) interval is below -`train.gate_max_auc_drop` (it is
  shown to be worse than the live ranker by more than the allowed drop).
The intervals are central, at `train.gate_confidence`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

_CHUNK = 64  # bootstrap rounds per vectorised step (bounds the [rounds, rows] weight matrix)


@dataclass(frozen=True)
class RankerGateConfig:
    """The gate's settings (settings.train: gate_min_auc_lift, gate_max_auc_drop, gate_confidence,
    gate_rounds, holdout_days); the defaults are the settings' defaults."""

    min_auc_lift: float = 0.02
    max_auc_drop: float = 0.01
    confidence: float = 0.95
    rounds: int = 1000
    holdout_days: float | None = None  # None: the job's test fraction

    @classmethod
    def from_settings(cls, train: Any) -> RankerGateConfig:
        return cls(train.gate_min_auc_lift, train.gate_max_auc_drop, train.gate_confidence, train.gate_rounds,
                   train.holdout_days)


def holdout_fraction(timestamps: np.ndarray, days: float | None, default: float) -> float:
    """The test fraction that puts the newest `days` of interactions in the held-out window
    (`default` when days is None); a window that would hold every row or none is an error."""
    if days is None:
        return default
    ts = np.asarray(timestamps, dtype=np.int64)
    share = float((ts > ts.max() - int(days * 86_400_000)).mean()) if ts.size else 0.0
    if not 0.0 < share < 1.0:
        raise ValueError(f"train.holdout_days {days:g} puts {share:.0%} of the {ts.size} interactions in the held-out "
                         "window: it must hold some, not all")
    return share


@dataclass
class RankerGateResult:
    passed: bool
    reasons: list[str]
    candidate_auc: float
    candidate_interval: tuple[float, float]
    live_version: str | None = None
    live_auc: float | None = None
    diff: float | None = None  # candidate - live, point estimate
    diff_interval: tuple[float, float] | None = None
    users: int = 0
    rows: int = 0
    thresholds: dict[str, float] = field(default_factory=dict)
    live_unscored: str | None = None  # why a live ranker could not be scored on this window (not a refusal)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def user_bootstrap_aucs(users: np.ndarray, labels: np.ndarray, scores: list[np.ndarray], rounds: int,
                        seed: int = 0) -> list[np.ndarray]:
    """AUC of each score vector on `rounds` resamples of the users (with replacement; the same
    resamples for every vector: paired). Returns one [rounds] array per score vector; rounds
    where a resample has only one class are NaN."""
    _, user_idx = np.unique(np.asarray(users), return_inverse=True)
    n_users = int(user_idx.max()) + 1 if user_idx.size else 0
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n_users, np.full(n_users, 1.0 / n_users), size=rounds) if n_users else np.zeros((rounds, 0))
    out = []
    for s in scores:
        aucs = np.empty(rounds, dtype=np.float64)
        for start in range(0, rounds, _CHUNK):
            w = draws[start : start + _CHUNK][:, user_idx].astype(np.float64)  # [chunk, rows]
            aucs[start : start + _CHUNK] = weighted_auc(np.asarray(labels), np.asarray(s, dtype=np.float64), w)
        out.append(aucs)
    return out


def weighted_auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC (Mann-Whitney, ties one half) of `scores` for each row of `weights` [k, n] over the n
    rows; NaN where a weighting has no positive or no negative weight."""
    order = np.argsort(scores, kind="stable")
    s, y = scores[order], labels[order].astype(bool)
    w = np.atleast_2d(weights)[:, order]
    starts = np.flatnonzero(np.concatenate([[True], s[1:] != s[:-1]]))  # first row of each tied group
    group = np.cumsum(np.concatenate([[False], s[1:] != s[:-1]]))
    neg_group = np.add.reduceat(w * ~y, starts, axis=1)  # [k, groups]
    neg_below = np.cumsum(neg_group, axis=1) - neg_group  # negatives strictly below each group
    credit = neg_below + 0.5 * neg_group  # what one positive in the group wins
    pos = w * y
    n_pos, n_neg = pos.sum(axis=1), (w * ~y).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (pos * credit[:, group]).sum(axis=1) / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc


def gate_ranker(users: np.ndarray, labels: np.ndarray, candidate: np.ndarray, live: np.ndarray | None,
                live_version: str | None, min_auc_lift: float, max_auc_drop: float, confidence: float = 0.95,
                rounds: int = 1000, seed: int = 0) -> RankerGateResult:
    """Decide on a candidate from its scores (and the live ranker's, when it can be scored) on
    the held-out rows of `users` with `labels`."""
    labels = np.asarray(labels)
    one = np.ones((1, labels.size))
    cand_auc = float(weighted_auc(labels, np.asarray(candidate, dtype=np.float64), one)[0])
    vectors = [candidate] if live is None else [candidate, live]
    boots = user_bootstrap_aucs(users, labels, vectors, rounds, seed)
    alpha = (1.0 - confidence) / 2
    lo, hi = (float(np.nanquantile(boots[0], q)) for q in (alpha, 1 - alpha)) if np.isfinite(boots[0]).any() else (np.nan, np.nan)
    result = RankerGateResult(True, [], round(cand_auc, 4), (round(lo, 4), round(hi, 4)), live_version,
                              users=int(np.unique(users).size), rows=int(labels.size),
                              thresholds={"min_auc_lift": min_auc_lift, "max_auc_drop": max_auc_drop, "confidence": confidence})
    if not np.isfinite(cand_auc):
        result.reasons.append("the held-out window has only one label: no AUC can be measured")
    elif not lo > 0.5 + min_auc_lift:
        result.reasons.append(f"AUC {cand_auc:.4f} is not shown above chance: its {confidence:.0%} interval starts at "
                              f"{lo:.4f}, not above 0.5 + gate_min_auc_lift {min_auc_lift}")
    if live is not None:
        live_auc = float(weighted_auc(labels, np.asarray(live, dtype=np.float64), one)[0])
        diffs = boots[0] - boots[1]
        d_lo, d_hi = (float(np.nanquantile(diffs, q)) for q in (alpha, 1 - alpha))
        result.live_auc, result.diff = round(live_auc, 4), round(cand_auc - live_auc, 4)
        result.diff_interval = (round(d_lo, 4), round(d_hi, 4))
        if d_hi < -max_auc_drop:
            result.reasons.append(f"worse than the live ranker {live_version}: AUC {cand_auc:.4f} vs {live_auc:.4f}, the "
                                  f"difference's {confidence:.0%} interval [{d_lo:.4f}, {d_hi:.4f}] is below "
                                  f"-gate_max_auc_drop {max_auc_drop}")
    result.passed = not result.reasons
    return result


WARM_CHILD = "warm_child"  # the ranker event recording the decision on a warm child (trainer.jobs.judge_warm_child)


def serving_codebooks(events: list[dict[str, Any]], ranker_version: str, trained_on: str | None,
                      live_codebooks: str | None) -> str | None:
    """The codebook version whose SIDs `ranker_version` reads: the live version when the ranker's
    last warm-child decision for it passed (the live ranker was gated on the child's IDs against its
    own parent's: docs/architecture.md, "A warm child with its parent's ranker"), else the version
    it was trained on."""
    if live_codebooks is None or live_codebooks == trained_on:
        return trained_on
    for e in reversed(events):
        if e.get("event") == WARM_CHILD and e.get("ranker") == ranker_version and e.get("codebook_version") == live_codebooks:
            return live_codebooks if e.get("passed") else trained_on
    return trained_on
