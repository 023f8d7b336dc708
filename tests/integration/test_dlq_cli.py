"""`sidstream dlq list|replay` on the real broker: whole dead letters are re-sent as they are,
oversize ones are re-read from their source topic at their partition and offset."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from confluent_kafka import Producer

from sidcore.config import use_settings
from sidstream.harness import PipelineRun, topic_messages
from streams.records import DeadLetter, RawRecord

pytestmark = pytest.mark.integration


def test_list_and_replay(test_settings, tmp_path, monkeypatch):
    from sidstream.commands.dlq import dlq

    run = PipelineRun(test_settings, tmp_path / "run")
    run.create_topics()
    bootstrap = test_settings.kafka.bootstrap
    delivered = []
    p = Producer({"bootstrap.servers": bootstrap})
    big = b"B" * 300_000
    p.produce(run.names.metadata, key=b"big", value=big, on_delivery=lambda err, msg: delivered.append(msg))
    p.flush(30)
    src = delivered[0]
    whole = DeadLetter(RawRecord(run.names.metadata, 0, 5, b"small", b"\x00small bad record"), "undecodable: junk",
                       "undecodable", "small").encode("text")
    oversize = DeadLetter(RawRecord(run.names.metadata, src.partition(), src.offset(), b"big", big),
                          "track big: text of 300000 characters", "text_too_long", "big").encode("text", 100_000)
    p.produce(f"{run.names.metadata}.dlq", value=whole, partition=0)  # one partition: a known order
    p.produce(f"{run.names.metadata}.dlq", value=oversize, partition=0)
    p.flush(30)

    monkeypatch.setenv("SIDSTREAM_KAFKA__PORT", str(test_settings.kafka.port))
    monkeypatch.setenv("SIDSTREAM_KAFKA__TOPIC_PREFIX", run.prefix)
    use_settings(None)
    try:
        runner = CliRunner(mix_stderr=False)
        listed = runner.invoke(dlq, ["list", "tracks.metadata", "--json"])
        assert listed.exit_code == 0, listed.output
        rows = [json.loads(line) for line in listed.stdout.splitlines()]
        assert [(r["error_type"], r["truncated"]) for r in rows] == [("undecodable", False), ("text_too_long", True)]
        replayed = runner.invoke(dlq, ["replay", "tracks.metadata"])
        assert replayed.exit_code == 0, replayed.output
        summary = json.loads(replayed.stdout.strip().splitlines()[-1])
        assert (summary["replayed"], summary["from_source"], summary["gone_from_source"]) == (2, 1, 0)
    finally:
        use_settings(None)
    got = sorted(m.value() for m in topic_messages(bootstrap, run.names.metadata))
    assert got == sorted([big, big, b"\x00small bad record"])  # the original, and both replays
