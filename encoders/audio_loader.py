"""`load_audio_encoder`: an audio encoder from a spec. The factory lives apart from the encoders
it builds (encoders.audio's LogMelEncoder, the musicnn port, HF audio models), so none of them
imports it and the package has no import circle."""

from __future__ import annotations

from pathlib import Path

from encoders.audio import AudioEncoder, LogMelEncoder
from encoders.base import resolve_device, resolve_dtype
from encoders.musicnn import MusicnnEncoder


def load_audio_encoder(
    spec: str = "logmel",
    *,
    sample_rate: int = 16000,
    window_s: float = 10.0,
    max_windows: int | None = 6,
    device: str = "cpu",
    dtype: str = "float32",
    window_batch: int = 16,
    layer: int | str = "last",
    time_pooling: str = "mean",
    trust_remote_code: bool = False,
    pipeline: str = "auto",
) -> AudioEncoder:
    """Build an audio encoder from a spec: 'logmel', 'musicnn' / 'musicnn:<MSD_musicnn|MTT_musicnn>',
    or the path of a Hugging Face audio model directory (MERT style).

    `sample_rate` applies to 'logmel'; musicnn runs at 16 kHz and HF models at their feature
    extractor's rate (read `encoder.sample_rate` and decode audio at that rate).
    """
    if spec == "logmel":
        return LogMelEncoder(
            sample_rate=sample_rate, window_s=window_s, max_windows=max_windows, window_batch=window_batch,
            pipeline=pipeline,
        )
    if spec == "musicnn" or spec.startswith("musicnn:"):
        variant = spec.split(":", 1)[1] if ":" in spec else "MSD_musicnn"
        torch_device = resolve_device(device)
        return MusicnnEncoder(
            variant, device=torch_device, window_s=window_s, max_windows=max_windows, window_batch=window_batch,
            pipeline=pipeline,
        )
    path = Path(spec).expanduser()
    if path.is_dir():
        from encoders.hf_audio import HFAudioEncoder  # lazy: transformers costs seconds to import

        torch_device = resolve_device(device)
        return HFAudioEncoder.from_dir(
            path, device=torch_device, dtype=resolve_dtype(dtype, torch_device), layer=layer,
            time_pooling=time_pooling, window_s=window_s, max_windows=max_windows,
            window_batch=window_batch, trust_remote_code=trust_remote_code, pipeline=pipeline,
        )
    raise ValueError(f"unknown audio encoder {spec!r}: use 'logmel', 'musicnn[:variant]' or a model directory")
