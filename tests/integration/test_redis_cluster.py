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


CLUSTER_PASSWORD = "PLANTED-cluster-5ecret-c41f"


@pytest.fixture(scope="module")
def secured_redis_cluster(tmp_path_factory):
    """3 + 3 nodes that speak TLS only (clients, cluster bus, replication) and require a password."""
    from streams.admin.certs import make_server_cert
    from streams.admin.redis_cluster import LocalRedisCluster
    from tests.plugins.kafka import free_port_block

    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server / redis-cli not on PATH (apt-get install redis-server)")
    home = tmp_path_factory.mktemp("redis-cluster-tls")
    cluster = LocalRedisCluster(home, free_port_block(6, bus_offset=10000), password=CLUSTER_PASSWORD,
                                tls=make_server_cert(home / "tls"))
    cluster.start()
    yield cluster
    cluster.stop()


def test_the_stream_writes_to_a_redis_cluster_over_tls_with_a_password(kafka_broker, secured_redis_cluster, tmp_path):
    """The `redis_cluster` profile over rediss:// with a password: the writer stores every track,
    the password is in no file the store wrote, and a wrong password is refused in one line."""
    from pydantic import SecretStr

    from sidcore.catalog import lastfm_tracks
    from sidstream.harness import PipelineRun, wait_until_readable
    from streams.sinks.store import open_store
    from trainer.bootstrap import ensure_codebooks

    cluster = secured_redis_cluster
    s = Settings(home=tmp_path / "home", kafka=kafka_broker.settings, lastfm_dir="sample",
                 feast_profile="redis_cluster", redis_url=cluster.url, redis_password=SecretStr(CLUSTER_PASSWORD),
                 redis_ca_file=cluster.tls.ca_file, stream={"batch_size": 16, "batch_timeout_s": 0.05},
                 codebook={"codebook_size": 16})
    assert s.redis.tls and s.redis.password == CLUSTER_PASSWORD
    version = ensure_codebooks(s, [])
    run = PipelineRun(s.model_copy(update={"feast_root": tmp_path / "feast"}), tmp_path / "run")
    run.create_topics()
    store = open_store(run.settings.feast_dir, profile="redis_cluster", redis_url=s.redis)
    tracks = lastfm_tracks(None, 24)
    run.start_workers((("text",), ("assigner", "writer")))
    try:
        producer = run.producer()
        produced = producer.send_metadata(tracks)
        producer.flush()
        expected = {t.track_id: "text_sid" for t in tracks}
        assert len(wait_until_readable(store, expected, produced, 120, version)) == len(expected)
        assert not any(run.dead_letters().values())
    finally:
        run.stop_workers()
    written = [p for p in (tmp_path / "feast").rglob("*") if p.is_file() and p.suffix in (".yaml", ".json", ".py")]
    assert written and not any(CLUSTER_PASSWORD in p.read_text(errors="replace") for p in written)

    wrong = dataclasses.replace(s.redis, password="not-the-password")
    with pytest.raises(Exception) as refused:  # redis-py's AuthenticationError, surfaced by Feast's cluster client
        open_store(tmp_path / "feast-wrong", profile="redis_cluster", redis_url=wrong).get_online_features(
            features=["track_sids:text_sid"], entity_rows=[{"track_id": tracks[0].track_id}]).to_dict()
    said = f"{type(refused.value).__name__}: {refused.value}"
    assert "auth" in said.lower() or "password" in said.lower(), said
    assert "\n" not in said.strip() and CLUSTER_PASSWORD not in said and "not-the-password" not in said


def test_history_reads_on_a_redis_cluster_equal_feasts_get_online_features(redis_cluster, tmp_path):
    """serve's history reads on the cluster profile (the blocking one /features uses and the
    awaited one /rank uses, through the store's asyncio cluster client) give what Feast's
    get_online_features gives: newest row, order kept, empty and unknown users, one user and
    several (keys on different primaries: a pipeline across slots)."""
    import asyncio

    from streams.sinks.reader import _RedisHashes, read_histories, read_histories_async
    from streams.sinks.store import open_store
    from streams.sinks.writer import FeastSink, UserHistoryRow

    store = open_store(tmp_path / "feast", profile="redis_cluster", redis_url=redis_cluster.url)
    rows = [UserHistoryRow(f"u{i}", 1_000, tuple(f"t{i}-{j}" for j in range(i % 4))) for i in range(12)]
    FeastSink(store).write_history([*rows, UserHistoryRow("u1", 2_000, ("newer", "t1-0"))])
    users = [*(f"u{i}" for i in range(12)), "nobody", "u1"]
    ref = store.get_online_features(features=["user_history:history_item_ids"],
                                    entity_rows=[{"user_id": u} for u in users]).to_dict()
    expected = {u: list(h) for u, h in zip(ref["user_id"], ref["history_item_ids"], strict=True) if h is not None}
    assert expected["u1"] == ["newer", "t1-0"] and expected["u5"] == ["t5-0"] and "nobody" not in expected

    async def awaited() -> list[dict[str, list[str]]]:  # one event loop: the asyncio client is bound to it
        return [await read_histories_async(store, users), *[await read_histories_async(store, [u]) for u in users]]

    many, *each = asyncio.run(awaited())
    assert read_histories(store, users) == many == expected
    assert each == [({u: expected[u]} if u in expected else {}) for u in users]
    assert _RedisHashes.of(store) is not None and _RedisHashes.of(store)._async is not None  # the asyncio client read them
