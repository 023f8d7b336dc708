"""The audio encoder role: tracks.audio (TrackAudio) -> embeddings.audio (Embedding).

Audio comes as a file:// URI (or a plain path) or inline bytes, within size limits; a record that
does not decode, whose audio cannot be read, or that makes the model throw is dead-lettered alone."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np

from encoders import decode_audio
from streams.event_time import DEFAULT_POLICY, TimePolicy
from streams.records import BatchResult, RawRecord
from streams.roles.encoding import BatchEncoder, Prepared, encode_records
from streams.runtime import RoleHandler, Runtime


def encode_audio_batch(records: Sequence[RawRecord], encoder: BatchEncoder, decode: Callable[..., np.ndarray],
                       max_inline_bytes: int, max_file_bytes: int, policy: TimePolicy = DEFAULT_POLICY) -> BatchResult:
    """tracks.audio records -> embeddings.audio records. Audio comes as file:// URI or inline bytes."""
    def prepare(rec: dict[str, Any]) -> Prepared:
        try:
            return decode(audio_source(rec, max_inline_bytes), encoder_sample_rate(encoder), max_file_bytes), None
        except Exception as exc:  # noqa: BLE001 - every failure of one item goes to the DLQ
            return None, ("bad_audio", str(exc))

    return encode_records(records, "TrackAudio", "undecodable audio record", prepare, encoder, "audio", policy)


def encoder_sample_rate(encoder: Any) -> int:
    return int(getattr(encoder, "sample_rate", 16000))


def audio_source(rec: dict[str, Any], max_inline_bytes: int) -> str | bytes:
    """What decode_audio reads for a TrackAudio record: its inline bytes or its file's path."""
    if rec.get("data") is not None:
        if len(rec["data"]) > max_inline_bytes:
            raise ValueError(f"inline audio of {len(rec['data'])} bytes exceeds the {max_inline_bytes}-byte limit")
        return bytes(rec["data"])
    uri = rec.get("uri")
    if not uri:
        raise ValueError("audio record has neither uri nor data")
    if uri.startswith("file://"):
        return url2pathname(urlparse(uri).path)  # file:///a%20b.ogg -> /a b.ogg
    if "://" in uri:
        raise ValueError(f"unsupported audio URI scheme in {uri!r} (file:// or inline bytes)")
    return str(uri)


class AudioRole(RoleHandler):
    role = "audio"

    def __init__(self, encoder: BatchEncoder, max_inline_bytes: int, max_file_bytes: int,
                 policy: TimePolicy = DEFAULT_POLICY) -> None:
        self.encoder, self.max_inline_bytes, self.max_file_bytes = encoder, max_inline_bytes, max_file_bytes
        self.policy = policy

    async def process(self, rt: Runtime, raws: list[RawRecord]) -> BatchResult:
        result: BatchResult = await rt.blocking(self.role, encode_audio_batch, raws, self.encoder, decode_audio,
                                                self.max_inline_bytes, self.max_file_bytes, self.policy)
        return result
