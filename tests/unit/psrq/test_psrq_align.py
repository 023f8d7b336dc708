"""Stable refits: alignment to the parent is a pure relabelling that lowers churn."""

from __future__ import annotations

import numpy as np
import pytest

from psrq import make_quantizer
from psrq.align import align_to_parent, churn_report, layer_permutations, relabel

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((10, 16)).astype(np.float32) * 4
    return (centres[rng.integers(0, 10, 2000)] + rng.standard_normal((2000, 16))).astype(np.float32)


@pytest.mark.parametrize(("method", "by"), [("psrq", "codes"), ("rq", "centroids"), ("psrq", "centroids"), ("pq", "codes")])
def test_alignment_lowers_churn_on_refit_with_another_seed(X: np.ndarray, method: str, by: str) -> None:
    parent = make_quantizer(method, [10, 8], seed=0).fit(X)
    child = make_quantizer(method, [10, 8], seed=1).fit(X)
    aligned = align_to_parent(child, parent, X, by=by)
    rep = churn_report(parent, child, aligned, X)
    assert rep["aligned"]["full_sid"] < rep["unaligned"]["full_sid"]
    # k-means from another seed may merge/split blobs differently; the rest must keep its label
    assert rep["aligned"]["per_layer"][0] < 0.6 * rep["unaligned"]["per_layer"][0]
    # a pure relabelling: the same items share codes before and after
    perms = layer_permutations(child, parent, X, by=by)
    assert np.array_equal(aligned.encode(X), np.stack([p[c] for p, c in zip(perms, child.encode(X).T, strict=True)], axis=1))


def test_relabel_rejects_non_permutations(X: np.ndarray) -> None:
    q = make_quantizer("rq", [4], seed=0).fit(X)
    with pytest.raises(ValueError, match="not a permutation"):
        relabel(q, [np.array([0, 0, 1, 2])])


def test_aligning_a_fit_to_itself_changes_nothing(X: np.ndarray) -> None:
    q = make_quantizer("psrq", [6, 6], seed=0).fit(X)
    same = align_to_parent(q, q, X)
    assert np.array_equal(same.encode(X), q.encode(X))
