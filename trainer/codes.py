"""Fit one codebook per modality (text, audio, joint) and look up every catalog item's SIDs."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CodebookConfig:
    """Quantizer settings shared by every modality of one codebook version."""

    method: str = "psrq"
    codebook_size: int = 64
    layers: int = 3
    alpha: float = 1.0
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def sizes(self) -> list[int]:
        return [self.codebook_size] * self.layers

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def with_joint(embeddings: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Add the joint modality [l2(text) ⊕ l2(audio)] when both exist (NaN where either is missing).

    With one modality the joint embedding would equal it, so no joint entry is made (see
    trainer.models.mcca: the one codebook then also plays the joint role).
    """
    out = dict(embeddings)
    if "text" in embeddings and "audio" in embeddings and "joint" not in embeddings:
        from psrq import joint_embedding

        T, A = embeddings["text"], embeddings["audio"]
        have = ~np.isnan(T).any(axis=1) & ~np.isnan(A).any(axis=1)
        J = np.full((T.shape[0], T.shape[1] + A.shape[1]), np.nan, dtype=np.float32)
        if have.any():
            J[have] = joint_embedding(T[have], A[have])
        out["joint"] = J
    return out


def present_rows(X: np.ndarray) -> np.ndarray:
    return ~np.isnan(X).any(axis=1)


def fit_codebooks(embeddings: dict[str, np.ndarray], config: CodebookConfig) -> dict[str, Any]:
    """{modality: fitted quantizer} on each modality's present rows (K capped at the row count)."""
    from psrq import make_quantizer

    fitted = {}
    for modality, X in embeddings.items():
        rows = X[present_rows(X)]
        if rows.shape[0] < 2:
            log.warning("%s: %d items with embeddings; no codebook", modality, rows.shape[0])
            continue
        sizes = [min(k, rows.shape[0]) for k in config.sizes]
        q = make_quantizer(config.method, sizes, seed=config.seed, alpha=config.alpha, **config.options)
        q.fit(rows)
        fitted[modality] = q
    return fitted


def encode_codes(codebooks: dict[str, Any], embeddings: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{modality: int64 [n, L]} SIDs of every row; rows without the modality get -1."""
    out = {}
    for modality, q in codebooks.items():
        if modality not in embeddings:
            continue
        X = embeddings[modality]
        have = present_rows(X)
        codes = np.full((X.shape[0], len(q.codebook_sizes)), -1, dtype=np.int64)
        if have.any():
            codes[have] = q.encode(X[have])
        out[modality] = codes
    return out


def cached_codes(
    embeddings: dict[str, np.ndarray], config: CodebookConfig, cache_dir: Path | None
) -> tuple[dict[str, np.ndarray], dict[str, list[int]]]:
    """Fit + encode, cached on disk by (embeddings, config): returns (codes, codebook sizes)."""
    h = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode())
    for modality in sorted(embeddings):
        h.update(modality.encode())
        h.update(np.ascontiguousarray(embeddings[modality]).tobytes())
    path = cache_dir / f"codes-{h.hexdigest()[:20]}.npz" if cache_dir else None
    if path is not None and path.is_file():
        with np.load(path) as z:
            codes = {k: z[k] for k in z.files}
        return codes, json.loads(path.with_suffix(".json").read_text())
    codebooks = fit_codebooks(embeddings, config)
    codes = encode_codes(codebooks, embeddings)
    sizes = {m: list(q.codebook_sizes) for m, q in codebooks.items()}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **codes)
        path.with_suffix(".json").write_text(json.dumps(sizes))
    return codes, sizes
