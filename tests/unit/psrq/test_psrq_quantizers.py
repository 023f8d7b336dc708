"""Invariants of the quantizers: ranges, shrinking error, PSRQ vs its literal reading, alpha=0 == RQ."""

from __future__ import annotations

import numpy as np
import pytest

from psrq import make_quantizer, reference
from psrq.kmeans import prefix_kmeans, prefix_table

pytestmark = pytest.mark.unit

METHODS = ["psrq", "rq", "vq", "pq", "rqvae"]


def clustered(n: int = 1500, d: int = 24, centres: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    C = rng.standard_normal((centres, d)).astype(np.float32) * 3
    X = C[rng.integers(0, centres, n)] + rng.standard_normal((n, d)).astype(np.float32)
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    return clustered()


def fitted(method: str, X: np.ndarray, sizes: list[int], **kw: object):
    extra = {"epochs": 3, "warmup_epochs": 2} if method == "rqvae" else {}
    return make_quantizer(method, sizes, seed=0, **extra, **kw).fit(X)


@pytest.mark.parametrize("method", METHODS)
def test_codes_in_range_shapes_and_dtypes(method: str, X: np.ndarray) -> None:
    sizes = [16, 8, 4]
    q = fitted(method, X, sizes)
    codes = q.encode(X)
    assert codes.dtype == np.int64
    assert codes.shape == (len(X), q.num_layers)
    assert q.method == method and q.dim == X.shape[1]
    assert q.codebook_sizes == (tuple(sizes[:1]) if method == "vq" else tuple(sizes))
    assert (codes >= 0).all() and (codes < np.asarray(q.codebook_sizes)).all()
    Xhat = q.decode(codes)
    assert Xhat.dtype == np.float32 and Xhat.shape == X.shape
    # a single item encodes the same alone as in a batch
    assert np.array_equal(q.encode(X[7]), codes[7:8])


@pytest.mark.parametrize("method", ["psrq", "rq", "pq", "rqvae"])
def test_reconstruction_error_falls_with_layers(method: str, X: np.ndarray) -> None:
    kw = {"alpha": 0.5} if method == "psrq" else {}
    q = fitted(method, X, [16, 16, 16], **kw)
    codes = q.encode(X)
    errors = [float(((X - q.decode_prefix(codes, layer)) ** 2).sum(axis=1).mean()) for layer in (1, 2, 3)]
    assert errors[0] > errors[1] > errors[2], errors
    if method != "rqvae":  # a linear quantizer must beat predicting zero
        assert errors[0] < float((X**2).sum(axis=1).mean())


def test_rq_error_falls_with_more_layers_fitted(X: np.ndarray) -> None:
    errs = []
    for layers in (1, 2, 3):
        q = fitted("rq", X, [16] * layers)
        errs.append(float(((X - q.decode(q.encode(X))) ** 2).sum(axis=1).mean()))
    assert errs[0] > errs[1] > errs[2]


def test_psrq_alpha_zero_equals_rq(X: np.ndarray) -> None:
    psrq = fitted("psrq", X, [16, 8, 12], alpha=0.0)
    rq = fitted("rq", X, [16, 8, 12])
    assert np.array_equal(psrq.encode(X), rq.encode(X))
    for layer, (a, b) in enumerate(zip(psrq.centroids, rq.centroids, strict=True)):
        assert np.array_equal(a[:, : X.shape[1]], b), layer
        if layer:
            assert not a[:, X.shape[1] :].any()  # the prefix half is exactly zero
    codes = rq.encode(X)
    assert np.array_equal(psrq.decode(codes), rq.decode(codes))


@pytest.mark.parametrize(("alpha", "prefix_scale"), [(1.0, "none"), (0.5, "none"), (1.0, "residual_norm"), (0.3, "residual_spread")])
def test_fast_psrq_matches_literal_reference(X: np.ndarray, alpha: float, prefix_scale: str) -> None:
    q = fitted("psrq", X, [16, 8, 12], alpha=alpha, prefix_scale=prefix_scale)
    fast = q.encode(X)
    slow = reference.encode(X, q.centroids, q.prefix_weights)
    assert np.array_equal(fast, slow)


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_input_anchor_matches_literal_reference(X: np.ndarray, alpha: float) -> None:
    q = fitted("psrq", X, [16, 8, 12], alpha=alpha, anchor="input")
    assert [C.shape[1] for C in q.centroids] == [24, 48, 48]
    assert np.array_equal(q.encode(X), reference.encode(X, q.centroids, q.prefix_weights, anchor="input"))


def test_input_anchor_alpha_zero_equals_rq(X: np.ndarray) -> None:
    assert np.array_equal(fitted("psrq", X, [16, 8], alpha=0.0, anchor="input").encode(X), fitted("rq", X, [16, 8]).encode(X))


def test_prefix_table_equals_explicit_distances() -> None:
    rng = np.random.default_rng(3)
    R = rng.standard_normal((200, 6)).astype(np.float32)
    prefixes = rng.standard_normal((5, 6)).astype(np.float32)
    path = rng.integers(0, 5, 200)
    C, _ = prefix_kmeans(R, prefixes, path, k=7, seed=0, niter=5)
    Z = np.concatenate([R, prefixes[path]], axis=1)
    explicit = ((Z[:, None, :] - C[None]) ** 2).sum(axis=2)
    table = prefix_table(prefixes, np.ascontiguousarray(C[:, 6:]))
    decomposed = ((R[:, None, :] - C[None, :, :6]) ** 2).sum(axis=2) + table[path]
    np.testing.assert_allclose(decomposed, explicit, rtol=1e-4, atol=1e-4)


def test_prefix_kmeans_centroids_are_means_of_their_members() -> None:
    rng = np.random.default_rng(4)
    R = rng.standard_normal((300, 4)).astype(np.float32)
    prefixes = rng.standard_normal((6, 4)).astype(np.float32)
    path = rng.integers(0, 6, 300)
    C, _ = prefix_kmeans(R, prefixes, path, k=5, seed=1, niter=30)
    Z = np.concatenate([R, prefixes[path]], axis=1)
    assign = ((Z[:, None, :] - C[None]) ** 2).sum(axis=2).argmin(axis=1)
    for j in np.unique(assign):  # a converged Lloyd fixed point
        np.testing.assert_allclose(C[j], Z[assign == j].mean(axis=0), atol=1e-4)


def test_psrq_keeps_prefix_purity_where_rq_drifts() -> None:
    """Two well separated genres; inside each, the same 'style' offsets. RQ's layer 2 mixes genres."""
    rng = np.random.default_rng(5)
    genres = np.array([[8.0, 0, 0, 0], [-8.0, 0, 0, 0]], dtype=np.float32)
    styles = np.array([[0, 1.0, 0, 0], [0, -1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, -1.0, 0]], dtype=np.float32)
    g = rng.integers(0, 2, 2000)
    X = genres[g] + styles[rng.integers(0, 4, 2000)] + 0.05 * rng.standard_normal((2000, 4)).astype(np.float32)
    X = X.astype(np.float32)
    rq = make_quantizer("rq", [2, 4], seed=0).fit(X).encode(X)
    ps = make_quantizer("psrq", [2, 4], seed=0, alpha=1.0).fit(X).encode(X)

    def layer2_purity(codes: np.ndarray) -> float:
        hits = 0
        for c in np.unique(codes[:, 1]):
            hits += np.bincount(g[codes[:, 1] == c]).max()
        return hits / len(g)

    assert layer2_purity(ps) > 0.99
    assert layer2_purity(rq) < 0.75


def test_k_may_differ_per_layer(X: np.ndarray) -> None:
    q = fitted("psrq", X, [20, 5, 9])
    codes = q.encode(X)
    assert [C.shape[0] for C in q.centroids] == [20, 5, 9]
    assert [C.shape[1] for C in q.centroids] == [24, 48, 48]
    assert codes[:, 1].max() < 5 and codes[:, 2].max() < 9


def test_fit_is_deterministic_with_seed(X: np.ndarray) -> None:
    for method in ("psrq", "rqvae"):
        a = fitted(method, X, [8, 8]).encode(X)
        b = fitted(method, X, [8, 8]).encode(X)
        assert np.array_equal(a, b), method


@pytest.mark.parametrize(
    ("data", "sizes", "match"),
    [
        (np.zeros((0, 4), np.float32), [2], "empty"),
        (np.zeros(4, np.float32), [2], "2-D"),
        (np.ones((3, 4), np.float32), [8], "exceeds"),
        (np.array([[0, 1.0], [np.nan, 1], [1, np.inf], [2, 2]], np.float32), [2], "rows 1, 2"),
    ],
)
def test_fit_rejects_bad_input(data: np.ndarray, sizes: list[int], match: str) -> None:
    for method in ("psrq", "rq"):
        with pytest.raises(ValueError, match=match):
            make_quantizer(method, sizes).fit(data)


def test_encode_rejects_wrong_dim_and_nan_rows(X: np.ndarray) -> None:
    q = fitted("psrq", X, [8, 8])
    with pytest.raises(ValueError, match="dim 5 != codebook dim 24"):
        q.encode(np.zeros((3, 5), np.float32))
    bad = X[:6].copy()
    bad[2, 0] = np.nan
    bad[4, 3] = np.inf
    with pytest.raises(ValueError, match=r"rows 2, 4$"):
        q.encode(bad)


def test_factory_rejects_unknown_method_and_options() -> None:
    with pytest.raises(ValueError, match="unknown quantizer method"):
        make_quantizer("opq", [4])
    with pytest.raises(ValueError, match="does not take"):
        make_quantizer("rq", [4], prefix_scale="none")
    with pytest.raises(ValueError, match="alpha"):
        make_quantizer("psrq", [4, 4], alpha=-1.0)
    with pytest.raises(ValueError, match="anchor"):
        make_quantizer("psrq", [4, 4], anchor="nope")
