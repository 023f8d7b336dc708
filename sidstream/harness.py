"""Runs the whole pipeline on a real broker: worker processes, producing tracks, and
waiting until every track's SIDs are readable in Feast. Used by the demo, the pipeline
benchmark and the integration tests, so that all three measure the same thing.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import Consumer, TopicPartition

from sidcore.config import Settings, dump_settings
from streams.admin.topics import TopicNames, create_topics, dlq
from streams.kafka_clients import Brokers, check_access, librdkafka
from streams.producer import TrackProducer

log = logging.getLogger(__name__)

WORKER_GROUPS = (("text", "audio"), ("assigner", "writer"))


def parse_replicas(spec: str | None) -> dict[str, int]:
    """`text=2,assigner=2,writer=2` -> {role: worker processes}; roles not named run one."""
    from streams.topology import ROLES

    out: dict[str, int] = {}
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        role, sep, count = part.partition("=")
        role = role.strip()
        if not sep or role not in ROLES or not count.strip().isdigit() or int(count) < 1:
            raise ValueError(f"--replicas {spec!r}: expected ROLE=N,... with ROLE one of {', '.join(ROLES)} and N >= 1")
        out[role] = int(count)
    return out


def worker_name(roles: tuple[str, ...], replica: int = 0) -> str:
    """A worker process's name: its roles joined, and `-r<i>` for replica i > 0."""
    return "-".join(roles) + (f"-r{replica}" if replica else "")


@dataclass
class PipelineRun:
    settings: Settings
    run_dir: Path
    prefix: str = field(default_factory=lambda: f"run{uuid.uuid4().hex[:8]}-")
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)  # worker name -> process
    metrics_ports: dict[tuple[str, ...], int] = field(default_factory=dict)  # the first replica of a group's
    groups: tuple[tuple[str, ...], ...] = WORKER_GROUPS  # the worker processes, set by start_workers
    # role -> worker processes in the role's consumer group (a group of roles runs the most any of them asks)
    replicas: dict[str, int] = field(default_factory=dict)

    @property
    def names(self) -> TopicNames:
        return TopicNames(self.prefix)

    def replica_count(self, roles: tuple[str, ...]) -> int:
        return max(self.replicas.get(r, 1) for r in roles)

    def workers(self, groups: tuple[tuple[str, ...], ...] | None = None) -> list[tuple[str, tuple[str, ...]]]:
        """(name, roles) of every worker process of `groups` (default: the run's), replicas included."""
        return [(worker_name(roles, i), roles) for roles in (self.groups if groups is None else groups)
                for i in range(self.replica_count(roles))]

    @property
    def worker_settings(self) -> Settings:
        """The run's settings, whole, as the workers get them: the topic prefix differs, and the
        encoder processes, which share this machine, split its cores (unless threads are set).
        Only processes with an encoder role count: the assigner and writer use little CPU."""
        s = self.settings
        update: dict[str, Any] = {"kafka": s.kafka.model_copy(update={"topic_prefix": self.prefix})}
        if s.encoders.threads is None:
            encoding = sum(1 for _, roles in self.workers() if {"text", "audio"} & set(roles)) or 1
            update["encoders"] = s.encoders.model_copy(update={"threads": max(1, (os.cpu_count() or 2) // encoding)})
        return s.model_copy(update=update)

    def settings_file(self) -> Path:
        return dump_settings(self.worker_settings, self.run_dir / "settings.json")

    def create_topics(self) -> None:
        k = self.settings.kafka
        check_access(k)
        create_topics(k, self.names, k.partitions, max_message_bytes=k.max_message_bytes,
                      replication_factor=k.replication_factor, min_insync_replicas=k.min_insync_replicas)

    def start_workers(self, groups: tuple[tuple[str, ...], ...] = WORKER_GROUPS, timeout_s: float = 180.0,
                      metrics_ports: dict[tuple[str, ...], int] | None = None,
                      replicas: dict[str, int] | None = None) -> None:
        """Start every worker process of `groups` (`replicas` per role, default one) and wait until
        each has joined its consumer group."""
        self.metrics_ports.update(metrics_ports or {})
        self.replicas.update(replicas or {})
        self.groups = groups
        try:
            for name, roles in self.workers():
                self._spawn(name, roles)
            self.wait_ready(groups, timeout_s)
        except BaseException:  # one worker failed to start: stop the others, orphan none
            self.stop_workers()
            raise

    def _spawn(self, name: str, roles: tuple[str, ...]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        settings_file = self.settings_file()
        (self.run_dir / f"{name}.ready").unlink(missing_ok=True)
        logf = open(self.run_dir / f"worker-{name}.log", "ab")  # noqa: SIM115 - owned by the child
        cmd = [sys.executable, "-m", "sidstream.cli", "--settings", str(settings_file), "--log-level", "INFO",
               "worker", "run", "--roles", ",".join(roles), "--ready-file", str(self.run_dir / f"{name}.ready")]
        if roles in self.metrics_ports and name == worker_name(roles):
            cmd += ["--metrics-port", str(self.metrics_ports[roles])]
        self.processes[name] = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait_ready(self, groups: tuple[tuple[str, ...], ...], timeout_s: float = 180.0, names: list[str] | None = None) -> None:
        """Wait until every worker of `groups` (or the workers `names`) wrote its ready file."""
        names = [n for n, _ in self.workers(groups)] if names is None else names
        deadline = time.monotonic() + timeout_s
        while not all((self.run_dir / f"{n}.ready").exists() for n in names):
            for n in names:
                p = self.processes[n]
                if p.poll() is not None:
                    raise RuntimeError(f"worker {n} exited with {p.returncode}: {self.worker_log_tail(n)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers not ready after {timeout_s:.0f}s")
            time.sleep(0.2)

    def kill_and_restart(self, roles: tuple[str, ...], wait_ready: bool = True, replica: int = 0) -> None:
        """kill -9 one worker (no clean shutdown, no final commit) and start it again."""
        name = worker_name(roles, replica)
        self.kill(name)
        self._spawn(name, roles)
        if wait_ready:
            self.wait_ready((roles,), names=[name])

    def kill(self, name: str) -> None:
        """kill -9 one worker and leave it dead (its partners take its partitions)."""
        p = self.processes[name]
        p.kill()
        p.wait()

    def signal(self, name: str, sig: int) -> None:
        """Send `sig` to one worker (SIGSTOP / SIGCONT: a zombie replica)."""
        self.processes[name].send_signal(sig)

    def kill_all(self) -> None:
        for p in self.processes.values():
            p.kill()
        for p in self.processes.values():
            p.wait()
        self.processes.clear()

    def worker_log_tail(self, name: str | tuple[str, ...], chars: int = 3000) -> str:
        name = worker_name(name) if isinstance(name, tuple) else name
        path = self.run_dir / f"worker-{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop_workers(self, timeout_s: float = 30.0) -> None:
        for p in self.processes.values():
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)  # a paused (drilled) worker cannot act on SIGTERM
                p.terminate()
        for p in self.processes.values():
            try:
                p.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.processes.clear()

    def producer(self) -> TrackProducer:
        s = self.settings
        return TrackProducer(s.kafka, self.names.metadata, self.names.audio, s.stream.inline_audio_max_bytes, s.kafka.max_message_bytes,
                             embedding_topics={"text": self.names.emb_text, "audio": self.names.emb_audio})

    def dead_letters(self, timeout_s: float = 10.0) -> dict[str, list[dict[str, Any]]]:
        """Every dead letter of this run, read from the broker: DLQ topic -> decoded records."""
        topics = [dlq(t) for t in (self.names.metadata, self.names.audio, self.names.emb_text, self.names.emb_audio, self.names.sids)]
        return read_topics(self.settings.kafka, topics, "DeadLetter", timeout_s)

    def assigned(self, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        """Every SID record the assigner emitted in this run, read from the broker."""
        return read_topics(self.settings.kafka, [self.names.sids], "SidAssigned", timeout_s)[self.names.sids]


def topic_messages(bootstrap: Brokers, topic: str, timeout_s: float = 10.0) -> list[Any]:
    """Every message now in `topic` (each partition up to its high watermark, in offset order),
    as confluent-kafka messages (key, value, timestamp); gives up after `timeout_s`."""
    consumer = Consumer(librdkafka(bootstrap, {"group.id": f"reader-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False}))
    out: list[Any] = []
    try:
        md = consumer.list_topics(topic, timeout=timeout_s).topics[topic]
        parts = [TopicPartition(topic, p, 0) for p in md.partitions]
        total = sum(consumer.get_watermark_offsets(p, timeout=timeout_s)[1] for p in parts)
        if total:
            consumer.assign(parts)
            deadline = time.monotonic() + timeout_s
            while len(out) < total and time.monotonic() < deadline:
                out.extend(m for m in consumer.consume(1000, timeout=0.5) if not m.error())
            consumer.unassign()
    finally:
        consumer.close()
    return out


def letter_source(letter: dict[str, Any]) -> tuple[str, int, int]:
    """The source record a decoded dead letter stands for: (topic, partition, offset). Dead letters
    are at least once (a replayed batch dead-letters its bad records again); per source, once."""
    return letter["source_topic"], letter["partition"], letter["offset"]


def read_topics(bootstrap: Brokers, topics: list[str], schema: str, timeout_s: float = 10.0) -> dict[str, list[dict[str, Any]]]:
    """All records now in `topics` (up to each partition's high watermark), decoded as `schema`."""
    from streams import avro_codec

    return {t: [avro_codec.decode(m.value(), expected=schema)[1] for m in topic_messages(bootstrap, t, timeout_s)]
            for t in topics}


def wait_until_readable(
    store: object,
    expected: dict[str, str],
    produced_at: dict[str, int],
    timeout_s: float,
    codebook_version: str,
    poll_s: float = 0.1,
    on_progress: Callable[[int], None] | None = None,
    stop_after: int | None = None,
    max_duty: float = 0.2,
    polls: dict[str, float] | None = None,
) -> dict[str, float]:
    """Poll Feast until every track has its expected SID column ("text_sid" or "joint_sid").

    Returns track_id -> latency in ms from produce to first seen readable. `produced_at` may
    still be filling (a paced producer in another thread): only produced tracks are polled.
    `stop_after`: return as soon as that many tracks are readable.

    Reads start every `poll_s`, at a fixed rate: the read's own time and a late wake-up on a busy
    machine come out of the next wait, not on top of it.
    A read of many pending tracks (a burst: thousands) costs tens of ms of CPU, which the
    poller would take from the pipeline it measures on a small machine, so the period stretches
    to what keeps the poller busy at most `max_duty` of the time (1.0: never stretched);
    `polls` (if given) receives the count and the mean interval in ms: the latency's resolution.
    """
    if not 0.0 < max_duty <= 1.0:
        raise ValueError(f"max_duty must be in (0, 1], got {max_duty}")
    from streams.sinks.reader import read_sid_columns

    pending = dict(expected)
    latency: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    n_polls, first_poll, last_poll = 0, None, 0.0
    due: float | None = None  # when this read was due: reads keep a fixed rate, a late wake-up is not carried
    while pending and time.monotonic() < deadline:
        ids = [t for t in list(pending) if t in produced_at]
        if not ids:
            time.sleep(poll_s)
            continue
        started = last_poll = time.monotonic()
        due = started if due is None else due
        first_poll = started if first_poll is None else first_poll
        n_polls += 1
        by_column: dict[str, list[str]] = {}
        for t in ids:
            by_column.setdefault(pending[t], []).append(t)
        try:
            # one read per SID column asked for, of that column only (no DataFrame: the poller's CPU is the pipeline's)
            values = {c: read_sid_columns(store, want, codebook_version, [c])[c] for c, want in by_column.items()}  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - SQLite may be busy while the writer commits
            log.debug("read retry: %s", exc)
            time.sleep(poll_s)
            continue
        period_s = max(poll_s, (time.monotonic() - started) / max_duty)  # the read is at most max_duty of it
        seen_at = time.time() * 1000
        for column, want in by_column.items():
            for t, v in zip(want, values[column], strict=True):
                if v is not None and not (isinstance(v, float) and np.isnan(v)) and len(v) > 0:
                    latency[t] = seen_at - produced_at[t]
                    del pending[t]
        if on_progress is not None:
            on_progress(len(latency))
        if stop_after is not None and len(latency) >= stop_after:
            break
        if pending:  # the next read is due one period after this one was (now, if that has passed)
            due = max(due + period_s, time.monotonic())
            time.sleep(max(0.0, due - time.monotonic()))
    if polls is not None and first_poll is not None:
        polls.update(count=n_polls, mean_interval_ms=round(1000 * (last_poll - first_poll) / max(1, n_polls - 1), 1))
    return latency
