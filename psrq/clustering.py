"""k-means as the quantizers call it: `kmeans` / `layer_prefix_kmeans` dispatch on (device,
backend) resolved by psrq.kmeans_common.resolve_backend to faiss and numpy on the CPU (the
default; bit-identical to the code before the torch backend existed, psrq.kmeans) or to torch
on a torch device (psrq.torch_kmeans), and LayeredKMeans, the base of the quantizers with one
k-means codebook per layer (RQ, PQ). The backends import neither each other nor this module."""

from __future__ import annotations

from typing import Any

import numpy as np

from psrq.base import F32, I64, Quantizer
from psrq.kmeans import faiss_kmeans, prefix_kmeans
from psrq.kmeans_common import (
    DEFAULT_MAX_POINTS_PER_CENTROID,
    DEFAULT_NITER,
    check_kmeans_backend,
    resolve_backend,
)
from psrq.torch_kmeans import torch_kmeans, torch_prefix_kmeans


def kmeans(X: F32, k: int, seed: int, niter: int = DEFAULT_NITER, device: str = "cpu", backend: str = "auto") -> F32:
    """Seeded k-means, float32 centroids [k, d]: faiss on the CPU, torch on `device` otherwise."""
    backend, device = resolve_backend(device, backend)
    if backend == "faiss":
        return faiss_kmeans(X, k, seed, niter)
    return torch_kmeans(X, k, seed, niter, device)


def layer_prefix_kmeans(
    R: F32, prefixes: F32, path_idx: I64, k: int, seed: int, niter: int = DEFAULT_NITER,
    device: str = "cpu", backend: str = "auto",
) -> tuple[F32, I64 | None]:
    """prefix_kmeans on the backend `kmeans` would use (numpy with faiss, else torch):
    (centroids [k, 2d], the final assignment when the fit already knows it -- see
    psrq.kmeans.prefix_kmeans; None on the torch backend or when it must be recomputed)."""
    backend, device = resolve_backend(device, backend)
    if backend == "faiss":
        return prefix_kmeans(R, prefixes, path_idx, k, seed, niter)
    return torch_prefix_kmeans(R, prefixes, path_idx, k, seed, niter, device), None


class LayeredKMeans(Quantizer):
    """Shared state of quantizers with one k-means codebook per layer (RQ, PQ):
    hyper-parameters, the per-layer centroid list, and its artifact form.

    `device` / `kmeans_backend` choose where the fit's k-means runs (resolve_backend); they
    are not in options(): an artifact is the same whichever backend fitted it."""

    def __init__(
        self,
        codebook_sizes: Any,
        seed: int = 0,
        niter: int = DEFAULT_NITER,
        max_points_per_centroid: int = DEFAULT_MAX_POINTS_PER_CENTROID,
        device: str = "cpu",
        kmeans_backend: str = "auto",
    ) -> None:
        super().__init__(codebook_sizes, seed)
        check_kmeans_backend(device, kmeans_backend)
        self.niter = int(niter)
        self.max_points_per_centroid = int(max_points_per_centroid)
        self.device, self.kmeans_backend = device, kmeans_backend
        self.centroids: list[F32] = []

    def _kmeans(self, X: F32, k: int, seed: int) -> F32:
        return kmeans(X, k, seed, self.niter, self.device, self.kmeans_backend)

    def options(self) -> dict[str, Any]:
        return {"seed": self.seed, "niter": self.niter, "max_points_per_centroid": self.max_points_per_centroid}

    def tensors(self) -> dict[str, F32]:
        return {f"layer{i}": C for i, C in enumerate(self.centroids)}

    @classmethod
    def from_state(
        cls, tensors: dict[str, F32], options: dict[str, Any], dim: int, codebook_sizes: tuple[int, ...]
    ) -> Quantizer:
        q = cls(codebook_sizes, **options)
        q.centroids = [np.ascontiguousarray(tensors[f"layer{i}"], dtype=np.float32) for i in range(len(codebook_sizes))]
        q._dim = dim
        return q
