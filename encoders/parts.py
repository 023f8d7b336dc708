"""Encoders run the way a worker runs them: as parts of a batch on one thread each
(`ThreadsBySize`), with the audio window micro-batch shared between parts, and the slow-encoder
fault drill (`drill`)."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch


class SlowedEncoder:
    """Fault drill: while `flag` exists, each encode takes (the factor in it) times as long."""

    def __init__(self, inner: Any, flag: Path) -> None:
        self._inner, self._flag = inner, flag

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def encode(self, batch: Any) -> Any:
        started = time.perf_counter()
        out = self._inner.encode(batch)
        try:
            factor = float(self._flag.read_text().strip() or "10")
        except (FileNotFoundError, ValueError):
            return out
        time.sleep((factor - 1.0) * (time.perf_counter() - started))
        return out


MIN_PART = 8  # a backlog's batch is cut into parts of at least this many items (one per core at most)


class ThreadsBySize:
    """A CPU encoder whose batches run as parts, each on one torch thread, joined in order.

    A small batch (a trickle: latency) is cut into `few` parts; a batch of `busy_batch` items or
    more (a backlog: throughput) into one part per core, at least MIN_PART items each. torch's
    intra-op threads would meet at a barrier after every operator (~60 per MiniLM forward): on a
    host whose other processes take a core now and then, one preempted thread stalls them all
    (spinning), and the encoders' p99 jumped (docs/results/pipeline.md). Parts meet once, at the join.
    64 Last.fm texts per batch on 2 cores, MiniLM: 222 texts/s intra-op, 244 as 2 parts; with a
    process busy 30 % of a core beside them 174 vs 212, 60 %: 152 vs 198. Rows do not depend on
    the batch they are in (tested). An encoder on an accelerator is passed through unchanged.
    """

    def __init__(self, inner: Any, few: int, busy_batch: int, cores: int | None = None) -> None:
        self._inner, self._few, self._busy_batch = inner, few, busy_batch
        self._all = cores or os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="encode-part") if self.workers > 1 else None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @property
    def workers(self) -> int:
        """The most parts that run at once."""
        return max(self._few, self._all)

    def parts(self, n: int) -> int:
        """How many parts a batch of n items is cut into."""
        if n >= self._busy_batch:
            return max(1, min(self._all, n // MIN_PART))
        return max(1, min(self._few, n))

    def encode(self, batch: Any) -> Any:
        parts = self.parts(len(batch))
        if parts == 1 or self._pool is None:
            return self._encode_part(batch)
        bounds = np.linspace(0, len(batch), parts + 1).astype(int)
        futures = [self._pool.submit(self._encode_part, batch[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        return np.concatenate([f.result() for f in futures])

    def _encode_part(self, part: Any) -> Any:
        if torch.get_num_threads() != 1:
            torch.set_num_threads(1)  # this thread's own OpenMP setting
        return self._inner.encode(part)


def threads_by_size(encoder: Any, few: int | None, busy_batch: int) -> Any:
    """`encoder` run as ThreadsBySize parts when it runs on the CPU and `few` is set, else itself."""
    device = getattr(encoder, "device", None)
    on_cpu = device is None or getattr(device, "type", str(device)) == "cpu"
    return ThreadsBySize(encoder, few, busy_batch) if few is not None and on_cpu else encoder


def share_window_batch(audio: Any, wrapped: Any) -> Any:
    """`wrapped` (the audio encoder as the worker calls it). When it runs as ThreadsBySize parts,
    the parts' window micro-batches run at once, so each gets window_batch / parts windows: the
    peak activation memory stays one micro-batch's. musicnn, 16 tracks of 120 s on 2 cores: whole
    on 2 intra-op threads 64.9 windowed audio-s/s at 1,844 MB peak RSS; 2 parts of 16 windows
    70.9 at 2,781 MB; 2 parts of 8 windows 69.3 at 1,863 MB."""
    if isinstance(wrapped, ThreadsBySize) and wrapped.workers > 1:
        audio.window_batch = max(1, audio.window_batch // wrapped.workers)
    return wrapped


def drill(encoder: Any, flag: Path | None) -> Any:
    """`encoder`, slowed while `flag` exists when a flag file is configured (settings.stream.slowdown_file)."""
    return encoder if flag is None else SlowedEncoder(encoder, flag)
