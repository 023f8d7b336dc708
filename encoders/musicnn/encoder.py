"""musicnn behind the audio encoder protocol: musicnn's own input pipeline, per-patch outputs
averaged over a window, windows averaged over a track.

Input pipeline (musicnn/extractor.py): 16 kHz mono; mel power spectrogram, n_fft 512, hop 256,
96 Slaney mel bands, centred frames (reflect padding, as librosa < 0.10 did when musicnn was
trained); cast to float16 (musicnn does this); log10(10000 * x + 1); non-overlapping patches of
187 frames (about 3 s), a partial last patch dropped; a window shorter than one patch is
repeat-padded ('pad_short': 'repeat-pad' in the training config).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from encoders.audio import AudioEncoder, mean_by_owner
from encoders.melspec import MelSpectrogram, log_compress
from encoders.musicnn.model import N_FRAMES, N_MELS
from encoders.musicnn.weights import DEFAULT_CACHE_DIR, load_musicnn

log = logging.getLogger(__name__)

OUTPUTS = ("penultimate", "max_pool", "mean_pool", "tags")
FLOAT16_MAX = 65504.0


class MusicnnEncoder(AudioEncoder):
    """Embeddings ('penultimate' 200-d by default; 'max_pool'/'mean_pool' 753-d) and 50 tag
    probabilities from the ported musicnn."""

    sample_rate = 16000

    def __init__(
        self, variant: str = "MSD_musicnn", *, output: str = "penultimate", device: torch.device | None = None,
        window_s: float = 10.0, max_windows: int | None = 6, window_batch: int = 16,
        cache_dir: Path = DEFAULT_CACHE_DIR, pipeline: str = "auto",
    ) -> None:
        if output not in OUTPUTS:
            raise ValueError(f"unknown musicnn output {output!r}; use one of {OUTPUTS}")
        super().__init__(window_s=window_s, max_windows=max_windows, window_batch=window_batch, pipeline=pipeline)
        self.device = device or torch.device("cpu")
        model, self.labels, weights_sha = load_musicnn(variant, cache_dir)
        self.model = model.to(self.device)
        self.melspec = MelSpectrogram(self.sample_rate, 512, 256, N_MELS, pad_mode="reflect").to(self.device)
        self.variant = variant
        self.output = output
        self.dim = {"penultimate": model.dense.out_features, "tags": len(self.labels)}.get(output, model.pooled_features)
        self._weights_sha = weights_sha
        self.model_id = f"musicnn:{variant}:{output}@{weights_sha[:12]}"

    def patches(self, windows: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Log-mel patches [b * p, 187, 96] of equal-length windows [b, samples], and p."""
        mel = self.melspec(windows.to(self.device, non_blocking=True))
        logmel = log_compress(mel.clamp(max=FLOAT16_MAX).half().float())
        frames = logmel.shape[1]
        if frames < N_FRAMES:
            logmel = logmel.repeat(1, -(-N_FRAMES // frames), 1)
            frames = logmel.shape[1]
        per_window = frames // N_FRAMES
        logmel = logmel[:, : per_window * N_FRAMES]
        return logmel.reshape(-1, N_FRAMES, N_MELS), per_window

    def embed_windows(self, windows: torch.Tensor) -> torch.Tensor:
        patches, per_window = self.patches(windows)
        out = self.model(patches)[self.output]
        return out.reshape(windows.shape[0], per_window, -1).mean(dim=1)

    def with_output(self, output: str) -> MusicnnEncoder:
        """The same network (shared weights) reporting another output."""
        if output not in OUTPUTS:
            raise ValueError(f"unknown musicnn output {output!r}; use one of {OUTPUTS}")
        clone = copy.copy(self)
        clone.output = output
        clone.dim = {"penultimate": self.model.dense.out_features, "tags": len(self.labels)}.get(
            output, self.model.pooled_features)
        clone.model_id = f"musicnn:{self.variant}:{output}@{self._weights_sha[:12]}"
        return clone

    def predict_tags(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        """Tag probabilities [n, 50]: the mean over a track's patches (musicnn's taggram mean)."""
        per_window, owners = self.with_output("tags").encode_windows(waveforms)
        return mean_by_owner(per_window, owners, len(waveforms))

    def top_tags(self, waveforms: Sequence[np.ndarray], k: int = 5) -> list[list[tuple[str, float]]]:
        probs = self.predict_tags(waveforms)
        return [[(self.labels[j], float(row[j])) for j in np.argsort(-row, kind="stable")[:k]] for row in probs]
