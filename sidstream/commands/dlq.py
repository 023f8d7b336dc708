"""`sidstream dlq list|replay TOPIC`: inspect dead letters and re-submit them.

A dead letter carries its original record whole when it fit in a message; `replay` sends that
back to the source topic. An oversize one carries an excerpt, its size and sha256, and where
it came from: `replay` re-reads it from the source topic at that partition and offset (while
the topic still holds it) and checks the hash before re-sending it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import click

from streams.kafka_clients import Brokers, librdkafka


def _topics(topic: str) -> tuple[str, str]:
    """(source topic, its dead-letter topic) for a base name, a full name or a .dlq name."""
    from sidcore.config import get_settings
    from streams.admin.topics import TopicNames, dlq

    prefix = get_settings().kafka.topic_prefix
    source = topic.removesuffix(".dlq")
    if prefix and not source.startswith(prefix):
        source = TopicNames(prefix).name(source)
    return source, dlq(source)


def _read_dead(dlq_topic: str) -> list[dict[str, Any]]:
    from sidcore.config import get_settings
    from sidstream.cli import UserError
    from sidstream.harness import read_topics

    try:
        return read_topics(get_settings().kafka, [dlq_topic], "DeadLetter")[dlq_topic]
    except KeyError as exc:
        raise UserError(f"no topic {dlq_topic} on {get_settings().kafka.bootstrap}") from exc


@click.group()
def dlq() -> None:
    """Dead letters: list them with their reasons, replay them to their source topic."""


@dlq.command("list")
@click.argument("topic")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per dead letter")
def list_cmd(topic: str, as_json: bool) -> None:
    """Show the dead letters of TOPIC (e.g. tracks.metadata) with their reasons."""
    from rich.console import Console
    from rich.table import Table

    _, dlq_topic = _topics(topic)
    dead = _read_dead(dlq_topic)
    if as_json:
        for r in dead:
            click.echo(json.dumps({k: (v.hex()[:64] if isinstance(v, bytes) else v) for k, v in r.items()}))
        return
    table = Table(title=f"{dlq_topic}: {len(dead)} dead letters")
    for col in ("source", "track", "error type", "reason", "original"):
        table.add_column(col)
    for r in dead:
        size = r.get("original_size", -1)
        held = "null" if size < 0 else (f"{size} B, excerpt (replay re-reads the source)" if r.get("truncated") else f"{size} B")
        table.add_row(f"{r['source_topic']}[{r['partition']}]@{r['offset']}", r["track_id"] or "", r["error_type"],
                      r["reason"][:120], held)
    Console().print(table)


@dlq.command()
@click.argument("topic")
@click.option("--error-type", "error_types", multiple=True, help="only dead letters of this type (repeatable)")
@click.option("--dry-run", is_flag=True, help="say what would be replayed, send nothing")
def replay(topic: str, error_types: tuple[str, ...], dry_run: bool) -> None:
    """Re-submit the dead letters of TOPIC to TOPIC (after a fix), oversize ones from the source."""
    from confluent_kafka import Producer

    from sidcore.config import get_settings
    from sidstream.cli import UserError

    s = get_settings()
    source, dlq_topic = _topics(topic)
    dead = [r for r in _read_dead(dlq_topic) if not error_types or r["error_type"] in error_types]
    producer = Producer(librdkafka(s.kafka, {"enable.idempotence": True, "acks": "all",
                         "message.max.bytes": s.kafka.max_message_bytes}))
    counts = {"replayed": 0, "from_source": 0, "gone_from_source": 0, "hash_mismatch": 0}
    for r in dead:
        key, value = r.get("original_key"), r["original"]
        if r.get("truncated"):
            key, value = _read_source(s.kafka, r["source_topic"], r["partition"], r["offset"])
            if value is None:
                counts["gone_from_source"] += 1
                continue
            if hashlib.sha256(value).hexdigest() != r["original_sha256"]:
                counts["hash_mismatch"] += 1
                continue
            counts["from_source"] += 1
        counts["replayed"] += 1
        if not dry_run:
            producer.produce(r["source_topic"], key=key, value=value)
            producer.poll(0)
    if not dry_run and producer.flush(60):
        raise UserError("replayed records not all delivered within 60 s")
    click.echo(json.dumps({"source": source, "dead_letters": len(dead), "dry_run": dry_run, **counts}))


def _read_source(bootstrap: Brokers, topic: str, partition: int, offset: int) -> tuple[bytes | None, bytes | None]:
    """The record at topic[partition]@offset, or (None, None) when the topic no longer holds it."""
    import time
    import uuid

    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(librdkafka(bootstrap, {"group.id": f"dlq-replay-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False, "auto.offset.reset": "error"}))
    try:
        low, high = c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        if not low <= offset < high:
            return None, None
        c.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is not None and not msg.error() and msg.offset() == offset:
                return msg.key(), msg.value()
        return None, None
    finally:
        c.close()
