"""Event time at the edge, on the real broker, worker processes and a real Feast repo: records
with out-of-range times are `bad_event_time` dead letters while the rest of their batches are
written; an interaction with an absurd time is dead-lettered and the user's history still
updates; over a mixed stream every produced record is readable, dead-lettered or counted as
superseded; a same-time content change is followed (ties decided by the log)."""

from __future__ import annotations

import re
import time
import urllib.request

import pytest

from encoders.catalog import track_text
from sidcore.catalog import lastfm_tracks
from sidstream.harness import PipelineRun, letter_source, read_topics, wait_until_readable
from streams import avro_codec
from streams.records import now_ms
from streams.sinks.reader import read_histories, read_sids
from streams.sinks.store import open_store
from streams.topology import dlq
from tests.plugins.kafka import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

YEAR_2100 = 4_102_444_800_000
ABSURD = [0, -1, YEAR_2100, 10**16, 2**63 - 1]


@pytest.fixture
def run(test_settings, tmp_path):
    from encoders import load_text_encoder
    from trainer.jobs import bootstrap_codebooks

    te = load_text_encoder()
    catalog = lastfm_tracks(None, 300)
    s = test_settings.model_copy(update={"codebook": test_settings.codebook.model_copy(update={"codebook_size": 16})})
    version = bootstrap_codebooks(s, te.encode([track_text(t) for t in catalog]), te.model_id)
    run = PipelineRun(s, tmp_path / "run")
    run.create_topics()
    port = free_port()
    run.start_workers((("text",), ("assigner", "writer"), ("logger",)), metrics_ports={("assigner", "writer"): port})
    yield run, catalog, version.version, port
    run.stop_workers()


def _metadata(track_id: str, event_time: int, text: str) -> bytes:
    return avro_codec.encode("TrackMetadata", {"track_id": track_id, "event_time": event_time, "text": text,
                                               "ingest_time": now_ms()})


def _superseded(port: int) -> dict[str, float]:
    """{"worker:reason": count} of the assigner + writer process's superseded counter."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for labels, value in re.findall(r'^sidstream_superseded_total\{([^}]*)\} ([0-9.e+]+)$', text, re.M):
        named = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        out[f"{named['worker']}:{named['reason']}"] = float(value)
    return out


def _per_source(letters: list[dict]) -> list[dict]:
    """One dead letter per source record (its first), in the order read."""
    first: dict[tuple, dict] = {}
    for d in letters:
        first.setdefault(letter_source(d), d)
    return list(first.values())


def test_out_of_range_times_are_dead_letters_and_every_record_is_accounted_for(run):
    run, catalog, version, port = run
    store = open_store(run.settings.feast_dir)
    producer = run.producer()
    good = catalog[:20]
    produced_at = producer.send_metadata(good)
    # absurd times in the same stretch of the stream as the good tracks, and one undecodable record
    for i, t in enumerate(ABSURD):
        producer.send_raw(run.names.metadata, f"bad-{i}".encode(), _metadata(f"bad-{i}", t, f"bad {i}. Tags: rock"))
    producer.send_raw(run.names.metadata, b"garbage", b"\x00\x01 not avro")
    # interactions: one absurd time per value, and a valid positive for the same user
    for i, t in enumerate([*ABSURD, now_ms()]):
        producer.send_raw(run.names.interactions, b"user-1", avro_codec.encode(
            "Interaction", {"user_id": "user-1", "track_id": good[i].track_id, "event_time": t, "label": 1}))
    producer.flush(60)
    latency = wait_until_readable(store, {t.track_id: "text_sid" for t in good}, produced_at, 240, version)
    assert len(latency) == len(good)
    # an older version of a good track, once its newer one is readable: superseded in the assigner
    first = good[0]
    producer.send_raw(run.names.metadata, first.track_id.encode(), _metadata(first.track_id, 1_000, "an old text. Tags: x"))
    producer.flush(30)
    deadline = time.monotonic() + 60
    while _superseded(port).get("assigner:older_than_kept", 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    superseded = _superseded(port)
    assert superseded.get("assigner:older_than_kept") == 1, superseded
    dead = read_topics(run.settings.kafka.bootstrap, [dlq(run.names.metadata), dlq(run.names.interactions)], "DeadLetter")
    # a dead letter is at least once (a batch replayed after a rebalance dead-letters its bad records
    # again, docs/architecture.md); exactly once per source record: one per (topic, partition, offset)
    meta_dead, interaction_dead = _per_source(dead[dlq(run.names.metadata)]), _per_source(dead[dlq(run.names.interactions)])
    assert sorted(d["error_type"] for d in meta_dead) == ["bad_event_time"] * len(ABSURD) + ["undecodable"]
    assert {d["track_id"] for d in meta_dead if d["error_type"] == "bad_event_time"} == {f"bad-{i}" for i in range(len(ABSURD))}
    assert all(str(t) in next(d["reason"] for d in meta_dead if d["track_id"] == f"bad-{i}") for i, t in enumerate(ABSURD))
    # produced = readable + dead letters + superseded, over the whole metadata stream
    produced = len(good) + len(ABSURD) + 1 + 1
    readable = sum(1 for t in good if t.track_id in latency)
    assert produced == readable + len(meta_dead) + superseded["assigner:older_than_kept"]
    # the interactions: every absurd time a dead letter, and the user's history took the valid one
    assert [d["error_type"] for d in interaction_dead] == ["bad_event_time"] * len(ABSURD)
    deadline = time.monotonic() + 60
    while not read_histories(store, ["user-1"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert read_histories(store, ["user-1"]) == {"user-1": [good[len(ABSURD)].track_id]}
    # the Feast rows still carry the newest text: the late, older version changed nothing
    row = store.get_online_features(features=["track_sids:sid_event_time_ms"],
                                    entity_rows=[{"track_id": first.track_id, "codebook_version": version}]).to_dict()
    assert row["sid_event_time_ms"][0] > 1_000
    # a same-time content change (a later record of the track, the same event time) is followed
    second = good[1]
    before = read_sids(store, [second.track_id], version).iloc[0]
    producer.send_raw(run.names.metadata, second.track_id.encode(),
                      _metadata(second.track_id, produced_at[second.track_id], track_text(good[-1]) + " (changed)"))
    producer.flush(30)
    deadline = time.monotonic() + 60
    after = before
    while after["sid_text_offset"] == before["sid_text_offset"] and time.monotonic() < deadline:
        time.sleep(0.3)
        after = read_sids(store, [second.track_id], version).iloc[0]
    assert after["sid_event_time_ms"] == before["sid_event_time_ms"] == produced_at[second.track_id]
    assert after["sid_text_offset"] > before["sid_text_offset"] >= 0
    assert list(after["text_sid"]) != list(before["text_sid"])
