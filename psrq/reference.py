"""The literal reading of PSRQ (method.md §2) in plain numpy: slow, for checking the fast path.

Every layer >= 2 builds z = [r ⊕ w·p] explicitly and measures ||z - c||² directly, item by
item.
"""

from __future__ import annotations

import numpy as np

from psrq.base import F32, I64


def encode(X: F32, centroids: list[F32], weights: list[float], anchor: str = "prefix") -> I64:
    """Greedy layer-by-layer argmin over explicit [r ⊕ w_l·p] (or [r ⊕ w_l·x]) vectors; weights[0] unused."""
    X = np.asarray(X, dtype=np.float32)
    n, d = X.shape
    r = X.copy()
    p = np.zeros_like(X)
    codes = np.empty((n, len(centroids)), dtype=np.int64)
    for layer, C in enumerate(centroids):
        semantic = X if anchor == "input" else p
        z = r if layer == 0 else np.concatenate([r, np.float32(weights[layer]) * semantic], axis=1)
        for i in range(n):  # literal: one item at a time
            codes[i, layer] = int(((z[i][None, :] - C) ** 2).sum(axis=1).argmin())
        step = C[codes[:, layer], :d]
        r = r - step
        p = p + step
    return codes
