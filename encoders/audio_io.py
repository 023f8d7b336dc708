"""Decoding audio into a mono float32 waveform at a target rate, with one-line reasons for bad input.

soundfile (libsndfile) reads wav, flac, ogg/vorbis and, from libsndfile 1.1, mp3. Anything it cannot
read falls back to librosa/audioread (ffmpeg or gstreamer when installed). Resampling uses soxr.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from encoders.base import one_line

log = logging.getLogger(__name__)

SILENCE_PEAK = 1e-4  # below this peak amplitude (about -80 dBFS) a track counts as silent
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".au", ".opus")


class AudioDecodeError(ValueError):
    """Audio that cannot become a usable waveform; str(error) is a one-line reason."""

    def __init__(self, reason: str) -> None:
        self.reason = one_line(reason)
        super().__init__(self.reason)


def _read_soundfile(source: str | io.BytesIO) -> tuple[np.ndarray, int]:
    import soundfile as sf

    data, sr = sf.read(source, dtype="float32", always_2d=True)
    return data, int(sr)


def _read_librosa(path: str) -> tuple[np.ndarray, int]:
    import librosa

    with warnings.catch_warnings():  # librosa warns before its audioread fallback; we report our own reason
        warnings.simplefilter("ignore")
        data, sr = librosa.load(path, sr=None, mono=False, dtype=np.float32)
    data = np.atleast_2d(data).T  # librosa gives [channels, frames]
    return data, int(sr)


def _decode(source: str | Path | bytes) -> tuple[np.ndarray, int]:
    errors: list[str] = []
    try:
        if isinstance(source, bytes):
            return _read_soundfile(io.BytesIO(source))
        return _read_soundfile(str(source))
    except Exception as exc:  # noqa: BLE001 - any reader failure means "try the next reader"
        errors.append(f"soundfile: {one_line(exc)}")
    try:
        if isinstance(source, bytes):
            with tempfile.NamedTemporaryFile(suffix=".audio", delete=False) as handle:
                handle.write(source)
                tmp_name = handle.name
            try:
                return _read_librosa(tmp_name)
            finally:
                os.unlink(tmp_name)
        return _read_librosa(str(source))
    except Exception as exc:  # noqa: BLE001
        errors.append(f"librosa: {one_line(exc) or type(exc).__name__}")
    raise AudioDecodeError("undecodable audio (" + "; ".join(errors) + ")")


def decode_audio(source: str | Path | bytes, target_sr: int, max_bytes: int = 50_000_000) -> np.ndarray:
    """Decode a file path or encoded bytes to a mono float32 waveform at `target_sr`.

    Raises AudioDecodeError for a missing file, zero-length or oversized input, undecodable data,
    no frames, NaN/Inf samples, or silence.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = bytes(source)
        size = len(source)
        what = "audio bytes"
    else:
        path = Path(source)
        if not path.exists():
            raise AudioDecodeError(f"file not found: {path}")
        if not path.is_file():
            raise AudioDecodeError(f"not a regular file: {path}")
        size = path.stat().st_size
        what = f"file {path.name}"
    if size == 0:
        raise AudioDecodeError(f"zero-length {what}")
    if size > max_bytes:
        raise AudioDecodeError(f"{what} is {size} bytes, over the limit of {max_bytes}")

    data, sr = _decode(source)
    if data.size == 0 or data.shape[0] == 0:
        raise AudioDecodeError(f"{what} decodes to no audio frames")
    if not np.isfinite(data).all():
        raise AudioDecodeError(f"{what} contains NaN or infinite samples")
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    peak = float(np.abs(mono).max())
    if peak < SILENCE_PEAK:
        raise AudioDecodeError(f"{what} is silent (peak amplitude {peak:.2e})")
    return resample(mono, sr, target_sr)


def resample(waveform: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """soxr (high quality) resampling to float32; a no-op when the rates match."""
    waveform = np.ascontiguousarray(waveform, dtype=np.float32)
    if orig_sr == target_sr:
        return waveform
    import soxr

    return np.asarray(soxr.resample(waveform, orig_sr, target_sr, quality="HQ"), dtype=np.float32)


def list_audio_files(paths: list[Path]) -> list[Path]:
    """Expand directories (recursively, known audio suffixes) and return a sorted list of files."""
    files: set[Path] = set()
    for path in paths:
        if path.is_dir():
            files.update(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        else:
            files.add(path)
    return sorted(files)
