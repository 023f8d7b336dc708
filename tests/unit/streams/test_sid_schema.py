"""One SID schema: the track_sids FeatureView in feature_repo/ is the source. The writer's feature
lists and the offline log's Arrow schema derive from it (streams.sinks.schema), and the Avro record
of sids.assigned must carry every SID field of it, with matching types."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from streams import avro_codec
from streams.sinks.schema import HISTORY_VIEW, SID_VIEW, view_spec
from streams.sinks.writer import SidRow, UserHistoryRow, _history_columns, _sid_columns

pytestmark = pytest.mark.unit

# track_sids fields the writer derives from a SidAssigned record rather than copying one field
DERIVED = {"text_sid_str": "text_sid", "audio_sid_str": "audio_sid", "joint_sid_str": "joint_sid",
           "modalities": "modalities", "sid_event_time_ms": "event_time", "sid_text_offset": "text_offset",
           "sid_audio_offset": "audio_offset"}
_AVRO_TO_ARROW = {"string": pa.string(), "long": pa.int64(), "int": pa.int64()}


def _avro_type(t: object) -> pa.DataType:
    if isinstance(t, list):  # ["null", X]: optional
        (inner,) = [x for x in t if x != "null"]
        return _avro_type(inner)
    if isinstance(t, dict) and t["type"] == "array":
        return pa.list_(_avro_type(t["items"]))
    return _AVRO_TO_ARROW[t]  # type: ignore[index]


def test_the_avro_sid_record_carries_every_field_of_the_view() -> None:
    avro = {f["name"]: f["type"] for f in json.loads(avro_codec.schema_json("SidAssigned"))["fields"]}
    spec = view_spec(SID_VIEW)
    schema = spec.schema
    for key in spec.join_keys:
        assert _avro_type(avro[key]) == schema.field(key).type, key
    for name in spec.features:
        source = DERIVED.get(name, name)
        assert source in avro, f"track_sids.{name} has no source field in SidAssigned"
        if name not in DERIVED:  # copied: SID codes are Avro int, stored int64
            assert _avro_type(avro[name]) == schema.field(name).type, name


def test_the_writer_builds_exactly_the_views_columns() -> None:
    for name, columns, row in (
        (SID_VIEW, _sid_columns, SidRow("t", 5, "v1", (1, 2), None, (3,), "m", "")),
        (HISTORY_VIEW, _history_columns, UserHistoryRow("u", 7, ("a", "b"))),
    ):
        built = columns([row])
        spec = view_spec(name)
        assert [c if c != "event_time_ms" else "event_time" for c in built] == spec.schema.names, name
        assert set(spec.offline_key) <= set(built) and spec.time_feature in spec.features


def test_a_view_without_its_time_feature_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import streams.sinks.schema as schema

    view_spec.cache_clear()
    monkeypatch.setattr(schema, "_TIME_FEATURES", {**schema._TIME_FEATURES, SID_VIEW: "no_such_feature"})
    try:
        with pytest.raises(ValueError, match="no no_such_feature feature"):
            view_spec(SID_VIEW)
    finally:
        view_spec.cache_clear()
