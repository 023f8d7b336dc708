"""A fresh assigner (new machine, or partitions moved to it) restores the kept embeddings from
the compacted topic, and a restarted one reads only the tail that others wrote."""

from __future__ import annotations

import numpy as np
import pytest
from confluent_kafka import Producer

from sidstream.harness import PipelineRun
from streams import avro_codec
from streams.records import vector_to_bytes
from streams.state.kept import KeptEmbeddings, kept_key

pytestmark = pytest.mark.integration


def _emb(track, modality, t):
    return avro_codec.encode("Embedding", {"track_id": track, "event_time": t, "modality": modality, "model_id": "m",
                                           "dim": 2, "vector": vector_to_bytes(np.array([t, 1.0])), "ingest_time": t})


def test_restore_from_the_compacted_topic(test_settings, tmp_path):
    run = PipelineRun(test_settings, tmp_path / "run")
    run.create_topics()
    p = Producer({"bootstrap.servers": test_settings.kafka.bootstrap})
    for i in range(20):
        p.produce(run.names.kept, key=kept_key(f"t{i}", "text"), value=_emb(f"t{i}", "text", 100 + i), partition=i % 2)
    p.produce(run.names.kept, key=kept_key("t3", "text"), value=_emb("t3", "text", 999), partition=1)  # newer version
    p.flush(30)
    fresh = KeptEmbeddings(tmp_path / "a" / "kept.sqlite", wait_s=60)
    assert fresh.restore_from(test_settings.kafka.bootstrap, run.names.kept, [0, 1]) == 21
    assert fresh.count() == 20 and fresh.get("t3")["text"]["event_time"] == 999
    assert fresh.waiting == 0  # restored rows are on disk, not in the join table
    # another worker writes more while this one is away: a restart reads only that tail
    p.produce(run.names.kept, key=kept_key("t20", "audio"), value=_emb("t20", "audio", 500), partition=0)
    p.flush(30)
    again = KeptEmbeddings(tmp_path / "a" / "kept.sqlite", wait_s=60)
    assert again.restore_from(test_settings.kafka.bootstrap, run.names.kept, [0, 1]) == 1
    assert again.count() == 21
