"""The workers' batch functions, without a broker. The codebook set and the encoders are small
typed boundaries here; the integration tests run the real ones."""

from __future__ import annotations

import numpy as np
import pytest

from encoders.text import classify_text
from streams import avro_codec
from streams.codebooks import ActiveCodebooks
from streams.records import RawRecord, vector_to_bytes
from streams.roles.assigner import assign_batch
from streams.roles.logger import decode_interactions, update_history
from streams.roles.text import encode_text_batch

pytestmark = pytest.mark.unit


class _Q:
    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.codebook_sizes = (4, 4)


class _Codebooks:
    """Codes = first two coordinates bucketed: deterministic and checkable."""

    def __init__(self) -> None:
        self.codebooks = {"text": _Q(3), "audio": _Q(2), "joint": _Q(5)}
        self.manifest: dict = {}
        self.calls: list[tuple[str, int]] = []

    def encode(self, modality: str, X: np.ndarray) -> np.ndarray:
        self.calls.append((modality, len(X)))
        return np.clip((X[:, :2] * 4).astype(np.int64), 0, 3)


def _emb(track: str, modality: str, vec, event_time: int = 100, offset: int = 0, dim: int | None = None) -> RawRecord:
    v = np.asarray(vec, dtype=np.float32)
    rec = {
        "track_id": track, "event_time": event_time, "modality": modality, "model_id": f"{modality}-model",
        "dim": len(v) if dim is None else dim, "vector": vector_to_bytes(v), "ingest_time": 1,
    }  # fmt: skip
    return RawRecord(f"embeddings.{modality}", 0, offset, track.encode(), avro_codec.encode("Embedding", rec))


def _sids(result):
    return {avro_codec.decode(v)[1]["track_id"]: avro_codec.decode(v)[1] for _, v in result.outputs}


def _joint(t, a):
    return np.concatenate([t, a], axis=1)


def test_text_first_then_audio_gives_joint_later():
    cb = _Codebooks()
    active = ActiveCodebooks("v1", cb)
    state: dict = {}
    r1 = assign_batch([_emb("a", "text", [0.1, 0.6, 0.0]), _emb("b", "text", [0.9, 0.3, 0.0], offset=1)], state, active, _joint)
    out1 = _sids(r1)
    assert out1["a"]["text_sid"] == [0, 2] and out1["a"]["joint_sid"] is None and out1["a"]["modalities"] == ["text"]
    assert cb.calls == [("text", 2)]  # one vectorised call per modality per batch
    r2 = assign_batch([_emb("a", "audio", [0.5, 0.5], event_time=100)], state, active, _joint)
    out2 = _sids(r2)["a"]
    assert out2["modalities"] == ["text", "audio"]
    assert out2["text_sid"] == [0, 2] and out2["audio_sid"] == [2, 2] and out2["joint_sid"] == [0, 2]
    assert out2["event_time"] > out1["a"]["event_time"]  # the fuller record is newer


def test_replay_is_identical_and_older_versions_do_not_win():
    active = ActiveCodebooks("v1", _Codebooks())
    state: dict = {}
    batch = [_emb("a", "text", [0.1, 0.6, 0.0], event_time=200)]
    first = assign_batch(batch, state, active, _joint).outputs
    again = assign_batch(batch, state, active, _joint).outputs
    assert first == again
    stale = assign_batch([_emb("a", "text", [0.9, 0.9, 0.0], event_time=100)], state, active, _joint)
    assert stale.outputs == [] and stale.dead == []


def test_bad_embeddings_go_to_dead_letters_and_others_pass():
    active = ActiveCodebooks("v1", _Codebooks())
    records = [
        RawRecord("embeddings.text", 0, 0, b"x", b"\x00garbage"),
        _emb("wrongdim", "text", [0.1, 0.2, 0.3, 0.4]),
        _emb("lying", "text", [0.1, 0.2, 0.3], dim=4),
        _emb("nan", "text", [np.nan, 0.2, 0.3]),
        _emb("ok", "text", [0.1, 0.2, 0.3]),
    ]
    res = assign_batch(records, {}, active, _joint)
    assert [d.error_type for d in res.dead] == ["undecodable", "wrong_dim", "wrong_dim", "nan"]
    assert all(d.reason for d in res.dead)
    assert list(_sids(res)) == ["ok"]
    dl = avro_codec.decode(res.dead[0].encode("assigner"))[1]
    assert dl["original"] == b"\x00garbage" and dl["source_topic"] == "embeddings.text"


class _TextEncoder:
    model_id = "test-text"
    dim = 3

    def __init__(self) -> None:
        self.batches: list[int] = []

    def encode(self, batch):
        self.batches.append(len(batch))
        out = np.ones((len(batch), 3), dtype=np.float32)
        out[[i for i, t in enumerate(batch) if "poison" in t]] = np.nan
        return out


def test_text_batch_one_call_and_dead_letters():
    def meta(track, **kw):
        rec = {"track_id": track, "event_time": 5, "ingest_time": 5, **kw}
        return RawRecord("tracks.metadata", 1, 7, track.encode(), avro_codec.encode("TrackMetadata", rec))

    enc = _TextEncoder()
    records = [meta("a", artist="Björk", tags=["pop"]), meta("b", text="   "), meta("c", text="poison pill"), RawRecord("tracks.metadata", 1, 9, None, None)]
    res = encode_text_batch(records, enc, lambda m: f"{m['artist']} {m['tags']}", classify_text)
    assert enc.batches == [2]
    assert sorted(d.error_type for d in res.dead) == ["empty_text", "nan", "undecodable"]
    (key, value), = res.outputs
    rec = avro_codec.decode(value, expected="Embedding")[1]
    assert key == b"a" and rec["dim"] == 3 and rec["model_id"] == "test-text"


def test_history_keeps_last_20_positives_in_time_order_and_ignores_replays():
    h = None
    for t in range(25):
        h = update_history(h, {"label": 1, "event_time": 1000 - t, "track_id": f"t{t}"})
    h = update_history(h, {"label": 0, "event_time": 5000, "track_id": "neg"})
    assert len(h) == 20 and [e[0] for e in h] == sorted(e[0] for e in h)
    assert h[-1] == [1000, "t0"] and "neg" not in {e[1] for e in h}
    assert update_history(h, {"label": 1, "event_time": 1000, "track_id": "t0"}) == h


def test_interactions_bad_label_and_undecodable():
    good = avro_codec.encode("Interaction", {"user_id": "u", "track_id": "t", "event_time": 1, "label": 1})
    bad = avro_codec.encode("Interaction", {"user_id": "u", "track_id": "t", "event_time": 1, "label": 7})
    ok, dead = decode_interactions([RawRecord("interactions", 0, i, b"u", v) for i, v in enumerate([good, bad, b"zz"])])
    assert len(ok) == 1 and [d.error_type for d in dead] == ["bad_label", "undecodable"]


def test_audio_uri_is_percent_decoded_and_other_schemes_rejected():
    from streams.roles.audio import audio_source as _audio_source

    assert _audio_source({"uri": "file:///music/A%20New%20Journey.ogg", "data": None}, 10) == "/music/A New Journey.ogg"
    with pytest.raises(ValueError, match="unsupported audio URI"):
        _audio_source({"uri": "s3://bucket/x.ogg", "data": None}, 10)
    with pytest.raises(ValueError, match="exceeds"):
        _audio_source({"uri": None, "data": b"x" * 11}, 10)


def test_embedding_from_another_model_than_the_codebook_is_rejected():
    cb = _Codebooks()
    cb.manifest = {"encoder_model_ids": {"text": "text-model", "audio": "other-audio-model"}}
    res = assign_batch([_emb("a", "text", [0.1, 0.2, 0.3]), _emb("b", "audio", [0.1, 0.2])], {}, ActiveCodebooks("v1", cb), _joint)
    assert [d.error_type for d in res.dead] == ["model_mismatch"] and list(_sids(res)) == ["a"]


def test_a_late_older_positive_still_replaces_the_stored_history():
    """Feast keeps only newer rows: the history row's time must grow with every change."""
    from streams.roles.logger import history_version

    def pos(track, t):
        return {"user_id": "u", "track_id": track, "event_time": t, "label": 1}

    h1 = history_version(None, pos("a", 1_000))
    h2 = history_version(h1, pos("b", 2_000))
    late = history_version(h2, pos("c", 1_500))  # older than the newest positive, arriving last
    assert [t for _, t in late["items"]] == ["a", "c", "b"]
    assert late["written_ms"] > h2["written_ms"] >= 2_000
    assert history_version(late, pos("c", 1_500)) is None  # a replay changes nothing
    assert history_version(late, {**pos("d", 3_000), "label": 0}) is None  # negatives are not history
