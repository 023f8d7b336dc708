"""The README's main command, run as a user would (small sizes), on the session's broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.plugins.paths import AUDIO_DIR

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_json_line(kafka_broker, tmp_path):
    if not AUDIO_DIR.is_dir():
        pytest.skip(f"{AUDIO_DIR} missing: apt-get install singularity-music")
    env = dict(os.environ)
    env.update(
        SIDSTREAM_HOME=str(tmp_path / "home"),
        SIDSTREAM_KAFKA__PORT=str(kafka_broker.settings.port),
        SIDSTREAM_KAFKA__CONTROLLER_PORT=str(kafka_broker.settings.controller_port),
        SIDSTREAM_KAFKA__PARTITIONS="2",
        SIDSTREAM_CODEBOOK__CODEBOOK_SIZE="16",
        SIDSTREAM_LASTFM_DIR="sample",  # the shipped sample, as a fresh clone has
    )
    # the broker is the session's (reused, not started): the demo must find it reachable
    env["SIDSTREAM_HOME"] = str(tmp_path / "home")
    proc = subprocess.run(
        [sys.executable, "-m", "sidstream.cli", "demo", "--tracks", "60", "--audio", "3", "--json", "--timeout", "180"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    summary = json.loads(lines[0])
    assert summary["tracks"] == 63 and summary["assigned"] == 63 and summary["feast_read"] == 63
    assert summary["dlq"] == 2
    assert summary["broker"].startswith("kafka 3.9.")
    assert 0 < summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"]


def test_demo_counts_come_from_three_sources(test_settings, tmp_path):
    """`assigned` from the SID topic, `feast_read` from Feast, `dlq` from the dead-letter topics:
    a track the assigner emitted but Feast never got is assigned and not readable."""
    from sidstream.demo import outcome_counts
    from sidstream.harness import PipelineRun
    from streams import avro_codec
    from streams.records import DeadLetter, RawRecord
    from streams.sinks.reader import read_sids
    from streams.sinks.store import open_store
    from streams.sinks.writer import FeastSink, SidRow

    run = PipelineRun(test_settings, tmp_path / "run")
    run.create_topics()
    producer = run.producer()
    ts = 1_700_000_000_000
    emitted = {"a": ([1, 2, 3], None), "b": ([4, 5, 6], None), "c": ([7, 8, 9], [1, 1, 1])}
    for track_id, (text_sid, joint_sid) in emitted.items():
        producer.send_raw(run.names.sids, track_id.encode(), avro_codec.encode("SidAssigned", {
            "track_id": track_id, "event_time": ts, "codebook_version": "v1", "text_sid": text_sid,
            "audio_sid": joint_sid, "joint_sid": joint_sid, "modalities": ["text"] + (["audio"] if joint_sid else []),
            "text_model_id": "m", "audio_model_id": "", "ingest_time": ts}))
    bad = RawRecord(run.names.metadata, 0, 7, b"x", b"\x00junk")
    producer.send_raw(f"{run.names.metadata}.dlq", b"x", DeadLetter(bad, "undecodable: junk", "undecodable", "x").encode("text"))
    producer.flush()
    store = open_store(test_settings.feast_dir)
    sink = FeastSink(store)
    sink.write([SidRow("a", ts, "v1", (1, 2, 3), None, None), SidRow("c", ts, "v1", (7, 8, 9), None, None)])
    # b never reaches Feast; c reaches it without its joint SID
    expected = {"a": "text_sid", "b": "text_sid", "c": "joint_sid", "d": "text_sid"}
    counts = outcome_counts(expected, run.assigned(), read_sids(store, list(expected), "v1"), run.dead_letters())
    assert counts == {"assigned": 3, "feast_read": 1, "dlq": 1}
