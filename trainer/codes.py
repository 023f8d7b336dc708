"""Codes of every catalog item per modality (text, audio, joint); fits go through psrq.fitting."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from psrq.fitting import fit_codebook_set, present_rows
from sidcore.config import CodebookSettings

log = logging.getLogger(__name__)


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


def encode_codes(codebooks: dict[str, Any], embeddings: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{modality: int64 [n, L]} semantic codes of every row; rows without the modality get -1.

    Only the semantic layers: the ranker embeds SID prefixes, never psrq_id's identity codes
    (a per-item code is an item ID again, which is what cold items lack)."""
    out = {}
    for modality, q in codebooks.items():
        if modality not in embeddings:
            continue
        X = embeddings[modality]
        have = present_rows(X)
        L = q.semantic_layers
        codes = np.full((X.shape[0], L), -1, dtype=np.int64)
        if have.any():
            codes[have] = q.encode(X[have])[:, :L]
        out[modality] = codes
    return out


def cached_codes(
    embeddings: dict[str, np.ndarray], config: CodebookSettings, cache_dir: Path | None
) -> tuple[dict[str, np.ndarray], dict[str, list[int]]]:
    """Fit + encode, cached on disk by (embeddings, config): returns (codes, codebook sizes)."""
    h = hashlib.sha256(json.dumps(config.model_dump(), sort_keys=True).encode())
    for modality in sorted(embeddings):
        h.update(modality.encode())
        h.update(np.ascontiguousarray(embeddings[modality]).tobytes())
    path = cache_dir / f"codes-{h.hexdigest()[:20]}.npz" if cache_dir else None
    if path is not None and path.is_file():
        with np.load(path) as z:
            codes = {k: z[k] for k in z.files}
        return codes, json.loads(path.with_suffix(".json").read_text())
    codebooks = fit_codebook_set(embeddings, config)
    codes = encode_codes(codebooks, embeddings)
    sizes = {m: q.semantic_sizes for m, q in codebooks.items()}
    if path is not None:  # sizes first, codes last, each by rename: a reader sees both or neither
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}")
        tmp.with_suffix(".json").write_text(json.dumps(sizes))
        tmp.with_suffix(".json").replace(path.with_suffix(".json"))
        with open(tmp.with_suffix(".npz"), "wb") as f:
            np.savez(f, **codes)
        tmp.with_suffix(".npz").replace(path)
    return codes, sizes
