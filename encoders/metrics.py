"""Throughput metrics for encoder workers (prometheus-client, default registry)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from prometheus_client import Counter, Histogram

ITEMS_ENCODED = Counter("sidstream_encoder_items_total", "items embedded", ["modality", "model_id"])
ITEMS_REJECTED = Counter("sidstream_encoder_rejected_total", "items refused as bad input", ["modality", "model_id"])
AUDIO_SECONDS = Counter("sidstream_encoder_audio_seconds_total", "seconds of audio embedded", ["model_id"])
BATCH_SECONDS = Histogram(
    "sidstream_encoder_batch_seconds", "wall time of one encode() call", ["modality", "model_id"],
    buckets=(0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100),
)


def encode_with_metrics(encoder: Any, batch: Sequence[Any], modality: str) -> np.ndarray:
    """encoder.encode(batch), counting items, audio seconds and batch time."""
    start = time.perf_counter()
    out = encoder.encode(batch)
    BATCH_SECONDS.labels(modality, encoder.model_id).observe(time.perf_counter() - start)
    ITEMS_ENCODED.labels(modality, encoder.model_id).inc(len(batch))
    if modality == "audio":
        AUDIO_SECONDS.labels(encoder.model_id).inc(sum(len(w) for w in batch) / encoder.sample_rate)
    return out


def count_rejected(modality: str, model_id: str, n: int = 1) -> None:
    ITEMS_REJECTED.labels(modality, model_id).inc(n)
