"""The runtime, driven without Kafka: the fake app of streams.testing (its producer records every
send and confirms or fails each delivery) and fake events carry a role's batch through
`Runtime.finish_batch`, the one place that orders process -> produce -> delivery confirmed ->
delivered hook. The real-broker integration tests run the same runtime under Faust."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from streams import avro_codec
from streams.records import BatchResult, RawRecord, RestoreIncomplete
from streams.roles.text import TextRole
from streams.runtime import RoleHandler, Runtime
from streams.testing import FakeEvent, FakeMessage, FakeProducer, fake_runtime
from streams.topology import role

pytestmark = pytest.mark.unit


def _runtime(producer: FakeProducer, prefix: str = "p.") -> Runtime:
    return fake_runtime(producer, prefix)


class _Encoder:
    model_id, dim = "fake-text", 3

    def encode(self, batch: list[str]) -> np.ndarray:
        return np.ones((len(batch), 3), dtype=np.float32)


def _meta_event(track: str | None, offset: int, text: str = "Björk. Tags: pop") -> FakeEvent:
    value = b"\x00garbage" if track is None else avro_codec.encode(
        "TrackMetadata", {"track_id": track, "event_time": 5, "ingest_time": 5, "text": text})
    return FakeEvent(FakeMessage("p.tracks.metadata", 0, offset, (track or "x").encode(), value))


def test_a_roles_outputs_and_dead_letters_go_where_the_topology_says() -> None:
    producer = FakeProducer()
    rt = _runtime(producer)
    events = [_meta_event("a", 1), _meta_event(None, 2), _meta_event("c", 3, text="   ")]
    asyncio.run(rt.finish_batch(role("text"), TextRole(_Encoder()), events))
    assert [(s.topic, s.key) for s in producer.sent] == [
        ("p.embeddings.text", b"a"), ("p.tracks.metadata.dlq", b"x"), ("p.tracks.metadata.dlq", b"c")]


def test_a_failed_delivery_fails_the_batch_before_the_delivered_hook() -> None:
    class Keeping(RoleHandler):
        role = "assigner"
        delivered_with: list[dict[int, int]] = []

        async def process(self, rt: Runtime, raws: list[RawRecord]) -> BatchResult:
            return BatchResult(outputs=[(b"t", b"sid")], kept=[(r.partition, b"t\x1ftext", b"emb") for r in raws])

        def delivered(self, result: BatchResult, kept_offsets: dict[int, int]) -> None:
            self.delivered_with.append(kept_offsets)

    events = [FakeEvent(FakeMessage("p.embeddings.text", p, 7, b"t", b"x")) for p in (0, 1, 1)]
    ok = Keeping()
    asyncio.run(_runtime(FakeProducer()).finish_batch(role("assigner"), ok, events))
    assert ok.delivered_with == [{0: 0, 1: 1}]  # the last kept offset per partition (of the kept topic)

    failing = Keeping()
    failing.delivered_with = []
    with pytest.raises(ConnectionError):
        asyncio.run(_runtime(FakeProducer(failing=("p.embeddings.kept",))).finish_batch(role("assigner"), failing, events))
    assert failing.delivered_with == []  # not delivered: the batch is retried, never acked


def test_outputs_from_a_role_that_emits_nothing_are_a_bug_not_a_loss() -> None:
    class Writer(RoleHandler):
        role = "writer"

        async def process(self, rt: Runtime, raws: list[RawRecord]) -> BatchResult:
            return BatchResult(outputs=[(b"k", b"v")])

    with pytest.raises(RuntimeError, match="emits to no topic"):
        asyncio.run(_runtime(FakeProducer()).finish_batch(role("writer"), Writer(), [_meta_event("a", 1)]))


def test_a_table_write_is_bound_to_the_event_of_its_record() -> None:
    from faust import streams as faust_streams

    seen: list[Any] = []

    class Logger(RoleHandler):
        role = "logger"

        async def process(self, rt: Runtime, raws: list[RawRecord]) -> BatchResult:
            for raw in raws:
                rt.make_current(self.role, raw)
                seen.append(faust_streams.current_event())
            return BatchResult(stored=len(raws))

    events = [FakeEvent(FakeMessage("p.interactions", p, o, b"u", b"x")) for p, o in ((0, 4), (1, 4))]
    asyncio.run(_runtime(FakeProducer()).finish_batch(role("logger"), Logger(), events))
    assert seen == events


def test_assignment_restores_each_roles_state_for_its_own_input_partitions() -> None:
    @dataclass(frozen=True)
    class TP:
        topic: str
        partition: int

    class Recorded:
        name = "recorded"

        def __init__(self) -> None:
            self.calls: list[dict[str, list[int]]] = []

        def restore(self, partitions: dict[str, list[int]]) -> int:
            self.calls.append(partitions)
            return 3

    class Stateful(RoleHandler):
        def __init__(self, role: str) -> None:
            self.role, self.state = role, Recorded()

        async def process(self, rt: Runtime, raws: list[RawRecord]) -> BatchResult:
            return BatchResult()

        def states(self) -> list[Recorded]:  # type: ignore[override]
            return [self.state]

    rt = _runtime(FakeProducer())
    assigner, writer = Stateful("assigner"), Stateful("writer")
    rt._handlers = {"assigner": (role("assigner"), assigner), "writer": (role("writer"), writer)}
    assigned = {TP("p.embeddings.text", 1), TP("p.embeddings.audio", 0), TP("p.embeddings.text", 0), TP("p.sids.assigned", 1)}
    asyncio.run(rt._assigned(None, assigned))
    assert assigner.state.calls == [{"p.embeddings.text": [0, 1], "p.embeddings.audio": [0]}]
    assert writer.state.calls == [{"p.sids.assigned": [1]}]


def test_assigned_partitions_nobody_committed_start_at_their_earliest_offset() -> None:
    """A replica that dies before its first commit leaves its partitions uncommitted; the partner
    that takes them over seeks each to its earliest offset explicitly (Faust, left to the reset
    policy, did not fetch such a partition until new records arrived: the kill-replica drill lost
    its tracks). Committed partitions, partitions the worker already had, and topics no role reads
    are left to Faust."""
    @dataclass(frozen=True)
    class TP:
        topic: str
        partition: int

    class Plain(RoleHandler):
        async def process(self, rt: Runtime, raws: list[RawRecord]) -> BatchResult:
            return BatchResult()

    rt = _runtime(FakeProducer())
    rt._handlers = {"assigner": (role("assigner"), Plain())}
    done, fresh, trimmed, other = (TP("p.embeddings.text", 0), TP("p.embeddings.text", 1), TP("p.embeddings.audio", 0),
                                   TP("p.sids.assigned", 0))
    rt.app.consumer.committed = {done: 42, fresh: -1001}
    rt.app.consumer.earliest = {trimmed: 7}
    asyncio.run(rt._assigned(None, {done, fresh, trimmed, other}))
    assert sorted(rt.app.consumer.seeks, key=str) == sorted([(fresh, 0), (trimmed, 7)], key=str)
    # a later rebalance: partitions this worker kept go on from where they are (still uncommitted or not)
    rt.app.consumer.seeks.clear()
    taken_over = TP("p.embeddings.text", 2)
    asyncio.run(rt._assigned(None, {done, fresh, trimmed, taken_over}))
    assert rt.app.consumer.seeks == [(taken_over, 0)]


def test_a_restore_that_stops_short_holds_the_roles_batches_until_it_completes() -> None:
    """A state whose restore raised (RestoreIncomplete) is never taken for complete: before the
    role's next batch the runtime restores it again, pausing between tries, and only returns
    (letting the batch run) once a restore succeeded."""
    @dataclass(frozen=True)
    class TP:
        topic: str
        partition: int

    class Flaky:
        name = "kept embeddings"

        def __init__(self, failures: int) -> None:
            self.failures, self.calls = failures, 0

        def restore(self, partitions: dict[str, list[int]]) -> int:
            self.calls += 1
            if self.calls <= self.failures:
                raise RestoreIncomplete("kept embeddings k", {0: (5, 9)}, 0.1)
            return 4

    class Stateful(RoleHandler):
        role = "assigner"

        def __init__(self) -> None:
            self.state = Flaky(failures=2)

        async def process(self, rt: Runtime, raws: list[RawRecord]) -> BatchResult:
            return BatchResult()

        def states(self) -> list[Flaky]:  # type: ignore[override]
            return [self.state]

    rt = _runtime(FakeProducer())
    handler = Stateful()
    rt._handlers = {"assigner": (role("assigner"), handler)}

    async def go() -> list[str]:
        seen = []
        await rt._assigned(None, {TP("p.embeddings.text", 0)})
        seen.append(f"after assignment: {handler.state.calls} call(s), pending {sorted(rt._unrestored.get('assigner', {}))}")
        await rt.ensure_restored("assigner", max_delay_s=0.01)
        seen.append(f"after ensure: {handler.state.calls} call(s), pending {sorted(rt._unrestored.get('assigner', {}))}")
        return seen

    assert asyncio.run(go()) == ["after assignment: 1 call(s), pending ['kept embeddings']",
                                 "after ensure: 3 call(s), pending []"]


def test_the_record_timestamp_reaches_the_role_in_ms() -> None:
    from streams.runtime import raw_record

    assert raw_record(FakeEvent(FakeMessage("t", 0, 1, None, None, 1765000000.123))).timestamp_ms == 1765000000123
    assert raw_record(FakeEvent(FakeMessage("t", 0, 1, None, None, None))).timestamp_ms is None
