"""Audio decoding, bad-input reasons, windowing and the log-mel baseline encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from encoders import AudioDecodeError, EncoderInputError, decode_audio, load_audio_encoder, split_windows

pytestmark = pytest.mark.unit

AUDIO_DIR = Path("/usr/share/games/singularity/music")
needs_music = pytest.mark.skipif(
    not AUDIO_DIR.is_dir(), reason=f"{AUDIO_DIR} absent: apt-get install singularity-music"
)
SR = 16000


def _tone(seconds: float, sr: int = SR, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    mono = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return mono if channels == 1 else np.stack([mono] * channels, axis=1)


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG", "MP3"])
def test_decode_formats_mono_and_resample(tmp_path, fmt):
    import soundfile as sf

    path = tmp_path / f"tone.{fmt.lower()}"
    sf.write(path, _tone(2.0, sr=44100, channels=2), 44100, format=fmt)
    wave = decode_audio(path, target_sr=SR)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - 2 * SR) < 0.02 * SR  # mp3 adds encoder padding
    from_bytes = decode_audio(path.read_bytes(), target_sr=SR)
    np.testing.assert_array_equal(wave, from_bytes)


def test_decode_resample_keeps_pitch(tmp_path):
    import soundfile as sf

    path = tmp_path / "a440.wav"
    sf.write(path, _tone(1.0, sr=44100), 44100)
    wave = decode_audio(path, target_sr=SR)
    peak_hz = np.argmax(np.abs(np.fft.rfft(wave))) * SR / len(wave)
    assert abs(peak_hz - 440) < 2


def _write_bad(tmp_path: Path, kind: str) -> Path:
    import soundfile as sf

    path = tmp_path / f"{kind}.wav"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "corrupt":
        path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(range(256)) * 4)
    elif kind == "silent":
        sf.write(path, np.zeros(SR, dtype=np.float32), SR)
    elif kind == "nan":
        data = _tone(0.5)
        data[100] = np.nan
        sf.write(path, data, SR, subtype="FLOAT")
    elif kind == "noframes":
        sf.write(path, np.zeros(0, dtype=np.float32), SR)
    elif kind == "truncated_ogg":
        sf.write(tmp_path / "full.ogg", _tone(2.0), SR, format="OGG")
        path = tmp_path / "truncated.ogg"
        path.write_bytes((tmp_path / "full.ogg").read_bytes()[:200])
    return path


@pytest.mark.parametrize(
    ("kind", "fragment"),
    [("empty", "zero-length"), ("corrupt", "undecodable"), ("silent", "silent"), ("nan", "NaN"),
     ("noframes", "no audio frames"), ("truncated_ogg", "")],
)
def test_decode_bad_inputs(tmp_path, kind, fragment):
    path = _write_bad(tmp_path, kind)
    with pytest.raises(AudioDecodeError) as info:
        decode_audio(path, target_sr=SR)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_decode_missing_and_oversized(tmp_path):
    with pytest.raises(AudioDecodeError, match="file not found"):
        decode_audio(tmp_path / "missing.wav", SR)
    with pytest.raises(AudioDecodeError, match="not a regular file"):
        decode_audio(tmp_path, SR)
    import soundfile as sf

    path = tmp_path / "big.wav"
    sf.write(path, _tone(1.0), SR)
    with pytest.raises(AudioDecodeError, match="over the limit of 1000"):
        decode_audio(path, SR, max_bytes=1000)
    with pytest.raises(AudioDecodeError, match="over the limit"):
        decode_audio(path.read_bytes(), SR, max_bytes=1000)
    with pytest.raises(AudioDecodeError, match="zero-length audio bytes"):
        decode_audio(b"", SR)


def test_split_windows():
    wave = np.arange(100, dtype=np.float32)
    assert [len(w) for w in split_windows(wave, 200, 6)] == [100]
    windows = split_windows(wave, 30, 3)
    assert [int(w[0]) for w in windows] == [0, 35, 70] and all(len(w) == 30 for w in windows)
    assert int(split_windows(wave, 30, 1)[0][0]) == 35  # one window: the centre
    assert len(split_windows(wave, 30, None)) == 4


@pytest.fixture(scope="module")
def logmel():
    return load_audio_encoder("logmel", sample_rate=SR, window_s=10.0, max_windows=6)


def test_logmel_shapes_norm_determinism(logmel):
    assert logmel.dim == 192 and logmel.sample_rate == SR and logmel.model_id.startswith("logmel")
    waves = [_tone(25.0), _tone(0.3, freq=1000), np.random.default_rng(0).standard_normal(SR * 3).astype(np.float32)]
    out = logmel.encode(waves)
    assert out.shape == (3, 192) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(out, logmel.encode(waves))
    # loudness-invariant shape part: a quieter copy of a tone stays close
    quiet = logmel.encode([_tone(5.0) * 0.5, _tone(5.0)])
    assert float(quiet[0] @ quiet[1]) > 0.95


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [(np.zeros(0, np.float32), "empty"), (np.zeros((2, 100), np.float32), "mono"),
     (np.array([0.1, np.nan], np.float32), "NaN"), ([0.1, 0.2], "numpy")],
)
def test_audio_encode_rejects_bad_waveforms(logmel, bad, fragment):
    with pytest.raises(EncoderInputError, match=fragment):
        logmel.encode([_tone(1.0), bad])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_finite_check_matches_isfinite(dtype):
    """The sum-of-squares shortcut in validate_waveform gives np.isfinite(w).all() exactly: a NaN,
    +inf or -inf anywhere fails; huge finite samples whose squares overflow still pass (the
    shortcut falls back to the full check); integer waveforms pass."""
    from encoders.audio import _all_finite, validate_waveform

    rng = np.random.default_rng(0)
    wave = rng.standard_normal(50_000).astype(dtype)
    assert _all_finite(wave) and validate_waveform(wave) is None
    for bad in (np.nan, np.inf, -np.inf):
        for where in (0, 12_345, -1):
            broken = wave.copy()
            broken[where] = bad
            assert not _all_finite(broken)
            assert validate_waveform(broken) == "waveform contains NaN or infinite samples"
    huge = np.full(1000, np.finfo(dtype).max / 2, dtype=dtype)
    assert not np.isfinite(np.dot(huge, huge)) and _all_finite(huge)
    assert _all_finite(wave[::3])  # strided views too
    assert _all_finite(np.arange(10, dtype=np.int16))


def test_stacked_windows_equal_numpy_stack(logmel):
    waves = [_tone(25.0), _tone(12.0, freq=220), _tone(3.0)]
    windows, owners = logmel.windows_of(waves)
    groups = logmel.window_groups(windows)
    assert sorted(i for g in groups for i in g) == list(range(len(windows)))
    for chunk, stacked in logmel.micro_batches(windows):
        np.testing.assert_array_equal(stacked.numpy(), np.stack([windows[i] for i in chunk]))
        assert stacked.dtype.is_floating_point and not stacked.is_pinned()  # pinned only for CUDA


def test_unknown_spec():
    with pytest.raises(ValueError, match="unknown audio encoder"):
        load_audio_encoder("nonexistent-model")


@needs_music
def test_real_recordings_decode_and_embed(logmel):
    files = sorted(AUDIO_DIR.glob("*.ogg"))[:2]
    assert files, f"no .ogg files in {AUDIO_DIR}"
    waves = [decode_audio(f, SR) for f in files]
    assert all(len(w) > 60 * SR for w in waves)  # the game's tracks are several minutes long
    out = logmel.encode(waves)
    assert out.shape == (2, 192)
    assert float(out[0] @ out[1]) < 0.999  # different tracks, different embeddings
