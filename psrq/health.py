"""SID health: utilisation, entropy, hourglass, reconstruction, semantic purity, collisions.

Definitions (per layer l = 1..L, n items):
  utilisation      distinct codes used at layer l / K_l
  entropy_ratio    H(code frequencies at layer l) / log K_l          (1 = uniform use)
  effective_codes  exp(H), the perplexity of layer l's codes
  recon_cos        mean cosine(x, x̂_l), x̂_l the cumulative reconstruction from layers 1..l
  purity           Σ_codes (count of the code's majority label) / n, over the layer-l code
                   *alone* (the reading behind method.md's table: RQ's purity falls with depth)
  purity_path      the same over the prefix path (c_1..c_l): rises with depth for every method
  hourglass_ratio  mean effective codes of the middle layers (2..L-1) / geometric mean of
                   the first and last layers' (L >= 3; < 1 means a narrow waist)
  collision_rate   share of items whose full SID (c_1..c_L) is shared with another item
"""

from __future__ import annotations

from typing import Any

import numpy as np

from psrq.base import F32, I64, Quantizer


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def purity(groups: I64, labels: I64) -> float:
    """Σ over groups of the majority label's count / n (labels as dense ints)."""
    n_labels = int(labels.max()) + 1
    _, inverse = np.unique(groups, return_inverse=True)
    pair_counts = np.bincount(inverse.reshape(-1) * n_labels + labels, minlength=(int(inverse.max()) + 1) * n_labels)
    return float(pair_counts.reshape(-1, n_labels).max(axis=1).sum() / len(labels))


def _path_ids(codes: I64) -> I64:
    _, inverse = np.unique(codes, axis=0, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)


def cosine_rows(X: F32, Y: F32) -> F32:
    num = np.einsum("ij,ij->i", X, Y)
    den = np.linalg.norm(X, axis=1) * np.linalg.norm(Y, axis=1)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0).astype(np.float32)


def sid_collisions(codes: I64) -> dict[str, Any]:
    """Full-SID statistics: distinct SIDs, collision rate, largest bucket."""
    _, counts = np.unique(codes, axis=0, return_counts=True)
    n = int(codes.shape[0])
    shared = int(counts[counts > 1].sum())
    return {
        "items": n,
        "distinct_sids": int(len(counts)),
        "collision_rate": shared / n if n else 0.0,
        "max_items_per_sid": int(counts.max()) if n else 0,
    }


def health_report(
    q: Quantizer, X: Any, labels: Any = None, codes: I64 | None = None
) -> dict[str, Any]:
    """Per-layer and full-SID health of quantizer q on X (optionally with item labels)."""
    X = np.ascontiguousarray(np.asarray(X, dtype=np.float32))
    codes = q.encode(X) if codes is None else np.asarray(codes, dtype=np.int64)
    label_ids: I64 | None = None
    if labels is not None:
        labels = np.asarray(labels)
        if len(labels) != len(X):
            raise ValueError(f"{len(labels)} labels for {len(X)} items")
        label_ids = np.unique(labels, return_inverse=True)[1].reshape(-1).astype(np.int64)
    layers: list[dict[str, Any]] = []
    for layer, k in enumerate(q.codebook_sizes):
        counts = np.bincount(codes[:, layer], minlength=k)
        h = _entropy(counts)
        row: dict[str, Any] = {
            "layer": layer + 1,
            "K": int(k),
            "codes_used": int((counts > 0).sum()),
            "utilisation": float((counts > 0).mean()),
            "entropy_ratio": h / np.log(k) if k > 1 else 1.0,
            "effective_codes": float(np.exp(h)),
            "top_code_share": float(counts.max() / counts.sum()),
            "recon_cos": float(cosine_rows(X, q.decode_prefix(codes, layer + 1)).mean()),
            "distinct_paths": int(len(np.unique(codes[:, : layer + 1], axis=0))),
        }
        if label_ids is not None:
            row["purity"] = purity(codes[:, layer], label_ids)
            row["purity_path"] = purity(_path_ids(codes[:, : layer + 1]), label_ids)
        layers.append(row)
    eff = [row["effective_codes"] for row in layers]
    hourglass = float(np.mean(eff[1:-1]) / np.sqrt(eff[0] * eff[-1])) if len(eff) >= 3 else None
    report: dict[str, Any] = {
        "method": q.method,
        "codebook_sizes": list(q.codebook_sizes),
        "dim": q.dim,
        "layers": layers,
        "hourglass_ratio": hourglass,
        "sids": sid_collisions(codes),
    }
    # uniqueness: the full ID, the semantic buckets (psrq_id's identity codes make the first unique)
    semantic = int(getattr(q, "semantic_layers", len(q.codebook_sizes)))
    report["ids"] = id_report(codes, semantic, q.codebook_sizes, label_ids, X,
                              lambda c, layers: q.decode_prefix(c, layers))
    if label_ids is not None:
        report["labels"] = {"distinct": int(label_ids.max()) + 1, "majority_share": float(np.bincount(label_ids).max() / len(label_ids))}
    return report


# -- ID metrics (issue: unique IDs): what a full ID and its semantic layers are worth ---------------
def _dense(groups: I64) -> I64:
    g = np.asarray(groups)
    if g.ndim == 2:
        return _path_ids(g)
    return np.unique(g, return_inverse=True)[1].reshape(-1).astype(np.int64)


def nmi(groups: I64, labels: I64) -> float:
    """Normalised mutual information 2 I(G; Y) / (H(G) + H(Y)) (sklearn's "arithmetic")."""
    g, y = _dense(groups), _dense(labels)
    n = len(g)
    joint = np.bincount(g * (int(y.max()) + 1) + y).astype(np.float64)
    pg, py = np.bincount(g) / n, np.bincount(y) / n
    hg, hy = _entropy(np.bincount(g)), _entropy(np.bincount(y))
    pj = joint[joint > 0] / n
    idx = np.flatnonzero(joint)
    gi, yi = idx // (int(y.max()) + 1), idx % (int(y.max()) + 1)
    mi = float((pj * np.log(pj / (pg[gi] * py[yi]))).sum())
    return 2 * mi / (hg + hy) if hg + hy > 0 else 0.0


def random_partition(groups: I64, labels: I64, seeds: int = 5) -> dict[str, float]:
    """Purity and NMI of a random partition with the same group-size histogram (labels shuffled
    over the groups), mean over `seeds` shuffles: small groups look pure by chance alone."""
    g, y = _dense(groups), _dense(labels)
    rng = np.random.default_rng(0)
    p, m = [], []
    for _ in range(seeds):
        shuffled = y[rng.permutation(len(y))]
        p.append(purity(g, shuffled))
        m.append(nmi(g, shuffled))
    return {"purity": float(np.mean(p)), "nmi": float(np.mean(m))}


def conditional_entropy(codes: I64, layer: int, k: int) -> float:
    """H(c_l | c_<l) / log K_l (layer 0-based): 1 = a layer's code is spread evenly within each
    parent path, 0 = a function of its parent (PSRQ's collapse)."""
    if k < 2:
        return 0.0
    h_joint = _entropy(np.bincount(_path_ids(codes[:, : layer + 1])))
    h_parent = _entropy(np.bincount(_path_ids(codes[:, :layer]))) if layer > 0 else 0.0
    return (h_joint - h_parent) / float(np.log(k))


def id_report(codes: I64, semantic_layers: int, sizes: Any, labels: Any = None, X: F32 | None = None,
              decode: Any = None) -> dict[str, Any]:
    """Full-ID uniqueness, bucket sizes, per-semantic-layer H(c_l | c_<l), purity and NMI next
    to a random partition with the same size histogram, and reconstruction with the semantic
    layers alone and with the full ID (same number of codes, so the same bits)."""
    codes = np.asarray(codes, dtype=np.int64)
    n = len(codes)
    _, full_counts = np.unique(codes, axis=0, return_counts=True)
    _, bucket_counts = np.unique(codes[:, :semantic_layers], axis=0, return_counts=True)
    report: dict[str, Any] = {
        "items": n,
        "distinct_ids": int(len(full_counts)),
        "distinct_ratio": float(len(full_counts) / n) if n else 0.0,
        "buckets": int(len(bucket_counts)),
        "largest_bucket": int(bucket_counts.max()) if n else 0,
        "identity_needed_share": float(bucket_counts[bucket_counts > 1].sum() / n) if n else 0.0,
        "layers": [],
    }
    y = None if labels is None else _dense(np.asarray(labels))
    for layer in range(semantic_layers):
        row: dict[str, Any] = {"layer": layer + 1, "cond_entropy": conditional_entropy(codes, layer, int(sizes[layer]))}
        if y is not None:
            rnd = random_partition(codes[:, layer], y)
            row.update(purity=purity(codes[:, layer], y), purity_random=rnd["purity"],
                       nmi=nmi(codes[:, layer], y), nmi_random=rnd["nmi"])
            row["purity_lift"] = row["purity"] - rnd["purity"]
        report["layers"].append(row)
    if X is not None and decode is not None:
        report["recon_cos_semantic"] = float(cosine_rows(X, decode(codes, semantic_layers)).mean())
        report["recon_cos_full"] = float(cosine_rows(X, decode(codes, codes.shape[1])).mean())
    return report
