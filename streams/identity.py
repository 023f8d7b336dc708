"""Identity codes handed out in the stream, safe with any number of assigners.

The log is the arbiter. Every identity code is *claimed* by producing an IdentityClaim to
the compacted topic ``sids.identity``, keyed ``version|modality|prefix|code|track`` and
partitioned by the bucket ``version|modality|prefix``, so all claims of one bucket are
totally ordered in one partition. Every assigner reads the whole topic into a
``psrq.identity.IdentityTable`` in that order, so every assigner agrees:

- a code belongs to the track of its **first claim in partition order** (later claims on it
  lose and their track claims its next-nearest free code);
- a track's code in a bucket is its **first winning claim** there (a replayed or concurrent
  second claim of the same track only burns a code, it never changes the ID);
- codes are never freed: a track whose content moved it to another bucket gets a new ID
  there, and its old code stays retired.

An assigner claims, waits for the broker's ack (acks=all), then reads its claims' partitions
up to its own offsets: every earlier claim is then visible, so the decision is final before
the SID record is produced. Replays, restarts and rebalances re-read the same log and reach
the same IDs. Compaction keeps one record per key; keys hold the track, so compaction only
drops exact duplicates (replayed claims) and never changes who came first.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from psrq.identity import IdentityTable, as_query, bucket_full, bucket_keys
from streams import avro_codec
from streams.kafka_clients import Brokers, data_path_timeouts, librdkafka
from streams.records import RestoreIncomplete, next_messages
from streams.state.identity_store import IdentityStore, open_slot

log = logging.getLogger(__name__)


CLAIMER = f"{socket.gethostname()}:{os.getpid()}"
POLL_S = 0.05  # the longest one wait for a claim to be readable lasts (it returns as soon as one is)


def bucket_text(version: str, modality: str, prefix: Sequence[int]) -> str:
    return f"{version}|{modality}|{'-'.join(str(int(c)) for c in prefix)}"


@dataclass(frozen=True)
class Request:
    """Identity codes wanted for `track_ids` in one (version, modality): their semantic
    `prefixes` [n, L], `distances` to every composite code (a psrq.identity.CompositeQuery, or a
    dense [n, capacity] matrix), the optional hint version."""

    version: str
    modality: str
    capacity: int
    track_ids: Sequence[str]
    prefixes: np.ndarray
    distances: Any
    hint_version: str | None = None


def _unclaimed_mask(table: Any, hint_table: Any, key: tuple[int, ...], capacity: int) -> np.ndarray | None:
    """The codes a track without a hint must not take in bucket `key`: those taken in `table`, and
    those held in the same-numbered bucket under the hint version (their tracks may still claim
    them back: a kept semantic path keeps its identity code, whichever track is coded first)."""
    mine = table.taken_mask(key)
    theirs = hint_table.taken_mask(key) if hint_table is not None else None
    if theirs is None or len(theirs) != capacity:
        return mine
    return theirs if mine is None else (mine | theirs)


class TableIdentities:
    """The decision rules on an in-memory table, claims applied at once (one process owns the
    table: unit tests, offline tools). `KafkaIdentities` applies the same rules through the log."""

    def __init__(self) -> None:
        self.tables: dict[tuple[str, str], IdentityTable] = {}
        self.hint_collisions = 0  # tracks whose hint was already taken (they claimed their nearest free code)

    def table(self, version: str, modality: str, capacity: int) -> IdentityTable:
        t = self.tables.get((version, modality))
        if t is None:
            t = self.tables[(version, modality)] = IdentityTable(capacity)
        return t

    def existing(self, version: str, modality: str) -> Any:
        """The table of (version, modality) if any claim was made there, else None."""
        return self.tables.get((version, modality))

    def _submit(self, claims: list[dict[str, Any]]) -> None:
        for c in claims:
            self.table(c["codebook_version"], c["modality"], c["capacity"]).claim(tuple(c["prefix"]), c["track_id"], c["code"])

    def refresh(self) -> None:
        """Read claims made elsewhere (nothing to read for an in-memory table)."""

    def held_ids(self, q: Any, version: str, modality: str, track_ids: Sequence[str], X: np.ndarray) -> np.ndarray:
        """The IDs the registry holds for these tracks under a psrq_id codebook `q`: the semantic
        layers of X followed by each track's claimed identity codes (-1 where it holds none)."""
        self.refresh()
        semantic = q.semantic_encode(X)
        table = self.existing(version, modality)
        held = [None if table is None else table.held(key, t) for key, t in zip(bucket_keys(semantic), track_ids, strict=True)]
        ident = q.split(np.array([-1 if h is None else h for h in held], dtype=np.int64))
        ident[np.array([h is None for h in held])] = -1
        return np.concatenate([semantic, ident], axis=1)

    def resolve(
        self, version: str, modality: str, capacity: int, track_ids: Sequence[str], prefixes: np.ndarray,
        distances: Any, hint_version: str | None = None,
    ) -> tuple[np.ndarray, dict[int, str]]:
        """Composite identity code per track (int64 [n], -1 where it failed) and {row: reason}.

        Each track keeps the code it holds in its bucket; otherwise it takes the code it holds
        under `hint_version` in the same-numbered bucket (its semantic path survived the refit)
        if that is free, else its nearest free code. Tracks with a hint claim before tracks
        without one, and a track without a hint takes no code held in its bucket under
        `hint_version` while another is free, so a kept path keeps its identity code whichever
        track is coded first (a hint found taken anyway is counted in `hint_collisions`)."""
        return self.resolve_many([Request(version, modality, capacity, track_ids, prefixes, distances, hint_version)])[0]

    def resolve_many(self, requests: Sequence[Request]) -> list[tuple[np.ndarray, dict[int, str]]]:
        """`resolve` for several (version, modality) requests at once: each round's claims of
        every request go out in one claim round trip (produce, acks, read-back), not one per
        request. Buckets of different requests are different keys, so the outcome per bucket is
        the one `resolve` reaches alone."""
        self.refresh()
        queries = [as_query(r.distances) for r in requests]  # dense [n, capacity] or a CompositeQuery
        states = []
        for r in requests:
            table = self.table(r.version, r.modality, r.capacity)
            hint_table = self.existing(r.hint_version, r.modality) if r.hint_version else None
            states.append((r, table, hint_table, bucket_keys(r.prefixes), np.full(len(r.track_ids), -1, dtype=np.int64),
                           {}, list(range(len(r.track_ids)))))
        rounds = 0
        while any(todo for *_, todo in states):
            rounds += 1
            claims: list[dict[str, Any]] = []
            pending: list[list[int]] = []
            for k, (r, table, hint_table, keys, out, failed, todo) in enumerate(states):
                reserved: dict[tuple[int, ...], list[int]] = {}
                rows: list[int] = []
                hints = {i: hint_table.held(keys[i], r.track_ids[i]) if hint_table is not None else None for i in todo}
                # tracks with a hint (their semantic path kept) claim before any track without one
                for i in [i for i in todo if hints[i] is not None] + [i for i in todo if hints[i] is None]:
                    key, track = keys[i], r.track_ids[i]
                    held = table.held(key, track)
                    if held is not None:
                        out[i] = held
                        continue
                    taken = reserved.setdefault(key, [])
                    hint = hints[i]
                    if hint is not None and hint < r.capacity and table.owner(key, hint) is None and hint not in taken:
                        code = hint
                    else:
                        if hint is not None:
                            self.hint_collisions += 1
                        found = queries[k].nearest_free(i, _unclaimed_mask(table, hint_table, key, r.capacity), taken)
                        if found is None:
                            found = queries[k].nearest_free(i, table.taken_mask(key), taken)
                        if found is None:
                            failed[i] = str(bucket_full(key, r.capacity))
                            continue
                        code = found
                    taken.append(code)
                    rows.append(i)
                    claims.append({"codebook_version": r.version, "modality": r.modality, "prefix": list(key), "code": int(code),
                                   "capacity": int(r.capacity), "track_id": track, "event_time": int(time.time() * 1000),
                                   "claimer": CLAIMER})
                pending.append(rows)
            if not claims:
                break
            self._submit(claims)
            for (r, table, _, keys, out, _, todo), rows in zip(states, pending, strict=True):
                todo.clear()
                for i in rows:
                    held = table.held(keys[i], r.track_ids[i])
                    if held is None:
                        todo.append(i)  # lost the code to an earlier claim: try the next-nearest
                    else:
                        out[i] = held
        if rounds > 2:
            log.info("identity %s: %d claim rounds for %d tracks", ", ".join(f"{r.version}/{r.modality}" for r in requests),
                     rounds, sum(len(r.track_ids) for r in requests))
        return [(out, failed) for _, _, _, _, out, failed, _ in states]


class KafkaIdentities(TableIdentities):
    """Claims through the compacted ``sids.identity`` topic; the table is every claim read back in
    log order, kept in an IdentityStore (streams.state.identity_store): on disk under `state_dir`
    (a slot of its own there, with the offsets it has applied, so a restart reads only the tail),
    or in memory (None: one-off readers such as the backfill and tests, which read the whole topic)."""

    def __init__(self, bootstrap: Brokers, topic: str, timeout_s: float = 30.0, stall_s: float = 30.0,
                 state_dir: Path | None = None, cache_mb: int = 64) -> None:
        from confluent_kafka import Consumer, Producer, TopicPartition

        super().__init__()
        self._slot_lock = None
        path = None
        if state_dir is not None:
            path, self._slot_lock = open_slot(Path(state_dir))
        self.store = IdentityStore(path, cache_mb=cache_mb, mask_cache_mb=cache_mb)
        self.topic = topic
        self.timeout_s = float(timeout_s)  # a broker request (metadata, watermarks, produce acks)
        self.stall_s = float(stall_s)  # a catch-up fails after this long without a claim read
        self._producer = Producer(librdkafka(bootstrap, {"acks": "all", "enable.idempotence": True, "linger.ms": 0,
                                                        **data_path_timeouts(bootstrap, producer=True)}))
        reader = librdkafka(bootstrap, {"group.id": f"{topic}.reader", "enable.auto.commit": False,
                  "auto.offset.reset": "earliest", "enable.partition.eof": False, **data_path_timeouts(bootstrap)})
        self._consumer = Consumer(reader)
        # Watermarks come from a second, never-assigned consumer: the reader always has a long-poll
        # fetch in flight (up to fetch.wait.max.ms), and the broker answers a connection's requests
        # in order, so a ListOffsets on the reader's connection waited that long per partition.
        self._offsets = Consumer(reader)
        from streams.admin.topics import wait_until_ready

        try:  # a topic created a moment ago may not be in this broker's metadata yet
            wait_until_ready(self._consumer, [topic], self.timeout_s)
        except TimeoutError:
            raise RuntimeError(f"identity topic {topic!r} does not exist (run `sidstream topics create`)") from None
        meta = self._consumer.list_topics(topic, timeout=self.timeout_s).topics[topic]
        self.partitions = sorted(meta.partitions)
        applied = self.store.next_offsets(topic)
        highs = self.high_watermarks()
        if any(applied.get(p, 0) > highs[p] for p in self.partitions) or set(applied) - set(self.partitions):
            log.warning("%s: the local claims store is ahead of the topic (recreated?): reading it from the start", topic)
            self.store.reset()
            applied = {}
        self._next: dict[int, int] = {p: applied.get(p, 0) for p in self.partitions}
        # from where the local store stopped: a restart reads only the tail (0: the whole log)
        self._consumer.assign([TopicPartition(topic, p, self._next[p]) for p in self.partitions])
        self.claims_read = 0

    def high_watermarks(self) -> dict[int, int]:
        """Each partition's high watermark now. A partition whose leader is moving (a topic just
        created, a broker restarting) is asked again until `timeout_s`; then RestoreIncomplete."""
        from confluent_kafka import KafkaError, KafkaException, TopicPartition

        retriable = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                     KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._TRANSPORT}
        deadline = time.monotonic() + self.timeout_s
        out: dict[int, int] = {}
        for p in self.partitions:
            while True:
                try:
                    out[p] = self._offsets.get_watermark_offsets(TopicPartition(self.topic, p), timeout=self.timeout_s,
                                                                 cached=False)[1]
                    break
                except KafkaException as exc:
                    if exc.args[0].code() not in retriable or time.monotonic() > deadline:
                        raise RestoreIncomplete(f"identity claims {self.topic}", {}, self.timeout_s, str(exc)) from exc
                    time.sleep(0.1)
        return out

    def table(self, version: str, modality: str, capacity: int) -> Any:
        return self.store.table(version, modality, capacity)

    def existing(self, version: str, modality: str) -> Any:
        return self.store.table(version, modality)

    def close(self) -> None:
        self._consumer.close()
        self._offsets.close()
        self._producer.flush(self.timeout_s)
        self.store.close()
        if self._slot_lock is not None:
            self._slot_lock.close()

    def partition_of(self, version: str, modality: str, prefix: Sequence[int]) -> int:
        return self.partitions[zlib.crc32(bucket_text(version, modality, prefix).encode()) % len(self.partitions)]

    # -- reading ----------------------------------------------------------------------------
    def _apply(self, msgs: list[Any]) -> None:
        """Apply the claims of `msgs` (in log order) and the partitions' next offsets in one
        transaction of the store."""
        claims: list[dict[str, Any] | tuple[str, str, str, int, str]] = []
        moved: dict[int, int] = {}
        for msg in msgs:
            if msg.error() is not None:
                raise RuntimeError(f"reading {self.topic}: {msg.error()}")
            moved[msg.partition()] = msg.offset() + 1
            if msg.value() is None:  # a tombstone: a pruned version's claim (streams.sinks.prune)
                parts = (msg.key() or b"").decode(errors="replace").split("|", 4)  # version|modality|prefix|code|track
                if len(parts) == 5 and parts[3].isdigit():
                    claims.append((parts[0], parts[1], parts[2], int(parts[3]), parts[4]))
                continue
            try:
                _, rec = avro_codec.decode(msg.value(), expected="IdentityClaim")
            except avro_codec.DecodeError as exc:
                log.warning("%s[%d]@%d: skipping an undecodable claim: %s", self.topic, msg.partition(), msg.offset(), exc)
                continue
            claims.append(rec)
        if moved:
            self.store.apply_log(self.topic, claims, moved)
            self._next.update(moved)
            self.claims_read += sum(isinstance(c, dict) for c in claims)

    def catch_up(self, targets: dict[int, int] | None = None) -> int:
        """Read until every partition's next offset reaches `targets` (default: its high
        watermark now); returns the claims read. No total deadline while claims keep coming:
        `RestoreIncomplete` after `stall_s` without one (a paused or unreachable broker)."""
        if targets is None:
            targets = self.high_watermarks()
        before = self.claims_read
        last_progress = time.monotonic()
        while any(self._next[p] < off for p, off in targets.items()):
            msgs = next_messages(self._consumer, POLL_S)
            if msgs:
                last_progress = time.monotonic()
                self._apply(msgs)
            elif time.monotonic() - last_progress > self.stall_s:
                behind = {p: (self._next[p], off) for p, off in targets.items() if self._next[p] < off}
                raise RestoreIncomplete(f"identity claims {self.topic}", behind, self.stall_s)
        return self.claims_read - before

    def refresh(self) -> None:
        """Apply whatever claims have already arrived, without waiting."""
        while True:
            msgs = self._consumer.consume(num_messages=5000, timeout=0)
            if not msgs:
                return
            self._apply(msgs)

    # -- claiming ---------------------------------------------------------------------------
    def _submit(self, claims: list[dict[str, Any]]) -> None:
        """Produce the claims, await the broker's acks, then read their partitions up to them."""
        delivered: dict[int, int] = {}
        errors: list[str] = []

        def on_delivery(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                delivered[msg.partition()] = max(delivered.get(msg.partition(), -1), msg.offset())

        for c in claims:
            key = f"{bucket_text(c['codebook_version'], c['modality'], c['prefix'])}|{c['code']}|{c['track_id']}".encode()
            self._producer.produce(self.topic, avro_codec.encode("IdentityClaim", c), key,
                                   partition=self.partition_of(c["codebook_version"], c["modality"], c["prefix"]), on_delivery=on_delivery)
        left = self._producer.flush(self.timeout_s)
        if errors or left:
            raise ConnectionError(f"identity claims not delivered ({left} pending): {errors[:3]}")
        self.catch_up({p: off + 1 for p, off in delivered.items()})
