"""The `redis_cluster` Feast profile on a real Redis Cluster (3 primaries + 3 replicas of Debian's
redis-server, joined by `redis-cli --cluster create`): the stream writes every track there, a
primary killed mid-stream is failed over to its replica without losing a row, and `sidstream
serve` reads every track back."""

from __future__ import annotations

import dataclasses
import shutil

import httpx
import pytest

from sidcore.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.redis, pytest.mark.slow]


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory):
    from streams.admin.redis_cluster import LocalRedisCluster
    from tests.plugins.kafka import free_port_block

    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server / redis-cli not on PATH (apt-get install redis-server)")
    cluster = LocalRedisCluster(tmp_path_factory.mktemp("redis-cluster"), free_port_block(6, bus_offset=10000))
    cluster.start()
    yield cluster
    cluster.stop()


def test_stream_writes_to_a_redis_cluster_survives_a_primary_kill_and_serve_reads_every_track(
        kafka_broker, redis_cluster, tmp_path):
    from sidcore.catalog import lastfm_tracks
    from sidstream.bench.online import ServerThread
    from sidstream.harness import PipelineRun, wait_until_readable
    from sidstream.serve import create_app
    from streams.sinks.reader import read_sids
    from streams.sinks.store import open_store
    from trainer.bootstrap import ensure_codebooks

    s = Settings(home=tmp_path / "home", kafka=kafka_broker.settings, lastfm_dir="sample",
                 feast_profile="redis_cluster", redis_url=redis_cluster.url,
                 stream={"batch_size": 16, "batch_timeout_s": 0.05}, codebook={"codebook_size": 16})
    version = ensure_codebooks(s, [])
    run = PipelineRun(s.model_copy(update={"feast_root": tmp_path / "feast"}), tmp_path / "run")
    run.create_topics()
    store = open_store(run.settings.feast_dir, profile="redis_cluster", redis_url=redis_cluster.url)
    tracks = lastfm_tracks(None, 80)
    first, second = tracks[:40], [dataclasses.replace(t, track_id=f"late:{t.track_id}") for t in tracks[40:]]
    run.start_workers((("text",), ("assigner", "writer")))
    try:
        producer = run.producer()
        produced = producer.send_metadata(first)
        producer.flush()
        assert len(wait_until_readable(store, {t.track_id: "text_sid" for t in first}, produced, 120, version)) == 40
        victim = redis_cluster.primaries_now()[0]
        redis_cluster.kill(victim)  # its replica is promoted after the cluster's node timeout
        produced |= producer.send_metadata(second)
        producer.flush()
        expected = {t.track_id: "text_sid" for t in first + second}
        latency = wait_until_readable(store, expected, produced, 180, version)
        assert len(latency) == len(expected), f"{len(expected) - len(latency)} tracks not readable after killing {victim}"
        assert victim not in redis_cluster.primaries_now()
        dead = run.dead_letters()
        assert not any(dead.values()), dead
    finally:
        run.stop_workers()

    app = create_app(run.settings, store=store, watch=False)
    ids = list(expected)
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        r = client.post("/features", json={"track_ids": ids})
    assert r.status_code == 200, r.text
    rows = {row["track_id"]: row for row in r.json()["tracks"]}
    raw = read_sids(store, ids, version).set_index("track_id")
    assert all(rows[t]["found"] for t in ids)
    assert all(rows[t]["text_sid"] == list(raw.at[t, "text_sid"]) for t in ids)
