"""VQ: one flat k-means codebook (a single-layer SID)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from psrq.base import F32, I64, Quantizer, check_codes, check_encode_input, check_fit_input, nearest
from psrq.clustering import kmeans
from psrq.kmeans_common import DEFAULT_MAX_POINTS_PER_CENTROID, DEFAULT_NITER, check_kmeans_backend, subsample

log = logging.getLogger(__name__)


class VQ(Quantizer):
    """Flat k-means. Given several sizes, only the first is used (VQ has one layer by definition)."""

    method = "vq"

    def __init__(
        self,
        codebook_sizes: Any,
        seed: int = 0,
        niter: int = DEFAULT_NITER,
        max_points_per_centroid: int = DEFAULT_MAX_POINTS_PER_CENTROID,
        device: str = "cpu",
        kmeans_backend: str = "auto",
    ) -> None:
        sizes = tuple(int(k) for k in codebook_sizes)
        if len(sizes) > 1:
            log.info("VQ has one codebook: using K=%d of %s", sizes[0], list(sizes))
        super().__init__(sizes[:1], seed)
        check_kmeans_backend(device, kmeans_backend)
        self.device, self.kmeans_backend = device, kmeans_backend  # where the fit runs; not in options()
        self.niter = int(niter)
        self.max_points_per_centroid = int(max_points_per_centroid)
        self.centroids: F32 = np.zeros((0, 0), dtype=np.float32)

    def fit(self, X: Any) -> VQ:
        X = check_fit_input(X, self.codebook_sizes)
        rows = subsample(len(X), self.codebook_sizes[0], self.seed, self.max_points_per_centroid)
        self.centroids = kmeans(
            X if rows is None else X[rows], self.codebook_sizes[0], self.seed, self.niter, self.device, self.kmeans_backend
        )
        self._dim = X.shape[1]
        return self

    def encode(self, X: Any) -> I64:
        return nearest(check_encode_input(X, self.dim), self.centroids)[:, None]

    def decode_prefix(self, codes: Any, layers: int) -> F32:
        codes = check_codes(codes, self.codebook_sizes)
        if layers == 0:
            return np.zeros((codes.shape[0], self.dim), dtype=np.float32)
        return np.ascontiguousarray(self.centroids[codes[:, 0]])

    def options(self) -> dict[str, Any]:
        return {"seed": self.seed, "niter": self.niter, "max_points_per_centroid": self.max_points_per_centroid}

    def tensors(self) -> dict[str, F32]:
        return {"layer0": self.centroids}

    @classmethod
    def from_state(
        cls, tensors: dict[str, F32], options: dict[str, Any], dim: int, codebook_sizes: tuple[int, ...]
    ) -> VQ:
        q = cls(codebook_sizes, **options)
        q.centroids = np.ascontiguousarray(tensors["layer0"], dtype=np.float32)
        q._dim = dim
        return q
