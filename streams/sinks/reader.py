"""Reads of the online store: what ranking services, the status command, the harness and the
writer's freshness check ask Feast for."""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from feast import FeatureStore, FeatureView
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import _mmh3
from feast.infra.online_stores.redis import RedisOnlineStore, _versioned_fv_name
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff

from streams.sinks.schema import HISTORY_VIEW, SID_VIEW, ViewSpec, view_spec
from streams.sinks.store import Redis, open_store


def stored_order(store: FeatureStore, view: ViewSpec, entity_rows: Sequence[dict[str, str]]) -> np.ndarray:
    """Each entity's stored row's order features (view.order: event time in ms, then the
    tie-breaks), int64 [n, len(order)]; 0 for the time and -1 for a tie-break where there is no
    row. One read."""
    order = view.order
    if not entity_rows:
        return np.zeros((0, len(order)), dtype=np.int64)
    stored = store.get_online_features(features=[f"{view.name}:{f}" for f in order], entity_rows=list(entity_rows)).to_dict()
    columns = [pd.Series(stored[f], dtype="float64").fillna(0 if k == 0 else -1).to_numpy(dtype=np.int64)
               for k, f in enumerate(order)]
    return np.stack(columns, axis=1)


def read_sids(store: FeatureStore, track_ids: Sequence[str], codebook_version: str) -> pd.DataFrame:
    """Online SIDs of these tracks under one codebook version (normally the live one), one row
    per requested id in order; None for tracks that have no row under that version."""
    return _read(store, view_spec(SID_VIEW), [{"track_id": t, "codebook_version": codebook_version} for t in track_ids])


def read_sid_columns(store: FeatureStore, track_ids: Sequence[str], codebook_version: str,
                     features: Sequence[str]) -> dict[str, list[Any]]:
    """Only the named SID features of these tracks, one list per feature in id order (None for a
    track without a row), and no DataFrame: a readability poller's read (5 ids, 1 feature:
    0.15 ms where read_sids takes 0.9)."""
    if not track_ids:
        return {f: [] for f in features}
    response = store.get_online_features(
        features=[f"{SID_VIEW}:{f}" for f in features],
        entity_rows=[{"track_id": t, "codebook_version": codebook_version} for t in track_ids],
    ).to_dict()
    return {f: list(response[f]) for f in features}


def read_history(store: FeatureStore, user_ids: Sequence[str]) -> pd.DataFrame:
    """Online user history for these users; None for unknown users."""
    return _read(store, view_spec(HISTORY_VIEW), [{"user_id": u} for u in user_ids])


def _read(store: FeatureStore, view: ViewSpec, entity_rows: list[dict[str, str]]) -> pd.DataFrame:
    columns = [*view.join_keys, *view.features]
    if not entity_rows:
        return pd.DataFrame({c: [] for c in columns})
    response = store.get_online_features(
        features=[f"{view.name}:{f}" for f in view.features], entity_rows=entity_rows,
    )
    return response.to_df()[columns]


def rows_by_version(feast_dir: Path, profile: str, redis_url: Redis) -> dict[str, int]:
    """Online SID rows per codebook version, over every track the offline log has seen."""
    parts = sorted((feast_dir / "data" / "offline" / SID_VIEW).glob("part-*.parquet"))
    if not parts:
        return {}
    seen = pd.concat([pd.read_parquet(p, columns=["track_id", "codebook_version"]) for p in parts])
    store = open_store(feast_dir, profile=profile, redis_url=redis_url)
    ids = sorted(seen["track_id"].unique())
    out = {}
    for version in sorted(seen["codebook_version"].unique()):
        df = read_sids(store, ids, version)
        rows = int(df["sid_event_time_ms"].notna().sum())
        if rows:  # a pruned version (streams.sinks.prune) has none left
            out[version] = rows
    return out


SERVED_SIDS = ("text_sid", "audio_sid", "joint_sid")


def read_track_sids(store: FeatureStore, track_ids: Sequence[str], version: str) -> dict[str, dict[str, list[int] | None]]:
    """{track: {text_sid, audio_sid, joint_sid}} for tracks with a row under `version` (one
    store call, no DataFrame: what a ranking service reads per request)."""
    columns = read_sid_columns(store, track_ids, version, SERVED_SIDS)
    out: dict[str, dict[str, list[int] | None]] = {}
    for i, t in enumerate(track_ids):
        row = {f: columns[f][i] for f in SERVED_SIDS}
        if any(v is not None for v in row.values()):
            out[t] = {f: (list(v) if v is not None else None) for f, v in row.items()}
    return out


def read_histories(store: FeatureStore, user_ids: Sequence[str]) -> dict[str, list[str]]:
    """{user: history track ids, oldest first} for users with a row (one store call).

    On Redis, Feast's hashes are read directly (`_RedisHashes`: one HMGET for one user); other
    stores go through their own `online_read` (Feast's OnlineStore interface). Either way without
    `get_online_features`' request planning: /rank reads one history per request, and for one user
    `online_read` takes 0.07-0.12 ms where `get_online_features` takes 0.26-0.39
    (tests/integration/test_feast_store.py holds them equal to it on SQLite and Redis)."""
    if not user_ids:
        return {}
    view = _views.get(store, HISTORY_VIEW)
    redis = _RedisHashes.of(store)
    if redis is not None:
        return _histories(user_ids, redis.read(view, "user_id", user_ids, "history_item_ids"))
    keys = [EntityKeyProto(join_keys=["user_id"], entity_values=[ValueProto(string_val=u)]) for u in user_ids]
    rows = store._get_provider().online_read(store.config, view, keys, ["history_item_ids"])  # noqa: SLF001 - Feast's provider has no public accessor
    return _histories(user_ids, [values.get("history_item_ids") if values else None for _, values in rows])


async def read_histories_async(store: FeatureStore, user_ids: Sequence[str]) -> dict[str, list[str]]:
    """`read_histories` awaited: on Redis the HMGET goes through the store's asyncio client, so the
    event loop serves other requests while Redis answers (at 1,000 /rank per second the blocking
    read held the loop ~0.1 ms a request, waiting); other stores (SQLite: a local file) read as
    `read_histories` does. Equal to it (tests/integration/test_feast_store.py)."""
    if not user_ids:
        return {}
    redis = _RedisHashes.of(store)
    if redis is None:
        return read_histories(store, user_ids)
    view = _views.get(store, HISTORY_VIEW)
    return _histories(user_ids, await redis.read_async(view, "user_id", user_ids, "history_item_ids"))


def _histories(user_ids: Sequence[str], values: Sequence[ValueProto | bytes | None]) -> dict[str, list[str]]:
    """Stored values, one per user (a ValueProto from `online_read`, its bytes from Redis; None or
    empty: no value) -> {user: history} for the users whose value is a string list."""
    out: dict[str, list[str]] = {}
    for u, value in zip(user_ids, values, strict=True):
        if isinstance(value, bytes):
            value = ValueProto.FromString(value) if value else None
        if value is not None and value.WhichOneof("val") == "string_list_val":
            out[u] = list(value.string_list_val.val)
    return out


class _RedisHashes:
    """Feast's Redis layout read directly, for one feature of string-keyed entities: the hash at
    serialize_entity_key(key) + project, the field mmh3("<view>:<feature>"), with Feast's own key
    helpers and its store's client (redis, cluster or sentinel). What `online_read` does for this
    read, less its per-call work (field lists, a pipeline object for one key, a Timestamp and a
    datetime per row): one HMGET for one user, a pipeline of them for several. A row counts only
    with a value, as `online_read`'s (Feast writes the value and its `_ts` field in one HSET)."""

    _of: weakref.WeakKeyDictionary[FeatureStore, _RedisHashes | None] = weakref.WeakKeyDictionary()

    def __init__(self, store: FeatureStore) -> None:
        config = store.config
        online = store._get_provider().online_store  # noqa: SLF001 - Feast's provider has no public accessor
        self.config = config
        self.client = online._get_client(config.online_store)  # noqa: SLF001 - the store's own client and pool
        self.suffix = config.project.encode("utf-8")
        self.fields: dict[tuple[str, str], bytes] = {}
        self.online = online
        self._async: tuple[asyncio.AbstractEventLoop, Any] | None = None  # (its loop, the asyncio client)

    @classmethod
    def of(cls, store: FeatureStore) -> _RedisHashes | None:
        """The reader of this store, None where its online store is not Feast's Redis store."""
        try:
            return cls._of[store]
        except KeyError:
            pass
        reader = cls(store) if isinstance(store._get_provider().online_store, RedisOnlineStore) else None  # noqa: SLF001
        cls._of[store] = reader
        return reader

    def read(self, view: FeatureView, join_key: str, ids: Sequence[str], feature: str) -> list[bytes | None]:
        """The stored bytes of `feature` per id (None where the entity has no value), in id order."""
        keys, field = self._keys(view, join_key, ids, feature)
        if len(keys) == 1:
            return [self.client.hmget(keys[0], [field])[0]]
        with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(key, [field])
            return [values[0] for values in pipe.execute()]

    async def read_async(self, view: FeatureView, join_key: str, ids: Sequence[str], feature: str) -> list[bytes | None]:
        """`read` through the store's asyncio client (made on the first call, bound to its event
        loop; a call from another loop reads with the blocking client instead)."""
        client = await self._async_client()
        if client is None:
            return self.read(view, join_key, ids, feature)
        keys, field = self._keys(view, join_key, ids, feature)
        if len(keys) == 1:
            return [(await client.hmget(keys[0], [field]))[0]]
        async with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(key, [field])
            return [values[0] for values in await pipe.execute()]

    async def _async_client(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._async is None:
            client = await self.online._get_client_async(self.config.online_store)  # noqa: SLF001 - same options as the blocking client
            # as many retries as the blocking client makes (serve: 1), at once: no back-off
            retry = client_retry(self.client)
            client.set_retry(AsyncRetry(NoBackoff(), retry.get_retries() if retry is not None else 0))
            self._async = (loop, client)
        return self._async[1] if self._async[0] is loop else None

    def _keys(self, view: FeatureView, join_key: str, ids: Sequence[str], feature: str) -> tuple[list[bytes], bytes]:
        """The entities' hash keys and the feature's field, as Feast writes them."""
        name = _versioned_fv_name(view, self.config)
        field = self.fields.get((name, feature))
        if field is None:
            field = self.fields[(name, feature)] = _mmh3(f"{name}:{feature}")
        version = self.config.entity_key_serialization_version
        keys = [serialize_entity_key(EntityKeyProto(join_keys=[join_key], entity_values=[ValueProto(string_val=i)]),
                                     entity_key_serialization_version=version) + self.suffix for i in ids]
        return keys, field


def client_retry(client: Any) -> Any:
    """A blocking redis-py client's Retry (Redis has get_retry, RedisCluster a `retry`), or None."""
    return client.get_retry() if hasattr(client, "get_retry") else getattr(client, "retry", None)


class _ViewCache:
    """Feature views by (store, name), looked up again after `max_age_s` (a registry lookup costs
    ~1 ms, more than the read it serves; a view changes only by `feast apply`)."""

    def __init__(self, max_age_s: float = 60.0) -> None:
        self.max_age_s = max_age_s
        self._views: weakref.WeakKeyDictionary[FeatureStore, dict[str, tuple[float, FeatureView]]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self, store: FeatureStore, name: str) -> FeatureView:
        now = time.monotonic()
        with self._lock:
            hit = self._views.get(store, {}).get(name)
        if hit is not None and now - hit[0] < self.max_age_s:
            return hit[1]
        view = store.get_feature_view(name)
        with self._lock:
            self._views.setdefault(store, {})[name] = (now, view)
        return view


_views = _ViewCache()
