"""Drive a role through the runtime without Kafka (after quix-streams' `StreamingDataFrame.test`).

`drive(handler, records)` builds a `streams.runtime.Runtime` over an in-memory app, binds the
handler as the worker does (`Runtime.run`: warm-up, `bind`, the agent over the role's input
topics), then runs `Runtime.finish_batch` on the records, as one batch or in batches of
`batch_size`, and returns what went to the broker (`Driven`): the role's outputs, kept records
and dead letters per topic, and what the handler's `delivered` hook saw.

Only the broker boundary is fake: the producer's `send` (each record gets the partition Kafka's
default partitioner gives its key and the next offset of that partition; a topic named in
`failing` fails its deliveries), the delivery futures, and the consumed events. The role's own
work (decoding, encoders, stores such as a Feast repo opened with `streams.sinks.store.open_store`)
runs as given. A role that declares Faust tables in `bind` (the logger's user-history table)
needs a real Faust app: the fake app refuses them, and those roles are tested against the broker
(tests/integration).

    >>> driven = drive(TextRole(encoder), records("tracks.metadata", (b"t1", metadata_bytes)))
    >>> driven.values("embeddings.text")      # decoded Embedding records
    >>> driven.dead_letters("tracks.metadata") # decoded DeadLetter records of dlq(tracks.metadata)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.partitioner import DefaultPartitioner

from streams import avro_codec
from streams.admin.topics import TopicNames
from streams.batching import RetryPolicy, process_batch
from streams.records import BatchResult, RawRecord
from streams.runtime import RoleHandler, Runtime
from streams.topology import Role, dlq, role

RecordLike = RawRecord | tuple[str, int, int, bytes | None, bytes | None]
_partitioner = DefaultPartitioner()


@dataclass(frozen=True)
class Delivered:
    """The broker's answer to a send (what Faust's `RecordMetadata` gives the runtime)."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class Sent:
    """One record the role produced, as the fake broker stored it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    delivered: bool  # False: its delivery failed (`FakeProducer.failing`)


class FakeProducer:
    """Faust's producer `send`, in memory: every send is recorded; a send to a topic in `failing`
    is answered by a delivery future that fails, any other by the partition and offset it got.
    A send without a partition takes the one Kafka's default partitioner (murmur2 of the key,
    over `partitions`) gives it; a keyless one takes partition 0."""

    def __init__(self, failing: Iterable[str] = (), partitions: int = 2) -> None:
        self.sent: list[Sent] = []
        self.failing = tuple(failing)
        self.partitions = partitions
        self._next: dict[tuple[str, int], int] = {}

    async def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None,
                   timestamp: Any, headers: Any) -> asyncio.Future[Delivered]:
        if partition is None:
            every = list(range(self.partitions))
            partition = 0 if key is None else int(_partitioner(key, every, every))
        fut: asyncio.Future[Delivered] = asyncio.get_running_loop().create_future()
        if topic in self.failing:
            self.sent.append(Sent(topic, partition, -1, key, value, delivered=False))
            fut.set_exception(ConnectionError(f"{topic}: broker went away"))
            return fut
        offset = self._next.get((topic, partition), 0)
        self._next[(topic, partition)] = offset + 1
        self.sent.append(Sent(topic, partition, offset, key, value, delivered=True))
        fut.set_result(Delivered(topic, partition, offset))
        return fut


class FakeSignal:
    """`app.on_partitions_assigned`: the runtime connects its restore; nothing fires it here."""

    def connect(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        return fn


@dataclass
class FakeTopic:
    names: tuple[str, ...]
    partitions: int | None = None


@dataclass
class FakeConsumer:
    """The part of Faust's consumer the runtime uses on assignment: committed offsets (`committed`,
    partition -> offset; absent: never committed), the earliest offsets, and the seeks it made."""

    committed: dict[Any, int] = field(default_factory=dict)
    earliest: dict[Any, int] = field(default_factory=dict)
    seeks: list[tuple[Any, int]] = field(default_factory=list)

    async def seek_to_committed(self) -> dict[Any, int]:
        return dict(self.committed)

    async def earliest_offsets(self, *partitions: Any) -> dict[Any, int]:
        return {tp: self.earliest.get(tp, 0) for tp in partitions}

    async def seek_wait(self, partitions: dict[Any, int]) -> None:
        self.seeks.extend(partitions.items())


@dataclass
class FakeApp:
    """The part of `faust.App` the runtime uses: a producer, a consumer, the assignment signal,
    `topic` and `agent` (recorded, never run: `drive` hands the batches to `Runtime.finish_batch` itself)."""

    producer: FakeProducer = field(default_factory=FakeProducer)
    consumer: FakeConsumer = field(default_factory=FakeConsumer)
    on_partitions_assigned: FakeSignal = field(default_factory=FakeSignal)
    agents: dict[str, tuple[FakeTopic, Callable[..., Any]]] = field(default_factory=dict)

    def topic(self, *names: str, partitions: int | None = None, **_: Any) -> FakeTopic:
        return FakeTopic(names, partitions)

    def agent(self, channel: FakeTopic, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.agents[name] = (channel, fn)
            return fn

        return register

    def Table(self, name: str, **_: Any) -> Any:  # noqa: N802 - faust.App's name
        raise NotImplementedError(f"table {name!r}: a role with Faust tables needs a real Faust app "
                                  "(its changelog is a Kafka topic); test it against the broker")


@dataclass
class FakeMessage:
    """A consumed record as Faust's `event.message` carries it (timestamp in seconds)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: float | None = None


@dataclass
class FakeEvent:
    message: FakeMessage


def event(rec: RecordLike) -> FakeEvent:
    """The Faust event of a record (RawRecord or (topic, partition, offset, key, value))."""
    raw = rec if isinstance(rec, RawRecord) else RawRecord(*rec)
    ts = None if raw.timestamp_ms is None else raw.timestamp_ms / 1000
    return FakeEvent(FakeMessage(raw.topic, raw.partition, raw.offset, raw.key, raw.value, ts))


def records(topic: str, *items: tuple[bytes | None, bytes | None], partition: int = 0, first_offset: int = 0,
            timestamp_ms: int | None = None) -> list[RawRecord]:
    """(key, value) pairs as consecutive records of one partition of `topic`."""
    return [RawRecord(topic, partition, first_offset + i, key, value, timestamp_ms)
            for i, (key, value) in enumerate(items)]


def fake_runtime(producer: FakeProducer | None = None, prefix: str = "", partitions: int = 2,
                 max_message_bytes: int = 1 << 20, policy: RetryPolicy | None = None,
                 batch: tuple[int, float, float] = (10, 0.1, 0.002)) -> Runtime:
    """A Runtime over a `FakeApp` whose producer is `producer` (a fresh one if None)."""
    app = FakeApp(producer or FakeProducer(partitions=partitions))
    return Runtime(app, TopicNames(prefix), policy or RetryPolicy(budget_s=1.0), batch,  # type: ignore[arg-type]
                   max_message_bytes, partitions)


@dataclass
class Driven:
    """What driving a role produced, in send order, and what its `delivered` hook was told."""

    sent: list[Sent]
    delivered: list[dict[int, int]]  # per batch: the last kept offset per partition
    outcomes: list[str]  # per batch: "ok", or "dead_lettered" (whole, after retries; `retry=`)
    names: TopicNames

    def to(self, topic: str) -> list[Sent]:
        """The records sent to `topic` (a base name, e.g. "embeddings.text", or a full one)."""
        full = {topic, self.names.name(topic)}
        return [s for s in self.sent if s.topic in full]

    def keys(self, topic: str) -> list[bytes | None]:
        return [s.key for s in self.to(topic)]

    def values(self, topic: str) -> list[dict[str, Any]]:
        """The Avro records sent to `topic`, decoded."""
        return [avro_codec.decode(s.value)[1] for s in self.to(topic)]

    def dead_letters(self, source_topic: str | None = None) -> list[dict[str, Any]]:
        """The DeadLetter records sent to dlq(source_topic), or to every dead-letter topic, decoded."""
        sent = self.to(dlq(source_topic)) if source_topic is not None else [s for s in self.sent
                                                                           if s.topic.endswith(".dlq")]
        return [avro_codec.decode(s.value, expected="DeadLetter")[1] for s in sent]

    @property
    def topics(self) -> list[str]:
        """The topics sent to, in the order of their first record."""
        return list(dict.fromkeys(s.topic for s in self.sent))


class _Observed(RoleHandler):
    """The handler as `finish_batch` sees it: its own `process`, and a `delivered` hook that
    records what the runtime told it before calling the handler's."""

    def __init__(self, handler: RoleHandler, into: list[dict[int, int]]) -> None:
        self.handler, self.into, self.role = handler, into, handler.role

    async def process(self, rt: Runtime, raws: list[RawRecord]) -> BatchResult:
        return await self.handler.process(rt, raws)

    def delivered(self, result: BatchResult, kept_offsets: dict[int, int]) -> None:
        self.into.append(dict(kept_offsets))
        self.handler.delivered(result, kept_offsets)


async def drive_async(handler: RoleHandler, items: Sequence[RecordLike], *, role_name: str | None = None,
                      batch_size: int | None = None, prefix: str = "", partitions: int = 2,
                      failing: Iterable[str] = (), max_message_bytes: int = 1 << 20,
                      retry: RetryPolicy | None = None, producer: FakeProducer | None = None) -> Driven:
    """`drive` on the running event loop."""
    the_role: Role = role(role_name or handler.role)
    producer = producer or FakeProducer(failing, partitions)
    rt = fake_runtime(producer, prefix, partitions, max_message_bytes, retry)
    delivered: list[dict[int, int]] = []
    outcomes: list[str] = []
    observed = _Observed(handler, delivered)
    try:
        rt.run(the_role, handler)  # warm-up, bind, the agent over the role's inputs (as the worker)
        events = [event(r) for r in items]
        size = batch_size or max(1, len(events))
        for start in range(0, len(events), size):
            batch = events[start:start + size]
            if retry is None:  # a failure propagates: the test sees it
                await rt.finish_batch(the_role, observed, batch)
                outcomes.append("ok")
            else:  # the agent's path: retried within the budget, then dead-lettered whole
                outcomes.append(await process_batch(batch, the_role.name,
                                                    lambda evs: rt.finish_batch(the_role, observed, evs),
                                                    lambda evs, why: rt.dead_letter_all(the_role, evs, why), retry))
    finally:
        for pool in rt._executors.values():  # noqa: SLF001 - the runtime's role threads end with the drive
            pool.shutdown(wait=True)
    return Driven(list(producer.sent), delivered, outcomes, TopicNames(prefix))


def drive(handler: RoleHandler, items: Sequence[RecordLike], *, role_name: str | None = None,
          batch_size: int | None = None, prefix: str = "", partitions: int = 2, failing: Iterable[str] = (),
          max_message_bytes: int = 1 << 20, retry: RetryPolicy | None = None,
          producer: FakeProducer | None = None) -> Driven:
    """Run `items` (RawRecords, or (topic, partition, offset, key, value) tuples, topics named in
    full: `prefix` + base name) through `handler` as the role `role_name` (default: handler.role).

    Each batch (all items, or `batch_size` at a time) goes through `Runtime.finish_batch`:
    process, produce outputs / kept records / dead letters, await every delivery, then the
    `delivered` hook. Without `retry` a failing batch raises (e.g. a topic in `failing`, whose
    deliveries fail); with a `RetryPolicy` it is retried and finally dead-lettered whole, as the
    worker's agent does. `producer`: pass one to inspect the sends of a batch that raised."""
    return asyncio.run(drive_async(handler, items, role_name=role_name, batch_size=batch_size, prefix=prefix,
                                   partitions=partitions, failing=failing, max_message_bytes=max_message_bytes,
                                   retry=retry, producer=producer))
