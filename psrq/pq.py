"""PQ: the dimensions are split into L contiguous sub-spaces, one k-means codebook each."""

from __future__ import annotations

from typing import Any

import numpy as np

from psrq.base import F32, I64, check_codes, check_encode_input, check_fit_input, nearest
from psrq.clustering import LayeredKMeans
from psrq.kmeans_common import subsample


def split_bounds(dim: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) column ranges, sizes differing by at most one (like np.array_split)."""
    edges = np.linspace(0, dim, parts + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


class PQ(LayeredKMeans):
    """Product quantization; layer l is sub-space l. Partial decodes leave later sub-spaces at 0."""

    method = "pq"

    def fit(self, X: Any) -> PQ:
        X = check_fit_input(X, self.codebook_sizes)
        if X.shape[1] < self.num_layers:
            raise ValueError(f"PQ needs dim >= number of sub-spaces ({X.shape[1]} < {self.num_layers})")
        rows = subsample(len(X), max(self.codebook_sizes), self.seed, self.max_points_per_centroid)
        S = X if rows is None else X[rows]
        self._dim = X.shape[1]
        self.centroids = [
            self._kmeans(np.ascontiguousarray(S[:, a:b]), k, seed=self.seed + layer)
            for layer, ((a, b), k) in enumerate(zip(split_bounds(self.dim, self.num_layers), self.codebook_sizes, strict=True))
        ]
        return self

    def encode(self, X: Any) -> I64:
        X = check_encode_input(X, self.dim)
        codes = np.empty((X.shape[0], self.num_layers), dtype=np.int64)
        for layer, (a, b) in enumerate(split_bounds(self.dim, self.num_layers)):
            codes[:, layer] = nearest(np.ascontiguousarray(X[:, a:b]), self.centroids[layer])
        return codes

    def decode_prefix(self, codes: Any, layers: int) -> F32:
        codes = check_codes(codes, self.codebook_sizes)
        out = np.zeros((codes.shape[0], self.dim), dtype=np.float32)
        for layer, (a, b) in enumerate(split_bounds(self.dim, self.num_layers)[:layers]):
            out[:, a:b] = self.centroids[layer][codes[:, layer]]
        return out
