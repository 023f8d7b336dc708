"""PSRQ's fit with every array on the torch device (the torch k-means backend's path).

`PSRQ.fit` on the faiss backend keeps its rows in numpy. On the torch backend the k-means ran on
the device but everything between them -- the layer's assignment, the residual and prefix
updates, the distinct code paths -- ran on the host: for 10M x 384 rows that is several passes
over 15 GB of host memory per layer, which dominated a GPU fit (measured on an H200: 68 s for
10M rows). Here the fit rows are copied to the device once and stay there; only the centroids
come back.

Same algorithm, layer by layer, as PSRQ.fit (psrq.progressive): the same seeds, the same
k-means (psrq.torch_kmeans.lloyd_tensors), the same prefix weights, the assignment of a layer
reused from its Lloyd loop when that stopped on a repeated assignment. The distances are the
torch kernels' (TF32 matmuls on CUDA), so codes follow the torch backend's contract, not
faiss's bits.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from psrq.base import F32
from psrq.torch_kmeans import _assign, _prefix_table, lloyd_tensors


def _prefix_weight(R: torch.Tensor, P: torch.Tensor, alpha: float, prefix_scale: str) -> float:
    """psrq.progressive.prefix_weight on device tensors."""
    if alpha == 0.0 or prefix_scale == "none":
        return float(alpha)
    if prefix_scale == "residual_norm":
        num = float(torch.linalg.vector_norm(R, dim=1).mean())
        den = float(torch.linalg.vector_norm(P, dim=1).mean())
    elif prefix_scale == "residual_spread":
        num = float(torch.sqrt(R.double().var(dim=0, unbiased=False).sum()))
        den = float(torch.sqrt(P.double().var(dim=0, unbiased=False).sum()))
    else:
        raise ValueError(f"unknown prefix_scale {prefix_scale!r}")
    return float(alpha) * (num / den if den > 0 else 0.0)


def _paths(codes: torch.Tensor, sizes: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(index of each row's code path among the distinct paths, one row of each path)."""
    key = torch.zeros(codes.shape[0], dtype=torch.int64, device=codes.device)
    for col, k in enumerate(sizes):
        key = key * k + codes[:, col]
    uniq, inverse = torch.unique(key, return_inverse=True)
    rows = torch.arange(codes.shape[0], device=codes.device)
    # the smallest row of each path (any row would do: a path's prefix is the same in every row)
    first = torch.full((uniq.shape[0],), codes.shape[0], dtype=torch.int64, device=codes.device)
    first.scatter_reduce_(0, inverse, rows, reduce="amin")
    return inverse, first


@torch.no_grad()
def fit_psrq_on_device(q: Any, X_fit: F32) -> None:
    """Fit `q` (a psrq.progressive.PSRQ) on X_fit on q.device; sets centroids, prefix weights, dim."""
    sizes = tuple(q.codebook_sizes)
    layers = len(sizes)
    if float(np.prod(np.asarray(sizes[:-1], dtype=np.float64))) >= 2.0**62:
        raise ValueError("too many code paths for one int64 key; fit this codebook on the faiss backend")
    dev = torch.device(q.device if q.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    X = torch.from_numpy(np.ascontiguousarray(X_fit, dtype=np.float32)).to(dev)
    n, d = X.shape
    R = X.clone()
    P = torch.zeros_like(R) if q.anchor == "prefix" else None
    codes = torch.empty((n, layers), dtype=torch.int64, device=dev)
    centroids: list[F32] = []
    weights = [0.0]
    for layer, k in enumerate(sizes):
        seed = q.seed + layer
        last = layer + 1 == layers
        if layer == 0:
            if k == 1:
                C = R.double().mean(dim=0, keepdim=True).float()
                assigned: torch.Tensor | None = torch.zeros(n, dtype=torch.int64, device=dev)
            else:
                C, assigned = lloyd_tensors(R, k, seed, q.niter)
            if not last:
                codes[:, 0] = assigned if assigned is not None else _assign(R, C, None, None)
        else:
            anchor = X if q.anchor == "input" else P
            assert anchor is not None
            w = _prefix_weight(R, anchor, q.alpha, q.prefix_scale)
            weights.append(w)
            if w != 0.0 and q.anchor == "input":
                Z = torch.cat([R, w * X], dim=1)
                C, assigned = lloyd_tensors(Z, k, seed, q.niter)
                if not last and assigned is None:
                    assigned = _assign(Z, C, None, None)
                del Z
            elif w == 0.0:
                C_r, assigned = lloyd_tensors(R, k, seed, q.niter)
                if not last and assigned is None:
                    assigned = _assign(R, C_r, None, None)
                C = torch.cat([C_r, torch.zeros((k, d), dtype=C_r.dtype, device=dev)], dim=1)
            else:
                assert P is not None
                path_idx, first = _paths(codes[:, :layer], sizes[:layer])
                prefixes = (P[first] * w).contiguous()
                C, assigned = lloyd_tensors(R, k, seed, q.niter, prefixes, path_idx)
                if not last and assigned is None:
                    table = _prefix_table(prefixes, C[:, d:].contiguous())
                    assigned = _assign(R, C[:, :d].contiguous(), table, path_idx)
            if not last:
                assert assigned is not None
                codes[:, layer] = assigned
        centroids.append(np.ascontiguousarray(C.cpu().numpy(), dtype=np.float32))
        if not last:
            step = C[codes[:, layer], :d]
            R -= step
            if P is not None:
                P += step
            del step
    q.centroids, q.prefix_weights, q._dim = centroids, weights, d
