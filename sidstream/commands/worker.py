"""`sidstream worker run`: run Faust agents in this process."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import click

from encoders.configured import configured_audio_encoder, configured_text_encoder
from sidcore.config import get_settings
from streams.admin.topics import TopicNames
from streams.app import ROLES, WorkerDeps, build_app, registry_codebook_loader

log = logging.getLogger(__name__)


def build_deps(roles: list[str]) -> WorkerDeps:
    """Load what the chosen roles need: encoders, the live codebook version, the Feast sink."""
    s = get_settings()
    deps = WorkerDeps(settings=s)
    e = s.encoders
    if "text" in roles:
        deps.text_encoder = threads_by_size(_drill(configured_text_encoder(e), s.stream.slowdown_file), e.threads, e.busy_batch)
    if "audio" in roles:
        audio = configured_audio_encoder(e)
        deps.audio_encoder = share_window_batch(
            audio, threads_by_size(_drill(audio, s.stream.slowdown_file), e.threads, e.busy_batch))
    if "assigner" in roles:
        from streams.kept import KeptEmbeddings

        deps.kept = KeptEmbeddings(s.home / "state" / f"{s.kafka.topic_prefix}assigner" / "kept.sqlite", s.stream.audio_wait_s)
        deps.codebook_loader = registry_codebook_loader(s.registry_dir)
        deps.codebooks, deps.pending = deps.codebook_loader()
        if deps.codebooks is None:
            raise click.ClickException(f"no live codebook version in {s.registry_dir}; run `sidstream train codebooks` or `sidstream demo`")
        from streams.identity import KafkaIdentities

        deps.identities = KafkaIdentities(s.kafka.bootstrap, TopicNames(s.kafka.topic_prefix).identity)
        deps.identities.catch_up()
    if "writer" in roles or "logger" in roles:
        from streams.sinks.feast import FeastSink, open_store

        store = open_store(s.feast_dir, profile=s.feast_profile, redis_url=s.redis_url)
        if "writer" in roles:
            deps.feast_sink = FeastSink(store)
        if "logger" in roles:
            deps.history_sink = FeastSink(store)
    return deps


class _SlowedEncoder:
    """Fault drill: while `flag` exists, each encode takes (the factor in it) times as long."""

    def __init__(self, inner: Any, flag: Path) -> None:
        self._inner, self._flag = inner, flag

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def encode(self, batch: Any) -> Any:
        started = time.perf_counter()
        out = self._inner.encode(batch)
        try:
            factor = float(self._flag.read_text().strip() or "10")
        except (FileNotFoundError, ValueError):
            return out
        time.sleep((factor - 1.0) * (time.perf_counter() - started))
        return out


MIN_PART = 8  # a backlog's batch is cut into parts of at least this many items (one per core at most)


class ThreadsBySize:
    """A CPU encoder whose batches run as parts, each on one torch thread, joined in order.

    A small batch (a trickle: latency) is cut into `few` parts; a batch of `busy_batch` items or
    more (a backlog: throughput) into one part per core, at least MIN_PART items each. torch's
    intra-op threads would meet at a barrier after every operator (~60 per MiniLM forward): on a
    host whose other processes take a core now and then, one preempted thread stalls them all
    (spinning), and the encoders' p99 jumped (docs/results/pipeline.md). Parts meet once, at the join.
    64 Last.fm texts per batch on 2 cores, MiniLM: 222 texts/s intra-op, 244 as 2 parts; with a
    process busy 30 % of a core beside them 174 vs 212, 60 %: 152 vs 198. Rows do not depend on
    the batch they are in (tested). An encoder on an accelerator is passed through unchanged.
    """

    def __init__(self, inner: Any, few: int, busy_batch: int, cores: int | None = None) -> None:
        import os
        from concurrent.futures import ThreadPoolExecutor

        self._inner, self._few, self._busy_batch = inner, few, busy_batch
        self._all = cores or os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="encode-part") if self.workers > 1 else None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @property
    def workers(self) -> int:
        """The most parts that run at once."""
        return max(self._few, self._all)

    def parts(self, n: int) -> int:
        """How many parts a batch of n items is cut into."""
        if n >= self._busy_batch:
            return max(1, min(self._all, n // MIN_PART))
        return max(1, min(self._few, n))

    def encode(self, batch: Any) -> Any:
        import numpy as np

        parts = self.parts(len(batch))
        if parts == 1 or self._pool is None:
            return self._encode_part(batch)
        bounds = np.linspace(0, len(batch), parts + 1).astype(int)
        futures = [self._pool.submit(self._encode_part, batch[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        return np.concatenate([f.result() for f in futures])

    def _encode_part(self, part: Any) -> Any:
        import torch

        if torch.get_num_threads() != 1:
            torch.set_num_threads(1)  # this thread's own OpenMP setting
        return self._inner.encode(part)


def threads_by_size(encoder: Any, few: int | None, busy_batch: int) -> Any:
    """`encoder` run as ThreadsBySize parts when it runs on the CPU and `few` is set, else itself."""
    device = getattr(encoder, "device", None)
    on_cpu = device is None or getattr(device, "type", str(device)) == "cpu"
    return ThreadsBySize(encoder, few, busy_batch) if few is not None and on_cpu else encoder


def share_window_batch(audio: Any, wrapped: Any) -> Any:
    """`wrapped` (the audio encoder as the worker calls it). When it runs as ThreadsBySize parts,
    the parts' window micro-batches run at once, so each gets window_batch / parts windows: the
    peak activation memory stays one micro-batch's. musicnn, 16 tracks of 120 s on 2 cores: whole
    on 2 intra-op threads 64.9 windowed audio-s/s at 1,844 MB peak RSS; 2 parts of 16 windows
    70.9 at 2,781 MB; 2 parts of 8 windows 69.3 at 1,863 MB."""
    if isinstance(wrapped, ThreadsBySize) and wrapped.workers > 1:
        audio.window_batch = max(1, audio.window_batch // wrapped.workers)
    return wrapped


def _drill(encoder: Any, flag: Path | None) -> Any:
    return encoder if flag is None else _SlowedEncoder(encoder, flag)


@click.group()
def worker() -> None:
    """Streaming workers (Faust agents)."""


@worker.command()
@click.option("--roles", default=",".join(ROLES), show_default=True, help=f"comma-separated subset of {','.join(ROLES)}")
@click.option("--app-id", default=None, help="Faust app (consumer group) id; default <prefix>sidstream-<roles>")
@click.option("--metrics-port", type=int, default=0, help="serve Prometheus metrics on this port (0: off)")
@click.option("--ready-file", type=click.Path(), default=None, help="touch this file once partitions are assigned")
def run(roles: str, app_id: str | None, metrics_port: int, ready_file: str | None) -> None:
    """Run the chosen agents until interrupted (SIGINT/SIGTERM stop them cleanly)."""
    import faust

    role_list = [r.strip() for r in roles.split(",") if r.strip()]
    bad = set(role_list) - set(ROLES)
    if bad:
        raise click.BadParameter(f"unknown roles {sorted(bad)}; choose from {ROLES}")
    s = get_settings()
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port)
    deps = build_deps(role_list)
    from sidcore.threads import limit_native_threads

    for pool in limit_native_threads(s.stream.blas_threads):  # after build_deps: the libraries are loaded
        log.info("%s threads of %s: %d -> %d", pool.user_api, pool.library, pool.before, pool.after)
    names = TopicNames(s.kafka.topic_prefix)
    app = build_app(s, names, role_list, deps, app_id=app_id or f"{s.kafka.topic_prefix}sidstream-{'-'.join(role_list)}")
    if ready_file:
        from pathlib import Path

        @app.on_partitions_assigned.connect
        async def _ready(sender: object, assigned: object, **_: object) -> None:
            Path(ready_file).write_text("ready\n")

    log.info("worker %s starting on %s (topics prefix %r)", role_list, s.kafka.bootstrap, s.kafka.topic_prefix)
    worker_ = faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False)
    worker_.execute_from_commandline()
    sys.exit(0)
