"""What both k-means backends share (psrq.kmeans: faiss and numpy; psrq.torch_kmeans: torch):
the defaults, the (device, backend) rule, the seeded initial rows and training subsample, and
the split of an empty cluster. A leaf: it imports neither backend, so neither imports the other
(psrq.clustering dispatches between them)."""

from __future__ import annotations

import re

import numpy as np

from psrq.base import F32, I64

DEFAULT_NITER = 20
DEFAULT_MAX_POINTS_PER_CENTROID = 256
# relative perturbation used when an empty cluster takes half of the largest one (as faiss does)
_SPLIT_EPS = 1.0 / 1024.0
DEVICES = re.compile(r"cpu|auto|cuda(:\d+)?")
BACKENDS = ("auto", "faiss", "torch")


def resolve_backend(device: str = "cpu", backend: str = "auto") -> tuple[str, str]:
    """(backend, device) a fit runs on: device "auto" is cuda when torch sees one, else cpu;
    backend "auto" is faiss on the CPU and torch on cuda. faiss runs on the CPU only."""
    if not DEVICES.fullmatch(device):
        raise ValueError(f"unknown device {device!r}; expected cpu, cuda, cuda:N or auto")
    if backend not in BACKENDS:
        raise ValueError(f"unknown k-means backend {backend!r}; expected one of {BACKENDS}")
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if backend == "auto":
        backend = "faiss" if device == "cpu" else "torch"
    if backend == "faiss" and device != "cpu":
        raise ValueError(f"the faiss k-means backend runs on the CPU only, not on {device!r}")
    return backend, device


def check_kmeans_backend(device: str, backend: str) -> None:
    """Raise ValueError for a device / backend a fit could not run on (no torch import for "auto")."""
    resolve_backend("cpu" if device == "auto" else device, backend)


def initial_rows(n: int, k: int, seed: int) -> I64:
    """k distinct seeded row indices (sorted): the initial centroids of a Lloyd k-means."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)


def subsample(n: int, k: int, seed: int, max_points_per_centroid: int) -> I64 | None:
    """Row indices of a seeded training subsample (None: use all rows), as faiss would draw."""
    cap = k * max_points_per_centroid
    if n <= cap:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=cap, replace=False)).astype(np.int64)


def split_empty(C: F32, counts: np.ndarray) -> None:
    """Give every empty cluster half of the currently largest one (in place, deterministic)."""
    for j in np.flatnonzero(counts == 0):
        big = int(counts.argmax())
        sign = np.where(np.arange(C.shape[1]) % 2 == 0, 1.0, -1.0).astype(np.float32)
        C[j] = C[big] * (1 + sign * _SPLIT_EPS)
        C[big] = C[big] * (1 - sign * _SPLIT_EPS)
        counts[j] = counts[big] // 2
        counts[big] -= counts[j]
