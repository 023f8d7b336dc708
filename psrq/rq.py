"""RQ-KMeans: layer l clusters the residual left by layers 1..l-1 (one k-means per layer)."""

from __future__ import annotations

from typing import Any

import numpy as np

from psrq.base import F32, I64, check_codes, check_encode_input, check_fit_input, encode_in_blocks, nearest
from psrq.clustering import LayeredKMeans
from psrq.kmeans_common import subsample


class RQ(LayeredKMeans):
    """Residual k-means. Centroids are [K_l, d] per layer; x̂ = sum of the chosen centroids."""

    method = "rq"

    def fit(self, X: Any) -> RQ:
        X = check_fit_input(X, self.codebook_sizes)
        rows = subsample(len(X), max(self.codebook_sizes), self.seed, self.max_points_per_centroid)
        R = (X if rows is None else X[rows]).copy()
        self.centroids = []
        for layer, k in enumerate(self.codebook_sizes):
            C = self._kmeans(R, k, seed=self.seed + layer)
            self.centroids.append(C)
            if layer + 1 < self.num_layers:
                R -= C[nearest(R, C)]
        self._dim = X.shape[1]
        return self

    def encode(self, X: Any) -> I64:
        return encode_in_blocks(check_encode_input(X, self.dim), self.num_layers, self._encode_block)

    def _encode_block(self, X: F32) -> I64:
        R = X.copy()
        codes = np.empty((R.shape[0], self.num_layers), dtype=np.int64)
        for layer, C in enumerate(self.centroids):
            codes[:, layer] = nearest(R, C)
            R -= C[codes[:, layer]]
        return codes

    def decode_prefix(self, codes: Any, layers: int) -> F32:
        codes = check_codes(codes, self.codebook_sizes)
        out = np.zeros((codes.shape[0], self.dim), dtype=np.float32)
        for layer in range(layers):
            out += self.centroids[layer][codes[:, layer]]
        return out
