"""A synthetic data set with a planted content signal (tests, `eval --quick` drills, the bench).

Items fall into `n_groups` content groups; an item's text (and audio) embedding is its group's
centre plus noise. Each user likes `liked_per_user` groups: positives come from liked groups,
sampled negatives from the others. "Warm" items are used throughout; "cold" items appear only
in the last `cold_time_share` of the time line, so they have no training interactions. Only
content (hence semantic IDs) can tell a cold item's group: plain-ID DIN cannot.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from trainer.dataset import Dataset


def make_synthetic(
    n_users: int = 300,
    n_items: int = 600,
    n_groups: int = 8,
    events_per_user: int = 40,
    dim: int = 32,
    modalities: tuple[str, ...] = ("text",),
    cold_item_share: float = 0.25,
    cold_time_share: float = 0.25,
    liked_per_user: int = 2,
    noise: float = 0.35,
    seed: int = 0,
) -> Dataset:
    rng = np.random.default_rng(seed)
    group = rng.integers(0, n_groups, n_items)
    cold = np.zeros(n_items, dtype=bool)
    cold[rng.permutation(n_items)[: int(cold_item_share * n_items)]] = True
    embeddings = {}
    for modality in modalities:
        centres = rng.normal(size=(n_groups, dim)).astype(np.float32)
        X = centres[group] + noise * rng.normal(size=(n_items, dim)).astype(np.float32)
        embeddings[modality] = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)

    item_ids = np.array([f"syn:{i}" for i in range(n_items)])
    by_group_warm = [np.flatnonzero((group == g) & ~cold) for g in range(n_groups)]
    by_group_cold = [np.flatnonzero((group == g) & cold) for g in range(n_groups)]
    rows = []
    t_cold = int((1 - cold_time_share) * events_per_user)
    for u in range(n_users):
        liked = rng.choice(n_groups, liked_per_user, replace=False)
        disliked = np.setdiff1d(np.arange(n_groups), liked)
        start = int(rng.integers(0, 1000))
        for t in range(events_per_user):
            late = t >= t_cold
            pool = by_group_cold if (late and rng.random() < 0.5) else by_group_warm
            for label, groups in ((1, liked), (0, disliked)):
                candidates = np.concatenate([pool[g] for g in groups])
                if candidates.size == 0:
                    candidates = np.concatenate([by_group_warm[g] for g in groups])
                item = int(rng.choice(candidates))
                # time: each user's events in order; cold items only after the global cutoff
                ts = (start + t) if not late else (10_000 + t)
                rows.append((f"u{u}", item_ids[item], ts * 1000, label))
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "label"])
    interactions["timestamp"] = interactions["timestamp"].astype("int64")
    interactions["label"] = interactions["label"].astype("int8")
    items = pd.DataFrame({"item_id": item_ids, "text": [f"item {i} of group {g}" for i, g in enumerate(group)],
                          "group": group.astype(int), "cold": cold})
    info = {"name": "synthetic", "seed": seed, "n_groups": n_groups, "modalities": list(modalities)}
    return Dataset(interactions, items, embeddings, item_ids.tolist(), info)
