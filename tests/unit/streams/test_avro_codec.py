import pytest

from streams import avro_codec

pytestmark = pytest.mark.unit


def _meta(**kw):
    return {"track_id": "t1", "event_time": 1_700_000_000_000, "tags": ["rock"], "ingest_time": 5, **kw}


def test_round_trip_fills_defaults_and_keeps_values():
    data = avro_codec.encode("TrackMetadata", _meta(title="Song", lyrics="la la"))
    name, rec = avro_codec.decode(data, expected="TrackMetadata")
    assert name == "TrackMetadata"
    assert rec["title"] == "Song" and rec["lyrics"] == "la la" and rec["artist"] is None
    assert rec["schema_version"] == 1 and rec["tags"] == ["rock"]


def test_header_is_spec_single_object_encoding():
    data = avro_codec.encode("TrackMetadata", _meta())
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == avro_codec.fingerprint("TrackMetadata")


def test_fingerprint_matches_spec_reference_value():
    # the Avro spec's CRC-64-AVRO of the schema "int" is 0x7275d51a3f395c8f, written little-endian
    import avro.schema

    assert avro.schema.parse('"int"').fingerprint("CRC-64-AVRO") == (0x7275D51A3F395C8F).to_bytes(8, "little")


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "too short"),
        (b"\x00not avro at all", "bad marker"),
        (b"\xc3\x01" + b"\x00" * 8 + b"x", "unknown writer schema"),
    ],
)
def test_bad_bytes_give_a_reason(data, reason):
    with pytest.raises(avro_codec.DecodeError, match=reason):
        avro_codec.decode(data)


def test_truncated_and_trailing_bytes_are_rejected():
    data = avro_codec.encode("TrackMetadata", _meta(title="x" * 50))
    with pytest.raises(avro_codec.DecodeError, match="corrupt"):
        avro_codec.decode(data[:-20])
    with pytest.raises(avro_codec.DecodeError, match="trailing"):
        avro_codec.decode(data + b"\x00")


def test_wrong_schema_is_rejected_when_expected():
    data = avro_codec.encode("Interaction", {"user_id": "u", "track_id": "t", "event_time": 1, "label": 1})
    with pytest.raises(avro_codec.DecodeError, match="expected a TrackMetadata"):
        avro_codec.decode(data, expected="TrackMetadata")


def test_nonconforming_record_raises_value_error():
    with pytest.raises(ValueError, match="does not match"):
        avro_codec.encode("TrackMetadata", {"track_id": 3, "event_time": 1, "ingest_time": 1})


def test_every_schema_carries_the_contract_fields():
    import json

    for name in avro_codec.schema_names():
        fields = {f["name"] for f in json.loads(avro_codec.schema_json(name))["fields"]}
        assert {"event_time", "schema_version"} <= fields, name
