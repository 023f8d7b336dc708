"""`sidstream chaos`: the real pipeline (real broker or a local cluster of them, real Feast, one
process per role or several: --replicas) on N tracks with B bad records mixed in, one fault injected mid-stream, recovery with no person,
and one JSON line that says what was lost, duplicated or changed.

Definitions (each number is measured, none is derived from another):
- produced: good tracks produced; bad_injected: bad records produced;
- in_feast: good tracks whose text SID is readable in Feast at the end;
- lost: good tracks not readable at the end (dead-lettered or not);
- dlq: distinct source records (topic, partition, offset) found in the dead-letter topics;
  dlq_messages: dead-letter messages (a replayed batch may dead-letter a record twice);
- duplicated_final: good tracks whose final row (latest event time) is in the offline log more
  than once; duplicate_offline_rows: offline SID rows beyond the first of their key, in total;
- mismatched: good tracks whose final text SID differs from a clean run of the same tracks, on
  the semantic layers (psrq_id's identity codes depend on the order tracks reached their bucket,
  which a fault may change: they are checked by shared_ids instead);
- shared_ids: good tracks whose final full text ID another track also holds (must be 0);
- recovery_s: end of the fault -> last good track readable;
- max_gap_s: the longest time, from the fault landing to the last good track readable, in which
  no new track became readable (a cluster drill must keep it short: the stream does not wait for
  a broker to come back);
- in_flight_at_fault: produced minus readable at the moment the fault lands.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import pandas as pd
from confluent_kafka import Consumer, TopicPartition
from rich.console import Console

from psrq import load_codebook_set
from sidcore.catalog import Track, lastfm_tracks
from sidcore.config import Settings, get_settings, with_brokers
from sidcore.registry import Registry
from sidstream.harness import PipelineRun, letter_source
from streams import avro_codec
from streams.admin.broker import LocalBroker, local_broker
from streams.admin.redis_cluster import LocalRedisCluster
from streams.kafka_clients import Brokers, librdkafka
from streams.sinks.reader import read_sids
from streams.sinks.store import open_store
from trainer.bootstrap import ensure_codebooks

FAULTS = ("none", "kill-encoder", "kill-assigner", "kill-writer", "kill-broker", "feast-down", "slow-encoder",
          "kill-leader", "stop-broker", "kill-replica", "stop-replica", "redis-primary-down")
CHAOS_GROUPS = (("text",), ("assigner",), ("writer",))
FAULT_GROUP = {"kill-encoder": ("text",), "kill-assigner": ("assigner",), "kill-writer": ("writer",)}
CLUSTER_FAULTS = ("kill-leader", "stop-broker")  # need a cluster: kafka.brokers >= 2
REPLICA_FAULTS = ("kill-replica", "stop-replica")  # need two replicas of the roles they drill
STOP_BROKER_S = 20.0  # stop-broker: how long the broker's JVM stays paused


def bad_records(n: int, seed: int = 0) -> list[tuple[bytes, bytes, str]]:
    """n bad records for tracks.metadata: (key, value, what is wrong), cycling through kinds."""
    ts = 1_700_000_000_000

    def meta(track_id: str, text: str) -> bytes:
        return avro_codec.encode("TrackMetadata", {"track_id": track_id, "event_time": ts, "tags": [], "text": text,
                                                   "ingest_time": ts})

    kinds: list[tuple[str, Callable[[str], bytes]]] = [
        ("undecodable", lambda k: b"\x00not avro " + k.encode()),
        ("truncated", lambda k: meta(k, "truncated record")[:-5]),
        ("whitespace", lambda k: meta(k, "   \t ")),
        ("nul", lambda k: meta(k, "a\x00b")),
        ("too long", lambda k: meta(k, "x" * 200_000)),
        ("wrong schema", lambda k: avro_codec.encode("Interaction", {"user_id": "u", "track_id": k, "event_time": ts,
                                                                     "label": 1})),
    ]
    out = []
    for i in range(n):
        name, make = kinds[i % len(kinds)]
        key = f"bad:{seed}:{i}"
        out.append((key.encode(), make(key), name))
    return out


class _Readability(threading.Thread):
    """Polls Feast for produced good tracks and records when each first became readable."""
    def __init__(self, store: Any, produced_at: dict[str, int], poll_s: float, version: str) -> None:
        super().__init__(daemon=True)
        self.store, self.produced_at, self.poll_s, self.version = store, produced_at, poll_s, version
        self.readable_at: dict[str, float] = {}
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            ids = [t for t in list(self.produced_at) if t not in self.readable_at]
            if ids:
                try:
                    df = read_sids(self.store, ids, self.version)
                    now = time.time()
                    for t, v in zip(df["track_id"], df["text_sid"], strict=True):
                        if v is not None and len(v) > 0:
                            self.readable_at[t] = now
                except Exception:  # noqa: BLE001 - the store may be locked (feast-down): poll again
                    pass
            self.stop_event.wait(self.poll_s)


def _consumer_lag(bootstrap: Brokers, group: str, topic: str) -> int:
    c = Consumer(librdkafka(bootstrap, {"group.id": group, "enable.auto.commit": False}))
    try:
        parts = [TopicPartition(topic, p) for p in c.list_topics(topic, timeout=10).topics[topic].partitions]
        lag = 0
        for tp in c.committed(parts, timeout=10):
            high = c.get_watermark_offsets(tp, timeout=10)[1]
            lag += high - (tp.offset if tp.offset >= 0 else 0)
        return lag
    finally:
        c.close()


def _hold_sqlite_lock(db: Path, seconds: float) -> None:
    """The online store refuses writes: an exclusive transaction held by another connection."""
    conn = sqlite3.connect(db, timeout=30.0)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        time.sleep(seconds)
        conn.rollback()
    finally:
        conn.close()


def run_chaos(
    settings: Settings, fault: str, tracks: list[Track], n_bad: int, rate: float, run_dir: Path,
    clean_codes: dict[str, list[int]] | None = None, fault_at_share: float = 1 / 3, timeout_s: float = 300.0,
    on_status: Callable[[str], None] | None = None, seed: int = 0, replicas: dict[str, int] | None = None,
    broker: LocalBroker | None = None, redis_cluster: LocalRedisCluster | None = None,
) -> dict[str, Any]:
    """Run the pipeline once with `fault` ("none": a clean run); returns the result dict
    (with "codes": the final text SID of every good track). `broker`: the local Kafka the broker
    faults act on (default: the one `sidstream broker start` runs for the settings' home);
    `redis_cluster`: the Redis Cluster the redis-primary-down fault acts on (its settings use it)."""
    say = on_status or (lambda _: None)
    slow_flag = run_dir / "slowdown"
    replicas = dict(replicas or {})
    s = _drill_settings(settings, fault, run_dir, slow_flag, replicas, redis_cluster)
    broker = broker or local_broker(s)
    run = PipelineRun(s, run_dir)
    run.create_topics()
    store = open_store(s.feast_dir, profile=s.feast_profile, redis_url=s.redis)
    say(f"starting workers (text | assigner | writer; replicas {replicas or 'one each'})...")
    run.start_workers(CHAOS_GROUPS, replicas=replicas)
    bad = bad_records(n_bad, seed)
    items = _mixed(tracks, bad, seed)
    produced_at: dict[str, int] = {}

    live = Registry(s.registry_dir).live("codebooks")
    if live is None:
        raise click.UsageError("no live codebook version: run `sidstream demo` or `sidstream train codebooks` first")
    poller = _Readability(store, produced_at, poll_s=0.05, version=live.version)
    poller.start()
    feeder = threading.Thread(target=_produce, args=(run, items, rate, produced_at), daemon=True)
    t_start = time.time()
    feeder.start()
    result: dict[str, Any] = {"fault": fault, "produced": len(tracks), "bad_injected": len(bad),
                              "brokers": s.kafka.brokers, "replication_factor": s.kafka.replication_factor,
                              "min_insync_replicas": s.kafka.min_insync_replicas,
                              "replicas": {r: run.replica_count((r,)) for g in CHAOS_GROUPS for r in g}}
    fault_start = fault_end = time.time()
    lag_trace: list[int] = []
    down: list[int] = []  # broker nodes the fault left down: started again after the measurement
    try:
        # the fault lands once a share of the tracks is in flight (or everything is produced)
        target = fault_at_share * len(tracks)
        while len(produced_at) - len(poller.readable_at) < target and len(produced_at) < len(tracks):
            time.sleep(0.01)
        result["in_flight_at_fault"] = len(produced_at) - len(poller.readable_at)
        say(f"fault {fault} with {result['in_flight_at_fault']} tracks in flight")
        fault_start = time.time()
        result.update(_inject(fault, run, s, broker, slow_flag, lag_trace, down, redis_cluster))
        fault_end = time.time()
        deadline = time.monotonic() + timeout_s
        text_lag = functools.partial(_consumer_lag, s.kafka, f"{run.prefix}sidstream-text", run.names.metadata)
        while len(poller.readable_at) < len(tracks) and time.monotonic() < deadline:
            if fault == "slow-encoder":
                lag_trace.append(text_lag())
            time.sleep(0.5)
        if fault == "slow-encoder":
            time.sleep(2.0)  # a commit interval, so that the lag reflects the last batches
            lag_trace.append(text_lag())
        feeder.join(timeout=30)
        poller.stop_event.set()
        poller.join(timeout=10)
        final = read_sids(store, [t.track_id for t in tracks], live.version)
        dead = _await_dead_letters(run, len(bad), deadline)
    finally:
        poller.stop_event.set()
        run.stop_workers()
        for node in down:  # the cluster whole again for the next drill
            broker.start_node(node)
    codes = {t: list(v) for t, v in zip(final["track_id"], final["text_sid"], strict=True) if v is not None and len(v)}
    result.update(_outcome(codes, len(tracks), dead, s.feast_dir, clean_codes, load_codebook_set(live.path).codebooks["text"].semantic_layers))
    # 0: every track was readable before the fault ended (a replica paused past its session: its partner took over)
    result.update({"recovery_s": round(max(0.0, max(poller.readable_at.values(), default=fault_end) - fault_end), 2),
                   "max_gap_s": max_gap_s(fault_start, list(poller.readable_at.values())),
                   "wall_s": round(time.time() - t_start, 1)})
    if fault == "slow-encoder":
        result["lag"] = {"at_fault": lag_trace[0] if lag_trace else None, "max": max(lag_trace, default=None),
                         "end": lag_trace[-1] if lag_trace else None}
    result["codes"] = codes
    return result


def _drill_settings(settings: Settings, fault: str, run_dir: Path, slow_flag: Path, replicas: dict[str, int],
                    redis_cluster: LocalRedisCluster | None) -> Settings:
    """The run's settings (its own Feast folder, the slow-down flag), after checking that the
    fault can be drilled on them."""
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; choose from {', '.join(FAULTS)}")
    s = settings.model_copy(update={"feast_root": run_dir / "feast", "registry_root": settings.registry_dir,
                                    "stream": settings.stream.model_copy(update={"slowdown_file": slow_flag})})
    if fault == "feast-down" and s.feast_profile != "local":
        raise click.UsageError("--fault feast-down drills the SQLite online store (feast_profile=local)")
    if fault == "redis-primary-down" and (redis_cluster is None or s.feast_profile != "redis_cluster"):
        raise click.UsageError("--fault redis-primary-down drills a Redis Cluster (feast_profile=redis_cluster)")
    _check_drill(fault, s, replicas)
    return s


def _mixed(tracks: list[Track], bad: list[Any], seed: int) -> list[Any]:
    """The tracks with the bad records inserted at seeded random places."""
    rng = random.Random(seed)
    items: list[Any] = list(tracks)
    for record in bad:
        items.insert(rng.randrange(len(items) + 1), record)
    return items


def _produce(run: PipelineRun, items: list[Any], rate: float, produced_at: dict[str, int]) -> None:
    """Produce `items` (tracks and bad raw records) at `rate` per second, noting each track's time."""
    producer = run.producer()
    interval = 1.0 / rate
    start = time.monotonic()
    for i, item in enumerate(items):
        delay = start + i * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if isinstance(item, Track):
            produced_at.update(producer.send_metadata([item]))
        else:
            producer.send_raw(run.names.metadata, item[0], item[1])
        if i % 50 == 0:
            producer._producer.poll(0)
    producer.flush(120)


def max_gap_s(fault_start: float, readable_at: list[float]) -> float:
    """The longest time, from the fault to the last track readable, in which no new track became readable."""
    times = sorted([fault_start, *(t for t in readable_at if t >= fault_start)])
    return round(max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0), 2)


def _check_drill(fault: str, s: Settings, replicas: dict[str, int]) -> None:
    """A drill that needs a cluster or replicas refuses to run without them, in one line."""
    if fault in CLUSTER_FAULTS and s.kafka.brokers < 2:
        raise click.UsageError(f"--fault {fault} drills a cluster: run it with --brokers 3")
    if fault in CLUSTER_FAULTS and s.kafka.min_insync_replicas >= s.kafka.replication_factor:
        raise click.UsageError(f"--fault {fault}: with min.insync.replicas {s.kafka.min_insync_replicas} of "
                               f"{s.kafka.replication_factor} replicas no write is acknowledged while a broker is down")
    needs = {"kill-replica": ("text", "assigner", "writer"), "stop-replica": ("assigner",)}.get(fault, ())
    missing = [r for r in needs if replicas.get(r, 1) < 2]
    if missing:
        raise click.UsageError(f"--fault {fault} needs two replicas of {', '.join(missing)}: --replicas "
                               + ",".join(f"{r}=2" for r in needs))


def _busiest_node(run: PipelineRun, broker: LocalBroker) -> int:
    """The broker node that leads the most partitions of the metadata, SID and identity topics."""
    topics = {run.names.metadata, run.names.sids, run.names.identity}
    leads = broker.leaders()
    return max(leads, key=lambda n: (sum(p.rsplit("/", 1)[0] in topics for p in leads[n]), -n))


def _paused(send: Callable[[int], Any], seconds: float) -> None:
    """SIGSTOP a process through `send` for `seconds`, then SIGCONT it, whatever happens meanwhile."""
    send(signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        send(signal.SIGCONT)


def _inject(fault: str, run: PipelineRun, s: Settings, broker: LocalBroker, slow_flag: Path, lag_trace: list[int],
            down: list[int], redis_cluster: LocalRedisCluster | None = None) -> dict[str, Any]:
    """Apply `fault` to the running pipeline and return when it is over (the workers, the
    broker, the store or the encoder are back; a killed leader or replica stays down, its
    partners carry on): what the drill did, for the result."""
    if fault in FAULT_GROUP:
        run.kill_and_restart(FAULT_GROUP[fault], wait_ready=False)
    elif fault == "kill-broker":  # every node at once: a whole outage, then a restart
        if any(pid is None for pid in broker.pids().values()):
            raise click.UsageError("kill-broker needs the broker that `sidstream broker start` runs for this home")
        for node in broker.nodes:
            node.kill()
        time.sleep(10.0)
        broker.start()
    elif fault == "kill-leader":
        node = _busiest_node(run, broker)
        broker.kill(node)
        down.append(node)
        return {"killed_node": node}
    elif fault == "stop-broker":
        node = _busiest_node(run, broker)
        _paused(lambda sig: broker.kill(node, sig), STOP_BROKER_S)
        return {"stopped_node": node, "stopped_s": STOP_BROKER_S}
    elif fault == "kill-replica":  # one replica of each role in turn; each partner takes its partitions
        killed = []
        for roles in CHAOS_GROUPS:
            name = run.workers((roles,))[-1][0]
            run.kill(name)
            killed.append(name)
            time.sleep(3.0)
        return {"killed_workers": killed}
    elif fault == "redis-primary-down":  # kill -9 a primary: its replica is promoted after the node timeout
        assert redis_cluster is not None
        victim = redis_cluster.primaries_now()[0]
        redis_cluster.kill(victim)
        failover_s = redis_cluster.wait_failover(victim)
        return {"killed_redis_primary": victim, "failover_s": round(failover_s, 2)}
    elif fault == "stop-replica":  # a zombie: paused past its session, it wakes holding claims it lost
        name = run.workers((("assigner",),))[-1][0]
        paused_s = s.stream.session_timeout_s + 10.0
        _paused(lambda sig: run.signal(name, sig), paused_s)
        return {"stopped_worker": name, "stopped_s": paused_s}
    elif fault == "feast-down":
        _hold_sqlite_lock(s.feast_dir / "data" / "online.db", 15.0)
    elif fault == "slow-encoder":
        group = f"{run.prefix}sidstream-text"
        slow_flag.write_text("10")
        until = time.monotonic() + 20.0
        while time.monotonic() < until:
            lag_trace.append(_consumer_lag(s.kafka, group, run.names.metadata))
            time.sleep(1.0)
        slow_flag.unlink()
    return {}


def _await_dead_letters(run: Any, expected: int, deadline: float) -> dict[str, list[dict[str, Any]]]:
    """The run's dead letters, read again (bounded by the drill's `deadline`) until `expected`
    distinct source records are there: the good tracks can all be readable while a worker that
    the fault held up still retries its bad records' batch."""
    while True:
        dead = run.dead_letters()
        found = len({letter_source(r) for v in dead.values() for r in v})
        if found >= expected or time.monotonic() >= deadline:
            return dead
        time.sleep(1.0)


def _outcome(codes: dict[str, list[int]], produced: int, dead: dict[str, list[dict[str, Any]]], feast_dir: Path,
             clean_codes: dict[str, list[int]] | None, layers: int) -> dict[str, Any]:
    """Loss, dead letters, duplicates and mismatches of a run, from its final codes (text SID
    per track in Feast), its dead letters and its offline log; `layers`: semantic layers compared."""
    holders: dict[tuple[int, ...], int] = {}
    for c in codes.values():
        holders[tuple(c)] = holders.get(tuple(c), 0) + 1
    dead_all = [r for v in dead.values() for r in v]
    offline = _offline_sid_rows(feast_dir)
    return {
        "in_feast": len(codes),
        "lost": produced - len(codes),
        "dlq": len({letter_source(r) for r in dead_all}),
        "dlq_messages": len(dead_all),
        "duplicated_final": _duplicated_final(offline),
        "duplicate_offline_rows": _duplicate_rows(offline),
        "mismatched": (sum(1 for t, c in clean_codes.items() if t in codes and codes[t][:layers] != c[:layers])
                       if clean_codes is not None else None),
        "shared_ids": sum(n for n in holders.values() if n > 1),
    }


def _offline_sid_rows(feast_dir: Path) -> Any:
    parts = sorted((feast_dir / "data" / "offline" / "track_sids").glob("part-*.parquet"))
    cols = ["track_id", "sid_event_time_ms", "codebook_version"]
    return pd.concat([pd.read_parquet(p, columns=cols) for p in parts]) if parts else pd.DataFrame(columns=cols)


def _duplicate_rows(offline: Any) -> int:
    return int(offline.duplicated(["track_id", "sid_event_time_ms", "codebook_version"]).sum())


def _duplicated_final(offline: Any) -> int:
    if offline.empty:
        return 0
    latest = offline.groupby("track_id")["sid_event_time_ms"].transform("max")
    final = offline[offline["sid_event_time_ms"] == latest]
    return int((final.groupby("track_id").size() > 1).sum())


def clean_run_codes(settings: Settings, tracks: list[Track], rate: float, root: Path,
                    on_status: Callable[[str], None] | None = None) -> dict[str, list[int]]:
    """The final text SIDs of a clean run of these tracks under the live codebook version,
    cached per (codebook version, tracks): one clean run serves every fault."""

    live = Registry(settings.registry_dir).live("codebooks")
    key = hashlib.sha256(json.dumps([live.version if live else None, [t.track_id for t in tracks]]).encode()).hexdigest()[:16]
    path = root / f"clean-{key}.json"
    if path.is_file():
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    out = run_chaos(settings, "none", tracks, 0, rate, root / f"clean-{key}", fault_at_share=1.0, on_status=on_status)
    if out["lost"]:
        raise RuntimeError(f"the clean run lost {out['lost']} tracks: no reference to compare with")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out["codes"]))
    return out["codes"]  # type: ignore[no-any-return]


@click.command()
@click.option("--fault", type=click.Choice(FAULTS[1:]), required=True)
@click.option("--tracks", "n_tracks", type=click.IntRange(min=3), default=300, show_default=True)
@click.option("--bad", "n_bad", type=click.IntRange(min=0), default=12, show_default=True, help="bad records mixed in")
@click.option("--rate", type=click.FloatRange(min=1), default=300.0, show_default=True, help="tracks/s produced")
@click.option("--fault-at", "fault_at", type=click.FloatRange(0, 1), default=1 / 3, show_default=True,
              help="inject once this share of the tracks is in flight (or all are produced)")
@click.option("--timeout", type=float, default=300.0, show_default=True, help="seconds to wait for recovery")
@click.option("--brokers", type=click.IntRange(1, 9), default=None,
              help="Kafka nodes of the local cluster the drill runs on (default kafka.brokers); replication "
                   "follows it (min(3, N) replicas, 2 in sync when 3) unless kafka.replication_factor is set")
@click.option("--replicas", "replicas_spec", default=None, metavar="ROLE=N,...",
              help="worker processes per role, e.g. text=2,assigner=2,writer=2 (default one each)")
@click.option("--redis-port", type=click.IntRange(1024, 55530), default=17000, show_default=True,
              help="redis-primary-down: the first of the six ports of the drill's own Redis Cluster")
@click.option("--json", "as_json", is_flag=True, help="end with exactly one JSON line")
def chaos(fault: str, n_tracks: int, n_bad: int, rate: float, fault_at: float, timeout: float, brokers: int | None,
          replicas_spec: str | None, redis_port: int, as_json: bool) -> None:
    """Inject one fault into the running pipeline and measure what it cost."""
    from sidstream.harness import parse_replicas

    s = get_settings()
    s = with_brokers(s, brokers)
    try:
        replicas = parse_replicas(replicas_spec)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    _check_drill(fault, s, replicas)
    console = Console(stderr=True)
    redis_cluster = None
    if fault == "redis-primary-down":  # the drill's own Redis Cluster (3 primaries + 3 replicas) on redis_port..+5
        redis_cluster = LocalRedisCluster(s.home / "redis-cluster", redis_port)
        s = s.model_copy(update={"feast_profile": "redis_cluster", "redis_url": redis_cluster.start()})
    local_broker(s).start()
    ensure_codebooks(s, [], on_status=console.print)
    tracks = lastfm_tracks(s.lastfm_source, n_tracks)
    root = s.home / "chaos"
    clean = clean_run_codes(s, tracks, rate, root, on_status=console.print)
    run_dir = root / f"{fault}-{time.strftime('%Y%m%dT%H%M%S')}"
    try:
        result = run_chaos(s, fault, tracks, n_bad, rate, run_dir, clean, fault_at, timeout, on_status=console.print,
                           replicas=replicas, redis_cluster=redis_cluster)
    finally:
        if redis_cluster is not None:
            redis_cluster.stop()
    result.pop("codes")
    line = json.dumps(result)
    if as_json:
        click.echo(line)
    else:
        console.print_json(line)
    if result["lost"] or result["mismatched"] or result["shared_ids"] or result["duplicated_final"] or result["dlq"] != result["bad_injected"]:
        raise SystemExit(1)
