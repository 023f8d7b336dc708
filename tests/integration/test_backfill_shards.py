"""A sharded backfill against the real broker and a SQLite Feast store: the kept partitions split
over two processes, one killed midway fails the backfill before any switch, the rerun skips the
finished shard and resumes the other from its checkpoint, and every track then has its row
under the new version, switched once."""

from __future__ import annotations

import time

import numpy as np
import pytest
from confluent_kafka import Producer

from psrq import joint_embedding
from psrq.fitting import fit_codebook_set
from sidcore.registry import Registry
from sidstream.harness import PipelineRun
from streams import avro_codec
from streams.backfill import BackfillShardFailed, run_backfill
from streams.records import vector_to_bytes
from streams.sinks.reader import read_sids
from streams.sinks.store import open_store
from streams.state.kept import kept_key
from trainer.jobs import register_codebook_set

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N = 240


def test_a_sharded_backfill_resumes_only_the_failed_shard_and_switches_once(test_settings, tmp_path) -> None:
    settings = test_settings.model_copy(update={"codebook": test_settings.codebook.model_copy(update={"codebook_size": 8})})
    run = PipelineRun(settings, tmp_path / "run")
    run.create_topics()
    settings = run.worker_settings
    rng = np.random.default_rng(0)
    T = rng.standard_normal((N, 32)).astype(np.float32)
    A = rng.standard_normal((N, 16)).astype(np.float32)
    ids = [f"sh{i:04d}" for i in range(N)]
    p = Producer({"bootstrap.servers": settings.kafka.bootstrap})
    now = int(time.time() * 1000)
    for i, t in enumerate(ids):
        for modality, vec in (("text", T[i]), ("audio", A[i])):
            value = avro_codec.encode("Embedding", {"track_id": t, "event_time": now, "modality": modality, "model_id": f"{modality}-m",
                                                    "dim": len(vec), "vector": vector_to_bytes(vec), "ingest_time": now})
            p.produce(run.names.kept, key=kept_key(t, modality), value=value, partition=i % settings.kafka.partitions)
    assert p.flush(30) == 0
    registry = Registry(settings.registry_dir)
    quantizers = fit_codebook_set({"text": T, "audio": A, "joint": joint_embedding(T, A)}, settings.codebook)
    extra = {"encoder_model_ids": {"text": "text-m", "audio": "audio-m"}}
    first = register_codebook_set(registry, quantizers, {"test": "shards"}, True, manifests_extra=extra)
    target = register_codebook_set(registry, quantizers, {"test": "shards"}, False, manifests_extra=extra)

    with pytest.raises(BackfillShardFailed, match="1 of 2 backfill shard.*shard 1 .*injected failure after 40"):
        run_backfill(settings, target.version, run.names.kept, grace_s=0, identity_topic=run.names.identity, chunk=20,
                     shards=2, fail_shard=1, fail_after_tracks=40)
    assert registry.live("codebooks").version == first.version  # nothing switched
    report = run_backfill(settings, target.version, run.names.kept, grace_s=0, identity_topic=run.names.identity, chunk=20,
                          shards=2)
    assert registry.live("codebooks").version == target.version
    by_shard = {s["shard"]: s for s in report["per_shard"]}
    assert by_shard[0]["skipped"] is True  # finished in the failed run: not redone
    assert by_shard[1]["skipped"] is False and by_shard[1]["coded"] == by_shard[1]["tracks"] - 40  # resumed at its checkpoint
    assert by_shard[0]["tracks"] + by_shard[1]["tracks"] == N
    rows = read_sids(open_store(settings.feast_dir), ids, target.version)
    assert rows["joint_sid"].notna().all() and len({tuple(s) for s in rows["joint_sid"]}) == N  # every track, unique IDs
    assert [e["event"] for e in registry.events("codebooks")].count("backfilled") == 1  # switched once
