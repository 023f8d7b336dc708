"""The demo catalog: Last.fm artists (text) and real recordings (audio), and fitting the
first codebook version from it. Shared by `sidstream demo` and `sidstream bench pipeline`.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sidstream.config import Settings
from sidstream.datasets.lastfm import item_text, load_items
from sidstream.registry import ArtifactVersion, Registry

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".ogg", ".wav", ".flac", ".mp3")


@dataclass(frozen=True)
class Track:
    track_id: str
    title: str | None
    artist: str | None
    album: str | None
    tags: tuple[str, ...]
    audio_path: Path | None = None
    preset_text: str | None = None  # sent as the record's `text`, overriding the template

    def metadata(self) -> dict[str, Any]:
        return {"title": self.title, "artist": self.artist, "album": self.album, "tags": list(self.tags), "text": self.preset_text}

    @property
    def text(self) -> str:
        """The text the text encoder sees for this track: the preset, else the template."""
        if self.preset_text:
            return self.preset_text
        from encoders import build_track_text

        return build_track_text(self.metadata())


def lastfm_tracks(folder: Path | None, limit: int | None = None) -> list[Track]:
    items = load_items(folder)
    if limit is not None:
        items = items.head(limit)
    # an artist's text is "<name>. Tags: t1, ..." throughout the project (docs: method.md §5)
    return [Track(r.item_id, None, r.name, None, tuple(r.tags), preset_text=item_text(r.name, list(r.tags))) for r in items.itertuples()]


def audio_tracks(folder: Path, limit: int | None = None) -> list[Track]:
    """Every audio file under `folder` (recursive, sorted) as a track with its file name as title."""
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    tracks = []
    for path in files[:limit]:
        slug = re.sub(r"[^a-z0-9]+", "-", path.stem.lower()).strip("-")
        tracks.append(Track(f"audio:{slug}", path.stem, None, None, ("game soundtrack",), path))
    return tracks


def _cache_key(parts: Sequence[str]) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def embed_texts_cached(settings: Settings, encoder: Any, texts: list[str]) -> np.ndarray:
    """Text embeddings of a catalog, cached on disk by (model id, texts)."""
    path = settings.cache_dir / "embeddings" / f"text-{_cache_key([encoder.model_id, *texts])}.npy"
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
    from encoders import decode_audio

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


def fit_catalog_codebooks(
    settings: Settings,
    text_X: np.ndarray,
    text_model_id: str,
    audio_X: np.ndarray | None = None,
    audio_text_X: np.ndarray | None = None,
    audio_model_id: str = "",
    promote: bool = True,
) -> ArtifactVersion:
    """Fit text / audio / joint codebooks (method and sizes from settings) and register them.

    Audio and joint codebooks are fitted on audio windows (and the owning track's text);
    their K is capped so that each code has on average >= 8 fit points.
    """
    from psrq import joint_embedding, make_quantizer, save_codebook_set

    cb = settings.codebook
    layers, K = cb.layers, cb.codebook_size
    text_q = make_quantizer(cb.method, codebook_sizes=[min(K, len(text_X) // 4)] * layers, seed=cb.seed, alpha=cb.alpha, **cb.options())
    text_q.fit(text_X)
    quantizers = {"text": text_q}
    if audio_X is not None and audio_text_X is not None and len(audio_X) >= 16:
        k_small = max(2, min(K, len(audio_X) // 8))
        audio_q = make_quantizer(cb.method, codebook_sizes=[k_small] * layers, seed=cb.seed, alpha=cb.alpha, **cb.options())
        audio_q.fit(audio_X)
        joint_q = make_quantizer(cb.method, codebook_sizes=[k_small] * layers, seed=cb.seed, alpha=cb.alpha, **cb.options())
        joint_q.fit(joint_embedding(audio_text_X, audio_X))
        quantizers.update(audio=audio_q, joint=joint_q)
    registry = Registry(settings.registry_dir)
    parent = registry.live("codebooks")

    def write(tmp: Path) -> dict[str, Any]:
        save_codebook_set(
            tmp,
            quantizers,
            manifests_extra={
                "encoder_model_ids": {"text": text_model_id, "audio": audio_model_id},
                "source": "catalog bootstrap (sidstream.catalog)",
            },
        )
        return {
            "modalities": sorted(quantizers),
            "method": cb.method,
            "layers": layers,
            "codebook_sizes": {m: list(q.codebook_sizes) for m, q in quantizers.items()},
            "alpha": cb.alpha,
            "options": cb.options(),
            "fit_rows": {"text": int(len(text_X)), "audio_windows": 0 if audio_X is None else int(len(audio_X))},
            "encoder_model_ids": {"text": text_model_id, "audio": audio_model_id},
            "parent_version": parent.version if parent else None,
        }

    version = registry.register("codebooks", write)
    if promote:
        registry.promote("codebooks", version.version)
    log.info("registered codebook version %s (%s)", version.version, ", ".join(sorted(quantizers)))
    return version
