"""`sidstream worker run`: run Faust agents in this process."""

from __future__ import annotations

import logging
import sys

import click

from sidcore.config import Settings, get_settings
from streams.admin.topics import TopicNames
from streams.app import ROLES, build_app
from streams.event_time import TimePolicy
from streams.kafka_clients import check_access, describe
from streams.runtime import RoleHandler

log = logging.getLogger(__name__)


def build_handlers(roles: list[str], s: Settings) -> dict[str, RoleHandler]:
    """The chosen roles' handlers with what they need: encoders, the live codebook version and
    the join state, the Feast sinks. Role modules are imported here, per role, so that a worker
    without encoder roles never imports the models (CLI start-up time and memory)."""
    handlers: dict[str, RoleHandler] = {}
    e = s.encoders
    policy = TimePolicy.from_settings(s.stream)  # one event-time policy for every role's edge
    if "text" in roles or "audio" in roles:
        from encoders.configured import configured_audio_encoder, configured_text_encoder
        from encoders.parts import drill, share_window_batch, threads_by_size
    if "text" in roles:
        from streams.roles.text import TextRole

        handlers["text"] = TextRole(threads_by_size(drill(configured_text_encoder(e), s.stream.slowdown_file), e.threads, e.busy_batch),
                                    policy)
    if "audio" in roles:
        from streams.roles.audio import AudioRole

        audio = configured_audio_encoder(e)
        encoder = share_window_batch(audio, threads_by_size(drill(audio, s.stream.slowdown_file), e.threads, e.busy_batch))
        handlers["audio"] = AudioRole(encoder, s.stream.inline_audio_max_bytes, e.audio_max_bytes, policy)
    if "assigner" in roles:
        from streams.codebooks import LiveCodebooks, registry_codebook_loader
        from streams.identity import KafkaIdentities
        from streams.roles.assigner import AssignerRole
        from streams.state.kept import KeptEmbeddings

        codebooks = LiveCodebooks(registry_codebook_loader(s.registry_dir))
        if codebooks.live is None:
            raise click.ClickException(f"no live codebook version in {s.registry_dir}; run `sidstream train codebooks` or `sidstream demo`")
        kept = KeptEmbeddings(s.home / "state" / f"{s.kafka.topic_prefix}assigner" / "kept.sqlite", s.stream.audio_wait_s)
        identities = KafkaIdentities(s.kafka, TopicNames(s.kafka.topic_prefix).identity,
                                     stall_s=s.stream.restore_stall_s, cache_mb=s.stream.identity_cache_mb,
                                     state_dir=s.home / "state" / f"{s.kafka.topic_prefix}assigner")
        identities.catch_up()
        handlers["assigner"] = AssignerRole(kept, codebooks, identities, s.kafka, policy, s.stream.restore_stall_s)
    if "writer" in roles or "logger" in roles:
        from streams.sinks.store import open_store
        from streams.sinks.writer import FeastSink

        store = open_store(s.feast_dir, profile=s.feast_profile, redis_url=s.redis)
        if "writer" in roles:
            from streams.roles.writer import WriterRole

            handlers["writer"] = WriterRole(FeastSink(store), policy)
        if "logger" in roles:  # its own sink: the writer and logger write from different threads
            from streams.roles.logger import LoggerRole

            handlers["logger"] = LoggerRole(s.feast_dir / "offline" / "interactions", FeastSink(store), policy)
    return handlers


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
    check_access(s.kafka)  # a refused log-in or TLS stops the worker here, in one line
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port)
    handlers = build_handlers(role_list, s)
    from sidcore.threads import limit_native_threads

    for pool in limit_native_threads(s.stream.blas_threads):  # after build_handlers: the libraries are loaded
        log.info("%s threads of %s: %d -> %d", pool.user_api, pool.library, pool.before, pool.after)
    names = TopicNames(s.kafka.topic_prefix)
    app = build_app(s, names, handlers, app_id=app_id or f"{s.kafka.topic_prefix}sidstream-{'-'.join(role_list)}")
    if ready_file:
        from pathlib import Path

        @app.on_partitions_assigned.connect
        async def _ready(sender: object, assigned: object, **_: object) -> None:
            Path(ready_file).write_text("ready\n")

    log.info("worker %s starting on %s (topics prefix %r)", role_list, describe(s.kafka), s.kafka.topic_prefix)
    worker_ = faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False)
    worker_.execute_from_commandline()
    sys.exit(0)
