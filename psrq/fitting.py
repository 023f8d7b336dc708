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


# ----------------------------------------------------------------------------------- refits
class RefitSpec(CodebookSpec, Protocol):
    """A fit spec with the refit settings (sidcore.config.CodebookSettings has them)."""

    @property
    def refit(self) -> str: ...
    @property
    def refit_iters(self) -> int: ...
    @property
    def refit_margin(self) -> float: ...
    @property
    def refit_max_drift(self) -> float: ...
    @property
    def refit_max_utilisation_drop(self) -> float: ...


def fit_quality(q: Quantizer, X: npt.NDArray[Any]) -> dict[str, Any]:
    """What the drift guard compares: mean cosine(x, decode(encode(x))) and the share of codes used
    per semantic layer, on X."""
    from psrq.health import cosine_rows

    codes = q.encode(X)
    used = [float(len(np.unique(codes[:, layer])) / k) for layer, k in enumerate(q.semantic_sizes)]
    return {"recon_cosine": float(np.mean(cosine_rows(X, q.decode(codes)))), "utilisation_per_layer": used}


def drift_reasons(warm: dict[str, Any], fresh: dict[str, Any], max_drift: float, max_utilisation_drop: float) -> list[str]:
    """Why a warm refit falls too far behind the fresh fit of the same data (empty: it does not)."""
    reasons = []
    ratio = warm["recon_cosine"] / fresh["recon_cosine"] if fresh["recon_cosine"] > 0 else 1.0
    if ratio < 1.0 - max_drift:
        reasons.append(f"reconstruction {warm['recon_cosine']:.4f} is {ratio:.4f} of the fresh fit's "
                       f"{fresh['recon_cosine']:.4f} (< 1 - refit_max_drift {max_drift})")
    for layer, (w, f) in enumerate(zip(warm["utilisation_per_layer"], fresh["utilisation_per_layer"], strict=True)):
        if w < f - max_utilisation_drop:
            reasons.append(f"layer {layer + 1} uses {w:.3f} of its codes, the fresh fit {f:.3f} "
                           f"(drop > refit_max_utilisation_drop {max_utilisation_drop})")
    return reasons


def warm_options(spec: RefitSpec) -> Any:
    from psrq.warm import WarmOptions

    return WarmOptions(spec.refit_iters, spec.refit_margin, spec.device, spec.kmeans_backend)


def warm_child(X: npt.NDArray[Any], spec: RefitSpec, parent: Quantizer) -> Quantizer:
    """The warm refit of `parent` on X (psrq.warm); NotWarm (a ValueError) when it cannot be one."""
    from psrq.warm import check_warm, warm_refit

    X = np.ascontiguousarray(X, dtype=np.float32)
    sizes = fitted_sizes(spec, X.shape[0])
    check_warm(parent, spec.method, X.shape[1], sizes, spec.options())
    return warm_refit(parent, X, sizes, warm_options(spec))


def fresh_aligned(X: npt.NDArray[Any], spec: CodebookSpec, parent: Quantizer | None) -> Quantizer:
    """Today's refit: a fresh fit, relabelled to agree with a compatible parent (psrq.align)."""
    from psrq.align import align_to_parent

    q = fit_codebook(X, spec)
    if parent is None or parent.method != q.method or parent.dim != q.dim or parent.num_layers != q.num_layers:
        return q
    return align_to_parent(q, parent, np.ascontiguousarray(X, dtype=np.float32), by="codes")


def refit_codebook(X: npt.NDArray[Any], spec: RefitSpec, parent: Quantizer | None) -> tuple[Quantizer, dict[str, Any]]:
    """The child of `parent` on X, and the record of how it was made (for the manifest):
    `spec.refit` "warm" (default) starts from the parent (psrq.warm) unless it cannot (another
    method or shape: the reason is recorded), and the drift guard compares it with the fresh fit
    of the same data (drift_reasons); a warm child too far behind, or `refit` "fresh", gives the
    fresh fit aligned to the parent. Without a parent: the fresh fit."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    record: dict[str, Any] = {"requested": spec.refit, "iters": spec.refit_iters, "margin": spec.refit_margin}
    if parent is None or spec.refit == "fresh":
        reason = "no parent version" if parent is None else "codebook.refit = fresh"
        return fresh_aligned(X, spec, parent), {**record, "taken": "fresh", "reason": reason}
    try:
        warm = warm_child(X, spec, parent)
    except ValueError as exc:  # psrq.warm.NotWarm, or a fit the data cannot carry
        log.warning("warm refit not possible (%s): fitting fresh and aligning", exc)
        return fresh_aligned(X, spec, parent), {**record, "taken": "fresh", "reason": str(exc)}
    fresh = fresh_aligned(X, spec, parent)
    q_warm, q_fresh = fit_quality(warm, X), fit_quality(fresh, X)
    reasons = drift_reasons(q_warm, q_fresh, spec.refit_max_drift, spec.refit_max_utilisation_drop)
    record.update(quality_warm=q_warm, quality_fresh=q_fresh)
    if reasons:
        log.warning("warm refit drifted (%s): taking the fresh fit", "; ".join(reasons))
        return fresh, {**record, "taken": "fresh", "reason": "drift guard: " + "; ".join(reasons)}
    return warm, {**record, "taken": "warm", "reason": None}
