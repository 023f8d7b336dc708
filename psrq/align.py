"""Stable refits: relabel a new fit's codes so that they agree with its parent version.

Permuting one layer's centroids is only a relabelling: encoding finds the same centroids
(PSRQ groups items by code path, whatever the labels, and its prefix table is built from
centroid values), so codes_aligned[:, l] = perm_l[codes_new[:, l]] exactly.

Matching per layer is a Hungarian assignment (scipy linear_sum_assignment) on either
  - "codes": co-assignment counts on reference data (maximise items keeping their code);
             works for every method, RQ-VAE included (its latent spaces differ per fit)
  - "centroids": squared distance between parent and new centroids (same method and shapes)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from psrq.base import I64, Quantizer


def _complete(rows: np.ndarray, cols: np.ndarray, k_new: int) -> I64:
    """perm[new code] = aligned code; unmatched new codes take the free labels in order."""
    perm = np.full(k_new, -1, dtype=np.int64)
    matched = rows < k_new
    perm[cols[matched]] = rows[matched]
    free = iter(sorted(set(range(k_new)) - set(perm[perm >= 0].tolist())))
    for j in np.flatnonzero(perm < 0):
        perm[j] = next(free)
    return perm


def layer_permutations(new: Quantizer, parent: Quantizer, X: Any = None, by: str = "codes") -> list[I64]:
    """One permutation per layer mapping the new fit's codes to the parent's numbering."""
    if new.num_layers != parent.num_layers:
        raise ValueError(f"layer counts differ: new {new.num_layers}, parent {parent.num_layers}")
    perms: list[I64] = []
    if by == "codes":
        if X is None:
            raise ValueError("aligning by codes needs reference data X")
        c_new, c_old = new.encode(X), parent.encode(X)
        for layer, (k_new, k_old) in enumerate(zip(new.codebook_sizes, parent.codebook_sizes, strict=True)):
            k = max(k_new, k_old)
            counts = np.bincount(c_old[:, layer] * k + c_new[:, layer], minlength=k * k).reshape(k, k)
            rows, cols = linear_sum_assignment(-counts[:, :k_new])
            perms.append(_complete(rows, cols, k_new))
    elif by == "centroids":
        t_new, t_old = new.tensors(), parent.tensors()
        for layer, k_new in enumerate(new.codebook_sizes):
            A, B = t_old[f"layer{layer}"], t_new[f"layer{layer}"]
            if A.shape[1] != B.shape[1]:
                raise ValueError(f"layer {layer + 1}: centroid dims differ ({A.shape[1]} vs {B.shape[1]})")
            cost = (A * A).sum(1)[:, None] - 2 * A @ B.T + (B * B).sum(1)[None, :]
            rows, cols = linear_sum_assignment(cost)
            perms.append(_complete(rows, cols, k_new))
    else:
        raise ValueError(f"unknown alignment {by!r}; expected 'codes' or 'centroids'")
    return perms


def relabel(q: Quantizer, perms: list[I64]) -> Quantizer:
    """A copy of q whose layer-l code j is renamed perms[l][j] (codebook rows reordered)."""
    tensors = dict(q.tensors())
    for layer, perm in enumerate(perms):
        if sorted(perm.tolist()) != list(range(q.codebook_sizes[layer])):
            raise ValueError(f"layer {layer + 1}: not a permutation of 0..{q.codebook_sizes[layer] - 1}")
        tensors[f"layer{layer}"] = np.ascontiguousarray(tensors[f"layer{layer}"][np.argsort(perm)])
    return type(q).from_state(tensors, q.options(), q.dim, q.codebook_sizes)


def align_to_parent(new: Quantizer, parent: Quantizer, X: Any = None, by: str = "codes") -> Quantizer:
    """The new fit relabelled to agree with its parent as far as a per-layer matching allows."""
    return relabel(new, layer_permutations(new, parent, X, by))


def churn(codes_a: I64, codes_b: I64) -> dict[str, Any]:
    """Share of items whose full SID changed, and per layer."""
    if codes_a.shape != codes_b.shape:
        raise ValueError(f"code shapes differ: {codes_a.shape} vs {codes_b.shape}")
    changed = codes_a != codes_b
    return {"full_sid": float(changed.any(axis=1).mean()), "per_layer": changed.mean(axis=0).astype(float).tolist()}


def churn_report(parent: Quantizer, new: Quantizer, aligned: Quantizer, X: Any) -> dict[str, Any]:
    """Churn against the parent on X, without and with alignment."""
    old = parent.encode(X)
    return {"items": int(len(old)), "unaligned": churn(old, new.encode(X)), "aligned": churn(old, aligned.encode(X))}
