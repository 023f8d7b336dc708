"""k-means in torch, for fitting codebooks on a GPU (psrq.clustering.kmeans dispatches here).

The same contract as psrq.kmeans.faiss_kmeans: float32 centroids [k, d], initialised with k
distinct seeded rows (the rule faiss and psrq.kmeans.prefix_kmeans follow: a seeded random
choice without replacement), `niter` Lloyd iterations, an empty cluster takes half of the
largest one with a small relative perturbation. The numbers differ from faiss's (another
random stream, another summation order); the seeding rule and the iteration count do not.

Deterministic for a given seed on a given device: distances are one matmul per row block
(||c||² - 2 x·c; ||x||² is the same for every centroid and dropped), and cluster sums are
segment sums over the rows sorted by cluster, not atomic adds (index_add_ on CUDA is not
reproducible run to run). TF32 is allowed for the distance matmuls on CUDA only; the sums
stay in full float32.

`torch_prefix_kmeans` is psrq.kmeans.prefix_kmeans (PSRQ's decomposed Lloyd on
[r ⊕ w·p]) on the same machinery: the prefix half of every distance is a [paths, K] table.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from psrq.base import F32, I64
from psrq.kmeans_common import DEFAULT_NITER, initial_rows, split_empty

# entries of one [rows, K] distance block: bounds the memory of an assignment pass
BLOCK_ELEMENTS = 1 << 24


@contextmanager
def _tf32(device: torch.device) -> Iterator[None]:
    """TF32 matmuls on CUDA for the duration (restored afterwards); a no-op elsewhere."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def _assign(X: torch.Tensor, C: torch.Tensor, table: torch.Tensor | None, table_rows: torch.Tensor | None) -> torch.Tensor:
    """argmin_j ||X[i] - C[j]||² (+ table[table_rows[i], j]) in row blocks; ties go to the lowest j."""
    n, k = X.shape[0], C.shape[0]
    block = max(1, BLOCK_ELEMENTS // k)
    c_norms = (C * C).sum(dim=1)
    Ct2 = (C * -2.0).T.contiguous()
    out = torch.empty(n, dtype=torch.int64, device=X.device)
    with _tf32(X.device):
        for start in range(0, n, block):
            stop = min(n, start + block)
            d = torch.addmm(c_norms, X[start:stop], Ct2)
            if table is not None and table_rows is not None:
                d += table[table_rows[start:stop]]
            out[start:stop] = d.argmin(dim=1)
    return out


def _cluster_sums(points: torch.Tensor, order: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Per-cluster sums of `points` (rows sorted by cluster via `order`); 0 for an empty cluster."""
    return torch.segment_reduce(points[order], "sum", lengths=counts, axis=0)


def _lloyd(
    R: F32, k: int, seed: int, niter: int, device: str, prefixes: F32 | None = None, path_idx: I64 | None = None
) -> F32:
    """Lloyd k-means on R, or on [R ⊕ prefixes[path_idx]] when prefixes are given."""
    dev = torch.device(device)
    X = torch.from_numpy(np.ascontiguousarray(R, dtype=np.float32)).to(dev)
    P = paths = None
    if prefixes is not None and path_idx is not None:
        P = torch.from_numpy(np.ascontiguousarray(prefixes, dtype=np.float32)).to(dev)
        paths = torch.from_numpy(np.ascontiguousarray(path_idx, dtype=np.int64)).to(dev)
    out = lloyd_tensors(X, k, seed, niter, P, paths)[0]
    return np.ascontiguousarray(out.cpu().numpy(), dtype=np.float32)


def lloyd_tensors(
    X: torch.Tensor, k: int, seed: int, niter: int, P: torch.Tensor | None = None, paths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`_lloyd` on tensors already on the device: (centroids [k, d] or [k, 2d], the final
    assignment when the loop stopped on a repeated one -- then it is exactly the nearest-centroid
    pass of the returned centroids -- else None)."""
    n, d = X.shape
    dev = X.device
    init = torch.from_numpy(initial_rows(n, k, seed)).to(dev)
    C_r = X[init].clone()
    C_p = P[paths[init]].clone() if P is not None and paths is not None else None
    previous: torch.Tensor | None = None
    converged = False
    for _ in range(niter):
        table = None
        if P is not None and C_p is not None:
            table = _prefix_table(P, C_p)
        assign = _assign(X, C_r, table, paths)
        if previous is not None and torch.equal(assign, previous):
            converged = True
            break  # converged: the centroids are already the means of this assignment (as faiss stops)
        previous = assign
        counts = torch.bincount(assign, minlength=k)
        order = torch.argsort(assign, stable=True)
        denom = counts.clamp(min=1).to(torch.float32)[:, None]
        empty = (counts == 0)[:, None]
        new_r = torch.where(empty, C_r, _cluster_sums(X, order, counts) / denom)
        parts = [new_r]
        if P is not None and paths is not None and C_p is not None:
            parts.append(torch.where(empty, C_p, _cluster_sums(P[paths], order, counts) / denom))
        C = torch.cat(parts, dim=1)
        if bool(empty.any()):
            host = C.cpu().numpy()
            split_empty(host, counts.cpu().numpy().copy())
            C = torch.from_numpy(host).to(dev)
        C_r = C[:, :d].contiguous()
        if C_p is not None:
            C_p = C[:, d:].contiguous()
    out = C_r if C_p is None else torch.cat([C_r, C_p], dim=1)
    return out, (previous if converged else None)


def _prefix_table(P: torch.Tensor, C_p: torch.Tensor) -> torch.Tensor:
    """T[u, j] = ||P[u] - C_p[j]||² (psrq.kmeans.prefix_table), outside the TF32 scope."""
    t = P @ C_p.T
    t *= -2.0
    t += (P * P).sum(dim=1)[:, None]
    t += (C_p * C_p).sum(dim=1)[None, :]
    return t


def torch_kmeans(X: F32, k: int, seed: int, niter: int = DEFAULT_NITER, device: str = "cpu") -> F32:
    """Seeded Lloyd k-means on `device` (a torch device string); float32 centroids [k, d]."""
    if k == 1:
        mean: F32 = X.mean(axis=0, keepdims=True, dtype=np.float64).astype(np.float32)
        return mean
    return _lloyd(X, k, seed, niter, device)


def torch_prefix_kmeans(
    R: F32, prefixes: F32, path_idx: I64, k: int, seed: int, niter: int = DEFAULT_NITER, device: str = "cpu"
) -> F32:
    """psrq.kmeans.prefix_kmeans on `device`: centroids [k, 2d] of [R ⊕ prefixes[path_idx]]
    (without the final assignment)."""
    return _lloyd(R, k, seed, niter, device, prefixes, path_idx)
