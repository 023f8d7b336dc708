"""Catalog-level encoding: a track's text, cached catalog text embeddings, and embeddings of
fixed-length windows of recordings (codebook fit points)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from encoders.audio_io import decode_audio
from encoders.text import build_track_text
from sidcore.catalog import Track


def track_text(track: Track) -> str:
    """The text the text encoder sees for a track: its preset text, else the template."""
    return track.preset_text or build_track_text(track.metadata())


def _cache_key(parts: Sequence[str]) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def embed_texts_cached(cache_dir: Path, encoder: Any, texts: list[str]) -> np.ndarray:
    """Text embeddings of a catalog, cached under cache_dir by (model id, texts)."""
    path = Path(cache_dir) / "embeddings" / f"text-{_cache_key([encoder.model_id, *texts])}.npy"
    if path.is_file():
        return np.load(path)
    X = np.asarray(encoder.encode(texts), dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, X)
    return X


def audio_windows(paths: list[Path], encoder: Any, window_s: float, max_windows: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of fixed-length windows of each recording (more fit points than tracks).

    Returns (embeddings [m, d], owner index into `paths` [m]).
    """
    sr = int(getattr(encoder, "sample_rate", 16000))
    win = int(window_s * sr)
    chunks, owners = [], []
    for i, p in enumerate(paths):
        wave = decode_audio(p, sr)
        n = max(1, min(max_windows, len(wave) // win))
        for j in range(n):
            chunk = wave[j * win : (j + 1) * win]
            if len(chunk) >= sr and np.abs(chunk).max() > 1e-4:
                chunks.append(chunk)
                owners.append(i)
    if not chunks:
        raise ValueError("no usable audio windows")
    X = np.asarray(encoder.encode(chunks), dtype=np.float32)
    return X, np.asarray(owners)
