"""Encoders as the settings describe them (one place that maps EncoderSettings to loaders)."""

from __future__ import annotations

from typing import Any

from sidcore.config import EncoderSettings


def configured_text_encoder(e: EncoderSettings) -> Any:
    from encoders.text import load_text_encoder

    return load_text_encoder(e.text_model_dir, device=e.device, dtype=e.dtype, max_length=e.max_length,
                             token_budget=e.token_budget, pipeline=e.pipeline, pipeline_bucket=e.pipeline_bucket)


def configured_audio_encoder(e: EncoderSettings) -> Any:
    from encoders.audio_loader import load_audio_encoder

    return load_audio_encoder(e.audio_model, sample_rate=e.sample_rate, window_s=e.audio_window_s,
                              max_windows=e.audio_max_windows, device=e.device, dtype=e.dtype,
                              pipeline=e.pipeline)
