"""Warm-started Lloyd k-means with a fit-time margin: the kernel of a warm refit (psrq.warm).

A warm Lloyd starts from given centroids (the parent version's codebook of one layer) instead of
seeded rows, runs a bounded number of iterations, and keeps each row's *starting* code (its
nearest centroid among the starting ones) during the assignment steps unless another centroid is
more than `margin` closer:

    switch to j*  iff  ||z - c_j*|| < (1 - margin) · ||z - c_old||     (j* the nearest centroid)

The margin acts on the fit only: the returned centroids are then used by plain nearest-centroid
encoding, so a code stays a function of the codebook and the embedding. Codes that start empty
(a layer that grew from K_old to K > K_old, or a code that lost every row) are reseeded at the
row of the currently largest code that lies farthest from its centroid, one code at a time; no
other code is renamed (code j keeps index j).

PSRQ's deeper layers run on z = [r ⊕ w·p] without building z: the prefix half of every distance
is a [paths, K] table (psrq.kmeans.prefix_table), as in the fresh fit. Two backends with the same
rules: numpy (the CPU path, `warm_lloyd`) and torch (`torch_warm_lloyd`, any torch device); on the
CPU they give the same codes (tests/unit/psrq/test_warm.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp

from psrq.base import F32, I64, SEARCH_BLOCK
from psrq.kmeans import prefix_table


def _distances(R: F32, C_r: F32, table: F32 | None, path_idx: I64 | None) -> F32:
    """Exact-form squared distances [n, K]: ||r||² - 2 r·c + ||c||² (+ table[path]), >= 0."""
    n, k = R.shape[0], C_r.shape[0]
    out = np.empty((n, k), dtype=np.float32)
    c_norms = np.einsum("ij,ij->i", C_r, C_r)
    for a in range(0, n, SEARCH_BLOCK):
        b = min(n, a + SEARCH_BLOCK)
        block = R[a:b] @ C_r.T
        block *= np.float32(-2.0)
        block += np.einsum("ij,ij->i", R[a:b], R[a:b])[:, None]
        block += c_norms[None, :]
        if table is not None and path_idx is not None:
            block += table[path_idx[a:b]]
        np.maximum(block, 0.0, out=block)
        out[a:b] = block
    return out


def margin_assign(D: F32, old: I64, margin: float) -> I64:
    """Each row's code: its nearest unless that is not more than `margin` closer than `old`."""
    best = D.argmin(axis=1)
    rows = np.arange(D.shape[0])
    factor = np.float32((1.0 - margin) ** 2)
    switch = D[rows, best] < factor * D[rows, old]
    return np.where(switch, best, old).astype(np.int64)


def _means(R: F32, P_rows: F32 | None, assign: I64, k: int, C: F32) -> F32:
    """Per-code means of [R ⊕ P_rows] (a code without rows keeps its centroid)."""
    n = R.shape[0]
    M = sp.csr_matrix((np.ones(n, dtype=np.float32), (assign, np.arange(n))), shape=(k, n))
    counts = np.bincount(assign, minlength=k)
    parts = [M @ R] + ([M @ P_rows] if P_rows is not None else [])
    sums = np.concatenate(parts, axis=1).astype(np.float32)
    out = C.copy()
    has = counts > 0
    out[has] = sums[has] / counts[has, None].astype(np.float32)
    return out


def reseed_empty(C: F32, assign: I64, own: np.ndarray, points: Any, k: int) -> None:
    """Every code without rows takes the row of the largest code farthest from its centroid
    (in place: C, assign, own = each row's distance to its centroid). `points(i)` is row i in the
    centroids' space. One code at a time (a loop over codes, not rows); no other code moves."""
    counts = np.bincount(assign, minlength=k)
    for j in np.flatnonzero(counts == 0):
        big = int(counts.argmax())
        if counts[big] < 2:
            break
        members = np.flatnonzero(assign == big)
        far = int(members[np.argmax(own[members])])
        C[j] = points(far)
        assign[far] = j
        own[far] = 0.0
        counts[big] -= 1
        counts[j] = 1


def _row_point(R: F32, prefixes: F32 | None, path_idx: I64 | None) -> Callable[[int], F32]:
    """Row i in the centroids' space: R[i], or [R[i] ⊕ prefixes[path_idx[i]]]."""
    if prefixes is None or path_idx is None:
        return lambda i: R[i]
    return lambda i: np.concatenate([R[i], prefixes[path_idx[i]]])


def warm_lloyd(
    R: F32, C0: F32, k: int, iters: int, margin: float, prefixes: F32 | None = None, path_idx: I64 | None = None,
) -> tuple[F32, I64]:
    """Warm Lloyd on R (or on [R ⊕ prefixes[path_idx]]) from the K_old = len(C0) <= k starting
    centroids ([K_old, d] or [K_old, 2d]); codes K_old..k-1 start empty and are reseeded.
    Returns (centroids [k, ·], the last assignment step's codes)."""
    d = R.shape[1]
    C = np.zeros((k, C0.shape[1]), dtype=np.float32)
    C[: len(C0)] = C0
    prefixed = prefixes is not None and path_idx is not None

    def dist(C: F32) -> F32:
        table = prefix_table(prefixes, np.ascontiguousarray(C[:, d:])) if prefixed else None  # type: ignore[arg-type]
        return _distances(R, np.ascontiguousarray(C[:, :d]), table, path_idx)

    point = _row_point(R, prefixes, path_idx)
    D = dist(C[: len(C0)])
    old = D.argmin(axis=1).astype(np.int64)
    assign = old.copy()
    own = D[np.arange(len(R)), old]
    reseed_empty(C, assign, own, point, k)
    old = assign.copy()  # a reseeded code's row starts there
    P_rows = prefixes[path_idx] if prefixed else None  # type: ignore[index]
    for _ in range(iters):
        C = _means(R, P_rows, assign, k, C)
        D = dist(C)
        assign = margin_assign(D, old, margin)
        own = D[np.arange(len(R)), assign]
        reseed_empty(C, assign, own, point, k)
    return np.ascontiguousarray(C, dtype=np.float32), assign


def torch_warm_lloyd(
    R: F32, C0: F32, k: int, iters: int, margin: float, prefixes: F32 | None = None, path_idx: I64 | None = None,
    device: str = "cpu",
) -> tuple[F32, I64]:
    """`warm_lloyd` in torch on `device`: the same rules, the same codes on the CPU."""
    import torch

    from psrq.torch_kmeans import _cluster_sums

    dev = torch.device(device)
    X = torch.from_numpy(np.ascontiguousarray(R, dtype=np.float32)).to(dev)
    d = X.shape[1]
    prefixed = prefixes is not None and path_idx is not None
    P = torch.from_numpy(np.ascontiguousarray(prefixes, dtype=np.float32)).to(dev) if prefixed else None
    paths = torch.from_numpy(np.ascontiguousarray(path_idx, dtype=np.int64)).to(dev) if prefixed else None
    C = torch.zeros((k, C0.shape[1]), dtype=torch.float32, device=dev)
    C[: len(C0)] = torch.from_numpy(np.ascontiguousarray(C0, dtype=np.float32)).to(dev)
    x_norms = (X * X).sum(dim=1, keepdim=True)
    factor = (1.0 - margin) ** 2
    rows = torch.arange(X.shape[0], device=dev)

    def dist(C: torch.Tensor) -> torch.Tensor:
        D = x_norms - 2.0 * (X @ C[:, :d].T) + (C[:, :d] * C[:, :d]).sum(dim=1)[None, :]
        if P is not None and paths is not None:
            Cp = C[:, d:]
            table = (P * P).sum(dim=1)[:, None] - 2.0 * (P @ Cp.T) + (Cp * Cp).sum(dim=1)[None, :]
            D = D + table[paths]
        return D.clamp(min=0.0)

    def reseed(C: torch.Tensor, assign: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        host_C, host_a, host_own = C.cpu().numpy().copy(), assign.cpu().numpy().copy(), own.cpu().numpy().copy()
        reseed_empty(host_C, host_a, host_own, _row_point(R, prefixes, path_idx), k)
        assign.copy_(torch.from_numpy(host_a).to(dev))
        return torch.from_numpy(host_C).to(dev)

    D = dist(C[: len(C0)])
    assign = D.argmin(dim=1)
    C = reseed(C, assign, D[rows, assign])
    old = assign.clone()
    Z = X if P is None or paths is None else torch.cat([X, P[paths]], dim=1)
    for _ in range(iters):
        counts = torch.bincount(assign, minlength=k)
        sums = _cluster_sums(Z, torch.argsort(assign, stable=True), counts)  # segment sums: deterministic on CUDA
        C = torch.where((counts > 0)[:, None], sums / counts.clamp(min=1)[:, None].to(torch.float32), C)
        D = dist(C)
        best = D.argmin(dim=1)
        switch = D[rows, best] < factor * D[rows, old]
        assign = torch.where(switch, best, old)
        C = reseed(C, assign, D[rows, assign])
    return np.ascontiguousarray(C.cpu().numpy(), dtype=np.float32), assign.cpu().numpy().astype(np.int64)
