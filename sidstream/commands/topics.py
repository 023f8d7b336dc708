"""`sidstream topics create|list`."""

from __future__ import annotations

import click
from confluent_kafka.admin import AdminClient

from sidcore.config import get_settings
from streams.admin.topics import TopicNames, create_topics
from streams.kafka_clients import check_access, librdkafka


@click.group()
def topics() -> None:
    """The pipeline's topics (data topics, their .dlq twins, codebooks.control)."""


@topics.command()
@click.option("--partitions", type=int, default=None, help="partitions per topic (default: settings)")
def create(partitions: int | None) -> None:
    """Create missing topics on the configured broker."""
    s = get_settings()
    check_access(s.kafka)
    names = TopicNames(s.kafka.topic_prefix)
    created = create_topics(s.kafka, names, partitions or s.kafka.partitions, max_message_bytes=s.kafka.max_message_bytes,
                            replication_factor=s.kafka.replication_factor, min_insync_replicas=s.kafka.min_insync_replicas)
    click.echo(f"created {len(created)} topics; {len(names.all()) - len(created)} existed")


@topics.command(name="list")
def list_topics() -> None:
    """List topics with their partition counts."""
    s = get_settings()
    check_access(s.kafka)
    md = AdminClient(librdkafka(s.kafka)).list_topics(timeout=10)
    for name in sorted(md.topics):
        if not name.startswith("__"):
            click.echo(f"{name}\t{len(md.topics[name].partitions)}")
