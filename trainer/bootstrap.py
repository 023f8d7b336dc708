"""The first codebook version of a fresh system: fitted from the catalog when none is live."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from encoders.catalog import audio_windows, embed_texts_cached, track_text
from encoders.configured import configured_audio_encoder, configured_text_encoder
from sidcore.catalog import Track, lastfm_tracks
from sidcore.config import Settings
from sidcore.registry import Registry
from trainer.jobs import bootstrap_codebooks

log = logging.getLogger(__name__)


def ensure_codebooks(settings: Settings, audio: list[Track], on_status: Callable[[str], Any] | None = None) -> str:
    """The live codebook version; if there is none, fit the first one from the catalog
    (the Last.fm texts and `audio`'s recordings), register and promote it."""
    live = Registry(settings.registry_dir).live("codebooks")
    if live is not None:
        return live.version
    if on_status is not None:
        on_status("fitting the first codebook version from the catalog (cached afterwards)...")
    e = settings.encoders
    te = configured_text_encoder(e)
    catalog = lastfm_tracks(settings.lastfm_source)
    text_X = embed_texts_cached(settings.cache_dir, te, [track_text(t) for t in catalog])
    audio_X = audio_text_X = None
    audio_model_id = ""
    paths = [t.audio_path for t in audio if t.audio_path]
    if paths:
        ae = configured_audio_encoder(e)
        audio_X, owners = audio_windows(paths, ae, e.audio_window_s, max_windows=8)
        audio_text_X = np.asarray(te.encode([track_text(audio[i]) for i in owners.tolist()]), dtype=np.float32)
        audio_model_id = ae.model_id
    version = bootstrap_codebooks(settings, text_X, te.model_id, audio_X, audio_text_X, audio_model_id)
    log.info("fitted codebook version %s on %d catalog texts", version.version, len(text_X))
    return version.version
