"""The assigner's join state: each track's latest embedding per modality, kept once.

Three tiers, so that memory stays flat however long the stream runs:

- `embeddings.kept` (compacted topic, key ``track_id\\x1fmodality``, value the Embedding record,
  same partition as the embedding it came from) is the source of truth; the retraining loop re-codes the catalogue
  from it and a fresh assigner restores from it;
- a local SQLite file holds the same rows for lookups (disk, not memory), with the topic offset
  up to which it has caught up per partition, so a restart only reads the tail;
- an in-memory join table holds the entries of tracks still waiting for a late modality,
  for at most `audio_wait_s`; after that the entry is dropped. A modality that arrives later
  still joins, against the kept row on disk, so a text update never wipes audio/joint SIDs.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from streams import avro_codec
from streams.kafka_clients import Brokers, librdkafka
from streams.records import RestoreIncomplete, next_messages

KEY_SEP = "\x1f"


def kept_key(track_id: str, modality: str) -> bytes:
    return f"{track_id}{KEY_SEP}{modality}".encode()


def entry_of(rec: dict[str, Any]) -> dict[str, Any]:
    """The kept form of a decoded Embedding record (its value on embeddings.kept is the record itself)."""
    return {"event_time": rec["event_time"], "model_id": rec["model_id"], "vector": rec["vector"].hex(),
            "ingest_time": rec["ingest_time"], "source_offset": rec.get("source_offset", -1)}


class KeptEmbeddings:
    """track_id -> {modality: entry} over the local SQLite store and the bounded join table.

    An entry is a JSON-able dict: event_time, model_id, vector (hex of float32 LE), ingest_time.
    """

    def __init__(self, path: Path, wait_s: float, clock: Any = time.monotonic) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.wait_s = float(wait_s)
        self.clock = clock
        self._conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS kept (track_id TEXT, modality TEXT, event_time INTEGER, entry TEXT, "
            "PRIMARY KEY (track_id, modality))"
        )
        self._conn.execute("CREATE TABLE IF NOT EXISTS restored (topic TEXT, partition INTEGER, next_offset INTEGER, "
                           "PRIMARY KEY (topic, partition))")
        self._conn.commit()
        self._waiting: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()

    # -- the join table ------------------------------------------------------------------
    def expire(self) -> int:
        """Drop join entries older than the wait; returns how many were dropped."""
        now, dropped = self.clock(), 0
        while self._waiting:
            track_id, (since, _) = next(iter(self._waiting.items()))
            if now - since < self.wait_s:
                break
            del self._waiting[track_id]
            dropped += 1
        return dropped

    @property
    def waiting(self) -> int:
        """Tracks in the join table (one modality seen, the other still awaited)."""
        return len(self._waiting)

    # -- mapping interface for streams.roles.assigner.assign_batch --------------------------
    def get(self, track_id: str, default: Any = None) -> Any:
        hit = self._waiting.get(track_id)
        if hit is not None:
            return dict(hit[1])
        rows = self._conn.execute("SELECT modality, entry FROM kept WHERE track_id = ?", (track_id,)).fetchall()
        return {m: json.loads(e) for m, e in rows} if rows else default

    def __getitem__(self, track_id: str) -> dict[str, Any]:
        entry = self.get(track_id)
        if entry is None:
            raise KeyError(track_id)
        return entry  # type: ignore[no-any-return]

    def __setitem__(self, track_id: str, entry: dict[str, Any]) -> None:
        # not committed here: the assigner commits once per batch (`commit`); this connection
        # reads its own pending rows, and a crash before the commit replays the un-acked batch
        self.put_many([(track_id, m, e) for m, e in entry.items()], commit=False)
        if {"text", "audio"} <= entry.keys():
            self._waiting.pop(track_id, None)  # joined: nothing left to wait for
        else:
            self._waiting[track_id] = (self.clock(), dict(entry))
            self._waiting.move_to_end(track_id)

    # -- the disk tier --------------------------------------------------------------------
    def put_many(self, items: Iterable[tuple[str, str, dict[str, Any]]], commit: bool = True) -> None:
        """Upsert entries; an entry older than the stored one of its (track, modality) is ignored."""
        self._conn.executemany(
            "INSERT INTO kept(track_id, modality, event_time, entry) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(track_id, modality) DO UPDATE SET event_time = excluded.event_time, entry = excluded.entry "
            "WHERE excluded.event_time >= kept.event_time",
            [(t, m, int(e["event_time"]), json.dumps(e, separators=(",", ":"))) for t, m, e in items],
        )
        if commit:
            self._conn.commit()

    def commit(self) -> None:
        self._conn.commit()

    def count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM kept").fetchone()[0])

    def restore_from(self, bootstrap: Brokers, topic: str, partitions: Iterable[int] | None = None, stall_s: float = 30.0,
                     touched: set[str] | None = None) -> int:
        """Catch the disk tier up with the compacted topic (from where it stopped, per partition,
        to the high watermark when called; None: every partition); returns how many records were
        read, and adds their track ids to `touched` when given.

        All of it or an error: there is no total deadline while records keep coming; when none came
        for `stall_s` (a paused or unreachable broker) it raises `RestoreIncomplete`, keeping what
        it read and where it got to, so a retry continues from there."""
        from confluent_kafka import Consumer, KafkaException, TopicPartition

        consumer = Consumer(librdkafka(bootstrap, {"group.id": f"kept-restore-{id(self)}",
                             "enable.auto.commit": False, "enable.partition.eof": False}))
        read = 0
        behind: dict[int, tuple[int, int]] = {}
        try:
            if partitions is None:
                partitions = sorted(consumer.list_topics(topic, timeout=stall_s).topics[topic].partitions)
            highs = {}
            for partition in partitions:
                row = self._conn.execute("SELECT next_offset FROM restored WHERE topic = ? AND partition = ?",
                                         (topic, partition)).fetchone()
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=stall_s)
                highs[partition] = (max(row[0], low) if row else low, high)
            behind = {p: (start, high) for p, (start, high) in highs.items() if start < high}
            for partition, (start, high) in list(behind.items()):
                read += self._restore_partition(consumer, topic, partition, start, high, stall_s, touched)
                behind[partition] = (high, high)
        except KafkaException as exc:
            raise RestoreIncomplete(f"kept embeddings {topic}", {p: v for p, v in behind.items() if v[0] < v[1]}, stall_s,
                                    str(exc)) from exc
        finally:
            consumer.close()
        return read

    def _restore_partition(self, consumer: Any, topic: str, partition: int, start: int, high: int, stall_s: float,
                           touched: set[str] | None) -> int:
        from confluent_kafka import TopicPartition

        consumer.assign([TopicPartition(topic, partition, start)])
        position, read = start, 0
        last_progress = time.monotonic()
        try:
            while position < high:
                msgs = next_messages(consumer, 0.2)
                batch: list[tuple[str, str, dict[str, Any]]] = []
                for msg in msgs:
                    if msg.error():
                        continue
                    position = msg.offset() + 1
                    if msg.value() is None:
                        continue  # a tombstone: nothing kept for that key
                    rec = avro_codec.decode(msg.value(), expected="Embedding")[1]
                    batch.append((rec["track_id"], rec["modality"], entry_of(rec)))
                if msgs:
                    last_progress = time.monotonic()
                    self.put_many(batch, commit=False)
                    self._save_position(topic, partition, position)  # rows and position in one transaction
                    read += len(batch)
                    if touched is not None:
                        touched.update(t for t, _, _ in batch)
                elif time.monotonic() - last_progress > stall_s:
                    raise RestoreIncomplete(f"kept embeddings {topic}", {partition: (position, high)}, stall_s)
        finally:
            consumer.unassign()
        return read

    def _save_position(self, topic: str, partition: int, next_offset: int) -> None:
        self._conn.execute("INSERT OR REPLACE INTO restored(topic, partition, next_offset) VALUES (?, ?, ?)",
                           (topic, partition, next_offset))
        self._conn.commit()

    def mark_written(self, topic: str, offsets: dict[int, int]) -> None:
        """Record that the disk tier holds everything this process wrote up to these offsets
        (partition -> last offset written), so a restart reads only what others wrote after."""
        for partition, offset in offsets.items():
            self._conn.execute(
                "INSERT INTO restored(topic, partition, next_offset) VALUES (?, ?, ?) "
                "ON CONFLICT(topic, partition) DO UPDATE SET next_offset = MAX(next_offset, excluded.next_offset)",
                (topic, partition, offset + 1),
            )
        self._conn.commit()

    def track_count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(DISTINCT track_id) FROM kept").fetchone()[0])

    def iter_tracks(self, after: str = "", chunk: int = 2000) -> Iterable[tuple[list[str], dict[str, dict[str, Any]]]]:
        """Tracks in id order after `after`, `chunk` at a time: (ids, {track_id: {modality: entry}})."""
        while True:
            ids = [t for (t,) in self._conn.execute(
                "SELECT DISTINCT track_id FROM kept WHERE track_id > ? ORDER BY track_id LIMIT ?", (after, chunk))]
            if not ids:
                return
            yield ids, self.entries(ids)
            after = ids[-1]

    def entries(self, track_ids: list[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {t: {} for t in track_ids}
        for i in range(0, len(track_ids), 500):
            part = track_ids[i : i + 500]
            marks = ",".join("?" * len(part))
            for t, m, e in self._conn.execute(f"SELECT track_id, modality, entry FROM kept WHERE track_id IN ({marks})", part):
                out[t][m] = json.loads(e)
        return out

    def close(self) -> None:
        self._conn.close()
