"""A cluster by configuration: the local cluster's node ports and bootstrap list, replication that
follows the number of brokers unless set, the per-home pointer later commands read, replicas per
role, the chaos drills' preconditions and their longest-gap measure."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from pydantic import ValidationError

from sidcore.config import KafkaSettings, Settings, with_local_cluster


def test_one_broker_keeps_today_s_defaults():
    k = KafkaSettings()
    assert (k.brokers, k.replication_factor, k.min_insync_replicas) == (1, 1, 1)
    assert k.bootstrap == "127.0.0.1:19092"


def test_three_brokers_replicate_three_times_with_two_in_sync_and_list_every_node():
    k = KafkaSettings(brokers=3)
    assert (k.replication_factor, k.min_insync_replicas) == (3, 2)
    assert k.bootstrap == "127.0.0.1:19092,127.0.0.1:19094,127.0.0.1:19096"
    assert [k.node_ports(n) for n in (1, 2, 3)] == [(19092, 19093), (19094, 19095), (19096, 19097)]
    assert (KafkaSettings(brokers=2).replication_factor, KafkaSettings(brokers=2).min_insync_replicas) == (2, 1)
    assert KafkaSettings(brokers=5).replication_factor == 3


def test_explicit_replication_and_external_bootstrap_win():
    k = KafkaSettings(brokers=3, replication_factor=1)
    assert (k.replication_factor, k.min_insync_replicas) == (1, 1)
    ext = KafkaSettings(bootstrap_servers="a:9092,b:9092", replication_factor=3)
    assert ext.bootstrap == "a:9092,b:9092" and ext.min_insync_replicas == 2
    with pytest.raises(ValidationError, match="min_insync_replicas"):
        KafkaSettings(brokers=3, replication_factor=2, min_insync_replicas=3)


def test_overlapping_node_ports_are_refused():
    with pytest.raises(ValidationError, match="overlapping"):
        KafkaSettings(brokers=2, port=19092, controller_port=19094)  # node 2's client port is node 1's controller


def test_later_commands_find_the_local_cluster_their_home_runs(tmp_path):
    s = Settings(home=tmp_path)
    assert with_local_cluster(s).kafka.brokers == 1  # nothing started
    (tmp_path / "kafka").mkdir()
    (tmp_path / "kafka" / f"local-{s.kafka.port}.json").write_text(json.dumps({"brokers": 3, "port": s.kafka.port}))
    found = with_local_cluster(s).kafka
    assert (found.brokers, found.replication_factor, found.min_insync_replicas) == (3, 3, 2)
    assert found.bootstrap.count(",") == 2
    # explicit settings win, and a cluster on other ports is not this one
    assert with_local_cluster(Settings(home=tmp_path, kafka={"brokers": 1})).kafka.brokers == 1
    assert with_local_cluster(Settings(home=tmp_path, kafka={"port": 29092, "controller_port": 29093})).kafka.brokers == 1


def test_replicas_per_role_parse_and_name_their_processes():
    from sidstream.harness import PipelineRun, parse_replicas, worker_name

    assert parse_replicas("text=2, assigner=3") == {"text": 2, "assigner": 3}
    assert parse_replicas(None) == {} and parse_replicas("") == {}
    for bad in ("text", "text=0", "nosuch=2", "text=two"):
        with pytest.raises(ValueError, match="ROLE=N"):
            parse_replicas(bad)
    run = PipelineRun(Settings(), Path("/nonexistent"), replicas={"assigner": 2})
    run.groups = (("text",), ("assigner", "writer"))
    assert run.workers() == [("text", ("text",)), ("assigner-writer", ("assigner", "writer")),
                             ("assigner-writer-r1", ("assigner", "writer"))]
    assert worker_name(("text",), 2) == "text-r2"


def test_max_gap_is_the_longest_wait_for_a_new_readable_track_after_the_fault():
    from sidstream.chaos import max_gap_s

    assert max_gap_s(10.0, [1.0, 11.0, 12.5, 19.0, 19.5]) == 6.5  # before the fault does not count
    assert max_gap_s(10.0, [17.0]) == 7.0  # the first track after the fault
    assert max_gap_s(10.0, []) == 0.0


@pytest.mark.parametrize(("fault", "kafka", "replicas", "message"), [
    ("kill-leader", {}, {}, "--brokers 3"),
    ("stop-broker", {"brokers": 3, "replication_factor": 3, "min_insync_replicas": 3}, {}, "no write is acknowledged"),
    ("kill-replica", {}, {"text": 2}, "assigner, writer"),
    ("stop-replica", {}, {}, "assigner=2"),
])
def test_drills_refuse_to_run_without_what_they_drill(fault, kafka, replicas, message):
    from sidstream.chaos import _check_drill

    with pytest.raises(click.UsageError, match=message):
        _check_drill(fault, Settings(kafka=kafka), replicas)
    _check_drill("kill-leader", Settings(kafka={"brokers": 3}), {})  # a cluster: runs


def test_redis_cluster_profile_is_feast_s_cluster_client(tmp_path):
    from streams.sinks.store import is_transient_store_error, store_config

    online = store_config(tmp_path, "redis_cluster", "127.0.0.1:7000,127.0.0.1:7001")["online_store"]
    assert online == {"type": "redis", "connection_string": "127.0.0.1:7000,127.0.0.1:7001", "skip_dedup": True,
                      "redis_type": "redis_cluster"}
    import redis.exceptions as e

    assert is_transient_store_error(e.ClusterDownError("CLUSTERDOWN")) and is_transient_store_error(e.TryAgainError("x"))
    assert not is_transient_store_error(e.DataError("bad"))


def test_a_dead_letter_is_sized_against_its_dlq_topic_s_own_limit():
    from streams.records import DLQ_EXCERPT_BYTES, DeadLetter, RawRecord
    from streams.runtime import Runtime

    rt = Runtime.__new__(Runtime)
    rt.max_message_bytes, rt.dlq_limits = 16 << 20, {"t.dlq": 1 << 20}
    assert rt.dead_letter_limit("t.dlq") == 1 << 20 and rt.dead_letter_limit("other.dlq") == 16 << 20
    big = DeadLetter(RawRecord("t", 0, 5, b"k", b"x" * (2 << 20), 1), "too big", "oversize", "k")
    from streams import avro_codec

    small = avro_codec.decode(big.encode("w", rt.dead_letter_limit("t.dlq")), expected="DeadLetter")[1]
    whole = avro_codec.decode(big.encode("w", rt.dead_letter_limit("other.dlq")), expected="DeadLetter")[1]
    assert len(small["original"]) == DLQ_EXCERPT_BYTES and len(whole["original"]) == 2 << 20


def test_workers_started_before_one_fails_to_start_are_stopped(tmp_path, monkeypatch):
    """A worker that exits while the run waits for every worker to be ready raises, and the
    workers already started are stopped by their pids, not left running (a chaos run once left
    its text worker behind when the assigner failed at start)."""
    import subprocess
    import sys

    from sidstream.harness import PipelineRun

    run = PipelineRun(Settings(home=tmp_path), tmp_path, replicas={"text": 2})
    started: list[subprocess.Popen[bytes]] = []

    def spawn(name: str, roles: tuple[str, ...]) -> None:
        code = "import sys; sys.exit(3)" if name == "assigner" else "import time; time.sleep(60)"
        started.append(subprocess.Popen([sys.executable, "-c", code]))
        run.processes[name] = started[-1]

    monkeypatch.setattr(run, "_spawn", spawn)
    with pytest.raises(RuntimeError, match="worker assigner exited with 3"):
        run.start_workers((("text",), ("assigner",)), timeout_s=30)
    assert len(started) == 3 and all(p.poll() is not None for p in started)
    assert run.processes == {}
