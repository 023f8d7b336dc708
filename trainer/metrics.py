"""Ranking metrics of the paper's tables: All AUC, Cold AUC, Logloss, and GAUC.

All functions are vectorised (numpy / pandas); ties in scores count one half, as in the
Mann-Whitney statistic.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

COLD_THRESHOLD = 30  # method.md §3: "fewer than 30 training interactions"


def _as_arrays(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(np.float64).ravel()
    s = np.asarray(scores).astype(np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape} vs {s.shape}")
    return y, s


def auc(labels: Any, scores: Any) -> float:
    """ROC AUC by average ranks; NaN when only one class is present."""
    y, s = _as_arrays(labels, scores)
    pos = y > 0.5
    n_pos = int(pos.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pd.Series(s).rank(method="average").to_numpy()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def logloss(labels: Any, probs: Any, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities (clipped to [eps, 1 - eps])."""
    y, p = _as_arrays(labels, probs)
    if y.size == 0:
        return float("nan")
    p = np.clip(p, eps, 1 - eps)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def gauc(users: Any, labels: Any, scores: Any) -> float:
    """Per-user AUC weighted by the user's number of impressions; users with one class skipped."""
    y, s = _as_arrays(labels, scores)
    df = pd.DataFrame({"u": np.asarray(users).ravel(), "y": y > 0.5, "s": s})
    if df.empty:
        return float("nan")
    # rank of each score within its user (average ranks for ties)
    df["r"] = df.groupby("u", sort=False)["s"].rank(method="average")
    df["rp"] = np.where(df["y"], df["r"], 0.0)
    g = df.groupby("u", sort=False).agg(n=("y", "size"), n_pos=("y", "sum"), rank_pos=("rp", "sum"))
    g = g[(g["n_pos"] > 0) & (g["n_pos"] < g["n"])]
    if g.empty:
        return float("nan")
    n_pos = g["n_pos"].to_numpy(np.float64)
    n_neg = g["n"].to_numpy(np.float64) - n_pos
    per_user = (g["rank_pos"].to_numpy() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    weights = g["n"].to_numpy(np.float64)
    return float((per_user * weights).sum() / weights.sum())


def cold_mask(test_items: Any, train_items: Any, threshold: int = COLD_THRESHOLD) -> np.ndarray:
    """True for test rows whose item has fewer than `threshold` rows (any label) in training."""
    counts = pd.Series(np.asarray(train_items).ravel()).value_counts()
    n_train = pd.Series(np.asarray(test_items).ravel()).map(counts).fillna(0).to_numpy()
    return n_train < threshold


def ranking_metrics(
    users: Any, items: Any, labels: Any, probs: Any, train_items: Any, threshold: int = COLD_THRESHOLD
) -> dict[str, float]:
    """The evaluation's metric set for one test run: all_auc, cold_auc, logloss, gauc, counts."""
    y, p = _as_arrays(labels, probs)
    cold = cold_mask(items, train_items, threshold)
    return {
        "all_auc": auc(y, p),
        "cold_auc": auc(y[cold], p[cold]),
        "logloss": logloss(y, p),
        "gauc": gauc(users, y, p),
        "n_test": int(y.size),
        "n_cold": int(cold.sum()),
    }
