"""k-means: faiss for plain data, and a decomposed Lloyd for PSRQ's [residual ⊕ prefix] data.

The decomposed k-means never builds the 2d-dim points z = [r ⊕ w·p]. Because
||z - c||² = ||r - c_r||² + ||w·p - c_p||² and p takes one value per distinct code path,
the prefix half of every distance comes from a small [paths, K] table, and the prefix half
of every centroid update from a [K, paths] count matrix.

Backends: `kmeans` / `layer_prefix_kmeans` dispatch on (device, backend) resolved by
`resolve_backend`: faiss and numpy on the CPU (the default; bit-identical to the code before
the torch backend existed), or psrq.torch_kmeans on a torch device. faiss and torch are
imported only where a backend needs them, so a GPU host without faiss fits with torch.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np
import scipy.sparse as sp

from psrq.base import F32, I64, Quantizer, nearest

DEFAULT_NITER = 20
DEFAULT_MAX_POINTS_PER_CENTROID = 256
# relative perturbation used when an empty cluster takes half of the largest one (as faiss does)
_SPLIT_EPS = 1.0 / 1024.0
DEVICES = re.compile(r"cpu|auto|cuda(:\d+)?")
BACKENDS = ("auto", "faiss", "torch")


def resolve_backend(device: str = "cpu", backend: str = "auto") -> tuple[str, str]:
    """(backend, device) a fit runs on: device "auto" is cuda when torch sees one, else cpu;
    backend "auto" is faiss on the CPU and torch on cuda. faiss runs on the CPU only."""
    if not DEVICES.fullmatch(device):
        raise ValueError(f"unknown device {device!r}; expected cpu, cuda, cuda:N or auto")
    if backend not in BACKENDS:
        raise ValueError(f"unknown k-means backend {backend!r}; expected one of {BACKENDS}")
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if backend == "auto":
        backend = "faiss" if device == "cpu" else "torch"
    if backend == "faiss" and device != "cpu":
        raise ValueError(f"the faiss k-means backend runs on the CPU only, not on {device!r}")
    return backend, device


def check_kmeans_backend(device: str, backend: str) -> None:
    """Raise ValueError for a device / backend a fit could not run on (no torch import for "auto")."""
    resolve_backend("cpu" if device == "auto" else device, backend)


def set_threads(n: int | None = None) -> int:
    """Use n OpenMP threads in faiss (default: all cores); returns the count in use."""
    import faiss

    count = n if n is not None else (os.cpu_count() or 1)
    faiss.omp_set_num_threads(count)
    return count


def initial_rows(n: int, k: int, seed: int) -> I64:
    """k distinct seeded row indices (sorted): the initial centroids of a Lloyd k-means."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)


def subsample(n: int, k: int, seed: int, max_points_per_centroid: int) -> I64 | None:
    """Row indices of a seeded training subsample (None: use all rows), as faiss would draw."""
    cap = k * max_points_per_centroid
    if n <= cap:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=cap, replace=False)).astype(np.int64)


def faiss_kmeans(X: F32, k: int, seed: int, niter: int = DEFAULT_NITER) -> F32:
    """Seeded faiss k-means; returns float32 centroids [k, d]."""
    import faiss

    n, d = X.shape
    if k == 1:
        mean: F32 = X.mean(axis=0, keepdims=True, dtype=np.float64).astype(np.float32)
        return mean
    km = faiss.Kmeans(
        d, k, niter=niter, seed=seed, verbose=False, max_points_per_centroid=n // k + 1, min_points_per_centroid=1
    )
    km.train(np.ascontiguousarray(X, dtype=np.float32))
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def kmeans(X: F32, k: int, seed: int, niter: int = DEFAULT_NITER, device: str = "cpu", backend: str = "auto") -> F32:
    """Seeded k-means, float32 centroids [k, d]: faiss on the CPU, torch on `device` otherwise."""
    backend, device = resolve_backend(device, backend)
    if backend == "faiss":
        return faiss_kmeans(X, k, seed, niter)
    from psrq.torch_kmeans import torch_kmeans

    return torch_kmeans(X, k, seed, niter, device)


def layer_prefix_kmeans(
    R: F32, prefixes: F32, path_idx: I64, k: int, seed: int, niter: int = DEFAULT_NITER,
    device: str = "cpu", backend: str = "auto",
) -> F32:
    """prefix_kmeans on the backend `kmeans` would use (numpy with faiss, else torch)."""
    return layer_prefix_kmeans_fit(R, prefixes, path_idx, k, seed, niter, device, backend)[0]


def layer_prefix_kmeans_fit(
    R: F32, prefixes: F32, path_idx: I64, k: int, seed: int, niter: int = DEFAULT_NITER,
    device: str = "cpu", backend: str = "auto",
) -> tuple[F32, I64 | None]:
    """layer_prefix_kmeans plus the final assignment when the fit already knows it (see
    prefix_kmeans_fit; None on the torch backend or when it must be recomputed)."""
    backend, device = resolve_backend(device, backend)
    if backend == "faiss":
        return prefix_kmeans_fit(R, prefixes, path_idx, k, seed, niter)
    from psrq.torch_kmeans import torch_prefix_kmeans

    return torch_prefix_kmeans(R, prefixes, path_idx, k, seed, niter, device), None


def prefix_table(prefixes: F32, centroids_p: F32, prefix_norms: F32 | None = None) -> F32:
    """T[u, j] = ||prefixes[u] - centroids_p[j]||² for every distinct (weighted) prefix u
    (`prefix_norms`: ||prefixes[u]||², when the caller already has them)."""
    t = prefixes @ centroids_p.T
    t *= np.float32(-2.0)
    t += (np.einsum("ij,ij->i", prefixes, prefixes) if prefix_norms is None else prefix_norms)[:, None]
    t += np.einsum("ij,ij->i", centroids_p, centroids_p)[None, :]
    return t


def split_empty(C: F32, counts: np.ndarray) -> None:
    """Give every empty cluster half of the currently largest one (in place, deterministic)."""
    for j in np.flatnonzero(counts == 0):
        big = int(counts.argmax())
        sign = np.where(np.arange(C.shape[1]) % 2 == 0, 1.0, -1.0).astype(np.float32)
        C[j] = C[big] * (1 + sign * _SPLIT_EPS)
        C[big] = C[big] * (1 - sign * _SPLIT_EPS)
        counts[j] = counts[big] // 2
        counts[big] -= counts[j]


def prefix_kmeans(
    R: F32, prefixes: F32, path_idx: I64, k: int, seed: int, niter: int = DEFAULT_NITER
) -> F32:
    """Lloyd k-means on z_i = [R[i] ⊕ prefixes[path_idx[i]]]; returns centroids [k, 2d].

    `prefixes` are already weighted (w·p). Initial centroids are k distinct seeded rows.
    """
    return prefix_kmeans_fit(R, prefixes, path_idx, k, seed, niter)[0]


def _cluster_sums(assign: I64, cols: I64, values: F32, k: int) -> F32:
    """S[j] = sum over rows i with assign[i] == j of values[cols[i]], added in float32 in
    increasing cols order (for equal cols: once, times their count) by scipy's CSR kernel."""
    n = assign.shape[0]
    m = sp.csr_matrix((np.ones(n, dtype=np.float32), (assign, cols)), shape=(k, values.shape[0]))
    return np.asarray(m @ values, dtype=np.float32)


def prefix_kmeans_fit(
    R: F32, prefixes: F32, path_idx: I64, k: int, seed: int, niter: int = DEFAULT_NITER
) -> tuple[F32, I64 | None]:
    """prefix_kmeans' centroids [k, 2d], and the rows' nearest centroid among them when the
    Lloyd loop stopped on a repeated assignment (that assignment is then exactly what a fresh
    nearest-centroid pass would give; None when the last iteration moved the centroids)."""
    n, d = R.shape
    init = initial_rows(n, k, seed)
    C_r = np.ascontiguousarray(R[init])
    C_p = np.ascontiguousarray(prefixes[path_idx[init]])
    prefix_norms = np.einsum("ij,ij->i", prefixes, prefixes)  # constant over the iterations
    previous: I64 | None = None
    for _ in range(niter):
        table = prefix_table(prefixes, C_p, prefix_norms)
        assign = nearest(R, C_r, table, path_idx)
        if previous is not None and np.array_equal(assign, previous):
            # converged: the centroids are already the means of this assignment (as faiss stops)
            return np.ascontiguousarray(np.concatenate([C_r, C_p], axis=1)), assign
        previous = assign
        counts = np.bincount(assign, minlength=k)
        denom = np.maximum(counts, 1).astype(np.float32)[:, None]
        C = np.empty((k, 2 * d), dtype=np.float32)
        new_r, new_p = C[:, :d], C[:, d:]
        np.divide(_cluster_sums(assign, np.arange(n), R, k), denom, out=new_r)
        np.divide(_cluster_sums(assign, path_idx, prefixes, k), denom, out=new_p)
        keep = counts == 0
        new_r[keep] = C_r[keep]
        new_p[keep] = C_p[keep]
        split_empty(C, counts.copy())
        C_r = np.ascontiguousarray(C[:, :d])
        C_p = np.ascontiguousarray(C[:, d:])
    return np.ascontiguousarray(np.concatenate([C_r, C_p], axis=1)), None


class LayeredKMeans(Quantizer):
    """Shared state of quantizers with one k-means codebook per layer (RQ, PQ):
    hyper-parameters, the per-layer centroid list, and its artifact form.

    `device` / `kmeans_backend` choose where the fit's k-means runs (resolve_backend); they
    are not in options(): an artifact is the same whichever backend fitted it."""

    def __init__(
        self,
        codebook_sizes: Any,
        seed: int = 0,
        niter: int = DEFAULT_NITER,
        max_points_per_centroid: int = DEFAULT_MAX_POINTS_PER_CENTROID,
        device: str = "cpu",
        kmeans_backend: str = "auto",
    ) -> None:
        super().__init__(codebook_sizes, seed)
        check_kmeans_backend(device, kmeans_backend)
        self.niter = int(niter)
        self.max_points_per_centroid = int(max_points_per_centroid)
        self.device, self.kmeans_backend = device, kmeans_backend
        self.centroids: list[F32] = []

    def _kmeans(self, X: F32, k: int, seed: int) -> F32:
        return kmeans(X, k, seed, self.niter, self.device, self.kmeans_backend)

    def options(self) -> dict[str, Any]:
        return {"seed": self.seed, "niter": self.niter, "max_points_per_centroid": self.max_points_per_centroid}

    def tensors(self) -> dict[str, F32]:
        return {f"layer{i}": C for i, C in enumerate(self.centroids)}

    @classmethod
    def from_state(
        cls, tensors: dict[str, F32], options: dict[str, Any], dim: int, codebook_sizes: tuple[int, ...]
    ) -> Quantizer:
        q = cls(codebook_sizes, **options)
        q.centroids = [np.ascontiguousarray(tensors[f"layer{i}"], dtype=np.float32) for i in range(len(codebook_sizes))]
        q._dim = dim
        return q
