"""The Feast store's set-up: a runnable repo materialised from feature_repo/ for a profile (SQLite
or Redis online store), applied when its definitions change, and the errors a retry can cure.
The writer (streams.sinks.writer) and the reader (streams.sinks.reader) both open stores here."""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import json
import logging
import sqlite3
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from feast import Entity, FeatureService, FeatureStore, FeatureView
from feast.data_source import DataSource, PushSource
from feast.repo_config import RepoConfig

from sidcore.config import RedisTarget, SettingsError

log = logging.getLogger(__name__)

DEFINITIONS_DIR = Path(__file__).resolve().parents[2] / "feature_repo"
PROJECT = "sidstream"
PROFILES = ("local", "redis", "redis_cluster")
_STAMP = ".applied"


Redis = str | RedisTarget  # a plain "host:port,..." string: no log-in, no TLS


def connection_string(redis: Redis, with_password: bool = True) -> str:
    """Feast's Redis connection string (nodes, then `key=value` options for redis-py): TLS, the
    CA, the ACL user and the password. `with_password=False`: what may be written to disk."""
    if isinstance(redis, str):
        return redis
    options = [*redis.nodes]
    if redis.tls:
        options += ["ssl=true", "ssl_cert_reqs=required"]
        if redis.ca_file is not None:
            options.append(f"ssl_ca_certs={redis.ca_file}")
    if redis.username:
        options.append(f"username={redis.username}")
    if redis.password is not None and with_password:
        if "," in redis.password or redis.password.strip() != redis.password:
            raise SettingsError("redis_password cannot hold a comma or surrounding spaces (Feast's connection string "
                                "splits on commas)")
        options.append(f"password={json.dumps(redis.password)}")  # quoted: Feast json-decodes each value
    return ",".join(options)


def store_config(data_dir: Path, profile: str = "local", redis_url: Redis = "127.0.0.1:6379",
                 with_password: bool = True, socket_timeout_s: float | None = None) -> dict[str, Any]:
    """The feature_store.yaml content for a profile, with absolute paths under data_dir.
    `socket_timeout_s`: redis-py's socket and connect timeouts (none: wait as long as the OS does)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown Feast profile {profile!r}; choose from {PROFILES}")
    data = Path(data_dir).resolve() / "data"
    online: dict[str, Any] = (
        {"type": "sqlite", "path": str(data / "online.db")}
        if profile == "local"
        # skip_dedup: the writer's own newer-row check decides, the same on both stores (and heals
        # rows stored before the event-time policy, which Feast's check would keep); one round trip
        else {"type": "redis", "connection_string": connection_string(redis_url, with_password), "skip_dedup": True}
    )
    if socket_timeout_s is not None and profile != "local":
        online["connection_string"] += f",socket_timeout={socket_timeout_s},socket_connect_timeout={socket_timeout_s}"
    if profile == "redis_cluster":  # Feast's own cluster client; redis_url lists the nodes (host:port,...)
        online["redis_type"] = "redis_cluster"
    return {
        "project": PROJECT,
        "provider": "local",
        "registry": {"path": str(data / "registry.db"), "cache_ttl_seconds": 60},
        "online_store": online,
        "offline_store": {"type": "file"},
        "entity_key_serialization_version": 3,
    }


def open_store(data_dir: Path, profile: str = "local", redis_url: Redis = "127.0.0.1:6379",
               socket_timeout_s: float | None = None) -> FeatureStore:
    """Materialise a runnable repo under data_dir, apply it (skipped when nothing changed),
    and return its FeatureStore. Safe to call from several processes at once. The Redis password
    and `socket_timeout_s` (store_config) stay in memory: the feature_store.yaml written to disk
    has neither (`feast` CLI users add their password), so processes that open the same repo with
    different timeouts do not re-apply it."""
    repo = Path(data_dir).resolve()
    if repo == DEFINITIONS_DIR:
        raise ValueError("open_store materialises a copy: give it a data directory, not feature_repo/ itself")
    (repo / "data" / "offline").mkdir(parents=True, exist_ok=True)
    files = {p.name: p.read_text() for p in sorted(DEFINITIONS_DIR.glob("*.py"))}
    if not files:
        raise FileNotFoundError(
            f"no Feast definitions in {DEFINITIONS_DIR}: run from a checkout (or image) that has feature_repo/"
        )
    files["feature_store.yaml"] = yaml.safe_dump(store_config(repo, profile, redis_url, with_password=False), sort_keys=False)
    fingerprint = hashlib.sha256(repr(sorted(files.items())).encode()).hexdigest()
    with open(repo / ".apply.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # other workers opening the same dir wait for one apply
        for name, text in files.items():
            path = repo / name
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
        config = store_config(repo, profile, redis_url, socket_timeout_s=socket_timeout_s)
        store = FeatureStore(repo_path=str(repo), config=RepoConfig(**config, repo_path=repo))
        stamp = repo / "data" / _STAMP
        online_db = repo / "data" / "online.db"
        up_to_date = (
            stamp.exists() and stamp.read_text() == fingerprint and (profile != "local" or online_db.exists())
        )
        if not up_to_date:
            t0 = time.perf_counter()
            store.apply(load_definitions(repo, [Path(n).stem for n in files if n.endswith(".py")]))
            if profile == "local":
                _use_wal(online_db)
            stamp.write_text(fingerprint)
            log.info("feast apply (%s) in %s took %.2fs", profile, repo, time.perf_counter() - t0)
    return store


def load_definitions(repo_dir: Path, module_names: Sequence[str] | None = None) -> list[Any]:
    """Import the repo's .py files (or the named ones) the way `feast apply` does, each as a
    top-level module so they may import each other, and collect the Feast objects; sys.modules
    is left as it was."""
    names = sorted(
        module_names if module_names is not None else (p.stem for p in Path(repo_dir).glob("*.py"))
    )
    saved = {n: sys.modules.pop(n) for n in names if n in sys.modules}
    sys.path.insert(0, str(repo_dir))
    try:
        modules = [importlib.import_module(n) for n in names]
    finally:
        sys.path.remove(str(repo_dir))
        for n in names:
            sys.modules.pop(n, None)
        sys.modules.update(saved)
    objects: list[Any] = []
    kinds = (Entity, DataSource, FeatureView, FeatureService)
    for module in modules:
        for value in vars(module).values():
            if isinstance(value, kinds) and not any(value is o for o in objects):
                objects.append(value)
                batch = value.batch_source if isinstance(value, PushSource) else None
                if batch is not None and not any(batch is o for o in objects):
                    objects.append(batch)
    return objects


def _use_wal(db_path: Path) -> None:
    # WAL lets ranking readers in other processes read while the writer commits.
    with sqlite3.connect(db_path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")


# One lock per FeatureStore: the writer and the logger write from different threads, and the
# SQLite online store shares one connection (and so one transaction) between them.
_STORE_LOCKS: weakref.WeakKeyDictionary[FeatureStore, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def store_lock(store: FeatureStore) -> threading.Lock:
    with _LOCKS_GUARD:
        return _STORE_LOCKS.setdefault(store, threading.Lock())


def limit_redis_retries(store: FeatureStore, retries: int) -> None:
    """Make the store's Redis client retry a failed call `retries` times at once, without
    redis-py's default of 3 retries with exponential back-off (seconds of waiting on a store that
    hangs, multiplying its socket timeout). No-op on SQLite."""
    from feast.infra.online_stores.redis import RedisOnlineStore
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    online = store._get_provider().online_store  # noqa: SLF001 - Feast's provider has no public accessor
    if isinstance(online, RedisOnlineStore):
        online._get_client(store.config.online_store).set_retry(Retry(NoBackoff(), retries))  # noqa: SLF001


class StoreUnavailable(RuntimeError):
    """The online store cannot take writes now (locked, down, unreachable): retry later."""


def is_transient_store_error(exc: BaseException) -> bool:
    """Errors that a later retry can cure, as opposed to rows the store will never take."""
    if isinstance(exc, (StoreUnavailable, sqlite3.OperationalError, ConnectionError, TimeoutError, OSError)):
        return True
    try:
        import redis.exceptions as redis_errors
    except ImportError:  # pragma: no cover - redis comes with feast[redis]
        return False
    # a cluster failing a primary over answers CLUSTERDOWN / TRYAGAIN until its replica is promoted
    return isinstance(exc, (redis_errors.ConnectionError, redis_errors.TimeoutError, redis_errors.BusyLoadingError,
                            redis_errors.ClusterDownError, redis_errors.TryAgainError, redis_errors.ClusterError))
