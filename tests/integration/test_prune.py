"""Old codebook versions pruned from the online store (SQLite and a real redis-server): exactly the
kept versions' rows stay, a prune killed midway resumes where it stopped, a rollback to a pruned
version re-backfills it, and a pruned version's identity claims become tombstones."""

from __future__ import annotations

import time

import numpy as np
import pytest

from streams.identity import KafkaIdentities
from streams.sinks.prune import Pruner, offline_tracks, tombstone_claims, versions_to_keep
from streams.sinks.reader import read_sids, rows_by_version
from streams.sinks.store import open_store
from streams.sinks.writer import FeastSink, SidRow
from tests.plugins.redis import redis_command

pytestmark = pytest.mark.integration

TRACKS = [f"t{i:03d}" for i in range(120)]


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.redis)])
def setup(request, tmp_path):
    url = "127.0.0.1:6379"
    if request.param == "redis":
        url = request.getfixturevalue("redis_server")
        assert redis_command(int(url.rsplit(":", 1)[1]), b"FLUSHALL\r\n").startswith(b"+OK")
    feast_dir = tmp_path / "feast"
    store = open_store(feast_dir, profile=request.param, redis_url=url)
    sink = FeastSink(store)
    now = int(time.time() * 1000)
    for k, version in enumerate(("v1", "v2", "v3")):
        sink.write([SidRow(t, now - 1000 + k, version, (k, 1, 2), None, None, "minilm", "") for t in TRACKS])
    return feast_dir, request.param, url, store


def _present(store, version):
    return int(read_sids(store, TRACKS, version)["sid_event_time_ms"].notna().sum())


def test_versions_to_keep_are_the_last_live_ones_and_the_rankers() -> None:
    assert versions_to_keep(["v1", "v2", "v3", "v4"], 2) == {"v3", "v4"}
    assert versions_to_keep(["v1", "v2", "v1"], 2) == {"v1", "v2"}  # a rollback: v1 live again, v2 before it
    assert versions_to_keep(["v1", "v2", "v3"], 1, ("v1", None)) == {"v1", "v3"}  # the live ranker's codebook


def test_pruning_leaves_exactly_the_kept_versions(setup, tmp_path) -> None:
    feast_dir, profile, url, store = setup
    assert sorted(offline_tracks(feast_dir)) == ["v1", "v2", "v3"]
    state = Pruner(store, feast_dir, tmp_path / "prune.json", chunk=50).prune({"v2", "v3"})
    assert state == {"v1": {"done": 120, "total": 120, "claims": None, "state": "done"}}
    assert (_present(store, "v1"), _present(store, "v2"), _present(store, "v3")) == (0, 120, 120)
    assert rows_by_version(feast_dir, profile, url) == {"v2": 120, "v3": 120}


def test_a_killed_prune_resumes_where_it_stopped(setup, tmp_path) -> None:
    feast_dir, _, _, store = setup
    progress = tmp_path / "prune.json"
    with pytest.raises(RuntimeError, match="injected"):
        Pruner(store, feast_dir, progress, chunk=50).prune({"v3"}, fail_after_chunks=1)
    assert Pruner(store, feast_dir, progress).progress()["v1"] == {"done": 50, "total": 120, "claims": None, "state": "running"}
    assert _present(store, "v1") == 70  # the first chunk is gone, the rest not yet
    chunks: list[tuple[str, int]] = []
    Pruner(store, feast_dir, progress, chunk=50).prune({"v3"}, on_progress=lambda v, done, total: chunks.append((v, done)))
    assert chunks == [("v1", 100), ("v1", 120), ("v2", 50), ("v2", 100), ("v2", 120)]  # v1 resumed at 50, not from 0
    assert (_present(store, "v1"), _present(store, "v2"), _present(store, "v3")) == (0, 0, 120)


def test_a_rollback_to_a_pruned_version_rebackfills_it(setup, tmp_path) -> None:
    """Rolling back to a pruned version is a backfill of it (its rows come back) and its prune
    progress is forgotten, so it is pruned anew once it falls out of the kept versions again."""
    feast_dir, _, _, store = setup
    progress = tmp_path / "prune.json"
    Pruner(store, feast_dir, progress).prune({"v2", "v3"})
    assert _present(store, "v1") == 0
    Pruner.forget(progress, "v1")  # what run_backfill does first
    FeastSink(store).write([SidRow(t, int(time.time() * 1000), "v1", (0, 1, 2), None, None, "minilm", "") for t in TRACKS])
    assert _present(store, "v1") == 120
    Pruner(store, feast_dir, progress).prune({"v3", "v1"})
    assert (_present(store, "v1"), _present(store, "v2"), _present(store, "v3")) == (120, 0, 120)
    Pruner(store, feast_dir, progress).prune({"v3"})
    assert _present(store, "v1") == 0


def test_a_pruned_versions_claims_become_tombstones(test_settings, tmp_path) -> None:
    from sidstream.harness import PipelineRun

    run = PipelineRun(test_settings, tmp_path / "run")
    run.create_topics()
    reg = KafkaIdentities(test_settings.kafka.bootstrap, run.names.identity)
    distances = np.random.default_rng(0).random((30, 64)).astype(np.float32)
    for version in ("v1", "v2"):
        _, failed = reg.resolve(version, "text", 64, TRACKS[:30], np.zeros((30, 2), dtype=np.int64), distances)
        assert not failed
    reg.close()
    assert tombstone_claims(test_settings.kafka.bootstrap, run.names.identity, "v1") == 30
    fresh = KafkaIdentities(test_settings.kafka.bootstrap, run.names.identity, state_dir=tmp_path / "state")
    fresh.catch_up()  # each tombstone deletes its claim from the reader's store (compaction drops it from the topic later)
    assert fresh.claims_read == 60
    assert fresh.store.claim_count() == 30  # only v2's claims are left on disk
    v1, v2 = fresh.existing("v1", "text"), fresh.existing("v2", "text")
    assert all(v1.held((0, 0), t) is None for t in TRACKS[:30]) and all(v2.held((0, 0), t) is not None for t in TRACKS[:30])
    fresh.close()
