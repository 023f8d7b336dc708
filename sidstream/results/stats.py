"""Paired comparisons over seeds: mean difference, 95 % interval, paired t-test, Holm, verdict.

Two models compared on the same seeds (same split, same codebook seed, same ranker seed) give
one difference per seed; the test is on those differences, so the variance both models share
(the split, the seed's batch order) cancels. A family of claims is corrected with Holm's
step-down method; a verdict is "better" / "worse" when the adjusted p is below the level and
"level" otherwise (which includes "identical": every difference zero).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

LEVEL = 0.05


def interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of a Student-t interval; a single value is its own interval."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    mean = float(v.mean())
    if len(v) < 2:
        return mean, mean, mean
    half = float(stats.t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return mean, mean - half, mean + half


def paired(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """a − b per seed: mean, 95 % interval, paired t-test p, Wilcoxon p, wins."""
    from scipy import stats

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired comparison needs two equal-length vectors, got {a.shape} and {b.shape}")
    d = a - b
    mean, low, high = interval(d)
    if len(d) < 2 or np.all(d == d[0]):
        # no spread: identical runs (d = 0) are level; a constant non-zero shift is certain
        p = 1.0 if d[0] == 0 or len(d) < 2 else 0.0
        p_w = p
    else:
        p = float(stats.ttest_rel(a, b).pvalue)
        p_w = float(stats.wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
    return {"n": int(len(d)), "mean_diff": mean, "ci_low": low, "ci_high": high, "p": p, "p_wilcoxon": p_w,
            "wins": int((d > 0).sum()), "losses": int((d < 0).sum()), "identical": bool(np.all(d == 0))}


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given)."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted = [0.0] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def verdict(mean_diff: float, p_adjusted: float, level: float = LEVEL) -> str:
    if p_adjusted < level:
        return "better" if mean_diff > 0 else "worse"
    return "level"
