"""Restores and catch-ups finish or fail, never stop short: against the real broker paused with
SIGSTOP, a kept-store restore and a claims catch-up either complete once it resumes (no total
deadline while records come) or raise RestoreIncomplete after `stall_s` without progress; a
backfill whose restore fails does not switch versions."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from confluent_kafka import Producer

from sidcore.config import Settings
from sidcore.registry import Registry
from sidstream.harness import PipelineRun
from streams import avro_codec
from streams.backfill import run_backfill
from streams.identity import KafkaIdentities
from streams.records import RestoreIncomplete, vector_to_bytes
from streams.state.kept import KeptEmbeddings, kept_key

pytestmark = pytest.mark.integration

N = 400


@contextmanager
def paused(broker) -> Iterator[None]:
    """The broker's JVM stopped (SIGSTOP) for the block, then resumed, whatever happens."""
    pid = broker.pid()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def _fill_kept(settings: Settings, topic: str) -> None:
    p = Producer({"bootstrap.servers": settings.kafka.bootstrap})
    for i in range(N):
        rec = {"track_id": f"t{i}", "event_time": 100 + i, "modality": "text", "model_id": "m", "dim": 2,
               "vector": vector_to_bytes(np.array([i, 1.0])), "ingest_time": 100 + i}
        p.produce(topic, key=kept_key(f"t{i}", "text"), value=avro_codec.encode("Embedding", rec), partition=i % 2)
    assert p.flush(30) == 0


def test_kept_restore_fails_loudly_while_paused_and_completes_after(test_settings, kafka_broker, tmp_path) -> None:
    run = PipelineRun(test_settings, tmp_path / "run")
    run.create_topics()
    _fill_kept(test_settings, run.names.kept)
    kept = KeptEmbeddings(tmp_path / "kept.sqlite", wait_s=0)
    with paused(kafka_broker):
        started = time.monotonic()
        with pytest.raises(RestoreIncomplete, match="not caught up"):
            kept.restore_from(test_settings.kafka.bootstrap, run.names.kept, [0, 1], stall_s=1.5)
        assert time.monotonic() - started < 20
    assert kept.count() < N  # it said so: not a silent short store
    kept.restore_from(test_settings.kafka.bootstrap, run.names.kept, [0, 1], stall_s=30)  # the retry continues
    assert kept.count() == N


def test_kept_restore_waits_through_a_pause_shorter_than_the_stall(test_settings, kafka_broker, tmp_path) -> None:
    """No total deadline: a restore that starts while the broker is paused finishes with every
    record once it resumes, if the pause is shorter than stall_s."""
    run = PipelineRun(test_settings, tmp_path / "run")
    run.create_topics()
    _fill_kept(test_settings, run.names.kept)
    kept = KeptEmbeddings(tmp_path / "kept.sqlite", wait_s=0)
    out: dict[str, object] = {}

    def restore() -> None:
        try:
            out["read"] = kept.restore_from(test_settings.kafka.bootstrap, run.names.kept, [0, 1], stall_s=25)
        except Exception as exc:  # noqa: BLE001 - reported below
            out["error"] = exc

    with paused(kafka_broker):
        worker = threading.Thread(target=restore)
        worker.start()
        time.sleep(3)
    worker.join(60)
    assert not worker.is_alive() and "error" not in out, out
    assert out["read"] == N and kept.count() == N


def test_claims_catch_up_fails_loudly_while_paused_and_completes_after(test_settings, kafka_broker, tmp_path) -> None:
    run = PipelineRun(test_settings, tmp_path / "run")
    run.create_topics()
    writer = KafkaIdentities(test_settings.kafka.bootstrap, run.names.identity)
    X = np.random.default_rng(0).random((50, 16)).astype(np.float32)
    distances = X @ np.random.default_rng(1).random((16, 64)).astype(np.float32)
    out, failed = writer.resolve("v1", "text", 64, [f"t{i}" for i in range(50)], np.zeros((50, 2), dtype=np.int64), distances)
    assert not failed and len(set(out.tolist())) == 50
    writer.close()
    reader = KafkaIdentities(test_settings.kafka.bootstrap, run.names.identity, timeout_s=1.5, stall_s=1.5)
    with paused(kafka_broker), pytest.raises(RestoreIncomplete):
        reader.catch_up()
    reader.timeout_s = reader.stall_s = 30
    reader.catch_up()
    assert reader.claims_read == 50
    reader.close()


def test_a_backfill_whose_restore_fails_does_not_switch_versions(test_settings, kafka_broker, tmp_path) -> None:
    settings = test_settings.model_copy(update={"stream": test_settings.stream.model_copy(update={"restore_stall_s": 1.5})})
    run = PipelineRun(settings, tmp_path / "run")
    run.create_topics()
    _fill_kept(settings, run.names.kept)
    registry = Registry(settings.registry_dir)
    for v in ("v1", "v2"):
        registry.register("codebooks", lambda _d: {"note": "test"}, version=v)
    registry.promote("codebooks", "v1")
    with paused(kafka_broker), pytest.raises(RestoreIncomplete):
        run_backfill(settings, "v2", run.names.kept, grace_s=0)
    assert registry.live("codebooks").version == "v1"  # not switched
    assert registry.pending("codebooks").version == "v2"  # still pending: the next run resumes it
    assert not any(e.get("event") == "backfilled" for e in registry.events("codebooks"))
