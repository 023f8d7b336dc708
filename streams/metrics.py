"""Prometheus metrics for the workers."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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
