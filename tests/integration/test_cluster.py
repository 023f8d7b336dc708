"""A cluster, not a node: three KRaft brokers of the project's own Maven-resolved jars. Topics
replicate as the settings say (read back through Kafka's admin API), and the pipeline loses and
duplicates nothing when the busiest partition leader is killed or a worker replica dies while
its partner carries on."""

from __future__ import annotations

import uuid

import pytest

from tests.plugins.chaos import N_BAD, RATE, assert_nothing_lost, chaos_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_topics_on_three_brokers_have_three_replicas_and_two_in_sync(kafka_cluster):
    """`create_topics` with the cluster's settings (replication 3, min ISR 2 by default for three
    brokers) gives every topic, DLQs, kept embeddings and identity claims included, three replicas
    per partition and min.insync.replicas 2, as the brokers themselves report them."""
    from confluent_kafka.admin import AdminClient

    from streams.admin.topics import TopicNames, create_topics, describe_topic_configs, wait_until_ready

    k = kafka_cluster.settings
    assert (k.brokers, k.replication_factor, k.min_insync_replicas) == (3, 3, 2)
    names = TopicNames(f"c{uuid.uuid4().hex[:6]}-")
    created = create_topics(k.bootstrap, names, k.partitions, replication_factor=k.replication_factor,
                            min_insync_replicas=k.min_insync_replicas)
    assert {names.identity, names.name("embeddings.kept"), names.name("tracks.metadata.dlq")} <= set(created)
    admin = AdminClient({"bootstrap.servers": k.bootstrap})
    wait_until_ready(admin, created)  # this client may ask another node than create_topics' did
    topics = admin.list_topics(timeout=10).topics
    assert len(admin.list_topics(timeout=10).brokers) == 3
    configs = describe_topic_configs(admin, created)  # asks again while a broker does not know a new topic yet
    for topic in created:
        assert {len(p.replicas) for p in topics[topic].partitions.values()} == {3}, topic
        assert configs[topic]["min.insync.replicas"].value == "2", topic
        assert configs[topic]["max.message.bytes"].value == str(k.max_message_bytes), topic


def test_status_lists_every_node_and_the_partitions_it_leads(kafka_cluster):
    st = kafka_cluster.status()
    assert st["reachable"] and st["brokers"] == 3
    nodes = st["nodes"]
    assert [n["node"] for n in nodes] == [1, 2, 3] and all(n["serving"] for n in nodes)
    assert len({n["address"] for n in nodes}) == 3
    leaders = kafka_cluster.leaders()
    assert sum(len(v) for v in leaders.values()) > 0 and set(leaders) <= {1, 2, 3}


@pytest.fixture(scope="module")
def cluster_env(kafka_cluster, tmp_path_factory):
    return chaos_env(kafka_cluster.settings, tmp_path_factory.mktemp("cluster-chaos"))


def test_kill_leader_keeps_the_stream_going_without_a_restart(cluster_env, kafka_cluster):
    """kill -9 the node leading most metadata, SID and identity partitions; it stays down to the
    end of the run: nothing lost or duplicated, and new tracks keep becoming readable (the longest
    gap at most 10 s: replicas take over, nobody waits for the broker to come back)."""
    from sidstream.chaos import run_chaos

    s, tracks, clean, root = cluster_env
    r = run_chaos(s, "kill-leader", tracks, N_BAD, RATE, root / "runs" / "kill-leader", clean, timeout_s=240,
                  broker=kafka_cluster)
    assert_nothing_lost(r)
    assert r["brokers"] == 3 and r["replication_factor"] == 3 and r["min_insync_replicas"] == 2
    assert r["killed_node"] in (1, 2, 3)
    assert r["max_gap_s"] <= 10.0, r["max_gap_s"]
    assert all(pid is not None for pid in kafka_cluster.pids().values())  # started again after the run


def test_kill_replica_partner_takes_over_each_role(cluster_env):
    """Two worker processes per role; kill -9 one replica of each role in turn and leave it dead:
    its partner takes its partitions, and nothing is lost, duplicated or shared."""
    from sidstream.chaos import run_chaos

    s, tracks, clean, root = cluster_env
    replicas = {"text": 2, "assigner": 2, "writer": 2}
    r = run_chaos(s, "kill-replica", tracks, N_BAD, RATE, root / "runs" / "kill-replica", clean, timeout_s=240,
                  replicas=replicas)
    assert_nothing_lost(r)
    assert r["replicas"] == replicas
    assert r["killed_workers"] == ["text-r1", "assigner-r1", "writer-r1"]
