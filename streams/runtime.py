"""The runtime every role runs on, written once: adaptive take, the role's batch step on its own
thread, publish with delivery confirmed, ack, retries, lag, heap trim and warm-up.

A role is a `RoleHandler` (streams/roles/): `process(raws)` decodes, validates, computes and
writes its sinks, and returns a `BatchResult`; the runtime does everything around it, in the order
`Runtime.finish_batch` states. `streams.app.build_app` composes the roles of a worker from the
topology table (streams.topology).
"""

from __future__ import annotations

import abc
import asyncio
import ctypes
import functools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faust

from streams import compat, metrics
from streams.batching import RetryPolicy, process_batch
from streams.records import BatchResult, DeadLetter, RawRecord, key_text
from streams.state import RestorableState
from streams.take import adaptive_take
from streams.topology import Role, dlq

log = logging.getLogger(__name__)

TRIM_EVERY_S = 30.0  # malloc_trim of a role's heap: a few ms to 100s of ms, so not on every batch


class RoleHandler(abc.ABC):
    """What a role module provides: its batch step and the hooks the runtime calls.

    `process` runs on the event loop; blocking work goes through `rt.blocking(role, fn, ...)`
    (the role's own thread). It never raises for one bad item (those are dead letters in its
    result); raising fails the whole batch, which the runtime retries un-acked."""

    role: str

    @abc.abstractmethod
    async def process(self, rt: Runtime, raws: list[RawRecord]) -> BatchResult: ...

    def warm_up(self) -> None:  # noqa: B027 - optional hook, a no-op unless a role needs it
        """Run once on the role's thread before the worker reports ready (first-call costs)."""

    def bind(self, app: faust.App, rt: Runtime) -> None:  # noqa: B027 - optional hook
        """Declare anything else on the app: tables, timers, control agents."""

    def states(self) -> Sequence[RestorableState]:
        """The state the role keeps (streams.state); the runtime restores it on assignment."""
        return ()

    def delivered(self, result: BatchResult, kept_offsets: dict[int, int]) -> None:  # noqa: B027 - optional hook
        """After the broker confirmed the batch's records: `kept_offsets` is the last offset per
        partition of its kept records."""


class Runtime:
    """One worker's plumbing over a Faust app (one executor thread per role)."""

    def __init__(self, app: faust.App, names: Any, policy: RetryPolicy, batch: tuple[int, float, float],
                 max_message_bytes: int, partitions: int) -> None:
        self.app, self.names, self.policy = app, names, policy
        self.batch_size, self.batch_within, self.batch_linger = batch
        self.max_message_bytes = max_message_bytes
        # DLQ topic -> max.message.bytes the broker reports (streams.admin.topics.message_limits)
        self.dlq_limits: dict[str, int] = {}
        self.partitions = partitions
        # Each role's blocking work runs on one thread of its own (not asyncio's shared pool): a batch
        # is processed at a time anyway, and one thread keeps glibc to one malloc arena per role, so
        # the encoders' varying tensor sizes do not grow a fresh arena in every pool thread.
        self._executors: dict[str, ThreadPoolExecutor] = {}
        self._trimmed: dict[str, float] = {}
        self._handlers: dict[str, tuple[Role, RoleHandler]] = {}
        self._events: dict[str, dict[tuple[str, int, int], Any]] = {}  # the batch each role is processing
        self._owned: set[Any] = set()  # the partitions of the last assignment
        # states whose restore stopped short: role -> {state name: (state, owned partitions)}
        self._unrestored: dict[str, dict[str, tuple[Any, dict[str, list[int]]]]] = {}
        app.on_partitions_assigned.connect(self._assigned)

    # -- threads ---------------------------------------------------------------------------------
    def executor(self, role: str) -> ThreadPoolExecutor:
        return self._executors.setdefault(role, ThreadPoolExecutor(max_workers=1, thread_name_prefix=role))

    async def blocking(self, role: str, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args) on the role's thread; the heap is trimmed there every TRIM_EVERY_S."""
        pool, loop = self.executor(role), asyncio.get_running_loop()
        now = time.monotonic()
        if now - self._trimmed.setdefault(role, now) > TRIM_EVERY_S:  # by time, not by call: small batches come often
            self._trimmed[role] = now
            await loop.run_in_executor(pool, release_free_memory)
        return await loop.run_in_executor(pool, functools.partial(fn, *args))

    def warm_up(self, role: str, fn: Callable[[], Any]) -> None:
        """Run `fn` once on the role's thread before the worker reports ready: first calls (lazy
        imports, allocator and model warm-up, store connections) cost 100s of ms, which the first
        batch would otherwise pay. A failure is logged: the first batch reports real faults."""
        started = time.perf_counter()
        try:
            self.executor(role).submit(fn).result()
        except Exception as exc:  # noqa: BLE001 - a warm-up only saves time
            log.warning("%s: warm-up failed (the first batch pays the cold start): %s", role, exc)
            return
        log.info("%s: warmed up in %.0f ms", role, 1000 * (time.perf_counter() - started))

    def make_current(self, role: str, raw: RawRecord) -> None:
        """Make the event of `raw` (in the batch `role` is processing) Faust's current event, so
        that a table write's changelog record goes to the partition of the record that caused it."""
        event = self._events[role][(raw.topic, raw.partition, raw.offset)]
        compat.set_current_event(event)

    # -- roles -----------------------------------------------------------------------------------
    def run(self, role: Role, handler: RoleHandler) -> None:
        """Register `handler` as the agent of `role` over its input topics."""
        self._handlers[role.name] = (role, handler)
        if type(handler).warm_up is not RoleHandler.warm_up:
            self.warm_up(role.name, handler.warm_up)
        handler.bind(self.app, self)
        topic = self.app.topic(*(self.names.name(t) for t in role.inputs), partitions=self.partitions, internal=False)
        self.app.agent(topic, name=role.agent)(self._agent(role, handler))

    def _agent(self, role: Role, handler: RoleHandler) -> Callable[[faust.StreamT], Any]:
        async def agent(stream: faust.StreamT) -> None:
            async for events in adaptive_take(stream, self.batch_size, self.batch_within, self.batch_linger):
                await self.ensure_restored(role.name)
                with metrics.BATCH_SECONDS.labels(role.name).time():
                    await process_batch(events, role.name, lambda evs: self.finish_batch(role, handler, evs),
                                        lambda evs, why: self.dead_letter_all(role, evs, why), self.policy)
                for event in events:  # only now: process_batch returned, the batch is durable
                    await stream.ack(event)
                self._record_lag(role.name, events)

        return agent

    async def finish_batch(self, role: Role, handler: RoleHandler, events: Sequence[Any]) -> None:
        """One batch, in the order that loses nothing:

        1. `handler.process` computes the batch and writes its sinks (the assigner's kept store,
           the Feast writer's and the logger's stores); an item it cannot take is a dead letter;
        2. the outputs (to `role.emits`), kept records (to `role.keeps`) and dead letters (to
           dlq(source topic)) are produced with acks=all;
        3. every delivery is awaited: a failed one raises, and the batch is retried whole;
        4. `handler.delivered` learns the kept records' offsets.

        Only when this returns does the agent ack the batch's events (Faust commits acked
        offsets up to the first un-acked one), so a crash anywhere above re-reads the batch."""
        self._events[role.name] = {(e.message.topic, e.message.partition, e.message.offset): e for e in events}
        try:
            result = await handler.process(self, [raw_record(e) for e in events])
        finally:
            self._events.pop(role.name, None)
        kept_offsets = await self.publish(role, result)
        handler.delivered(result, kept_offsets)

    async def publish(self, role: Role, result: BatchResult) -> dict[int, int]:
        """Produce the batch's outputs, kept records and dead letters; return once the broker
        confirmed every one of them, with the last kept offset per partition."""
        send = self.app.producer.send
        futures = []
        if result.outputs:
            if role.emits is None:
                raise RuntimeError(f"role {role.name} produced outputs but emits to no topic")
            out_topic = self.names.name(role.emits)
            futures = [await send(out_topic, key, value, None, None, None) for key, value in result.outputs]
        kept: list[tuple[int, Any]] = []
        if result.kept:
            if role.keeps is None:
                raise RuntimeError(f"role {role.name} produced kept records but keeps to no topic")
            kept_topic = self.names.name(role.keeps)
            for partition, key, value in result.kept:
                fut = await send(kept_topic, key, value, partition, None, None)
                kept.append((partition, fut))
                futures.append(fut)
        for dead in result.dead:
            value = dead.encode(role.name, self.dead_letter_limit(dlq(dead.source.topic)))
            futures.append(await send(dlq(dead.source.topic), (dead.track_id or "").encode(), value, None, None, None))
        if futures:
            await asyncio.gather(*futures)  # delivery confirmed before the batch's offsets are acked
        for dead in result.dead:
            metrics.count_dlq(role.name, dlq(dead.source.topic), dead.error_type)
            log.warning("%s -> %s: %s", role.name, dlq(dead.source.topic), dead.reason)
        metrics.count_ok(role.name, len(result.outputs) + result.stored)
        for reason, n in result.superseded.items():
            metrics.SUPERSEDED.labels(role.name, reason).inc(n)
        last: dict[int, int] = {}
        for partition, fut in kept:
            last[partition] = max(last.get(partition, -1), fut.result().offset)
        return last

    def dead_letter_limit(self, topic: str) -> int:
        """The largest message a dead letter to `topic` may be: the settings' limit, or the topic's
        own when the broker reports a lower one."""
        return min(self.max_message_bytes, self.dlq_limits.get(topic, self.max_message_bytes))

    async def dead_letter_all(self, role: Role, events: Sequence[Any], reason: str) -> None:
        """A batch that exhausted its retries goes to the dead-letter topics whole, with the reason."""
        raws = [raw_record(e) for e in events]
        await self.publish(role, BatchResult(dead=[DeadLetter(r, reason, "retries_exhausted", key_text(r)) for r in raws]))

    async def _assigned(self, sender: object, assigned: Any, **_: object) -> None:
        """Restore every role's state for the input partitions the worker now owns, on the
        role's thread, before those partitions' first batch."""
        await self._start_uncommitted_at_earliest(assigned)
        for role, handler in self._handlers.values():
            inputs = {self.names.name(t) for t in role.inputs}
            mine: dict[str, list[int]] = {}
            for tp in assigned:
                if tp.topic in inputs:
                    mine.setdefault(tp.topic, []).append(tp.partition)
            owned = {t: sorted(p) for t, p in mine.items()}
            for state in handler.states():
                await self._restore(role.name, state, owned)

    async def _start_uncommitted_at_earliest(self, assigned: Any) -> None:
        """An input partition nobody ever committed (its replica died before its first commit)
        starts at its earliest offset, set explicitly. Left to the consumer's reset policy, a
        partition a surviving replica took over that way was not fetched until new records
        arrived on it: the kill-replica drill lost that partition's tracks."""
        inputs = {self.names.name(t) for role, _ in self._handlers.values() for t in role.inputs}
        # only partitions new to this worker: one it kept goes on from where it is (Faust's own seek)
        new = [tp for tp in assigned if tp.topic in inputs and tp not in self._owned]
        self._owned = set(assigned)
        if not new:
            return
        consumer = self.app.consumer
        committed = await consumer.seek_to_committed()  # what Faust does next anyway; returns the offsets
        fresh = [tp for tp in new if committed.get(tp) is None or committed[tp] < 0]
        if not fresh:
            return
        earliest = await consumer.earliest_offsets(*fresh)
        # seek_wait, not seek: it runs on the consumer's own thread. `seek` changed the fetcher's
        # buffers from this thread while the fetcher read them, and crashed it once (KeyError in
        # aiokafka's fetched_records: the kill-assigner drill's restarted assigner died)
        await consumer.seek_wait({tp: max(0, earliest.get(tp) or 0) for tp in fresh})
        log.info("starting uncommitted partitions at their earliest offsets: %s",
                 {f"{tp.topic}/{tp.partition}": earliest.get(tp) for tp in fresh})

    async def _restore(self, role: str, state: Any, owned: dict[str, list[int]]) -> bool:
        """One state's restore on the role's thread; a failure is remembered (and the role's
        batches wait for it in `ensure_restored`), never taken for a complete state."""
        try:
            read = await self.blocking(role, state.restore, owned)
        except Exception as exc:  # noqa: BLE001 - any failure leaves the state short: retried before the next batch
            log.error("%s: %s NOT caught up for %s (its batches wait until it is): %s", role, state.name, owned, exc)
            metrics.RESTORE_FAILURES.labels(role, state.name).inc()
            self._unrestored.setdefault(role, {})[state.name] = (state, owned)
            metrics.UNRESTORED.labels(role).set(1)
            return False
        self._unrestored.get(role, {}).pop(state.name, None)
        metrics.UNRESTORED.labels(role).set(1 if self._unrestored.get(role) else 0)
        log.info("%s: %s caught up for %s (+%d records)", role, state.name, owned, read)
        return True

    async def ensure_restored(self, role: str, max_delay_s: float = 30.0) -> None:
        """Before a batch: every state of the role is caught up. A state whose restore stopped short
        is restored again, with a doubling pause, until it is: the batch waits un-acked meanwhile,
        so nothing is computed from a short state."""
        delay = min(1.0, max_delay_s)
        while self._unrestored.get(role):
            for state, owned in list(self._unrestored[role].values()):
                await self._restore(role, state, owned)
            if self._unrestored.get(role):
                await asyncio.sleep(delay)
                delay = min(max_delay_s, 2 * delay)

    def _record_lag(self, role: str, events: Sequence[Any]) -> None:
        last: dict[Any, int] = {}
        for e in events:
            tp = e.message.tp
            last[tp] = max(last.get(tp, -1), e.message.offset)
        for tp, offset in last.items():
            try:
                high = self.app.consumer.highwater(tp)
            except Exception:  # noqa: BLE001 - lag is informational; never fail a batch for it
                continue
            if high is not None:
                metrics.CONSUMER_LAG.labels(role, tp.topic, str(tp.partition)).set(max(0, high - offset - 1))


def raw_record(event: Any) -> RawRecord:
    msg = event.message
    ts = msg.timestamp  # seconds (float) in Faust; Kafka's "no timestamp" (-1 ms) stays <= 0
    return RawRecord(msg.topic, msg.partition, msg.offset, msg.key, msg.value,
                     None if ts is None else int(round(ts * 1000)))


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them after the encoders' large,
    differently sized tensors; without this a long stream's RSS creeps up)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass
