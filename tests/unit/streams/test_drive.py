"""Roles driven through the runtime without Kafka (streams.testing.drive): only the broker is fake;
the roles' encoders and stores are what they are given (the writer's is a real SQLite Feast repo)."""

from __future__ import annotations

import numpy as np
import pytest

from streams import avro_codec
from streams.batching import RetryPolicy
from streams.records import vector_from_bytes
from streams.roles.logger import LoggerRole
from streams.roles.text import TextRole
from streams.roles.writer import WriterRole
from streams.testing import drive, records

pytestmark = pytest.mark.unit


class _Encoder:
    """Three dimensions: the text's length, its word count, 1."""

    model_id, dim = "fake-text", 3

    def __init__(self) -> None:
        self.calls: list[int] = []

    def encode(self, batch: list[str]) -> np.ndarray:
        self.calls.append(len(batch))
        return np.array([[len(t), len(t.split()), 1.0] for t in batch], dtype=np.float32)


def _metadata(track: str, text: str, event_time: int = 5) -> tuple[bytes, bytes]:
    return track.encode(), avro_codec.encode("TrackMetadata", {"track_id": track, "event_time": event_time,
                                                               "ingest_time": event_time, "text": text})


def test_the_text_role_emits_one_embedding_per_usable_track_and_dead_letters_the_rest() -> None:
    encoder = _Encoder()
    items = records("p.tracks.metadata", _metadata("a", "Björk. Tags: pop"), (b"x", b"\x00garbage"),
                    _metadata("c", "   "), _metadata("d", "Low. Tags: slowcore", event_time=0), _metadata("e", "Can"))
    driven = drive(TextRole(encoder), items, prefix="p.")

    assert driven.topics == ["p.embeddings.text", "p.tracks.metadata.dlq"]
    out = driven.values("embeddings.text")
    assert [(e["track_id"], e["modality"], e["model_id"], e["dim"], e["source_offset"]) for e in out] == [
        ("a", "text", "fake-text", 3, 0), ("e", "text", "fake-text", 3, 4)]
    assert vector_from_bytes(out[0]["vector"], 3).tolist() == [16.0, 3.0, 1.0]
    assert driven.keys("embeddings.text") == [b"a", b"e"]
    dead = driven.dead_letters("p.tracks.metadata")
    assert [(d["offset"], d["error_type"], d["worker"]) for d in dead] == [
        (1, "undecodable", "text"), (2, "empty_text", "text"), (3, "bad_event_time", "text")]
    assert dead[0]["original"] == b"\x00garbage"
    assert driven.delivered == [{}] and driven.outcomes == ["ok"]
    assert encoder.calls[-1] == 2  # one encoder call for the batch's usable texts (after the warm-up's)


def test_batches_of_n_are_separate_finish_batch_calls() -> None:
    items = records("tracks.metadata", *(_metadata(f"t{i}", f"track {i}. Tags: pop") for i in range(5)))
    encoder = _Encoder()
    driven = drive(TextRole(encoder), items, batch_size=2)
    assert driven.outcomes == ["ok", "ok", "ok"]
    assert encoder.calls[-3:] == [2, 2, 1]
    assert [e["track_id"] for e in driven.values("embeddings.text")] == [f"t{i}" for i in range(5)]


def test_a_failed_delivery_raises_or_with_a_retry_policy_dead_letters_the_batch_whole() -> None:
    items = records("tracks.metadata", _metadata("a", "Björk. Tags: pop"))
    with pytest.raises(ConnectionError):
        drive(TextRole(_Encoder()), items, failing=["embeddings.text"])

    driven = drive(TextRole(_Encoder()), items, failing=["embeddings.text"],
                   retry=RetryPolicy(budget_s=0.05, first_delay_s=0.01, max_delay_s=0.01))
    assert driven.outcomes == ["dead_lettered"] and driven.delivered == []
    assert [d["error_type"] for d in driven.dead_letters("tracks.metadata")] == ["retries_exhausted"]
    assert all(not s.delivered for s in driven.to("embeddings.text"))


def _sid(track: str, event_time: int, text_sid: list[int] | None = None) -> tuple[bytes, bytes]:
    return track.encode(), avro_codec.encode("SidAssigned", {
        "track_id": track, "event_time": event_time, "codebook_version": "v1", "text_sid": text_sid or [1, 2],
        "audio_sid": None, "joint_sid": None, "modalities": ["text"], "text_model_id": "fake-text",
        "ingest_time": event_time})


def test_the_writer_role_stores_sid_rows_in_a_real_feast_store_and_dead_letters_bad_records(tmp_path) -> None:
    from streams.sinks.reader import read_track_sids
    from streams.sinks.store import open_store
    from streams.sinks.writer import FeastSink

    store = open_store(tmp_path / "feast")
    items = records("sids.assigned", _sid("a", 1_000, [3, 4]), _sid("b", 1_000), (b"c", b"junk"), _sid("d", 0))
    driven = drive(WriterRole(FeastSink(store)), items)

    assert driven.topics == ["sids.assigned.dlq"]  # the writer emits nothing: its sink is the store
    assert [(d["track_id"], d["error_type"]) for d in driven.dead_letters("sids.assigned")] == [
        ("c", "undecodable"), ("d", "bad_event_time")]
    assert read_track_sids(store, ["a", "b", "c", "d"], "v1") == {
        "a": {"text_sid": [3, 4], "audio_sid": None, "joint_sid": None},
        "b": {"text_sid": [1, 2], "audio_sid": None, "joint_sid": None}}

    # a replay of the same records (at-least-once) and an older row change nothing
    again = drive(WriterRole(FeastSink(store)), records("sids.assigned", _sid("a", 1_000, [9, 9]), _sid("b", 500, [7, 7])))
    assert again.sent == []
    assert read_track_sids(store, ["a", "b"], "v1")["a"]["text_sid"] == [3, 4]
    assert read_track_sids(store, ["a", "b"], "v1")["b"]["text_sid"] == [1, 2]


def test_a_role_with_faust_tables_is_refused_not_faked(tmp_path) -> None:
    """The logger keeps user histories in a Faust table (changelog on the broker): the fake app has
    no tables, so the logger is tested against the broker (tests/integration), not here."""
    with pytest.raises(NotImplementedError, match="needs a real Faust app"):
        drive(LoggerRole(tmp_path / "log", None), [])
