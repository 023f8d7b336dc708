"""The optimized CPU fit path gives bit-identical results to a straightforward implementation of
the same algorithm, kept here (the code as it was before the fit speed work: COO-built CSR sums,
a fresh gathered table block per search block, a final nearest pass after every layer's k-means,
every row re-scored in every Lloyd iteration, a full [n, d] prefix array, single-threaded).

Published numbers depend on codes/centroids staying the same for a given seed, so the fast path
may change how work is done, never the float32 operations or their order."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import psrq.kmeans as kmeans_module
from psrq import make_quantizer
from psrq.base import SEARCH_BLOCK, nearest, nearest_two, run_parallel
from psrq.kmeans import prefix_kmeans, prefix_table
from psrq.kmeans_common import initial_rows, split_empty, subsample
from psrq.progressive import PSRQ, path_index, prefix_weight

pytestmark = pytest.mark.unit


# -- the straightforward reference ----------------------------------------------------------------
def ref_nearest(X: np.ndarray, C: np.ndarray, table: np.ndarray | None = None, rows: np.ndarray | None = None):
    out = np.empty(X.shape[0], dtype=np.int64)
    c_norms = np.einsum("ij,ij->i", C, C)
    Ct2 = np.ascontiguousarray(C.T * np.float32(-2.0))
    for start in range(0, X.shape[0], SEARCH_BLOCK):
        stop = min(X.shape[0], start + SEARCH_BLOCK)
        d = np.matmul(X[start:stop], Ct2)
        d += c_norms
        if table is not None and rows is not None:
            d += table[rows[start:stop]]
        out[start:stop] = d.argmin(axis=1)
    return out


def ref_prefix_kmeans(R, prefixes, path_idx, k, seed, niter):
    n, d = R.shape
    u = prefixes.shape[0]
    init = initial_rows(n, k, seed)
    C_r = np.ascontiguousarray(R[init])
    C_p = np.ascontiguousarray(prefixes[path_idx[init]])
    rows = np.arange(n)
    previous = None
    for _ in range(niter):
        assign = ref_nearest(R, C_r, prefix_table(prefixes, C_p), path_idx)
        if previous is not None and np.array_equal(assign, previous):
            break
        previous = assign
        counts = np.bincount(assign, minlength=k)
        members = sp.csr_matrix((np.ones(n, dtype=np.float32), (assign, rows)), shape=(k, n))
        paths = sp.csr_matrix((np.ones(n, dtype=np.float32), (assign, path_idx)), shape=(k, u))
        denom = np.maximum(counts, 1).astype(np.float32)[:, None]
        new_r = np.asarray(members @ R, dtype=np.float32) / denom
        new_p = np.asarray(paths @ prefixes, dtype=np.float32) / denom
        keep = counts == 0
        new_r[keep] = C_r[keep]
        new_p[keep] = C_p[keep]
        C = np.ascontiguousarray(np.concatenate([new_r, new_p], axis=1))
        split_empty(C, counts.copy())
        C_r = np.ascontiguousarray(C[:, :d])
        C_p = np.ascontiguousarray(C[:, d:])
    return np.ascontiguousarray(np.concatenate([C_r, C_p], axis=1))


def ref_psrq_fit(q: PSRQ, X: np.ndarray) -> list[np.ndarray]:
    """PSRQ.fit for anchor "prefix", w != 0 (the decomposed path), with the reference pieces."""
    d = X.shape[1]
    rows = subsample(len(X), max(q.codebook_sizes), q.seed, q.max_points_per_centroid)
    R = (X if rows is None else X[rows]).copy()
    P = np.zeros_like(R)
    codes = np.empty((R.shape[0], q.num_layers), dtype=np.int64)
    centroids = []
    for layer, k in enumerate(q.codebook_sizes):
        if layer == 0:
            C = q._kmeans(R, k, q.seed)
            codes[:, 0] = ref_nearest(R, C)
        else:
            w = prefix_weight(R, P, q.alpha, q.prefix_scale)
            path_idx, first = path_index(codes[:, :layer], q.codebook_sizes[:layer])
            prefixes = np.ascontiguousarray(np.float32(w) * P[first])
            C = ref_prefix_kmeans(R, prefixes, path_idx, k, q.seed + layer, q.niter)
            table = prefix_table(prefixes, np.ascontiguousarray(C[:, d:]))
            codes[:, layer] = ref_nearest(R, np.ascontiguousarray(C[:, :d]), table, path_idx)
        centroids.append(C)
        step = C[codes[:, layer], :d]
        R -= step
        P += step
    return centroids


# -- data -------------------------------------------------------------------------------------------
def clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    C = rng.standard_normal((20, d)).astype(np.float32) * 2
    X = C[rng.integers(0, 20, n)] + rng.standard_normal((n, d)).astype(np.float32)
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# -- tests ------------------------------------------------------------------------------------------
def test_nearest_with_a_table_matches_the_reference_across_blocks() -> None:
    rng = np.random.default_rng(0)
    n = SEARCH_BLOCK + 777  # two blocks, the second partial
    X = rng.standard_normal((n, 16)).astype(np.float32)
    C = rng.standard_normal((9, 16)).astype(np.float32)
    table = rng.standard_normal((40, 9)).astype(np.float32)
    rows = rng.integers(0, 40, n)
    assert np.array_equal(nearest(X, C, table, rows), ref_nearest(X, C, table, rows))
    assert np.array_equal(nearest(X, C), ref_nearest(X, C))


@pytest.mark.parametrize(("niter", "k", "seed"), [(30, 8, 0), (3, 8, 1), (30, 40, 2)])
def test_prefix_kmeans_is_bit_identical_to_the_reference(niter: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    R = clustered(3000, 12, seed)
    prefixes = rng.standard_normal((25, 12)).astype(np.float32)
    path = rng.integers(0, 25, len(R))
    C, assigned = prefix_kmeans(R, prefixes, path, k, seed, niter)
    assert same_bits(C, ref_prefix_kmeans(R, prefixes, path, k, seed, niter))
    if assigned is not None:  # a converged fit hands back exactly the nearest pass on its centroids
        table = prefix_table(prefixes, np.ascontiguousarray(C[:, 12:]))
        assert np.array_equal(assigned, ref_nearest(R, np.ascontiguousarray(C[:, :12]), table, path))
    if niter == 3:
        assert assigned is None  # stopped by the iteration cap: the fit must recompute the codes


def test_prefix_kmeans_with_empty_clusters_is_bit_identical() -> None:
    rng = np.random.default_rng(5)
    R = np.repeat(rng.standard_normal((6, 8)).astype(np.float32), 50, axis=0)  # 6 distinct points, k=10
    prefixes = rng.standard_normal((3, 8)).astype(np.float32)
    path = rng.integers(0, 3, len(R))
    C, _ = prefix_kmeans(R, prefixes, path, 10, 0, 6)
    assert same_bits(C, ref_prefix_kmeans(R, prefixes, path, 10, 0, 6))


@pytest.mark.parametrize(
    ("opts", "n"),
    [
        ({"alpha": 1.0}, 5000),
        ({"alpha": 0.5, "niter": 4}, 5000),
        ({"alpha": 1.0, "max_points_per_centroid": 40}, 5000),
        ({"alpha": 1.0, "prefix_scale": "residual_norm"}, 5000),
        ({"alpha": 0.7, "prefix_scale": "residual_spread"}, 5000),
    ],
)
def test_psrq_fit_is_bit_identical_to_the_reference(opts: dict, n: int) -> None:
    X = clustered(n, 16, 3)
    q = make_quantizer("psrq", [16, 16, 16], seed=4, **opts)
    q.fit(X)
    ref = ref_psrq_fit(make_quantizer("psrq", [16, 16, 16], seed=4, **opts), X)
    assert all(same_bits(np.ascontiguousarray(a, dtype=np.float32), np.ascontiguousarray(b, dtype=np.float32))
               for a, b in zip(q.centroids, ref, strict=True))


def ref_scores(X: np.ndarray, C: np.ndarray, table: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Every row's scores computed the way nearest() computes them: one sgemm per SEARCH_BLOCK
    rows (a blocked and an unblocked product agree bit for bit only for some BLAS kernels), then
    the element-wise adds."""
    Ct2 = np.ascontiguousarray(C.T * np.float32(-2.0))
    out = np.empty((X.shape[0], C.shape[0]), dtype=np.float32)
    for start in range(0, X.shape[0], SEARCH_BLOCK):
        out[start : start + SEARCH_BLOCK] = np.matmul(X[start : start + SEARCH_BLOCK], Ct2)
    out += np.einsum("ij,ij->i", C, C)
    out += table[rows]
    return out


def test_nearest_two_scores_are_the_values_nearest_reads() -> None:
    """The best score is the very float32 value the argmin read (checked against a reference
    built with the same blocks, so it holds for any BLAS kernel and thread count), the second
    is the smallest over the other centroids, and both are the true squared-distance terms to
    within float32 rounding."""
    rng = np.random.default_rng(1)
    n = SEARCH_BLOCK + 4097
    X = rng.standard_normal((n, 24)).astype(np.float32)
    C = rng.standard_normal((11, 24)).astype(np.float32)
    table = rng.standard_normal((30, 11)).astype(np.float32)
    rows = rng.integers(0, 30, n)
    assign, best, second = nearest_two(X, C, table, rows)
    assert np.array_equal(assign, ref_nearest(X, C, table, rows))
    scores = ref_scores(X, C, table, rows)
    at = np.arange(n)
    assert same_bits(best, scores[at, assign])
    assert same_bits(best, scores.min(axis=1))
    exact = (
        ((X.astype(np.float64)[:, None, :] - C.astype(np.float64)[None]) ** 2).sum(axis=2)
        - (X.astype(np.float64) ** 2).sum(axis=1)[:, None]
        + table[rows]
    )
    np.testing.assert_allclose(best, exact[at, assign], rtol=0, atol=1e-4)
    scores[at, assign] = np.inf
    assert same_bits(second, scores.min(axis=1))
    exact[at, assign] = np.inf
    np.testing.assert_allclose(second, exact.min(axis=1), rtol=0, atol=1e-4)
    _, _, only = nearest_two(X[:5], C[:1])
    assert np.isinf(only).all()


def test_pruned_lloyd_rescores_few_rows_and_stays_bit_identical(monkeypatch: pytest.MonkeyPatch) -> None:
    """Enough rows and slow enough convergence that the bounds skip rows, on data with exact
    duplicates (rows with the same scores)."""
    rng = np.random.default_rng(7)
    R = rng.standard_normal((12000, 40)).astype(np.float32)
    R[6000:9000] = R[:3000]  # exact duplicates
    prefixes = (0.5 * rng.standard_normal((60, 40))).astype(np.float32)
    path = rng.integers(0, 60, len(R))
    rescored: list[int] = []

    def counting(X: np.ndarray, *args: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rescored.append(X.shape[0])
        return nearest_two(X, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(kmeans_module, "nearest_two", counting)
    C, assigned = prefix_kmeans(R, prefixes, path, 16, 3, 40)
    assert same_bits(C, ref_prefix_kmeans(R, prefixes, path, 16, 3, 40))
    assert min(rescored) < 0.6 * len(R)  # the bounds did skip rows
    assert all(r >= 2 for r in rescored)
    if assigned is not None:
        table = prefix_table(prefixes, np.ascontiguousarray(C[:, 40:]))
        assert np.array_equal(assigned, ref_nearest(R, np.ascontiguousarray(C[:, :40]), table, path))


def test_run_parallel_runs_every_item_once() -> None:
    seen = np.zeros(100, dtype=np.int64)

    def bump(i: int) -> None:
        seen[i] += 1

    run_parallel(bump, range(100))
    run_parallel(bump, [])
    assert (seen == 1).all()
