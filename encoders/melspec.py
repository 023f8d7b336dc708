"""A batched torch mel spectrogram that matches librosa.feature.melspectrogram (power 2,
Hann window, centred frames, Slaney mel filters; constant or reflect padding), plus musicnn's
log compression."""

from __future__ import annotations

import numpy as np
import torch


class MelSpectrogram(torch.nn.Module):
    """waveforms [b, samples] -> mel power [b, frames, n_mels] (time-major, as musicnn feeds it)."""

    def __init__(
        self, sample_rate: int = 16000, n_fft: int = 512, hop_length: int = 256, n_mels: int = 96,
        pad_mode: str = "constant",
    ) -> None:
        super().__init__()
        import librosa

        self.sample_rate, self.n_fft, self.hop_length, self.n_mels = sample_rate, n_fft, hop_length, n_mels
        self.pad_mode = pad_mode
        filters = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels)  # [n_mels, 1 + n_fft/2]
        self.register_buffer("mel_filters", torch.from_numpy(filters.T.astype(np.float32)), persistent=False)
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True), persistent=False)

    def n_frames(self, n_samples: int) -> int:
        return 1 + n_samples // self.hop_length

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        pad = self.n_fft // 2
        # librosa >= 0.10 centres frames with zero ("constant") padding; older librosa (musicnn's
        # training era) reflected the signal. Reflection needs more samples than the pad.
        mode = self.pad_mode if waveforms.shape[-1] > pad else "constant"
        padded = torch.nn.functional.pad(waveforms.unsqueeze(1), (pad, pad), mode=mode).squeeze(1)
        spec = torch.stft(
            padded, n_fft=self.n_fft, hop_length=self.hop_length, window=self.window,
            center=False, return_complex=True,
        )
        power = spec.real.square() + spec.imag.square()  # [b, freq, frames]
        return power.transpose(1, 2) @ self.mel_filters  # [b, frames, n_mels]


def log_compress(mel: torch.Tensor) -> torch.Tensor:
    """musicnn's 'logC' pre-processing: log10(10000 * mel + 1)."""
    return torch.log10(10000.0 * mel + 1.0)
