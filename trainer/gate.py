"""The promotion gate: a refitted codebook set goes live only if it can serve everything the
live set serves, with the same encoders and dimensions, and is healthy enough.

Thresholds are settings (`codebook.gate_*`); a refused candidate stays registered, and the
refusal with its reasons is logged in the registry's EVENTS.jsonl. `--force` overrides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from psrq.fitting import present_rows
from psrq.health import cosine_rows, sid_collisions
from sidcore.config import CodebookSettings


@dataclass
class GateResult:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": self.reasons, "metrics": self.metrics}


def health(q: Any, X: np.ndarray) -> dict[str, Any]:
    """What the gate looks at, on the fit data: utilisation per layer, collision rate, reconstruction."""
    codes = q.encode(X)
    used = [float(len(np.unique(codes[:, layer])) / k) for layer, k in enumerate(q.codebook_sizes)]
    recon = float(np.mean(cosine_rows(X, q.decode(codes))))
    return {**sid_collisions(codes), "utilisation_per_layer": used, "recon_cosine": recon}


def check(
    candidate: dict[str, Any], candidate_model_ids: dict[str, str], live: Any | None,
    fit_data: dict[str, np.ndarray] | None, settings: CodebookSettings,
) -> GateResult:
    """Gate `candidate` ({modality: quantizer}) against the live CodebookSet (None: first version).
    Without fit data (a manual promotion) only coverage, encoders and dims are checked."""
    result = GateResult(passed=True)
    if live is not None:
        missing = sorted(set(live.codebooks) - set(candidate))
        if missing:
            result.reasons.append(f"does not cover modalities the live set {live.manifest.get('version', '')} serves: "
                                  f"{', '.join(missing)}")
        live_ids = live.manifest.get("encoder_model_ids") or {}
        for modality in sorted(set(live.codebooks) & set(candidate)):
            if candidate[modality].dim != live.codebooks[modality].dim:
                result.reasons.append(f"{modality}: dim {candidate[modality].dim} != live {live.codebooks[modality].dim}")
            base = "text" if modality == "text" else "audio"
            want, got = live_ids.get(base), candidate_model_ids.get(base)
            if modality != "joint" and want != got:
                result.reasons.append(f"{modality}: encoder {got!r} != live encoder {want!r}")
    for modality, q in sorted(candidate.items()):
        if fit_data is None or modality not in fit_data:
            continue
        X = fit_data[modality][present_rows(fit_data[modality])]
        h = health(q, X)
        result.metrics[modality] = h
        if min(h["utilisation_per_layer"]) < settings.gate_min_utilisation:
            result.reasons.append(f"{modality}: a layer uses {min(h['utilisation_per_layer']):.3f} of its codes "
                                  f"< gate_min_utilisation {settings.gate_min_utilisation}")
        if h["collision_rate"] > settings.gate_max_collision_rate:
            result.reasons.append(f"{modality}: collision rate {h['collision_rate']:.3f} > gate_max_collision_rate "
                                  f"{settings.gate_max_collision_rate}")
        if h["recon_cosine"] < settings.gate_min_recon_cosine:
            result.reasons.append(f"{modality}: reconstruction cosine {h['recon_cosine']:.3f} < gate_min_recon_cosine "
                                  f"{settings.gate_min_recon_cosine}")
    result.passed = not result.reasons
    return result
