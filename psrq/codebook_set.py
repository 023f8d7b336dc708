"""A codebook version: per-modality codebooks (text, audio, joint; any subset) in one directory.

    <dir>/manifest.json        kind "codebook_set", modalities, created_at, caller's extra keys
    <dir>/<modality>/          one codebook artifact each (psrq.artifact)
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from psrq.artifact import FORMAT_VERSION, MANIFEST, load_codebook, read_manifest, save_codebook
from psrq.base import F32, I64, Quantizer

MODALITIES = ("text", "audio", "joint")
JOINT_NORMALISATION = "l2(text) ⊕ l2(audio), no projection"


@dataclass(frozen=True)
class CodebookSet:
    """The codebooks of one version, by modality, with the set's manifest."""

    codebooks: dict[str, Quantizer]
    manifest: dict[str, Any]
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def modalities(self) -> list[str]:
        return sorted(self.codebooks)

    def encode(self, modality: str, X: Any) -> I64:
        """Semantic IDs int64 [n, L] of X under the modality's codebook."""
        q = self.codebooks.get(modality)
        if q is None:
            raise ValueError(f"no {modality!r} codebook in this set (has {self.modalities})")
        return q.encode(X)


def joint_embedding(text_X: Any, audio_X: Any) -> F32:
    """[l2(text) ⊕ l2(audio)] float32 [n, d_t + d_a]: each side row-normalised, no projection.

    Zero rows stay zero (no division by zero); NaN rows stay NaN so that encode rejects them.
    """
    T = np.asarray(text_X, dtype=np.float32)
    A = np.asarray(audio_X, dtype=np.float32)
    if T.ndim == 1:
        T = T[None, :]
    if A.ndim == 1:
        A = A[None, :]
    if T.ndim != 2 or A.ndim != 2 or T.shape[0] != A.shape[0]:
        raise ValueError(f"text and audio must be [n, d] with the same n, got {T.shape} and {A.shape}")

    def l2(M: F32) -> F32:
        norms = np.linalg.norm(M, axis=1, keepdims=True)
        return (M / np.where(norms > 0, norms, 1.0)).astype(np.float32)

    return np.ascontiguousarray(np.concatenate([l2(T), l2(A)], axis=1), dtype=np.float32)


def save_codebook_set(
    out_dir: str | Path,
    codebooks: dict[str, Quantizer],
    manifests_extra: dict[str, Any] | None = None,
    fit_data: dict[str, Any] | None = None,
    metrics: dict[str, dict[str, Any]] | None = None,
    parent: Any = None,
) -> dict[str, Any]:
    """Write the codebooks of one version; returns the set manifest.

    `manifests_extra` is stored in the set manifest; its `encoder_model_ids` (by modality) and
    `normalisation` (str or by modality) also go into each codebook's own manifest.
    """
    if not codebooks:
        raise ValueError("a codebook set needs at least one codebook")
    unknown = sorted(set(codebooks) - set(MODALITIES))
    if unknown:
        raise ValueError(f"unknown modalities {unknown}; expected a subset of {list(MODALITIES)}")
    extra = dict(manifests_extra or {})
    model_ids: dict[str, str] = dict(extra.get("encoder_model_ids") or {})
    norm = extra.get("normalisation", "as produced by the encoder")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for modality, q in codebooks.items():
        ids: dict[str, str] = {m: model_ids[m] for m in (("text", "audio") if modality == "joint" else (modality,)) if m in model_ids}
        if modality == "joint":
            normalisation = JOINT_NORMALISATION
        else:
            normalisation = str(norm.get(modality, "as produced by the encoder") if isinstance(norm, dict) else norm)
        save_codebook(
            q,
            out / modality,
            normalisation=normalisation,
            encoder_model_ids=ids,
            fit_data=(fit_data or {}).get(modality),
            parent=None if parent is None else (Path(parent) / modality if not isinstance(parent, dict) else parent),
            metrics=(metrics or {}).get(modality),
        )
    manifest: dict[str, Any] = {
        **extra,
        "format_version": FORMAT_VERSION,
        "kind": "codebook_set",
        "modalities": sorted(codebooks),
        "methods": {m: q.method for m, q in codebooks.items()},
        "dims": {m: q.dim for m, q in codebooks.items()},
        "codebook_sizes": {m: list(q.codebook_sizes) for m, q in codebooks.items()},
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "parent": None if parent is None else str(parent),
    }
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, out / MANIFEST)
    return manifest


def load_codebook_set(path: str | Path) -> CodebookSet:
    """Every codebook of a version directory (the set manifest names them)."""
    path = Path(path)
    manifest = read_manifest(path)
    if manifest.get("kind") != "codebook_set":
        raise ValueError(f"{path} is not a codebook set (kind {manifest.get('kind')!r})")
    codebooks: dict[str, Quantizer] = {}
    manifests: dict[str, dict[str, Any]] = {}
    for modality in manifest["modalities"]:
        codebooks[modality], manifests[modality] = load_codebook(path / modality)
    return CodebookSet(codebooks, manifest, manifests)
