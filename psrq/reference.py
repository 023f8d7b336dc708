"""The literal reading of PSRQ (method.md §2) in plain numpy: slow, for checking the fast path.

Every layer >= 2 builds z = [r ⊕ w·p] explicitly and measures ||z - c||² directly, item by
item block; fitting runs faiss k-means on the explicit 2d-dim z (the naive cost).
"""

from __future__ import annotations

import numpy as np

from psrq.base import F32, I64
from psrq.kmeans import faiss_kmeans


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


def fit(X: F32, codebook_sizes: list[int], alpha: float, seed: int = 0) -> list[F32]:
    """Naive PSRQ fit: faiss k-means on the explicit z of every layer (no prefix table)."""
    X = np.asarray(X, dtype=np.float32)
    d = X.shape[1]
    r = X.copy()
    p = np.zeros_like(X)
    centroids: list[F32] = []
    for layer, k in enumerate(codebook_sizes):
        z = r if layer == 0 else np.ascontiguousarray(np.concatenate([r, np.float32(alpha) * p], axis=1))
        C = faiss_kmeans(z, k, seed=seed + layer)
        centroids.append(C)
        codes = encode_layer(z, C)
        r = r - C[codes, :d]
        p = p + C[codes, :d]
    return centroids


def encode_layer(z: F32, C: F32) -> I64:
    d2 = (z * z).sum(axis=1)[:, None] - 2.0 * (z @ C.T) + (C * C).sum(axis=1)[None, :]
    return np.asarray(d2.argmin(axis=1), dtype=np.int64)
