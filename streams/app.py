"""The Faust application: five agents (text encoder, audio encoder, PSRQ assigner, Feast
writer, interaction logger), each a thin loop around a function of ``streams.processing``.

Every agent takes adaptive batches (``streams.take.adaptive_take``: what arrived until no new
event came for ``stream.batch_linger_s``, at most ``stream.batch_size`` events or
``stream.batch_timeout_s`` after the first; never acked there, unlike ``take_events``, which
acks its batch in a ``finally`` even when the body raised), runs the batch through
``streams.batching.process_batch`` (outputs, kept records and dead letters produced and their
delivery awaited, sinks written; transient faults retried; a batch that exhausts its retries
dead-lettered whole) and only then acks its events. Faust commits acked offsets up to the
first un-acked one, so a crash re-reads every batch that was not fully done.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from faust.streams import _current_event  # table writes take their partition from the current event

from sidcore.config import Settings
from streams import metrics
from streams.admin.topics import TopicNames, dlq
from streams.batching import RetryPolicy, process_batch
from streams.processing import (
    ActiveCodebooks,
    assign_batch,
    decode_interactions,
    decode_sid_batch,
    encode_audio_batch,
    encode_text_batch,
    history_version,
    key_text,
)
from streams.records import BatchResult, DeadLetter, RawRecord, now_ms
from streams.take import adaptive_take

log = logging.getLogger(__name__)

ROLES = ("text", "audio", "assigner", "writer", "logger")
TRIM_EVERY_S = 30.0  # malloc_trim of an agent's heap: a few ms to 100s of ms, so not on every batch


@dataclass
class WorkerDeps:
    """What the agents need, built in the worker process (models are heavy)."""

    settings: Settings
    text_encoder: Any = None
    audio_encoder: Any = None
    codebooks: ActiveCodebooks | None = None
    pending: ActiveCodebooks | None = None  # a version being backfilled: coded too, until it goes live
    codebook_loader: Callable[[], tuple[ActiveCodebooks | None, ActiveCodebooks | None]] | None = None
    feast_sink: Any = None
    history_sink: Any = None  # its own sink: the writer and logger write from different threads
    kept: Any = None  # streams.kept.KeptEmbeddings (assigner)
    identities: Any = None  # streams.identity.KafkaIdentities (assigner, psrq_id codebooks)


def _event_binder(events: Sequence[Any]) -> Callable[[RawRecord], None]:
    """For batched table writes: makes the event of `raw` Faust's current event, so that the
    changelog write goes to the partition of the record that caused it."""
    by_offset = {(e.message.topic, e.message.partition, e.message.offset): e for e in events}

    def bind(raw: RawRecord) -> None:
        _current_event.set(weakref.ref(by_offset[(raw.topic, raw.partition, raw.offset)]))

    return bind


def _raw(event: Any) -> RawRecord:
    msg = event.message
    return RawRecord(msg.topic, msg.partition, msg.offset, msg.key, msg.value)


def build_app(settings: Settings, names: TopicNames, roles: Sequence[str], deps: WorkerDeps, app_id: str | None = None) -> faust.App:
    """The Faust app with the agents of `roles` (a subset of ROLES, checked by the worker CLI)."""
    s = settings
    datadir = s.home / "faust" / (app_id or "sidstream")
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = _app_class(s.stream.fetch_wait_ms)(
        app_id or f"{s.kafka.topic_prefix}sidstream",
        broker=f"kafka://{s.kafka.bootstrap}",
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        topic_partitions=s.kafka.partitions,
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
    batch, within, linger = s.stream.batch_size, s.stream.batch_timeout_s, s.stream.batch_linger_s
    policy = RetryPolicy(budget_s=s.stream.retry_budget_s)
    max_bytes = s.kafka.max_message_bytes

    # Each agent's blocking work runs on one thread of its own (not asyncio's shared pool): a batch
    # is processed at a time anyway, and one thread keeps glibc to one malloc arena per agent, so
    # the encoders' varying tensor sizes do not grow a fresh arena in every pool thread.
    executors: dict[str, ThreadPoolExecutor] = {}

    trimmed: dict[str, float] = {}

    async def blocking(worker: str, fn: Callable[..., Any], *args: Any) -> Any:
        pool = executors.setdefault(worker, ThreadPoolExecutor(max_workers=1, thread_name_prefix=worker))
        now = time.monotonic()
        if now - trimmed.setdefault(worker, now) > TRIM_EVERY_S:  # by time, not by call: small batches come often
            trimmed[worker] = now
            await asyncio.get_running_loop().run_in_executor(pool, _release_free_memory)
        return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(fn, *args))

    def topic(name: str) -> faust.TopicT:
        return app.topic(name, partitions=s.kafka.partitions, internal=False)

    async def publish(result: BatchResult, out_topic: str | None, worker: str) -> None:
        """Produce the batch's outputs, kept records and dead letters; return once the broker
        confirmed every one of them (acks=all)."""
        futures = []
        if out_topic is not None:
            futures = [await app.producer.send(out_topic, key, value, None, None, None) for key, value in result.outputs]
        kept_offsets: list[tuple[int, Any]] = []
        for partition, key, value in result.kept:
            fut = await app.producer.send(names.kept, key, value, partition, None, None)
            kept_offsets.append((partition, fut))
            futures.append(fut)
        for dead in result.dead:
            dlq_topic = dlq(dead.source.topic)
            futures.append(await app.producer.send(dlq_topic, (dead.track_id or "").encode(), dead.encode(worker, max_bytes), None, None, None))
        if futures:
            await asyncio.gather(*futures)  # delivery confirmed before the batch's offsets are acked
        for dead in result.dead:
            metrics.count_dlq(worker, dlq(dead.source.topic), dead.error_type)
            log.warning("%s -> %s: %s", worker, dlq(dead.source.topic), dead.reason)
        if kept_offsets and deps.kept is not None:
            last: dict[int, int] = {}
            for partition, fut in kept_offsets:
                last[partition] = max(last.get(partition, -1), fut.result().offset)
            deps.kept.mark_written(names.kept, last)
        metrics.count_ok(worker, len(result.outputs))

    async def dead_letter_all(events: Sequence[Any], worker: str, reason: str) -> None:
        result = BatchResult(dead=[DeadLetter(raw, reason, "retries_exhausted", key_text(raw)) for raw in map(_raw, events)])
        await publish(result, None, worker)

    def consume(worker: str, handle: Callable[[Sequence[Any]], Awaitable[None]]) -> Callable[[faust.StreamT], Any]:
        async def agent(stream: faust.StreamT) -> None:
            async for events in adaptive_take(stream, batch, within, linger):
                with metrics.BATCH_SECONDS.labels(worker).time():
                    await process_batch(events, worker, handle, lambda evs, why: dead_letter_all(evs, worker, why), policy)
                for event in events:
                    await stream.ack(event)
                _record_lag(app, worker, events)

        return agent

    def warm_up(worker: str, fn: Callable[[], Any]) -> None:
        """Run `fn` once on the agent's thread before the worker reports ready: first calls
        (lazy imports, allocator and model warm-up, store connections) cost 100s of ms, which
        the first batch would otherwise pay."""
        started = time.perf_counter()
        pool = executors.setdefault(worker, ThreadPoolExecutor(max_workers=1, thread_name_prefix=worker))
        try:
            pool.submit(fn).result()
        except Exception as exc:  # noqa: BLE001 - a warm-up only saves time; the batch reports real faults
            log.warning("%s: warm-up failed (the first batch pays the cold start): %s", worker, exc)
            return
        log.info("%s: warmed up in %.0f ms", worker, 1000 * (time.perf_counter() - started))

    if "text" in roles:
        from encoders import build_track_text, classify_text

        if deps.text_encoder is not None:
            warm_up("text", lambda: warm_text_encoder(deps.text_encoder))

        async def handle_text(events: Sequence[Any]) -> None:
            raws = [_raw(e) for e in events]
            result = await blocking("text", encode_text_batch, raws, deps.text_encoder, build_track_text, classify_text)
            await publish(result, names.emb_text, "text")

        app.agent(topic(names.metadata), name="text-encoder")(consume("text", handle_text))

    if "audio" in roles:
        from encoders import decode_audio

        async def handle_audio(events: Sequence[Any]) -> None:
            raws = [_raw(e) for e in events]
            result = await blocking(
                "audio", encode_audio_batch, raws, deps.audio_encoder, decode_audio,
                s.stream.inline_audio_max_bytes, s.encoders.audio_max_bytes,
            )  # fmt: skip
            await publish(result, names.emb_audio, "audio")

        app.agent(topic(names.audio), name="audio-encoder")(consume("audio", handle_audio))

    if "assigner" in roles:
        from psrq import joint_embedding

        async def handle_assign(events: Sequence[Any]) -> None:
            _maybe_reload_codebooks(deps)
            deps.kept.expire()
            also = () if deps.pending is None else (deps.pending,)
            result = await blocking("assigner", assign_batch, [_raw(e) for e in events], deps.kept, deps.codebooks,
                                    joint_embedding, also, deps.identities)
            await blocking("assigner", deps.kept.commit)  # the batch's kept rows in one transaction
            await publish(result, names.sids, "assigner")
            metrics.JOIN_WAITING.set(deps.kept.waiting)

        app.agent(app.topic(names.emb_text, names.emb_audio, partitions=s.kafka.partitions), name="psrq-assigner")(
            consume("assigner", handle_assign)
        )

        @app.on_partitions_assigned.connect
        async def _restore_kept(sender: object, assigned: Any, **_: object) -> None:
            partitions = sorted({tp.partition for tp in assigned if tp.topic in (names.emb_text, names.emb_audio)})
            if partitions:
                n = await blocking("assigner", deps.kept.restore_from, s.kafka.bootstrap, names.kept, partitions)
                metrics.KEPT_ROWS.set(deps.kept.count())
                log.info("kept embeddings: caught up partitions %s (+%d records)", partitions, n)
            if deps.identities is not None:
                claims = await blocking("assigner", deps.identities.catch_up)
                log.info("identity claims: caught up (+%d claims)", claims)

        @app.timer(interval=5.0)
        async def watch_codebooks() -> None:
            _maybe_reload_codebooks(deps)
            deps.kept.expire()
            metrics.JOIN_WAITING.set(deps.kept.waiting)

        @app.agent(app.topic(names.control, partitions=1), name="codebook-control")
        async def codebook_control(stream: faust.StreamT) -> None:
            from streams import avro_codec

            async for value in stream:
                try:
                    _, rec = avro_codec.decode(value, expected="CodebookControl")
                except avro_codec.DecodeError as exc:
                    log.warning("ignoring bad control record: %s", exc)
                    continue
                log.info("control: codebook version %s published", rec["codebook_version"])
                _maybe_reload_codebooks(deps)

    if "writer" in roles:
        from streams.sinks.feast import SidRow

        if deps.feast_sink is not None and hasattr(deps.feast_sink, "warm_up"):
            warm_up("writer", deps.feast_sink.warm_up)

        async def handle_write(events: Sequence[Any]) -> None:
            raws = [_raw(e) for e in events]
            rows, dead = decode_sid_batch(raws)
            sid_rows = [SidRow.from_record(r) for _, r in rows]
            written = await blocking("writer", deps.feast_sink.write, sid_rows)
            source = {id(row): raw for row, (raw, _) in zip(sid_rows, rows, strict=True)}
            for row, reason in written.rejected:
                metrics.STORE_REJECTED.labels("track_sids").inc()
                dead.append(DeadLetter(source[id(row)], f"track {row.track_id}: the online store rejected the row: {reason}",
                                       "store_rejected", row.track_id))
            await publish(BatchResult(dead=dead), None, "writer")
            metrics.count_ok("writer", len(rows) - len(written.rejected))
            written_at = now_ms()
            for _, r in rows:
                metrics.PRODUCE_TO_FEAST.observe(max(0, written_at - r["ingest_time"]) / 1000)

        app.agent(topic(names.sids), name="feast-writer")(consume("writer", handle_write))

    if "logger" in roles:
        history = app.Table("user-history", default=None, partitions=s.kafka.partitions, key_type=bytes, value_type=bytes)

        async def handle_log(events: Sequence[Any]) -> None:
            from streams.sinks.feast import UserHistoryRow
            from streams.sinks.interaction_log import write_interactions

            bind_event = _event_binder(events)
            ok, dead = decode_interactions([_raw(e) for e in events])
            await blocking("logger", write_interactions, s.feast_dir / "offline" / "interactions", [rec for _, rec in ok])
            changed: dict[str, dict[str, Any]] = {}
            for raw, rec in ok:
                key = rec["user_id"].encode()
                bind_event(raw)
                stored = history.get(key)
                updated = history_version(json.loads(stored) if stored else None, rec)
                if updated is None:
                    continue  # a replay or a negative: the stored list stands
                history[key] = json.dumps(updated).encode()
                changed[rec["user_id"]] = updated
            if changed and deps.history_sink is not None:
                rows = [UserHistoryRow(u, h["written_ms"], tuple(t for _, t in h["items"])) for u, h in changed.items()]
                await blocking("logger", deps.history_sink.write_history, rows)
            await publish(BatchResult(dead=dead), None, "logger")
            metrics.count_ok("logger", len(ok))

        app.agent(topic(names.interactions), name="interaction-logger")(consume("logger", handle_log))

    return app


def _app_class(fetch_wait_ms: int) -> type[faust.App]:
    """faust.App whose consumer long-polls the broker for at most `fetch_wait_ms`
    (settings.stream.fetch_wait_ms; Faust builds its aiokafka consumer with 1.5 s)."""
    from faust.transport.drivers import aiokafka as driver

    class ConsumerThread(driver.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            consumer._fetch_max_wait_ms = fetch_wait_ms  # noqa: SLF001 - read when the consumer starts its fetcher
            return consumer

    class FastConsumer(driver.Consumer):
        def _new_consumer_thread(self) -> Any:
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    class Transport(driver.Transport):
        Consumer = FastConsumer

    class App(faust.App):
        def _new_transport(self) -> Any:
            return Transport(self.conf.broker_consumer, self)

    return App


def warm_text_encoder(encoder: Any, sizes: Sequence[int] = (1, 2, 3, 5, 8, 13), words: Sequence[int] = (2, 12, 30)) -> int:
    """Encode a few batches of the sizes and token widths a trickle brings, before the first
    real one: each new (rows, width) shape and each thread of the encoder's pool pays its first
    call once (kernel selection, per-thread buffers, allocator growth). Returns the texts encoded."""
    done = 0
    for n_words in words:
        for n in sizes:
            encoder.encode([f"warm-up track {i}. Tags: " + ", ".join(["tag"] * n_words) for i in range(n)])
            done += n
    return done


def _release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them after the encoders' large,
    differently sized tensors; without this a long stream's RSS creeps up)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _record_lag(app: faust.App, worker: str, events: Sequence[Any]) -> None:
    last: dict[Any, int] = {}
    for e in events:
        tp = e.message.tp
        last[tp] = max(last.get(tp, -1), e.message.offset)
    for tp, offset in last.items():
        try:
            high = app.consumer.highwater(tp)
        except Exception:  # noqa: BLE001 - lag is informational; never fail a batch for it
            continue
        if high is not None:
            metrics.CONSUMER_LAG.labels(worker, tp.topic, str(tp.partition)).set(max(0, high - offset - 1))


def _maybe_reload_codebooks(deps: WorkerDeps) -> None:
    if deps.codebook_loader is None:
        return
    fresh, pending = deps.codebook_loader()
    if fresh is not None and (deps.codebooks is None or fresh.version != deps.codebooks.version):
        log.info("codebook version %s is live (was %s)", fresh.version, deps.codebooks.version if deps.codebooks else None)
        deps.codebooks = fresh  # one reference swap: a batch sees either the old or the new version
    if (pending and pending.version) != (deps.pending and deps.pending.version):
        log.info("codebook version %s is being backfilled: coding new tracks under it too", pending and pending.version)
    deps.pending = None if pending is None or fresh is None or pending.version == fresh.version else pending


def registry_codebook_loader(registry_dir: Path) -> Callable[[], tuple[ActiveCodebooks | None, ActiveCodebooks | None]]:
    """Loads the registry's LIVE and PENDING codebook versions, re-reading only when a pointer changes."""
    from psrq import load_codebook_set
    from sidcore.registry import Registry

    registry = Registry(registry_dir)
    cache: dict[str, ActiveCodebooks] = {}

    def one(av: Any) -> ActiveCodebooks | None:
        if av is None:
            return None
        if av.version not in cache:
            cache[av.version] = ActiveCodebooks(av.version, load_codebook_set(av.path))
        return cache[av.version]

    def load() -> tuple[ActiveCodebooks | None, ActiveCodebooks | None]:
        live, pending = registry.live("codebooks"), registry.pending("codebooks")
        for stale in set(cache) - {v.version for v in (live, pending) if v is not None}:
            del cache[stale]
        return one(live), one(pending)

    return load
