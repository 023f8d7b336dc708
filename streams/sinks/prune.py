"""Old codebook versions pruned from the online store, so that a nightly refit does not add a full
copy of the catalogue to Redis every night.

SID rows are keyed (track_id, codebook_version) and a version's rows never change once written;
after a version goes live, the versions outside the last `codebook.keep_versions` that were live
(the live one and the one before, for a rollback, by default) and not needed by the live ranker
(which reads SIDs under the codebook it was trained on) are deleted:

- **which tracks**: every track the offline SID log holds a row for under that version (the
  writer logs each row it stores there), read with the version pushed into the Parquet scan;
- **online rows**: deleted by entity key, `chunk` keys per statement / pipeline (SQLite: one
  DELETE per chunk on Feast's table; Redis: DEL of Feast's hash keys), the same keys Feast's own
  writes compute (feast.infra.key_encoding_utils.serialize_entity_key);
- **identity claims** of the version: a tombstone per claim key on the compacted ``sids.identity``
  topic, so compaction drops them, and every assigner's claims store deletes them as it reads
  them (streams.state.identity_store.IdentityStore.apply_log).
  (Kept embeddings are per track, not per version: nothing of a pruned version is kept there.)

Progress is a JSON file (per version: tracks done of total, claims tombstoned, state) written
after every chunk, so a killed prune resumes where it stopped; `sidstream status` shows it. A
rollback to a pruned version is a backfill of it (`sidstream codebook rollback` runs one)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow.dataset as pads
from feast import FeatureStore

from streams.kafka_clients import Brokers, librdkafka
from streams.sinks.schema import SID_VIEW

log = logging.getLogger(__name__)


def versions_to_keep(live_history: Sequence[str], keep: int, also: Sequence[str | None] = ()) -> set[str]:
    """The last `keep` distinct versions that went live (most recent last in `live_history`) and `also`."""
    out: list[str] = []
    for v in reversed(live_history):
        if v not in out:
            out.append(v)
        if len(out) >= keep:
            break
    return set(out) | {v for v in also if v}


def offline_tracks(feast_dir: Path, version: str | None = None) -> dict[str, list[str]]:
    """{codebook version: sorted track ids with a stored row} from the offline SID log (the version
    filter, when given, pushed into the scan)."""
    folder = feast_dir / "data" / "offline" / SID_VIEW
    parts = sorted(str(p) for p in folder.glob("part-*.parquet"))
    if not parts:
        return {}
    scan = pads.dataset(parts, format="parquet")
    flt = None if version is None else pads.field("codebook_version") == version
    df = scan.to_table(columns=["track_id", "codebook_version"], filter=flt).to_pandas().drop_duplicates()
    return {str(v): sorted(g["track_id"].astype(str)) for v, g in df.groupby("codebook_version")}


def _entity_keys(track_ids: Sequence[str], version: str) -> list[Any]:
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    return [EntityKey(join_keys=["track_id", "codebook_version"], entity_values=[Value(string_val=t), Value(string_val=version)])
            for t in track_ids]


def delete_online_rows(store: FeatureStore, track_ids: Sequence[str], version: str) -> int:
    """Delete these tracks' rows under `version` from the online store; returns how many keys."""
    from feast.infra.key_encoding_utils import serialize_entity_key

    config = store.config
    online = store._get_provider().online_store  # noqa: SLF001 - Feast has no delete-by-key API
    keys = _entity_keys(track_ids, version)
    kind = type(online).__name__
    if kind == "SqliteOnlineStore":
        from feast.infra.online_stores.sqlite import _quote_id, _table_id

        view = store.get_feature_view(SID_VIEW)
        table = _quote_id(_table_id(config.project, view, config.registry.enable_online_feature_view_versioning))
        blobs = [serialize_entity_key(k, entity_key_serialization_version=config.entity_key_serialization_version)
                 for k in keys]
        conn = online._get_conn(config)  # noqa: SLF001
        with conn:
            for i in range(0, len(blobs), 500):
                part = blobs[i : i + 500]
                conn.execute(f"DELETE FROM {table} WHERE entity_key IN ({','.join('?' * len(part))})", part)  # noqa: S608
        return len(blobs)
    if kind == "RedisOnlineStore":
        from feast.infra.online_stores.helpers import _redis_key

        client = online._get_client(config.online_store)  # noqa: SLF001
        with client.pipeline(transaction=False) as pipe:
            for k in keys:
                pipe.delete(_redis_key(config.project, k, entity_key_serialization_version=config.entity_key_serialization_version))
            pipe.execute()
        return len(keys)
    raise NotImplementedError(f"pruning is not implemented for the {kind} online store")


def tombstone_claims(bootstrap: Brokers, topic: str, version: str, stall_s: float = 30.0) -> int:
    """Produce a tombstone for every identity claim of `version` on the compacted claims topic."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    consumer = Consumer(librdkafka(bootstrap, {"group.id": f"{topic}.pruner", "enable.auto.commit": False,
                         "enable.partition.eof": False}))
    producer = Producer(librdkafka(bootstrap, {"acks": "all", "enable.idempotence": True}))
    prefix = f"{version}|".encode()
    sent = 0
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=stall_s).topics[topic].partitions)
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=stall_s)
            if low >= high:
                continue
            consumer.assign([TopicPartition(topic, p, low)])
            position = low
            keys: set[bytes] = set()
            while position < high:
                msgs = consumer.consume(num_messages=5000, timeout=min(1.0, stall_s))
                if not msgs:
                    raise TimeoutError(f"{topic}[{p}]: no claim read for {min(1.0, stall_s):g} s at {position} of {high}")
                for m in msgs:
                    if m.error() is not None:
                        continue
                    position = m.offset() + 1
                    if m.key() is not None and m.key().startswith(prefix) and m.value() is not None:
                        keys.add(m.key())
            for key in keys:
                producer.produce(topic, value=None, key=key, partition=p)
            sent += len(keys)
            consumer.unassign()
        if producer.flush(stall_s):
            raise ConnectionError(f"{topic}: tombstones not delivered within {stall_s:g} s")
    finally:
        consumer.close()
    return sent


def _read_progress(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_progress(path: Path, state: dict[str, Any]) -> None:
    """Atomically (temp file + rename): a killed prune leaves the old progress or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    tmp.replace(path)


class Pruner:
    """Deletes old versions' rows, chunk by chunk, with its progress in `progress_path`."""

    def __init__(self, store: FeatureStore, feast_dir: Path, progress_path: Path, chunk: int = 2000) -> None:
        self.store, self.feast_dir, self.path, self.chunk = store, feast_dir, Path(progress_path), chunk

    @staticmethod
    def forget(progress_path: Path, version: str) -> None:
        """Drop `version`'s progress (it is being backfilled again, so its rows come back)."""
        state = _read_progress(Path(progress_path))
        if state.pop(version, None) is not None:
            _write_progress(Path(progress_path), state)

    def progress(self) -> dict[str, Any]:
        return _read_progress(self.path)

    def _save(self, state: dict[str, Any]) -> None:
        _write_progress(self.path, state)

    def prune(self, keep: set[str], claims: Callable[[str], int] | None = None,
              on_progress: Callable[[str, int, int], None] | None = None, fail_after_chunks: int | None = None) -> dict[str, Any]:
        """Delete every version with stored rows that is not in `keep`; returns the progress."""
        state = self.progress()
        chunks = 0
        for version, tracks in sorted(offline_tracks(self.feast_dir).items()):
            if version in keep:
                continue
            entry = state.setdefault(version, {"done": 0, "total": len(tracks), "claims": None, "state": "running"})
            if entry["state"] == "done":
                continue
            entry["total"] = len(tracks)
            for start in range(entry["done"], len(tracks), self.chunk):
                delete_online_rows(self.store, tracks[start : start + self.chunk], version)
                entry["done"] = min(len(tracks), start + self.chunk)
                self._save(state)
                chunks += 1
                if on_progress is not None:
                    on_progress(version, entry["done"], len(tracks))
                if fail_after_chunks is not None and chunks >= fail_after_chunks and entry["done"] < len(tracks):
                    raise RuntimeError(f"injected failure after {chunks} prune chunk(s)")
            if claims is not None and entry["claims"] is None:
                entry["claims"] = claims(version)
            entry["state"] = "done"
            self._save(state)
            log.info("pruned codebook version %s: %d tracks' rows, %s identity claims", version, entry["total"], entry["claims"])
        return state
