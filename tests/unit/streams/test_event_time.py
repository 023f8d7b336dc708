"""The event-time policy at the edge (streams.event_time), through the roles' batch functions:
out-of-range times are `bad_event_time` dead letters and the rest of the batch goes on; a time
stored before the policy never wins against a valid record; nothing is dropped without a count.
Fuzzed over the whole int64 range of event and ingest times."""

from __future__ import annotations

import io

import avro.io
import avro.schema
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidcore.config import StreamSettings
from streams import avro_codec
from streams.assign import code_tracks
from streams.avro_codec import SCHEMA_DIR
from streams.codebooks import ActiveCodebooks
from streams.event_time import BAD_EVENT_TIME, DEFAULT_POLICY, MAX_SAFE_MS, TimePolicy
from streams.records import BatchResult, RawRecord, vector_to_bytes
from streams.roles.assigner import assign_batch
from streams.roles.logger import decode_interactions, history_version
from streams.roles.text import encode_text_batch
from streams.roles.writer import decode_sid_batch
from tests.unit.streams.test_roles import _Codebooks, _joint, _sids

pytestmark = pytest.mark.unit

NOW = 1_765_000_000_000  # a record timestamp (2025-12)
YEAR_2100 = 4_102_444_800_000
ABSURD = [0, -1, YEAR_2100, 10**16, 2**63 - 1, -(2**63)]
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class _Encoder:
    model_id, dim = "fake-text", 3

    def encode(self, batch: list[str]) -> np.ndarray:
        return np.ones((len(batch), 3), dtype=np.float32)


def _meta(track: str, event_time: int, offset: int = 0, ingest_time: int = NOW, ts: int | None = NOW) -> RawRecord:
    value = avro_codec.encode("TrackMetadata", {"track_id": track, "event_time": event_time, "text": f"{track}. Tags: pop",
                                                "ingest_time": ingest_time})
    return RawRecord("tracks.metadata", 0, offset, track.encode(), value, ts)


def _emb(track: str, modality: str, vec: list[float], event_time: int, offset: int = 0, ts: int | None = NOW,
         ingest_time: int = NOW) -> RawRecord:
    v = np.asarray(vec, dtype=np.float32)
    rec = {"track_id": track, "event_time": event_time, "modality": modality, "model_id": f"{modality}-model",
           "dim": len(v), "vector": vector_to_bytes(v), "ingest_time": ingest_time}
    return RawRecord(f"embeddings.{modality}", 0, offset, track.encode(), avro_codec.encode("Embedding", rec), ts)


def _interaction(user: str, event_time: int, offset: int = 0, ts: int | None = NOW) -> RawRecord:
    value = avro_codec.encode("Interaction", {"user_id": user, "track_id": "t", "event_time": event_time, "label": 1})
    return RawRecord("interactions", 0, offset, user.encode(), value, ts)


def test_the_default_policy_is_the_settings_default() -> None:
    assert TimePolicy.from_settings(StreamSettings()) == DEFAULT_POLICY
    assert DEFAULT_POLICY.min_event_time_ms == 1 and DEFAULT_POLICY.max_event_time_ms == MAX_SAFE_MS


@pytest.mark.parametrize("event_time", ABSURD)
def test_absurd_times_are_refused_with_the_value_and_the_bounds(event_time: int) -> None:
    why = DEFAULT_POLICY.problem(RawRecord("t", 0, 0, None, None, NOW), event_time)
    assert why is not None and str(event_time) in why and str(NOW + 3_600_000) in why


def test_the_bound_is_the_records_timestamp_not_the_wall_clock() -> None:
    """A replay decides the same way: the same record, the same answer, whenever it is read."""
    old = RawRecord("t", 0, 0, None, None, 1_000_000_000_000)  # a record from 2001
    assert DEFAULT_POLICY.problem(old, 1_000_000_000_000 + 3_600_000) is None
    assert DEFAULT_POLICY.problem(old, NOW) is not None  # now is far in that record's future
    untimed = RawRecord("t", 0, 0, None, None, None)  # no Kafka timestamp: only max_event_time_ms holds
    assert DEFAULT_POLICY.problem(untimed, YEAR_2100) is None and DEFAULT_POLICY.problem(untimed, 2**53) is not None


def test_bad_times_are_dead_letters_and_the_rest_of_the_batch_goes_on() -> None:
    records = [_meta("good-1", NOW, 0)] + [_meta(f"bad-{i}", t, i + 1) for i, t in enumerate(ABSURD)] + [_meta("good-2", NOW - 5, 9)]
    res = encode_text_batch(records, _Encoder())
    assert sorted(avro_codec.decode(v)[1]["track_id"] for _, v in res.outputs) == ["good-1", "good-2"]
    assert [d.error_type for d in res.dead] == [BAD_EVENT_TIME] * len(ABSURD)
    assert all(d.track_id and d.track_id.startswith("bad-") and "outside [1," in d.reason for d in res.dead)


def test_int64_edges_on_both_modalities_cost_only_their_track() -> None:
    """2^63 - 1 on a track's text and audio once overflowed the SID's time and failed the batch."""
    active = ActiveCodebooks("v1", _Codebooks())
    records = [_emb("edge", "text", [0.1, 0.2, 0.3], 2**63 - 1, 0), _emb("edge", "audio", [0.1, 0.2], 2**63 - 1, 1),
               _emb("ok", "text", [0.5, 0.5, 0.5], NOW, 2), _emb("ok", "audio", [0.5, 0.5], NOW, 3)]
    res = assign_batch(records, {}, active, _joint)
    assert list(_sids(res)) == ["ok"] and _sids(res)["ok"]["event_time"] == NOW + 1
    assert [d.error_type for d in res.dead] == [BAD_EVENT_TIME, BAD_EVENT_TIME]


def test_one_unencodable_output_is_its_own_dead_letter() -> None:
    """Kept state from before the policy can still hold an int64-edge time: encoding that
    track's SID fails for that track alone (the backfill, with no source record, raises)."""
    active = ActiveCodebooks("v1", _Codebooks())
    entry = {"model_id": "m", "vector": np.zeros(3, dtype="<f4").tobytes().hex(), "ingest_time": 1}
    state = {"edge": {"text": {**entry, "event_time": 2**63 - 1}, "audio": {**entry, "event_time": 5,
                                                                             "vector": np.zeros(2, "<f4").tobytes().hex()}},
             "ok": {"text": {**entry, "event_time": NOW}}}
    raws = {t: RawRecord("embeddings.text", 0, i, t.encode(), b"x", NOW) for i, t in enumerate(state)}
    res = BatchResult()
    code_tracks(res, ["edge", "ok"], state, active, _joint, raws=raws)
    assert list(_sids(res)) == ["ok"]
    assert [d.error_type for d in res.dead] == ["encode_error"] and "edge" in res.dead[0].reason
    with pytest.raises(ValueError, match="does not match SidAssigned"):
        code_tracks(BatchResult(), ["edge"], state, active, _joint)


def test_a_time_kept_before_the_policy_never_wins_against_a_valid_record() -> None:
    active = ActiveCodebooks("v1", _Codebooks())
    poisoned = {"event_time": YEAR_2100, "model_id": "text-model", "ingest_time": 1,
                "vector": np.asarray([0.9, 0.9, 0.9], "<f4").tobytes().hex()}
    state = {"t": {"text": dict(poisoned), "audio": {**poisoned, "vector": np.asarray([0.9, 0.9], "<f4").tobytes().hex()}}}
    res = assign_batch([_emb("t", "text", [0.1, 0.1, 0.1], NOW)], state, active, _joint)
    sid = _sids(res)["t"]
    assert sid["event_time"] == NOW + 1 and sid["text_sid"] == [0, 0]  # the new text, and a healed time
    assert state["t"]["text"]["event_time"] == NOW and state["t"]["audio"]["event_time"] == NOW


def test_an_older_record_is_superseded_and_counted() -> None:
    active = ActiveCodebooks("v1", _Codebooks())
    state: dict = {}
    assign_batch([_emb("t", "text", [0.1, 0.1, 0.1], NOW)], state, active, _joint)
    late = assign_batch([_emb("t", "text", [0.9, 0.9, 0.9], NOW - 1000, offset=1)], state, active, _joint)
    assert late.outputs == [] and late.dead == [] and late.superseded == {"older_than_kept": 1}


def test_interactions_with_absurd_times_are_dead_letters_and_history_heals() -> None:
    ok, dead = decode_interactions([_interaction("u", t, i) for i, t in enumerate([*ABSURD, NOW])])
    assert [r["event_time"] for _, r in ok] == [NOW] and len(dead) == len(ABSURD)
    assert all(d.error_type == BAD_EVENT_TIME and d.reason.startswith("user u:") for d in dead)
    poisoned = {"items": [[NOW - 10, "a"], [YEAR_2100, "far"]], "written_ms": YEAR_2100}
    healed = history_version(poisoned, {"event_time": NOW, "track_id": "b", "label": 1}, NOW + 3_600_000)
    assert healed == {"items": [[NOW - 10, "a"], [NOW, "b"]], "written_ms": NOW}


def test_sid_records_from_another_producer_meet_the_same_policy() -> None:
    def sid(t: int) -> RawRecord:
        return RawRecord("sids.assigned", 0, 0, b"t", avro_codec.encode("SidAssigned", {
            "track_id": "t", "event_time": t, "codebook_version": "v", "text_sid": [1], "audio_sid": None,
            "joint_sid": None, "modalities": ["text"], "text_model_id": "m", "audio_model_id": "", "ingest_time": 1}), NOW)

    rows, dead = decode_sid_batch([sid(NOW), sid(0), sid(YEAR_2100)])
    assert len(rows) == 1 and [d.error_type for d in dead] == [BAD_EVENT_TIME] * 2


@FUZZ
@given(st.lists(st.tuples(INT64, INT64, st.sampled_from(["a", "b", "c"]), st.sampled_from(["text", "audio"]),
                          st.one_of(st.none(), st.integers(min_value=-1, max_value=2 * NOW))), min_size=1, max_size=12))
def test_every_record_is_output_dead_or_superseded_and_what_passes_is_in_range(items) -> None:
    """Over int64 event and ingest times and any record timestamp: the text role and the assigner
    never raise, account for every record, and emit only times the policy admits (SIDs: + 1 ms)."""
    active = ActiveCodebooks("v1", _Codebooks())
    metas = [_meta(f"{t}{i}", et, i, ingest_time=it, ts=ts) for i, (et, it, t, _, ts) in enumerate(items)]
    text = encode_text_batch(metas, _Encoder())
    assert len(text.outputs) + len(text.dead) == len(metas)
    for raw, (_, value) in zip([m for m in metas if m.key.decode() in {avro_codec.decode(v)[1]["track_id"] for _, v in text.outputs}],
                               text.outputs, strict=True):
        rec = avro_codec.decode(value)[1]
        assert 1 <= rec["event_time"] <= DEFAULT_POLICY.upper(raw) and 0 <= rec["ingest_time"] <= MAX_SAFE_MS
    embs = [_emb(t, m, [0.2] * (3 if m == "text" else 2), et, i, ts=ts, ingest_time=it)
            for i, (et, it, t, m, ts) in enumerate(items)]
    res = assign_batch(embs, {}, active, _joint)
    assert len(res.kept) + len(res.dead) + sum(res.superseded.values()) == len(embs)
    for sid in _sids(res).values():
        assert 1 <= sid["event_time"] <= MAX_SAFE_MS + 1 and 0 <= sid["ingest_time"] <= MAX_SAFE_MS
    ok, dead = decode_interactions([_interaction("u", et, i, ts) for i, (et, _, _, _, ts) in enumerate(items)])
    assert len(ok) + len(dead) == len(items)


def _emb_at(track: str, vec: list[float], event_time: int, source_offset: int, offset: int = 0) -> RawRecord:
    v = np.asarray(vec, dtype=np.float32)
    rec = {"track_id": track, "event_time": event_time, "modality": "text", "model_id": "text-model", "dim": len(v),
           "vector": vector_to_bytes(v), "ingest_time": NOW, "source_offset": source_offset}
    return RawRecord("embeddings.text", 0, offset, track.encode(), avro_codec.encode("Embedding", rec), NOW)


def test_between_equal_times_the_later_track_record_wins_and_a_replay_is_the_same() -> None:
    """Ties are decided by the log: the offset of the track record an embedding came from."""
    active = ActiveCodebooks("v1", _Codebooks())
    state: dict = {}
    first = _sids(assign_batch([_emb_at("t", [0.1, 0.1, 0.1], NOW, source_offset=10)], state, active, _joint))["t"]
    changed = _sids(assign_batch([_emb_at("t", [0.9, 0.9, 0.9], NOW, source_offset=11, offset=1)], state, active, _joint))["t"]
    assert (first["text_sid"], first["text_offset"]) == ([0, 0], 10)
    assert (changed["text_sid"], changed["text_offset"], changed["event_time"]) == ([3, 3], 11, NOW)
    earlier = assign_batch([_emb_at("t", [0.1, 0.1, 0.1], NOW, source_offset=10, offset=2)], state, active, _joint)
    assert earlier.outputs == [] and earlier.superseded == {"older_than_kept": 1}
    replay = _sids(assign_batch([_emb_at("t", [0.9, 0.9, 0.9], NOW, source_offset=11, offset=1)], state, active, _joint))["t"]
    assert replay == changed  # the same record again gives the same SID record


def test_old_records_without_offsets_still_decode() -> None:
    """Embedding and SidAssigned gained offset fields with defaults: records written before decode."""
    for name in ("embedding_v1", "sid_assigned_v1"):
        assert "offset" not in (SCHEMA_DIR / "old" / f"{name}.avsc").read_text()
    schema = avro.schema.parse((SCHEMA_DIR / "old" / "embedding_v1.avsc").read_text())
    buf = io.BytesIO()
    buf.write(b"\xc3\x01" + schema.fingerprint("CRC-64-AVRO"))
    avro.io.DatumWriter(schema).write({"track_id": "t", "event_time": NOW, "schema_version": 1, "modality": "text",
                                       "model_id": "m", "dim": 3, "vector": b"\x00" * 12, "ingest_time": NOW},
                                      avro.io.BinaryEncoder(buf))
    _, rec = avro_codec.decode(buf.getvalue(), expected="Embedding")
    assert rec.get("source_offset", -1) == -1
    res = assign_batch([RawRecord("embeddings.text", 0, 0, b"t", buf.getvalue(), NOW)], {}, ActiveCodebooks("v1", _Codebooks()), _joint)
    assert _sids(res)["t"]["text_offset"] == -1
