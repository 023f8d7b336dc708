"""Warm refits: a child codebook fitted from its parent version's codebooks (psrq.fitting.refit_codebook
is the one caller; see docs/psrq.md "Refits that keep IDs").

Every layer starts from the parent's centroids of that layer and runs `iters` warm Lloyd
iterations with a fit-time margin (psrq.warm_kmeans) on the new data, layer by layer as the fresh
fit goes: RQ and PSRQ on the residuals the child's earlier layers leave, PSRQ's deeper layers on
[r ⊕ w·p] with the parent's frozen prefix weights w (its prefix-conditioned inputs), PQ per
sub-space, VQ on x, psrq_id's identity codebooks on PSRQ's residual with the parent's K_id (so a
composite identity code keeps its meaning). A layer may grow (K_new > K_old: the new codes are
reseeded, the old ones keep their numbers); anything else that differs (method, dimension,
layer count, a smaller K, PSRQ's alpha / anchor / prefix scale) is `NotWarm`, and the caller fits
fresh and aligns. RQ-VAE keeps its parent's encoder (the latent space its codes live in), refits
each latent codebook from the parent's as RQ does (warm Lloyd with the margin on the latent
residuals) and tunes the decoder for `iters` epochs on the new quantized latents; its codebook
sizes stay the parent's. The child's options are the parent's (seed, niter, prefix weights): a fresh fit of the
child's configuration would give another quantizer, which is the point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from psrq.base import F32, I64, Quantizer, check_fit_input, nearest
from psrq.identity import IdentityPSRQ
from psrq.kmeans_common import resolve_backend, subsample
from psrq.pq import PQ, split_bounds
from psrq.progressive import PSRQ, path_index
from psrq.rq import RQ
from psrq.rqvae import RQVAE
from psrq.vq import VQ
from psrq.warm_kmeans import torch_warm_lloyd, warm_lloyd

WARM_METHODS = ("psrq_id", "psrq", "rq", "vq", "pq", "rqvae")


class NotWarm(ValueError):
    """This refit cannot start from the parent (the reason is the message); fit fresh instead."""


@dataclass(frozen=True)
class WarmOptions:
    iters: int = 3  # warm Lloyd iterations per layer
    margin: float = 0.02  # fit-time margin: keep the starting code unless another is > margin closer
    device: str = "cpu"
    kmeans_backend: str = "auto"


def _lloyd(R: F32, C0: F32, k: int, opts: WarmOptions, prefixes: F32 | None = None,
           path_idx: I64 | None = None) -> F32:
    backend, device = resolve_backend(opts.device, opts.kmeans_backend)
    if backend == "torch":
        return torch_warm_lloyd(R, C0, k, opts.iters, opts.margin, prefixes, path_idx, device)[0]
    return warm_lloyd(R, C0, k, opts.iters, opts.margin, prefixes, path_idx)[0]


def check_warm(parent: Quantizer, method: str, dim: int, sizes: list[int], options: dict[str, Any]) -> None:
    """NotWarm with the reason when a child of `method`, `dim`, semantic `sizes` and `options`
    cannot start from `parent`."""
    if method not in WARM_METHODS:
        raise NotWarm(f"{method} is not warm started")
    if parent.method != method:
        raise NotWarm(f"method changed: {parent.method} -> {method}")
    if parent.dim != dim:
        raise NotWarm(f"dimension changed: {parent.dim} -> {dim}")
    old = parent.semantic_sizes
    if method == "vq":
        sizes = sizes[:1]
    if len(old) != len(sizes):
        raise NotWarm(f"layer count changed: {len(old)} -> {len(sizes)}")
    if any(k < k_old for k, k_old in zip(sizes, old, strict=True)):
        raise NotWarm(f"codebook shrank: {old} -> {sizes}")
    if method == "rqvae":
        p = parent.options()
        if list(sizes) != list(old):
            raise NotWarm(f"rqvae codebook sizes changed: {old} -> {sizes} (a latent codebook is not grown)")
        for key in ("hidden", "latent_dim"):
            if key in options and options[key] != p[key]:
                raise NotWarm(f"{key} changed: {p[key]} -> {options[key]}")
    if method in ("psrq", "psrq_id"):
        p = parent.options()
        for key in ("alpha", "anchor", "prefix_scale", "identity_layers"):
            if key in options and key in p and options[key] != p[key]:
                raise NotWarm(f"{key} changed: {p[key]} -> {options[key]}")
        if options.get("identity_size") not in (None, p.get("identity_size")):  # set by hand: a new shape
            raise NotWarm(f"identity_size changed: {p.get('identity_size')} -> {options['identity_size']}")


def _fit_rows(X: F32, k: int, seed: int, max_points_per_centroid: int) -> F32:
    rows = subsample(len(X), k, seed, max_points_per_centroid)
    return X if rows is None else X[rows]


def warm_refit(parent: Quantizer, X: Any, sizes: list[int], opts: WarmOptions) -> Quantizer:
    """The child of `parent` on X with semantic layer sizes `sizes` (each >= the parent's)."""
    X = check_fit_input(X, tuple(sizes))
    if isinstance(parent, IdentityPSRQ):
        return _warm_identity(parent, X, sizes, opts)
    if isinstance(parent, PSRQ):
        return _warm_psrq(parent, X, sizes, opts)
    if isinstance(parent, RQ):
        return _warm_rq(parent, X, sizes, opts)
    if isinstance(parent, PQ):
        return _warm_pq(parent, X, sizes, opts)
    if isinstance(parent, VQ):
        return _warm_vq(parent, X, sizes, opts)
    if isinstance(parent, RQVAE):
        return _warm_rqvae(parent, X, sizes, opts)
    raise NotWarm(f"{parent.method} is not warm started")


def _warm_rqvae(parent: RQVAE, X: F32, sizes: list[int], opts: WarmOptions) -> RQVAE:
    """The parent's encoder kept (its latent space is where the codes live), each layer's codebook
    warm Lloyd-refitted on the latent residuals as RQ's are, then the decoder tuned on the new
    quantized latents for `opts.iters` epochs."""
    q = RQVAE.from_state(parent.tensors(), parent.options(), parent.dim, tuple(sizes))
    q.device, q.kmeans_backend = opts.device, opts.kmeans_backend
    q.codebooks = _warm_residual_layers(q._latent(X), parent.codebooks, sizes, opts)  # noqa: SLF001
    return q.tune_decoder(X, opts.iters)


def _warm_vq(parent: VQ, X: F32, sizes: list[int], opts: WarmOptions) -> VQ:
    q = VQ(sizes[:1], **parent.options(), device=opts.device, kmeans_backend=opts.kmeans_backend)
    q.centroids = _lloyd(_fit_rows(X, sizes[0], q.seed, q.max_points_per_centroid), parent.centroids, sizes[0], opts)
    q._dim = X.shape[1]
    return q


def _warm_rq(parent: RQ, X: F32, sizes: list[int], opts: WarmOptions) -> RQ:
    q = RQ(sizes, **parent.options(), device=opts.device, kmeans_backend=opts.kmeans_backend)
    q.centroids = _warm_residual_layers(_fit_rows(X, max(sizes), q.seed, q.max_points_per_centroid),
                                        parent.centroids, sizes, opts)
    q._dim = X.shape[1]
    return q


def _warm_residual_layers(X: F32, parent_books: list[F32], sizes: list[int], opts: WarmOptions) -> list[F32]:
    """Residual codebooks as RQ fits them, each layer warm started from the parent's on the
    residuals the child's earlier layers leave (RQ on x, RQ-VAE on its latents)."""
    R, books = X.copy(), []
    for layer, k in enumerate(sizes):
        C = _lloyd(R, parent_books[layer], k, opts)
        books.append(C)
        if layer + 1 < len(sizes):
            R -= C[nearest(R, C)]
    return books


def _warm_pq(parent: PQ, X: F32, sizes: list[int], opts: WarmOptions) -> PQ:
    q = PQ(sizes, **parent.options(), device=opts.device, kmeans_backend=opts.kmeans_backend)
    S = _fit_rows(X, max(sizes), q.seed, q.max_points_per_centroid)
    q.centroids = [_lloyd(np.ascontiguousarray(S[:, a:b]), parent.centroids[layer], k, opts)
                   for layer, ((a, b), k) in enumerate(zip(split_bounds(X.shape[1], len(sizes)), sizes, strict=True))]
    q._dim = X.shape[1]
    return q


def _warm_psrq(parent: PSRQ, X: F32, sizes: list[int], opts: WarmOptions) -> PSRQ:
    """PSRQ layer by layer as its fresh fit goes, each layer from the parent's [K, d] / [K, 2d]
    centroids, the deeper ones on [r ⊕ w·p] (anchor "prefix": p the child's own prefixes) or
    [r ⊕ w·x] (anchor "input") with the parent's w."""
    q = PSRQ(sizes, **{**parent.options(), "prefix_weights": list(parent.prefix_weights)},
             device=opts.device, kmeans_backend=opts.kmeans_backend)
    X_fit = _fit_rows(X, max(sizes), q.seed, q.max_points_per_centroid)
    d = X.shape[1]
    R, P = X_fit.copy(), np.zeros_like(X_fit)
    codes = np.empty((len(R), len(sizes)), dtype=np.int64)
    q.centroids = []
    for layer, k in enumerate(sizes):
        C0 = parent.centroids[layer]
        w = q.prefix_weights[layer] if layer else 0.0
        if layer == 0 or w == 0.0:
            C_r = _lloyd(R, np.ascontiguousarray(C0[:, :d]), k, opts)
            C = C_r if layer == 0 else np.concatenate([C_r, np.zeros((k, d), np.float32)], axis=1)
        elif q.anchor == "input":
            C = _lloyd(np.ascontiguousarray(np.concatenate([R, np.float32(w) * X_fit], axis=1)), C0, k, opts)
        else:
            path_idx, first = path_index(codes[:, :layer], tuple(sizes[:layer]))
            C = _lloyd(R, C0, k, opts, np.ascontiguousarray(np.float32(w) * P[first]), path_idx)
        C = np.ascontiguousarray(C, dtype=np.float32)
        q.centroids.append(C)
        if layer + 1 < len(sizes):
            anchor = X_fit if q.anchor == "input" else P
            codes[:, layer] = nearest(R, C) if layer == 0 else q._assign_layer(layer, R, anchor, codes, C, w)
            step = C[codes[:, layer], :d]
            R -= step
            P += step
    q._dim = d
    return q


def _warm_identity(parent: IdentityPSRQ, X: F32, sizes: list[int], opts: WarmOptions) -> IdentityPSRQ:
    """psrq_id: the semantic PSRQ warm, then the identity codebooks warm on its residual with the
    parent's K_id (NotWarm when the largest bucket outgrows the parent's identity capacity)."""
    options = {**parent.options(), "identity_size": parent.identity_size}
    q = IdentityPSRQ(sizes, **options, device=opts.device, kmeans_backend=opts.kmeans_backend)
    q.semantic = _warm_psrq(parent.semantic, X, sizes, opts)
    sem = q.semantic.encode(X)
    q.fit_largest_bucket = int(np.unique(sem, axis=0, return_counts=True)[1].max())
    if q.fit_largest_bucket > q.capacity:
        raise NotWarm(f"the largest semantic bucket ({q.fit_largest_bucket} items) outgrew the parent's identity "
                      f"capacity ({q.capacity}, K_id = {q.identity_size})")
    R = _fit_rows(X - q.semantic.decode(sem), q.identity_size, q.seed + 100, q.semantic.max_points_per_centroid)
    R = np.ascontiguousarray(R)
    q.id_centroids = []
    for C0 in parent.id_centroids:
        C = _lloyd(R, C0, q.identity_size, opts)
        q.id_centroids.append(C)
        R = np.ascontiguousarray(R - C[nearest(R, C)])
    q._dim = X.shape[1]
    return q
