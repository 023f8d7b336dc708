"""Text and audio encoders behind one protocol: `model_id`, `dim`, `encode(batch) -> float32 [n, dim]`.

Heavy modules (transformers, the musicnn port, HF audio) are imported only when a loader needs them.
"""

from encoders.audio import AudioEncoder, LogMelEncoder, split_windows, validate_waveform
from encoders.audio_io import AudioDecodeError, decode_audio
from encoders.audio_loader import load_audio_encoder
from encoders.base import Encoder, EncoderInputError, l2_normalise
from encoders.text import TextEncoder, build_track_text, classify_text, load_text_encoder, validate_text

__all__ = [
    "AudioDecodeError",
    "AudioEncoder",
    "Encoder",
    "EncoderInputError",
    "LogMelEncoder",
    "TextEncoder",
    "build_track_text",
    "classify_text",
    "decode_audio",
    "l2_normalise",
    "load_audio_encoder",
    "load_text_encoder",
    "split_windows",
    "validate_text",
    "validate_waveform",
]
