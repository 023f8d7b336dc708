"""Fuzzing every decoder and batch function with hypothesis: whatever arrives, no batch
function raises, and every record is either an output or a dead letter with its own reason.
Example counts are capped (FUZZ below) so that CI stays fast."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from encoders import build_track_text, classify_text, decode_audio
from streams import avro_codec
from streams.codebooks import ActiveCodebooks
from streams.records import RawRecord, vector_to_bytes
from streams.roles.assigner import assign_batch
from streams.roles.audio import encode_audio_batch
from streams.roles.logger import decode_interactions
from streams.roles.text import encode_text_batch
from streams.roles.writer import decode_sid_batch

pytestmark = pytest.mark.unit
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class _TextEncoder:
    """Small typed boundary: the batch functions only need model_id, dim and encode."""

    model_id, dim = "fake-text", 4

    def encode(self, batch):
        return np.array([[len(t) % 7, 1.0, 0.5, 0.25] for t in batch], dtype=np.float32)


class _AudioEncoder:
    model_id, dim, sample_rate = "fake-audio", 3, 16000

    def encode(self, batch):
        return np.array([[float(np.abs(w).mean()), float(len(w)), 1.0] for w in batch], dtype=np.float32)


class _Q:
    def __init__(self, dim):
        self.dim, self.codebook_sizes = dim, (4, 4)


class _Codebooks:
    codebooks = {"text": _Q(4), "audio": _Q(3), "joint": _Q(7)}
    manifest = {"encoder_model_ids": {"text": "fake-text", "audio": "fake-audio"}}

    def encode(self, modality, X):
        return np.clip((np.nan_to_num(X[:, :2]) * 4).astype(np.int64), 0, 3)


def _raw(topic, value, offset=0, key=b"t"):
    return RawRecord(topic, 0, offset, key, value)


def _accounted(result, n, outputs_expected=None):
    """Every input is an output or a dead letter; every dead letter has a type and a reason."""
    assert len(result.outputs) + len(result.dead) == n
    for d in result.dead:
        assert d.error_type and d.reason and "\n" not in d.reason.strip()
        avro_codec.decode(d.encode("fuzz"), expected="DeadLetter")  # and it can be sent
    if outputs_expected is not None:
        assert len(result.outputs) == outputs_expected


def _meta(text, track="t"):
    return avro_codec.encode("TrackMetadata", {"track_id": track, "event_time": 1, "tags": [], "text": text, "ingest_time": 1})


garbage = st.one_of(st.none(), st.binary(max_size=300))
TOPICS = ["tracks.metadata", "tracks.audio", "embeddings.text", "sids.assigned", "interactions"]


@FUZZ
@given(st.lists(garbage, min_size=1, max_size=12))
def test_random_bytes_never_crash_any_batch_function(values):
    raws = [_raw("x", v, i) for i, v in enumerate(values)]
    active = ActiveCodebooks("v1", _Codebooks())
    _accounted(encode_text_batch(raws, _TextEncoder(), build_track_text, classify_text), len(raws))
    _accounted(encode_audio_batch(raws, _AudioEncoder(), decode_audio, 1_000_000, 1_000_000), len(raws))
    res = assign_batch(raws, {}, active, lambda t, a: np.concatenate([t, a], axis=1))
    assert len(res.dead) == len(raws)  # random bytes never decode as an Embedding
    rows, dead = decode_sid_batch(raws)
    assert len(rows) + len(dead) == len(raws)
    ok, dead = decode_interactions(raws)
    assert len(ok) + len(dead) == len(raws)


@FUZZ
@given(st.integers(min_value=0, max_value=200), st.sampled_from(["TrackMetadata", "SidAssigned", "Embedding"]))
def test_truncated_and_foreign_avro_is_undecodable_with_a_reason(cut, schema):
    full = {
        "TrackMetadata": _meta("a fine text"),
        "SidAssigned": avro_codec.encode("SidAssigned", {
            "track_id": "t", "event_time": 1, "codebook_version": "v", "text_sid": [1, 2], "audio_sid": None,
            "joint_sid": None, "modalities": ["text"], "text_model_id": "m", "audio_model_id": "", "ingest_time": 1}),
        "Embedding": avro_codec.encode("Embedding", {"track_id": "t", "event_time": 1, "modality": "text",
                                                     "model_id": "fake-text", "dim": 4, "vector": b"\0" * 16,
                                                     "ingest_time": 1}),
    }[schema]
    truncated = full[: min(cut, len(full) - 1)]
    wrong_fp = full[:2] + bytes(8) + full[10:]
    res = encode_text_batch([_raw("tracks.metadata", truncated), _raw("tracks.metadata", wrong_fp, 1)], _TextEncoder(),
                            build_track_text, classify_text)
    assert [d.error_type for d in res.dead] == ["undecodable", "undecodable"]
    assert "unknown writer schema fingerprint" in res.dead[1].reason


TEXT_CASES = {
    "": "empty_text",
    " \t\n ": "empty_text",
    "nul\x00inside": "nul_in_text",
    "x" * 5_000_000: "text_too_long",
}


@FUZZ
@given(st.sampled_from(sorted(TEXT_CASES)), st.text(min_size=1, max_size=40).filter(lambda s: s.strip() and "\x00" not in s))
def test_bad_texts_get_their_own_error_type_and_good_ones_pass(bad, good):
    try:
        good.encode("utf-8")
    except UnicodeEncodeError:
        good = "fine"
    raws = [_raw("tracks.metadata", _meta(bad, "bad")), _raw("tracks.metadata", _meta(good, "good"), 1)]
    res = encode_text_batch(raws, _TextEncoder(), build_track_text, classify_text)
    if bad == "":
        # an empty `text` field means "no preset": the template of the other fields is used, and it is empty
        assert [d.error_type for d in res.dead] == ["empty_text"]
    else:
        assert [d.error_type for d in res.dead] == [TEXT_CASES[bad]]
    _accounted(res, 2, outputs_expected=1)


def test_lone_surrogates_and_non_strings_are_classified():
    assert classify_text("bad \udcff byte")[0] == "bad_unicode"
    assert classify_text(b"bytes")[0] == "not_string"
    assert classify_text(None)[0] == "not_string"


def _emb_bytes(vec, dim=None, modality="text", model="fake-text"):
    v = np.asarray(vec, dtype=np.float32)
    return avro_codec.encode("Embedding", {"track_id": "t", "event_time": 1, "modality": modality, "model_id": model,
                                           "dim": len(v) if dim is None else dim, "vector": vector_to_bytes(v),
                                           "ingest_time": 1})


@FUZZ
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=0, max_size=9),
       st.integers(min_value=0, max_value=10))
def test_vectors_of_any_values_and_dims_are_assigned_or_dead_lettered(values, dim):
    raws = [_raw("embeddings.text", _emb_bytes(values, dim=dim))]
    res = assign_batch(raws, {}, ActiveCodebooks("v1", _Codebooks()), lambda t, a: np.concatenate([t, a], axis=1))
    _accounted(res, 1)
    finite = bool(np.isfinite(np.asarray(values, dtype=np.float32)).all())
    if len(values) == 4 and dim == 4 and finite:
        assert len(res.outputs) == 1
    elif len(values) != dim or len(values) != 4:
        assert res.dead[0].error_type == "wrong_dim"
    else:
        assert res.dead[0].error_type == "nan"


def test_huge_vectors_and_foreign_models_are_dead_lettered():
    active = ActiveCodebooks("v1", _Codebooks())
    huge = _raw("embeddings.text", _emb_bytes(np.full(1_000_000, 0.5)))
    other = _raw("embeddings.text", _emb_bytes([0.1, 0.2, 0.3, 0.4], model="someone-else"), 1)
    res = assign_batch([huge, other], {}, active, lambda t, a: np.concatenate([t, a], axis=1))
    assert [d.error_type for d in res.dead] == ["wrong_dim", "model_mismatch"]


def _audio(data=None, uri=None):
    return avro_codec.encode("TrackAudio", {"track_id": "a", "event_time": 1, "data": data, "uri": uri,
                                            "format": "wav", "ingest_time": 1})


@FUZZ
@given(st.binary(min_size=0, max_size=2000))
def test_broken_and_zero_length_audio_goes_to_the_dlq(data):
    raws = [_raw("tracks.audio", _audio(data=data)), _raw("tracks.audio", _audio(uri="s3://bucket/x.wav"), 1),
            _raw("tracks.audio", _audio(), 2), _raw("tracks.audio", _audio(uri="file:///no/such/file.wav"), 3)]
    res = encode_audio_batch(raws, _AudioEncoder(), decode_audio, 1_000_000, 1_000_000)
    _accounted(res, 4, outputs_expected=0)
    assert {d.error_type for d in res.dead} == {"bad_audio"}
    assert len({d.reason.split(":", 1)[1] for d in res.dead[1:]}) == 3  # each its own reason
