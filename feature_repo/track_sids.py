"""Semantic IDs per (track, codebook version): pushed by the Feast writer and by backfills; per key
the newest event time wins. Readers ask for the live version (the registry's LIVE pointer)."""

from datetime import timedelta

from entities import codebook, track
from feast import FeatureView, Field, FileSource, PushSource
from feast.types import Array, Int64, String

# Offline: a directory of Parquet part files, one per writer flush (appended, never rewritten).
track_sids_file = FileSource(
    name="track_sids_file",
    path="data/offline/track_sids",
    timestamp_field="event_time",
    description="Append-only Parquet log of every SID row the writer flushed.",
)

track_sids_push = PushSource(name="track_sids_push", batch_source=track_sids_file)

track_sids = FeatureView(
    name="track_sids",
    entities=[track, codebook],
    ttl=timedelta(0),  # SIDs do not expire; readers move to a new version when it goes live
    schema=[
        Field(name="text_sid", dtype=Array(Int64)),
        Field(name="audio_sid", dtype=Array(Int64)),
        Field(name="joint_sid", dtype=Array(Int64)),
        Field(name="text_sid_str", dtype=String, description='"12-3-45"; empty when the modality is absent'),
        Field(name="audio_sid_str", dtype=String),
        Field(name="joint_sid_str", dtype=String),
        Field(name="modalities", dtype=String, description='present modalities, e.g. "text,audio"'),
        Field(name="text_model_id", dtype=String),
        Field(name="audio_model_id", dtype=String),
        # the row's event time to the millisecond: Feast's SQLite store keeps whole seconds only
        Field(name="sid_event_time_ms", dtype=Int64, description="event time of this row, epoch ms"),
        # between rows of equal event time the later source record wins (its offset in its partition)
        Field(name="sid_text_offset", dtype=Int64, description="source offset of the text used; -1 unknown"),
        Field(name="sid_audio_offset", dtype=Int64, description="source offset of the audio used; -1 unknown or none"),
    ],
    source=track_sids_push,
    online=True,
    description="Text, audio and joint semantic IDs of a track under one codebook version.",
)
