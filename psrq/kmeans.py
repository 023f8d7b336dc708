"""k-means: faiss for plain data, and a decomposed Lloyd for PSRQ's [residual ⊕ prefix] data.

The decomposed k-means never builds the 2d-dim points z = [r ⊕ w·p]. Because
||z - c||² = ||r - c_r||² + ||w·p - c_p||² and p takes one value per distinct code path,
the prefix half of every distance comes from a small [paths, K] table, and the prefix half
of every centroid update from a [K, paths] count matrix.

This is the CPU backend (faiss for plain data, numpy for the decomposed Lloyd); psrq.torch_kmeans
is the torch one. Both take their shared pieces from psrq.kmeans_common and import neither each
other nor psrq.clustering, which dispatches between them on (device, backend). faiss is imported
only where it runs, so a GPU host without faiss fits with torch.
"""

from __future__ import annotations

import os

import numpy as np
import scipy.sparse as sp

from psrq.base import F32, I64, SEARCH_BLOCK, nearest_two, run_parallel, worker_count
from psrq.kmeans_common import DEFAULT_MAX_POINTS_PER_CENTROID as DEFAULT_MAX_POINTS_PER_CENTROID
from psrq.kmeans_common import DEFAULT_NITER, initial_rows, split_empty
from psrq.kmeans_common import subsample as subsample

# float32's unit roundoff (the scores' error bound: _score_error)
_UNIT_ROUNDOFF = 2.0**-24
# fewest rows re-scored in one pass (pads small sets, so that sgemm never runs on one row)
_MIN_RESCORED = 64
# above this share of rows to re-score, all are (gathering the rows would cost more than it saves)
_RESCORE_ALL_SHARE = 0.75
# (the `X as X` imports above re-export DEFAULT_MAX_POINTS_PER_CENTROID and subsample for sidstream.bench)


def set_threads(n: int | None = None) -> int:
    """Use n OpenMP threads in faiss (default: all cores); returns the count in use."""
    import faiss

    count = n if n is not None else (os.cpu_count() or 1)
    faiss.omp_set_num_threads(count)
    return count


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


def prefix_table(prefixes: F32, centroids_p: F32, prefix_norms: F32 | None = None) -> F32:
    """T[u, j] = ||prefixes[u] - centroids_p[j]||² for every distinct (weighted) prefix u
    (`prefix_norms`: ||prefixes[u]||², when the caller already has them)."""
    t = prefixes @ centroids_p.T
    t *= np.float32(-2.0)
    t += (np.einsum("ij,ij->i", prefixes, prefixes) if prefix_norms is None else prefix_norms)[:, None]
    t += np.einsum("ij,ij->i", centroids_p, centroids_p)[None, :]
    return t


def _membership(assign: I64, cols: I64, k: int, width: int) -> sp.csr_matrix:
    """[k, width] CSR matrix with M[assign[i], cols[i]] += 1 (duplicates summed, columns sorted)."""
    n = assign.shape[0]
    return sp.csr_matrix((np.ones(n, dtype=np.float32), (assign, cols)), shape=(k, width))


def _cluster_sums_into(assign: I64, path_idx: I64, R: F32, prefixes: F32, k: int, out: F32) -> None:
    """out[j] = [sum of R[i] ⊕ sum of prefixes[path_idx[i]]] over the rows i with assign[i] == j,
    added in float32 in increasing column order (equal paths: once, times their count) by scipy's
    CSR kernel. The products run in cluster slices on the worker threads: a slice's rows are
    summed by the same kernel in the same order as in one product, so the sums are the same bits."""
    n, d = R.shape
    jobs = [
        (_membership(assign, np.arange(n), k, n), R, out[:, :d]),
        (_membership(assign, path_idx, k, prefixes.shape[0]), prefixes, out[:, d:]),
    ]
    parts = min(k, worker_count())
    slices = [(k * i // parts, k * (i + 1) // parts) for i in range(parts)]

    def part(item: tuple[int, int, int]) -> None:
        job, a, b = item
        m, values, dest = jobs[job]
        dest[a:b] = m[a:b] @ values

    run_parallel(part, [(job, a, b) for job in range(2) for a, b in slices])


def _score_error(d: int) -> float:
    """Factor f with |nearest()'s float32 score - its exact value| <= f * (||x||² + ||c_r||² +
    ||p||² + ||c_p||²), for any summation order of the length-d dot products and norms (Higham's
    γ_d = d·u / (1 - d·u) per dot product or norm: sgemm and norms of both halves, then four
    roundings of sums of magnitude <= 2 or 4 times that total), with a 2.5x margin."""
    gamma = d * _UNIT_ROUNDOFF / (1.0 - d * _UNIT_ROUNDOFF)
    return 2.5 * (4.0 * gamma + 16.0 * _UNIT_ROUNDOFF)


def _padded(rows: I64, n: int) -> I64:
    """rows plus a few more (re-scoring extra rows is still exact): at least _MIN_RESCORED, and
    never a one-row sgemm block (numpy runs those as gemv, whose bits may differ)."""
    if rows.size < _MIN_RESCORED:
        rows = np.union1d(rows, np.arange(min(n, _MIN_RESCORED)))
    if rows.size % SEARCH_BLOCK == 1 and rows.size < n:
        rows = np.union1d(rows, np.setdiff1d(np.arange(n), rows)[:1])
    return rows


def prefix_kmeans(
    R: F32, prefixes: F32, path_idx: I64, k: int, seed: int, niter: int = DEFAULT_NITER
) -> tuple[F32, I64 | None]:
    """Lloyd k-means on z_i = [R[i] ⊕ prefixes[path_idx[i]]]: (centroids [k, 2d], the rows'
    nearest centroid among them when the Lloyd loop stopped on a repeated assignment -- that
    assignment is then exactly what a fresh nearest-centroid pass would give -- else None, when
    the last iteration moved the centroids).

    `prefixes` are already weighted (w·p). Initial centroids are k distinct seeded rows.

    Each iteration's assignment is exactly nearest()'s (same bits), but rows whose assignment
    provably cannot change are not re-scored (Hamerly's bounds): per row an upper bound U on
    the exact distance to its centroid and a lower bound L on the exact distance to any other
    one, from its last scores widened by the float32 error bound (_score_error), then moved by
    the centroid shifts (U += shift of its own centroid, L -= largest shift of the others).
    While U² + 2·err < max(L, 0)², every other centroid's computed score is strictly above its
    own centroid's, so argmin keeps it. The other rows are re-scored by the same kernel (sgemm on a row subset
    gives each row the same bits as on the full matrix)."""
    n, d = R.shape
    init = initial_rows(n, k, seed)
    C_r = np.ascontiguousarray(R[init])
    C_p = np.ascontiguousarray(prefixes[path_idx[init]])
    prefix_norms = np.einsum("ij,ij->i", prefixes, prefixes)  # constant over the iterations
    # ||z||² = ||r||² + ||p||² (float64), and the score error factor
    z_norms = np.einsum("ij,ij->i", R, R, dtype=np.float64) + np.einsum(
        "ij,ij->i", prefixes, prefixes, dtype=np.float64
    )[path_idx]
    err_factor = _score_error(d)
    upper = np.zeros(n)
    lower = np.zeros(n)
    previous: I64 | None = None
    for _ in range(niter):
        table = prefix_table(prefixes, C_p, prefix_norms)
        C64 = np.concatenate([C_r, C_p], axis=1).astype(np.float64)
        err = err_factor * (z_norms + float(np.einsum("ij,ij->i", C64, C64).max()))
        if previous is None:
            rescore = np.arange(n)
            assign = np.empty(n, dtype=np.int64)
        else:
            low = np.maximum(lower, 0.0)  # (a negative bound says nothing)
            rescore = np.flatnonzero(upper * upper + 2.0 * err >= low * low)
            if rescore.size > _RESCORE_ALL_SHARE * n:
                rescore = np.arange(n)
            assign = previous.copy()
        if 0 < rescore.size < n:
            rescore = _padded(rescore, n)
        if rescore.size == n:
            got, best, second = nearest_two(R, C_r, table, path_idx)
        elif rescore.size:
            got, best, second = nearest_two(np.ascontiguousarray(R[rescore]), C_r, table, path_idx[rescore])
        if rescore.size:
            assign[rescore] = got
            e = err[rescore]
            upper[rescore] = np.sqrt(np.maximum(best.astype(np.float64) + z_norms[rescore] + e, 0.0))
            lower[rescore] = np.sqrt(np.maximum(second.astype(np.float64) + z_norms[rescore] - e, 0.0))
        if previous is not None and np.array_equal(assign, previous):
            # converged: the centroids are already the means of this assignment (as faiss stops)
            return np.ascontiguousarray(np.concatenate([C_r, C_p], axis=1)), assign
        previous = assign
        counts = np.bincount(assign, minlength=k)
        denom = np.maximum(counts, 1).astype(np.float32)[:, None]
        C = np.empty((k, 2 * d), dtype=np.float32)
        new_r, new_p = C[:, :d], C[:, d:]
        _cluster_sums_into(assign, path_idx, R, prefixes, k, C)  # the sums, divided in place below
        C /= denom
        keep = counts == 0
        new_r[keep] = C_r[keep]
        new_p[keep] = C_p[keep]
        split_empty(C, counts.copy())
        # exact distances the centroids moved (float64; the 1e-9 slack covers its rounding)
        shift = np.sqrt(((C.astype(np.float64) - C64) ** 2).sum(axis=1)) * (1.0 + 1e-9)
        # every other centroid moved by at most the largest shift among the others
        top = int(shift.argmax())
        others_max = np.where(assign == top, float(np.delete(shift, top).max(initial=0.0)), float(shift[top]))
        upper = (upper + shift[assign]) * (1.0 + 1e-12)
        lower = (lower - others_max) * (1.0 - 1e-12)
        C_r = np.ascontiguousarray(C[:, :d])
        C_p = np.ascontiguousarray(C[:, d:])
    return np.ascontiguousarray(np.concatenate([C_r, C_p], axis=1)), None
