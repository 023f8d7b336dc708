"""The Faust application: four agents (text encoder, audio encoder, PSRQ assigner, Feast
writer), each a thin loop around a function of ``streams.processing``.

Batching: every agent takes up to ``stream.batch_size`` events or waits at most
``stream.batch_timeout_s``. Outputs and dead letters of a batch are produced and their
delivery awaited *before* the loop asks for the next batch; Faust acks (and later commits)
an event's offset only after that, so offsets advance only after the sink write.
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from faust.streams import _current_event  # table writes take their partition from the current event

from sidcore.config import Settings
from streams import metrics
from streams.admin.topics import TopicNames, dlq
from streams.processing import (
    ActiveCodebooks,
    assign_batch,
    decode_sid_batch,
    encode_audio_batch,
    encode_text_batch,
)
from streams.records import BatchResult, RawRecord, now_ms

log = logging.getLogger(__name__)

ROLES = ("text", "audio", "assigner", "writer", "logger")


@dataclass
class WorkerDeps:
    """What the agents need, built lazily in the worker process (models are heavy)."""

    settings: Settings
    text_encoder: Any = None
    audio_encoder: Any = None
    codebooks: ActiveCodebooks | None = None
    codebook_loader: Callable[[], ActiveCodebooks | None] | None = None
    feast_sink: Any = None
    history_sink: Any = None  # its own sink: the writer and logger flush from different threads


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
    app = faust.App(
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
        producer_acks=-1,
        producer_max_request_size=s.kafka.max_message_bytes,
        consumer_max_fetch_size=2 * s.kafka.max_message_bytes,
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=False,
        datadir=str(datadir),
    )
    batch, within = s.stream.batch_size, s.stream.batch_timeout_s

    def topic(name: str) -> faust.TopicT:
        return app.topic(name, partitions=s.kafka.partitions, internal=False)

    async def publish(result: BatchResult, out_topic: str | None, worker: str) -> None:
        futures = []
        if out_topic is not None:
            futures = [await app.producer.send(out_topic, key, value, None, None, None) for key, value in result.outputs]
        for dead in result.dead:
            dlq_topic = dlq(dead.source.topic)
            futures.append(await app.producer.send(dlq_topic, (dead.track_id or "").encode(), dead.encode(worker), None, None, None))
            metrics.count_dlq(worker, dlq_topic, dead.error_type)
            log.warning("%s -> %s: %s", worker, dlq_topic, dead.reason)
        if futures:
            await asyncio.gather(*futures)  # delivery confirmed before the batch's offsets are acked
        metrics.count_ok(worker, len(result.outputs))

    if "text" in roles:

        @app.agent(topic(names.metadata), name="text-encoder")
        async def text_encoder(stream: faust.StreamT) -> None:
            from encoders import build_track_text, validate_text

            async for events in stream.take_events(batch, within=within):
                with metrics.BATCH_SECONDS.labels("text").time():
                    raws = [_raw(e) for e in events]
                    result = await asyncio.to_thread(encode_text_batch, raws, deps.text_encoder, build_track_text, validate_text)
                    await publish(result, names.emb_text, "text")

    if "audio" in roles:

        @app.agent(topic(names.audio), name="audio-encoder")
        async def audio_encoder(stream: faust.StreamT) -> None:
            from encoders import decode_audio

            async for events in stream.take_events(batch, within=within):
                with metrics.BATCH_SECONDS.labels("audio").time():
                    raws = [_raw(e) for e in events]
                    result = await asyncio.to_thread(
                        encode_audio_batch, raws, deps.audio_encoder, decode_audio,
                        s.stream.inline_audio_max_bytes, s.encoders.audio_max_bytes,
                    )  # fmt: skip
                    await publish(result, names.emb_audio, "audio")

    if "assigner" in roles:
        # keys and values are bytes (the app's serializers are raw); values are compact JSON
        state = app.Table("assigner-state", default=None, partitions=s.kafka.partitions, key_type=bytes, value_type=bytes)

        class _StateView:
            """track_id (str) -> entry, over the Faust table (keys are bytes on the wire)."""

            def get(self, key: str, default: Any = None) -> Any:
                value = state.get(key.encode())
                return default if value is None else json.loads(value)

            def __getitem__(self, key: str) -> Any:
                return json.loads(state[key.encode()])

            def __setitem__(self, key: str, value: Any) -> None:
                state[key.encode()] = json.dumps(value, separators=(",", ":")).encode()

        @app.agent(app.topic(names.emb_text, names.emb_audio, partitions=s.kafka.partitions), name="psrq-assigner")
        async def assigner(stream: faust.StreamT) -> None:
            from psrq import joint_embedding

            view = _StateView()
            async for events in stream.take_events(batch, within=within):
                with metrics.BATCH_SECONDS.labels("assigner").time():
                    _maybe_reload_codebooks(deps)
                    result = assign_batch([_raw(e) for e in events], view, deps.codebooks, joint_embedding, _event_binder(events))  # type: ignore[arg-type]
                    await publish(result, names.sids, "assigner")

        @app.timer(interval=5.0)
        async def watch_codebooks() -> None:
            _maybe_reload_codebooks(deps)

        @app.agent(app.topic(names.control, partitions=1), name="codebook-control")
        async def codebook_control(stream: faust.StreamT) -> None:
            from streams import avro_codec

            async for value in stream:
                try:
                    _, rec = avro_codec.decode(value, expected="CodebookControl")
                except avro_codec.DecodeError as exc:
                    log.warning("ignoring bad control record: %s", exc)
                    continue
                log.info("control: codebook version %s announced", rec["codebook_version"])
                _maybe_reload_codebooks(deps)

    if "writer" in roles:

        @app.agent(topic(names.sids), name="feast-writer")
        async def feast_writer(stream: faust.StreamT) -> None:
            from streams.sinks.feast import SidRow

            async for events in stream.take_events(batch, within=within):
                with metrics.BATCH_SECONDS.labels("writer").time():
                    rows, dead = decode_sid_batch([_raw(e) for e in events])
                    if rows:
                        sid_rows = [
                            SidRow(
                                track_id=r["track_id"], event_time_ms=r["event_time"], codebook_version=r["codebook_version"],
                                text_sid=_tuple(r["text_sid"]), audio_sid=_tuple(r["audio_sid"]), joint_sid=_tuple(r["joint_sid"]),
                                text_model_id=r["text_model_id"], audio_model_id=r["audio_model_id"],
                            )
                            for r in rows
                        ]  # fmt: skip
                        deps.feast_sink.add(sid_rows)
                        await asyncio.to_thread(deps.feast_sink.flush)
                        written_at = now_ms()
                        for r in rows:
                            metrics.PRODUCE_TO_FEAST.observe(max(0, written_at - r["ingest_time"]) / 1000)
                    await publish(BatchResult(dead=dead), None, "writer")
                    metrics.count_ok("writer", len(rows))

    if "logger" in roles:
        history = app.Table("user-history", default=None, partitions=s.kafka.partitions, key_type=bytes, value_type=bytes)

        @app.agent(topic(names.interactions), name="interaction-logger")
        async def interaction_logger(stream: faust.StreamT) -> None:
            from streams.processing import decode_interactions, update_history
            from streams.sinks.feast import UserHistoryRow
            from streams.sinks.interaction_log import write_interactions

            async for events in stream.take_events(batch, within=within):
                bind_event = _event_binder(events)
                ok, dead = decode_interactions([_raw(e) for e in events])
                await asyncio.to_thread(write_interactions, s.feast_dir / "offline" / "interactions", ok)
                changed: dict[str, list[Any]] = {}
                for raw, rec in ok:
                    key = rec["user_id"].encode()
                    bind_event(raw)
                    stored = history.get(key)
                    updated = update_history(json.loads(stored) if stored else None, rec)
                    history[key] = json.dumps(updated).encode()
                    changed[rec["user_id"]] = updated
                if changed and deps.history_sink is not None:
                    deps.history_sink.add_history(
                        [UserHistoryRow(u, int(h[-1][0]) if h else 0, tuple(t for _, t in h)) for u, h in changed.items() if h]
                    )
                    await asyncio.to_thread(deps.history_sink.flush)
                await publish(BatchResult(dead=dead), None, "logger")
                metrics.count_ok("logger", len(ok))

    return app


def _tuple(v: list[int] | None) -> tuple[int, ...] | None:
    return None if v is None else tuple(int(x) for x in v)


def _maybe_reload_codebooks(deps: WorkerDeps) -> None:
    if deps.codebook_loader is None:
        return
    fresh = deps.codebook_loader()
    if fresh is not None and (deps.codebooks is None or fresh.version != deps.codebooks.version):
        log.info("codebook version %s is live (was %s)", fresh.version, deps.codebooks.version if deps.codebooks else None)
        deps.codebooks = fresh  # one reference swap: a batch sees either the old or the new version


def registry_codebook_loader(registry_dir: Path) -> Callable[[], ActiveCodebooks | None]:
    """Loads the registry's LIVE codebook version, re-reading only when the pointer changes."""
    from psrq import load_codebook_set
    from sidcore.registry import Registry

    registry = Registry(registry_dir)
    cache: dict[str, ActiveCodebooks] = {}

    def load() -> ActiveCodebooks | None:
        live = registry.live("codebooks")
        if live is None:
            return None
        if live.version not in cache:
            cache.clear()
            cache[live.version] = ActiveCodebooks(live.version, load_codebook_set(live.path))
        return cache[live.version]

    return load
