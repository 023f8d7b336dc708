"""The one way a codebook (set) is fitted: every caller (demo bootstrap, retraining job,
`sidstream codebook fit`, benchmarks, the offline evaluation) goes through here, so the rule
for K and the method options cannot drift apart."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from psrq.base import Quantizer
from psrq.factory import make_quantizer

log = logging.getLogger(__name__)


class CodebookSpec(Protocol):
    """What a fit needs (sidcore.config.CodebookSettings has exactly this shape)."""

    @property
    def method(self) -> str: ...
    @property
    def layers(self) -> int: ...
    @property
    def codebook_size(self) -> int: ...
    @property
    def alpha(self) -> float: ...
    @property
    def seed(self) -> int: ...
    @property
    def min_points_per_code(self) -> int: ...
    @property
    def device(self) -> str: ...
    @property
    def kmeans_backend(self) -> str: ...

    def options(self) -> dict[str, object]: ...


def fitted_sizes(spec: CodebookSpec, n_points: int) -> list[int]:
    """K per layer for n fit points: the configured K, capped so that each code has on average
    at least `min_points_per_code` points (a code with fewer is noise, not a cluster)."""
    cap = n_points // max(1, spec.min_points_per_code)
    if cap < 2:
        raise ValueError(
            f"{n_points} fit points: need at least {2 * max(1, spec.min_points_per_code)} "
            f"(min_points_per_code={spec.min_points_per_code}, K >= 2)"
        )
    k = min(spec.codebook_size, cap)
    if k < spec.codebook_size:
        log.warning("K capped from %d to %d: %d fit points, min_points_per_code=%d",
                    spec.codebook_size, k, n_points, spec.min_points_per_code)
    return [k] * spec.layers


def present_rows(X: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    """Rows without NaN (NaN rows mark items that lack the modality)."""
    return ~np.isnan(X).any(axis=1)  # type: ignore[no-any-return]


def fit_codebook(X: npt.NDArray[Any], spec: CodebookSpec) -> Quantizer:
    """One quantizer of `spec.method` fitted on the rows of X."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    q = make_quantizer(
        spec.method, fitted_sizes(spec, X.shape[0]), seed=spec.seed, alpha=spec.alpha,
        device=spec.device, kmeans_backend=spec.kmeans_backend, **spec.options(),
    )
    q.fit(X)
    return q


def fit_codebook_set(embeddings: Mapping[str, npt.NDArray[Any]], spec: CodebookSpec) -> dict[str, Quantizer]:
    """{modality: fitted quantizer} on each modality's present (non-NaN) rows; a modality
    with too few rows for K >= 2 is left out with a warning."""
    fitted: dict[str, Quantizer] = {}
    for modality, X in embeddings.items():
        rows = X[present_rows(X)]
        try:
            fitted[modality] = fit_codebook(rows, spec)
        except ValueError as exc:
            if rows.shape[0] >= 2 * max(1, spec.min_points_per_code):
                raise
            log.warning("%s: %s; no codebook", modality, exc)
    return fitted
