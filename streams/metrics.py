"""Prometheus metrics for the workers."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECORDS = Counter("sidstream_records_total", "records processed", ["worker", "outcome"])
DLQ = Counter("sidstream_dlq_total", "records sent to a dead-letter topic", ["topic", "reason"])
BATCH_SECONDS = Histogram(
    "sidstream_batch_seconds", "wall time per processed batch", ["worker"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)  # fmt: skip
PRODUCE_TO_FEAST = Histogram(
    "sidstream_produce_to_feast_seconds", "ingest to Feast write, per track",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)  # fmt: skip


def count_ok(worker: str, n: int = 1) -> None:
    RECORDS.labels(worker, "ok").inc(n)


def count_dlq(worker: str, topic: str, reason: str) -> None:
    RECORDS.labels(worker, "dlq").inc()
    DLQ.labels(topic, reason).inc()
RETRIES = Counter("sidstream_retries_total", "failed batch attempts that were retried", ["worker", "error"])
RETRYING = Gauge("sidstream_batch_retrying", "1 while the worker retries a failed batch (un-acked)", ["worker"])
CONSUMER_LAG = Gauge("sidstream_consumer_lag", "records behind the high watermark after the last batch",
                     ["worker", "topic", "partition"])
JOIN_WAITING = Gauge("sidstream_join_waiting", "tracks in the assigner's join table (awaiting a late modality)")
RESTORE_FAILURES = Counter("sidstream_restore_failures_total", "state restores that stopped short (the role's batches wait)",
                           ["worker", "state"])
UNRESTORED = Gauge("sidstream_state_unrestored", "1 while a state of the role is not caught up (its batches wait)", ["worker"])
KEPT_ROWS = Gauge("sidstream_kept_embeddings", "embeddings in the assigner's local kept store")
STORE_REJECTED = Counter("sidstream_store_rejected_total", "rows a sink rejected for good (dead-lettered)", ["view"])
BACKFILL_DONE = Gauge("sidstream_backfill_tracks", "tracks re-coded by the running backfill", ["version"])
SUPERSEDED = Counter("sidstream_superseded_total", "records or rows not applied: a newer version is kept or stored",
                     ["worker", "reason"])
CLAMPED = Counter("sidstream_clamped_total", "values clamped into range at the edge (streams.event_time)", ["field"])
