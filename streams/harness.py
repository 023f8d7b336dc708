"""Runs the whole pipeline on a real broker: worker processes, producing tracks, and
waiting until every track's SIDs are readable in Feast. Used by the demo, the pipeline
benchmark and the integration tests, so that all three measure the same thing.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, TopicPartition

from sidstream.config import Settings
from streams.producer import TrackProducer
from streams.topics import TopicNames, create_topics, dlq

log = logging.getLogger(__name__)

WORKER_GROUPS = (("text", "audio"), ("assigner", "writer"))


@dataclass
class PipelineRun:
    settings: Settings
    run_dir: Path
    prefix: str = field(default_factory=lambda: f"run{uuid.uuid4().hex[:8]}-")
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def names(self) -> TopicNames:
        return TopicNames(self.prefix)

    def env(self) -> dict[str, str]:
        s = self.settings
        env = dict(os.environ)
        env.update(
            SIDSTREAM_HOME=str(s.home),
            SIDSTREAM_CACHE_DIR=str(s.cache_dir),
            SIDSTREAM_REGISTRY_ROOT=str(s.registry_dir),
            SIDSTREAM_FEAST_ROOT=str(s.feast_dir),
            SIDSTREAM_KAFKA__HOST=s.kafka.host,
            SIDSTREAM_KAFKA__PORT=str(s.kafka.port),
            SIDSTREAM_KAFKA__PARTITIONS=str(s.kafka.partitions),
            SIDSTREAM_KAFKA__TOPIC_PREFIX=self.prefix,
            SIDSTREAM_ENCODERS__AUDIO_MODEL=s.encoders.audio_model,
            SIDSTREAM_STREAM__BATCH_SIZE=str(s.stream.batch_size),
            SIDSTREAM_STREAM__BATCH_TIMEOUT_S=str(s.stream.batch_timeout_s),
        )
        if s.encoders.text_model_dir:
            env["SIDSTREAM_ENCODERS__TEXT_MODEL_DIR"] = s.encoders.text_model_dir
        return env

    def create_topics(self) -> None:
        k = self.settings.kafka
        create_topics(k.bootstrap, self.names, k.partitions, max_message_bytes=k.max_message_bytes)

    def start_workers(self, groups: tuple[tuple[str, ...], ...] = WORKER_GROUPS, timeout_s: float = 180.0) -> None:
        """Start one worker process per role group and wait until each has its partitions."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        ready_files = []
        for roles in groups:
            name = "-".join(roles)
            ready = self.run_dir / f"{name}.ready"
            ready.unlink(missing_ok=True)
            ready_files.append(ready)
            logf = open(self.run_dir / f"worker-{name}.log", "ab")  # noqa: SIM115 - owned by the child
            cmd = [sys.executable, "-m", "sidstream.cli", "--log-level", "INFO", "worker", "run", "--roles", ",".join(roles), "--ready-file", str(ready)]
            self.processes.append(subprocess.Popen(cmd, env=self.env(), stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        deadline = time.monotonic() + timeout_s
        while not all(f.exists() for f in ready_files):
            for p, roles in zip(self.processes, groups, strict=False):
                if p.poll() is not None:
                    raise RuntimeError(f"worker {roles} exited with {p.returncode}: {self.worker_log_tail(roles)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers not ready after {timeout_s:.0f}s")
            time.sleep(0.3)

    def worker_log_tail(self, roles: tuple[str, ...], chars: int = 3000) -> str:
        path = self.run_dir / f"worker-{'-'.join(roles)}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop_workers(self, timeout_s: float = 30.0) -> None:
        for p in self.processes:
            if p.poll() is None:
                p.terminate()
        for p in self.processes:
            try:
                p.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.processes.clear()

    def producer(self) -> TrackProducer:
        s = self.settings
        return TrackProducer(s.kafka.bootstrap, self.names.metadata, self.names.audio, s.stream.inline_audio_max_bytes, s.kafka.max_message_bytes)

    def count_dlq(self, timeout_s: float = 10.0) -> dict[str, list[dict[str, object]]]:
        """Read every dead letter of this run from the broker: topic -> decoded records."""
        from streams import avro_codec

        topics = [dlq(t) for t in (self.names.metadata, self.names.audio, self.names.emb_text, self.names.emb_audio, self.names.sids)]
        consumer = Consumer({"bootstrap.servers": self.settings.kafka.bootstrap, "group.id": f"{self.prefix}dlq-reader-{uuid.uuid4().hex[:6]}", "enable.auto.commit": False})
        out: dict[str, list[dict[str, object]]] = {}
        try:
            for topic in topics:
                md = consumer.list_topics(topic, timeout=timeout_s).topics[topic]
                parts = [TopicPartition(topic, p, 0) for p in md.partitions]
                ends = {p.partition: consumer.get_watermark_offsets(p, timeout=timeout_s)[1] for p in parts}
                total = sum(ends.values())
                records: list[dict[str, object]] = []
                if total:
                    consumer.assign(parts)
                    deadline = time.monotonic() + timeout_s
                    while len(records) < total and time.monotonic() < deadline:
                        msg = consumer.poll(0.5)
                        if msg is None or msg.error():
                            continue
                        records.append(avro_codec.decode(msg.value(), expected="DeadLetter")[1])
                    consumer.unassign()
                out[topic] = records
        finally:
            consumer.close()
        return out


def wait_until_readable(
    store: object,
    expected: dict[str, str],
    produced_at: dict[str, int],
    timeout_s: float,
    poll_s: float = 0.1,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Poll Feast until every track has its expected SID column ("text_sid" or "joint_sid").

    Returns track_id -> latency in ms from produce to first seen readable. `produced_at` may
    still be filling (a paced producer in another thread): only produced tracks are polled.
    """
    from streams.feast_store import read_sids

    pending = dict(expected)
    latency: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        ids = [t for t in list(pending) if t in produced_at]
        if not ids:
            time.sleep(poll_s)
            continue
        try:
            df = read_sids(store, ids)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - SQLite may be busy while the writer commits
            log.debug("read retry: %s", exc)
            time.sleep(poll_s)
            continue
        seen_at = time.time() * 1000
        by_column: dict[str, list[str]] = {}
        for t in ids:
            by_column.setdefault(pending[t], []).append(t)
        for column, want in by_column.items():
            sub = df.set_index("track_id").loc[want, column]
            ready = [t for t, v in zip(want, sub.to_numpy(), strict=True) if v is not None and not (isinstance(v, float) and np.isnan(v)) and len(v) > 0]
            for t in ready:
                latency[t] = seen_at - produced_at[t]
                del pending[t]
        if on_progress is not None:
            on_progress(len(latency))
        if pending:
            time.sleep(poll_s)
    return latency
