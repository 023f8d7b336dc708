"""The Faust application of one worker: its configuration, and the roles asked for composed
from the topology table (streams.topology.ROLE_TABLE) onto the runtime (streams.runtime).

Each role is a `RoleHandler` of streams/roles/ built by the caller (the worker command loads
models and stores only for the roles it runs). The runtime takes adaptive batches
(`streams.take.adaptive_take`: never acked there, unlike Faust's ``take_events``, which acks its
batch in a ``finally`` even when the body raised), runs a batch through the role and
`streams.batching.process_batch` (transient faults retried; a batch that exhausts its retries
dead-lettered whole) and acks its events only once its outputs, kept records and dead letters
are confirmed by the broker and its sinks are written (`Runtime.finish_batch`). Faust commits
acked offsets up to the first un-acked one, so a crash re-reads every batch that was not done.
"""

from __future__ import annotations

from collections.abc import Mapping

import faust

from sidcore.config import Settings
from streams import compat
from streams.admin.topics import TOPIC_TABLE, TopicNames, dlq, message_limits
from streams.batching import RetryPolicy
from streams.kafka_clients import faust_credentials
from streams.runtime import RoleHandler, Runtime
from streams.topology import ROLE_TABLE, ROLES

__all__ = ["ROLES", "build_app"]


def build_app(settings: Settings, names: TopicNames, handlers: Mapping[str, RoleHandler], app_id: str | None = None) -> faust.App:
    """The Faust app running `handlers` ({role name: handler}, a subset of ROLES)."""
    unknown = set(handlers) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}; choose from {', '.join(ROLES)}")
    s = settings
    datadir = s.home / "faust" / (app_id or "sidstream")
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = compat.app_class(s.stream.fetch_wait_ms, s.kafka.request_timeout_s)(
        app_id or f"{s.kafka.topic_prefix}sidstream",
        broker=f"kafka://{s.kafka.bootstrap}",
        broker_credentials=faust_credentials(s.kafka),  # the same log-in and TLS as every other client
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        topic_partitions=s.kafka.partitions,
        topic_replication_factor=s.kafka.replication_factor,  # its changelogs and leader topic too
        topic_allow_declare=True,  # Faust declares its own internal topics (changelogs, leader)
        web_enabled=False,
        broker_commit_every=100,
        broker_commit_interval=1.0,
        broker_session_timeout=s.stream.session_timeout_s,
        broker_heartbeat_interval=max(1.0, s.stream.session_timeout_s / 10),
        producer_acks=-1,
        producer_max_request_size=s.kafka.max_message_bytes,
        consumer_max_fetch_size=2 * s.kafka.max_message_bytes,
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=False,
        datadir=str(datadir),
    )
    rt = Runtime(app, names, RetryPolicy(budget_s=s.stream.retry_budget_s),
                 (s.stream.batch_size, s.stream.batch_timeout_s, s.stream.batch_linger_s),
                 s.kafka.max_message_bytes, s.kafka.partitions)
    with_dlq = {t.name for t in TOPIC_TABLE if t.data}
    dlqs = sorted({dlq(names.name(t)) for role in ROLE_TABLE if role.name in handlers for t in role.inputs if t in with_dlq})
    rt.dlq_limits = message_limits(s.kafka, dlqs)
    for role in ROLE_TABLE:
        if role.name in handlers:
            rt.run(role, handlers[role.name])
    return app
