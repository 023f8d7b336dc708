"""Audio encoders: the shared windowing protocol, the log-mel statistics baseline, and the loader.

A track longer than one window is cut into at most `max_windows` windows spread evenly over it
(first to last, or the centre one when only one fits); the track's embedding is the mean of its
window embeddings, L2-normalised. Shorter tracks are one window of their own length.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch

from encoders.base import EncoderInputError, l2_normalise
from encoders.melspec import MelSpectrogram, log_compress
from encoders.pipeline import pinned, prefetch, use_pipeline

log = logging.getLogger(__name__)


def validate_waveform(waveform: object) -> str | None:
    """None if `waveform` is a usable mono waveform, else a one-line reason."""
    if not isinstance(waveform, np.ndarray):
        return f"waveform is not a numpy array (got {type(waveform).__name__})"
    if waveform.ndim != 1:
        return f"waveform must be mono 1-D, got shape {waveform.shape}"
    if waveform.size == 0:
        return "empty waveform"
    if not _all_finite(waveform):
        return "waveform contains NaN or infinite samples"
    return None


def _all_finite(waveform: np.ndarray) -> bool:
    """np.isfinite(waveform).all() at half its cost for float waveforms: a NaN or an infinity
    anywhere makes the sum of squares non-finite, and only when that sum is not finite (which
    huge finite samples can also cause, by overflow) is every sample checked. No temporary
    array of the track's length (np.isfinite makes one)."""
    if waveform.dtype.kind == "f" and waveform.ndim == 1 and np.isfinite(np.dot(waveform, waveform)):
        return True
    return bool(np.isfinite(waveform).all())


def split_windows(waveform: np.ndarray, window_len: int, max_windows: int | None) -> list[np.ndarray]:
    """Windows of `window_len` samples spread evenly over the track (see the module docstring)."""
    total = len(waveform)
    if window_len <= 0 or total <= window_len:
        return [waveform]
    count = math.ceil(total / window_len)
    if max_windows is not None and max_windows > 0:
        count = min(count, max_windows)
    if count == 1:
        starts = [(total - window_len) // 2]
    else:
        starts = np.linspace(0, total - window_len, count).round().astype(int).tolist()
    return [waveform[s : s + window_len] for s in starts]


class AudioEncoder:
    """Base of every audio encoder: windowing, micro-batching of windows, mean pooling, L2.

    Subclasses set model_id, dim and sample_rate and implement `embed_windows`; those running on
    an accelerator set `device`. With the pipeline on (`pipeline`: 'auto' = on an accelerator),
    the next micro-batch is stacked into pinned memory in a background thread while the current
    one runs, and window embeddings stay on the device until one copy back.
    """

    model_id: str
    dim: int
    sample_rate: int
    device: torch.device = torch.device("cpu")

    def __init__(self, *, window_s: float = 10.0, max_windows: int | None = 6, window_batch: int = 16,
                 pipeline: str = "auto") -> None:
        self.window_s = window_s
        self.max_windows = max_windows
        self.window_batch = window_batch
        self.pipeline = pipeline

    @property
    def window_len(self) -> int:
        return int(round(self.window_s * self.sample_rate))

    def embed_windows(self, windows: torch.Tensor) -> torch.Tensor:
        """Equal-length windows [b, samples] (float32, CPU) -> embeddings [b, dim]."""
        raise NotImplementedError

    # the pipelined path's two halves; their composition must equal embed_windows
    def prepare_windows(self, windows: torch.Tensor) -> object:
        """Host-side front-end of stacked windows, run in the background thread (default: the
        windows themselves, which stack_windows has already put in pinned memory for CUDA; the
        device-side front-end stays in embed_prepared)."""
        return pinned(windows, self.device)  # no copy when already pinned

    def embed_prepared(self, prepared: object) -> torch.Tensor:
        """Embeddings [b, dim] of what prepare_windows returned, left on the model's device."""
        return self.embed_windows(prepared)  # type: ignore[arg-type]

    def windows_of(self, waveforms: Sequence[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
        """All windows of a batch and, for each window, the index of its track."""
        windows: list[np.ndarray] = []
        owners: list[int] = []
        for index, waveform in enumerate(waveforms):
            reason = validate_waveform(waveform)
            if reason is not None:
                raise EncoderInputError(reason, index)
            parts = split_windows(np.asarray(waveform, dtype=np.float32), self.window_len, self.max_windows)
            windows.extend(parts)
            owners.extend([index] * len(parts))
        return windows, np.asarray(owners, dtype=np.int64)

    def window_groups(self, windows: list[np.ndarray]) -> list[list[int]]:
        """Indices of equal-length windows, longest first, at most `window_batch` per group."""
        by_length: dict[int, list[int]] = {}
        for i, window in enumerate(windows):
            by_length.setdefault(len(window), []).append(i)
        groups = []
        for length in sorted(by_length, reverse=True):
            members = by_length[length]
            groups.extend(members[start : start + self.window_batch] for start in range(0, len(members), self.window_batch))
        return groups

    def micro_batches(self, windows: list[np.ndarray]) -> list[tuple[list[int], torch.Tensor]]:
        """Group equal-length windows into stacked tensors of at most `window_batch` rows."""
        return [(chunk, self.stack_windows(windows, chunk)) for chunk in self.window_groups(windows)]

    def stack_windows(self, windows: list[np.ndarray], chunk: list[int]) -> torch.Tensor:
        """windows[chunk] (equal lengths) as one float32 tensor [len(chunk), samples]. Bound for
        CUDA, the rows are copied straight into page-locked memory from the host allocator's
        cache: one copy of the audio, where stacking and then pinning made two."""
        out = torch.empty((len(chunk), len(windows[chunk[0]])), dtype=torch.float32,
                          pin_memory=self.device.type == "cuda")
        np.stack([windows[i] for i in chunk], out=out.numpy())
        return out

    @torch.inference_mode()
    def encode_windows(self, waveforms: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Per-window embeddings [m, dim] (not normalised) and their track indices [m]."""
        windows, owners = self.windows_of(waveforms)
        out = np.zeros((len(windows), self.dim), dtype=np.float32)
        if use_pipeline(self.pipeline, self.device):
            return self._encode_windows_pipelined(windows, out), owners
        for chunk, stacked in self.micro_batches(windows):
            out[chunk] = self.embed_windows(stacked).float().cpu().numpy()
        return out, owners

    def _encode_windows_pipelined(self, windows: list[np.ndarray], out: np.ndarray) -> np.ndarray:
        def prepare(chunk: list[int]) -> tuple[list[int], object]:
            return chunk, self.prepare_windows(self.stack_windows(windows, chunk))

        rows: list[torch.Tensor] = []
        indices: list[int] = []
        for chunk, prepared in prefetch(prepare, self.window_groups(windows)):
            # embed_prepared copies to the device itself (non-blocking from pinned memory); no
            # .cpu() per batch, so the host queues the next batch while this one runs
            rows.append(self.embed_prepared(prepared).float())
            indices.extend(chunk)
        if rows:
            out[indices] = torch.cat(rows).cpu().numpy()
        return out

    def encode(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        """Embed mono waveforms at self.sample_rate; float32 [n, dim], L2-normalised."""
        per_window, owners = self.encode_windows(waveforms)
        return l2_normalise(mean_by_owner(per_window, owners, len(waveforms)))


def mean_by_owner(values: np.ndarray, owners: np.ndarray, n: int) -> np.ndarray:
    """Mean of the rows of `values` grouped by `owners` (0..n-1)."""
    sums = np.zeros((n, values.shape[1]), dtype=np.float64)
    np.add.at(sums, owners, values)
    counts = np.bincount(owners, minlength=n).clip(min=1)
    return (sums / counts[:, None]).astype(np.float32)


class LogMelEncoder(AudioEncoder):
    """Deterministic baseline without learned weights: per log-mel band, the time mean (with the
    track's average level removed, so loudness does not dominate) and the time standard deviation."""

    def __init__(
        self, *, sample_rate: int = 16000, n_mels: int = 96, n_fft: int = 512, hop_length: int = 256,
        window_s: float = 10.0, max_windows: int | None = 6, window_batch: int = 16, pipeline: str = "auto",
    ) -> None:
        super().__init__(window_s=window_s, max_windows=max_windows, window_batch=window_batch, pipeline=pipeline)
        self.sample_rate = sample_rate
        self.n_mels = n_mels
        self.dim = 2 * n_mels
        self.melspec = MelSpectrogram(sample_rate, n_fft, hop_length, n_mels)
        self.model_id = f"logmel-stats:sr{sample_rate}:mels{n_mels}:fft{n_fft}:hop{hop_length}"

    def embed_windows(self, windows: torch.Tensor) -> torch.Tensor:
        logmel = log_compress(self.melspec(windows))  # [b, frames, mels]
        mean = logmel.mean(dim=1)
        std = logmel.std(dim=1, unbiased=False)
        return torch.cat([mean - mean.mean(dim=1, keepdim=True), std], dim=1)
