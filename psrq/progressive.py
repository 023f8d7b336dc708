"""PSRQ (arXiv 2508.20359, method.md §2): layers >= 2 cluster [residual ⊕ w_l · prefix].

    layer 1:   c_1 = argmin ||x - C_1[j]||,        r_1 = x - C_1[c_1],  p_1 = C_1[c_1]
    layer l:   z_l = [r_{l-1} ⊕ w_l p_{l-1}],      c_l = argmin ||z_l - C_l[j]||   (C_l is [K_l, 2d])
               r_l = r_{l-1} - C_l[c_l][:d],       p_l = p_{l-1} + C_l[c_l][:d]
    x̂ = p_L

w_l = alpha (the paper: alpha = 1) unless `prefix_scale` rescales the prefix per layer:
  "none"             w_l = alpha
  "residual_norm"    w_l = alpha · mean||r_{l-1}|| / mean||p_{l-1}||            (on the fit data)
  "residual_spread"  w_l = alpha · sqrt(tr Cov(r_{l-1}) / tr Cov(p_{l-1}))     (on the fit data)
The fitted w_l are frozen into the artifact, so encoding never re-derives them.

`anchor` (our variant, default "prefix" = the paper) chooses the semantic half:
  "prefix"  z_l = [r_{l-1} ⊕ w_l p_{l-1}]   p takes one value per code path (piecewise constant)
  "input"   z_l = [r_{l-1} ⊕ w_l x]         the item's own embedding: continuous, so deep
            clusters can cut across layer-1 cells along semantic directions instead of
            re-drawing them (see docs/results/quantizers.md). Costs a 2d-dim distance block
            per deep layer (no path table); decoding is unchanged (residual halves only).

Fast path: p_{l-1} takes one value per distinct code path (c_1..c_{l-1}), so the prefix half
of ||z - c||² is a [paths, K] table added to the residual half's BLAS distances
(psrq.kmeans.prefix_kmeans for fitting, psrq.base.nearest for encoding). psrq.reference is
the literal reading; tests check that both give identical codes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from psrq.base import (
    F32,
    I64,
    Quantizer,
    check_codes,
    check_encode_input,
    check_fit_input,
    encode_in_blocks,
    nearest,
    run_parallel,
)
from psrq.clustering import kmeans, layer_prefix_kmeans
from psrq.kmeans import prefix_table
from psrq.kmeans_common import (
    DEFAULT_MAX_POINTS_PER_CENTROID,
    DEFAULT_NITER,
    check_kmeans_backend,
    resolve_backend,
    subsample,
)

PREFIX_SCALES = ("none", "residual_norm", "residual_spread")
ANCHORS = ("prefix", "input")


def path_index(codes: I64, sizes: tuple[int, ...]) -> tuple[I64, I64]:
    """(index of each row's code path among the distinct paths, first row of each path)."""
    if float(np.prod(np.asarray(sizes, dtype=np.float64))) < 2.0**62:
        key = np.zeros(codes.shape[0], dtype=np.int64)
        for col, k in enumerate(sizes):
            key = key * k + codes[:, col]
        _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    else:  # too many paths for one int64 key
        _, first, inverse = np.unique(codes, axis=0, return_index=True, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64), first.astype(np.int64)


def prefix_weight(R: F32, P: F32, alpha: float, prefix_scale: str) -> float:
    """w_l for one layer from the fit data's residuals R and prefixes P (see module doc)."""
    if alpha == 0.0 or prefix_scale == "none":
        return float(alpha)
    if prefix_scale == "residual_norm":
        num = float(np.linalg.norm(R, axis=1).mean())
        den = float(np.linalg.norm(P, axis=1).mean())
    elif prefix_scale == "residual_spread":
        num = float(np.sqrt(R.var(axis=0, dtype=np.float64).sum()))
        den = float(np.sqrt(P.var(axis=0, dtype=np.float64).sum()))
    else:
        raise ValueError(f"unknown prefix_scale {prefix_scale!r}; expected one of {PREFIX_SCALES}")
    return float(alpha) * (num / den if den > 0 else 0.0)


# rows per chunk of the fit's residual / prefix updates (run on the worker threads)
STEP_CHUNK = 8192


def _step(R: F32, P: F32 | None, C: F32, codes: I64) -> None:
    """R -= C[codes, :d] and P += C[codes, :d] in place, in row chunks on the worker threads."""
    d = R.shape[1]

    def part(a: int) -> None:
        step = C[codes[a : a + STEP_CHUNK], :d]
        R[a : a + STEP_CHUNK] -= step
        if P is not None:
            P[a : a + STEP_CHUNK] += step

    run_parallel(part, range(0, R.shape[0], STEP_CHUNK))


class PSRQ(Quantizer):
    """Progressive semantic residual quantization with an optional per-layer prefix weight."""

    method = "psrq"

    def __init__(
        self,
        codebook_sizes: Any,
        seed: int = 0,
        alpha: float = 1.0,
        prefix_scale: str = "none",
        niter: int = DEFAULT_NITER,
        max_points_per_centroid: int = DEFAULT_MAX_POINTS_PER_CENTROID,
        prefix_weights: list[float] | None = None,
        anchor: str = "prefix",
        device: str = "cpu",
        kmeans_backend: str = "auto",
    ) -> None:
        super().__init__(codebook_sizes, seed)
        check_kmeans_backend(device, kmeans_backend)
        # where the fit's k-means runs (psrq.kmeans_common.resolve_backend); not in options(): an
        # artifact is the same whichever backend fitted it
        self.device, self.kmeans_backend = device, kmeans_backend
        if not np.isfinite(alpha) or alpha < 0:
            raise ValueError(f"alpha must be a finite number >= 0, got {alpha}")
        if prefix_scale not in PREFIX_SCALES:
            raise ValueError(f"unknown prefix_scale {prefix_scale!r}; expected one of {PREFIX_SCALES}")
        if anchor not in ANCHORS:
            raise ValueError(f"unknown anchor {anchor!r}; expected one of {ANCHORS}")
        self.anchor = anchor
        self.alpha = float(alpha)
        self.prefix_scale = prefix_scale
        self.niter = int(niter)
        self.max_points_per_centroid = int(max_points_per_centroid)
        # w_l per layer (index 0 unused, always 0): fitted, or restored from an artifact
        self.prefix_weights: list[float] = list(prefix_weights) if prefix_weights is not None else []
        self.centroids: list[F32] = []  # layer 0: [K_1, d]; layers >= 1: [K_l, 2d]

    def fit(self, X: Any) -> PSRQ:
        X = check_fit_input(X, self.codebook_sizes)
        d = X.shape[1]
        rows = subsample(len(X), max(self.codebook_sizes), self.seed, self.max_points_per_centroid)
        X_fit = X if rows is None else X[rows]
        if resolve_backend(self.device, self.kmeans_backend)[0] == "torch":
            from psrq.torch_fit import fit_psrq_on_device  # the rows stay on the device throughout

            fit_psrq_on_device(self, X_fit)
            return self
        # X[rows] is already a copy, and anchor "prefix" never reads X_fit again: no second copy
        R = X_fit if rows is not None and self.anchor == "prefix" else X_fit.copy()
        # the prefix of every fit row is read only by prefix_weight's rescaling (anchor "prefix",
        # alpha != 0); otherwise just the distinct paths' prefixes are built (_prefix_rows)
        P: F32 | None = None
        if self.anchor == "prefix" and self.prefix_scale != "none" and self.alpha != 0.0:
            P = np.zeros_like(R)
        codes = np.empty((R.shape[0], self.num_layers), dtype=np.int64)
        self.centroids, self.prefix_weights = [], [0.0]
        for layer, k in enumerate(self.codebook_sizes):
            seed = self.seed + layer
            if layer == 0:
                C = self._kmeans(R, k, seed)
                if self.num_layers > 1:
                    codes[:, 0] = nearest(R, C)
            else:
                if self.anchor == "input":
                    w = prefix_weight(R, X_fit, self.alpha, self.prefix_scale)
                else:  # without P, prefix_weight would return alpha without reading it
                    w = prefix_weight(R, P, self.alpha, self.prefix_scale) if P is not None else self.alpha
                self.prefix_weights.append(w)
                assigned: I64 | None = None
                if w != 0.0 and self.anchor == "input":
                    C = self._kmeans(np.concatenate([R, np.float32(w) * X_fit], axis=1), k, seed)
                elif w == 0.0:
                    # the prefix half is identically zero: k-means on [r ⊕ 0] is k-means on r
                    C = np.concatenate([self._kmeans(R, k, seed), np.zeros((k, d), np.float32)], axis=1)
                else:
                    path_idx, first = path_index(codes[:, :layer], self.codebook_sizes[:layer])
                    P_first = P[first] if P is not None else self._prefix_rows(codes[first], layer)
                    prefixes = np.ascontiguousarray(np.float32(w) * P_first)
                    # `assigned`: the Lloyd loop stopped on a repeated assignment, which is then
                    # exactly the nearest-centroid pass below (same inputs, same kernel): reuse it
                    C, assigned = layer_prefix_kmeans(
                        R, prefixes, path_idx, k, seed, self.niter, self.device, self.kmeans_backend
                    )
                if assigned is not None:
                    codes[:, layer] = assigned
                elif layer + 1 < self.num_layers:  # the fit never reads the last layer's codes
                    anchor = X_fit if self.anchor == "input" else P
                    if anchor is None:
                        anchor = self._prefix_rows(codes, layer) if w != 0.0 else R  # (R: not read)
                    codes[:, layer] = self._assign_layer(layer, R, anchor, codes, C, w)
            self.centroids.append(np.ascontiguousarray(C, dtype=np.float32))
            if layer + 1 < self.num_layers:  # the last layer's residual / prefix are never read
                _step(R, P, C, codes[:, layer])
        self._dim = d
        return self

    def _kmeans(self, X: F32, k: int, seed: int) -> F32:
        return kmeans(X, k, seed, self.niter, self.device, self.kmeans_backend)

    def _prefix_rows(self, codes: I64, layer: int) -> F32:
        """p_{layer-1} of rows with these codes, added as the fit's prefix array adds them:
        (0 + C_1[c_1]) + C_2[c_2] + ... (the fitted layers < `layer`), so the same bits."""
        d = self.centroids[0].shape[1]
        P = np.zeros((codes.shape[0], d), dtype=np.float32)
        for prev in range(layer):
            P += self.centroids[prev][codes[:, prev], :d]
        return P

    def _assign_layer(self, layer: int, R: F32, P: F32, codes: I64, C: F32, w: float) -> I64:
        """Layer codes; P is the prefix (anchor "prefix") or the input itself (anchor "input")."""
        d = R.shape[1]
        C_r = np.ascontiguousarray(C[:, :d])
        if w == 0.0:
            return nearest(R, C_r)
        if self.anchor == "input":
            return nearest(np.ascontiguousarray(np.concatenate([R, np.float32(w) * P], axis=1)), C)
        path_idx, first = path_index(codes[:, :layer], self.codebook_sizes[:layer])
        prefixes = np.ascontiguousarray(np.float32(w) * P[first])
        table = prefix_table(prefixes, np.ascontiguousarray(C[:, d:]))
        return nearest(R, C_r, table, path_idx)

    def encode(self, X: Any) -> I64:
        return encode_in_blocks(check_encode_input(X, self.dim), self.num_layers, self._encode_block)

    def _encode_block(self, X: F32) -> I64:
        R = X.copy()
        P = np.zeros_like(R)
        codes = np.empty((R.shape[0], self.num_layers), dtype=np.int64)
        for layer, C in enumerate(self.centroids):
            if layer == 0:
                codes[:, 0] = nearest(R, C)
            else:
                anchor = X if self.anchor == "input" else P
                codes[:, layer] = self._assign_layer(layer, R, anchor, codes, C, self.prefix_weights[layer])
            step = C[codes[:, layer], : self.dim]
            R -= step
            P += step
        return codes

    def decode_prefix(self, codes: Any, layers: int) -> F32:
        codes = check_codes(codes, self.codebook_sizes)
        out = np.zeros((codes.shape[0], self.dim), dtype=np.float32)
        for layer in range(layers):
            out += self.centroids[layer][codes[:, layer], : self.dim]
        return out

    def options(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "alpha": self.alpha,
            "prefix_scale": self.prefix_scale,
            "niter": self.niter,
            "max_points_per_centroid": self.max_points_per_centroid,
            "prefix_weights": self.prefix_weights,
            "anchor": self.anchor,
        }

    def tensors(self) -> dict[str, F32]:
        return {f"layer{i}": C for i, C in enumerate(self.centroids)}

    @classmethod
    def from_state(
        cls, tensors: dict[str, F32], options: dict[str, Any], dim: int, codebook_sizes: tuple[int, ...]
    ) -> PSRQ:
        q = cls(codebook_sizes, **options)
        q.centroids = [np.ascontiguousarray(tensors[f"layer{i}"], dtype=np.float32) for i in range(len(codebook_sizes))]
        q._dim = dim
        return q
