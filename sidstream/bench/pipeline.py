"""`sidstream bench pipeline`: the text encoder alone vs the whole pipeline on the same texts.

Reference (same run): the text encoder's `encode` on the catalog texts in batches of the
workers' batch size. Pipeline: the same tracks produced to a real local broker, through the
text-encoder worker, the PSRQ assigner and the Feast writer, until readable in Feast, after
`--warmup-tracks` other tracks went through the fresh workers (their latency reported apart).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import resource
import time
from typing import Any

import click
import numpy as np
import psutil

from sidstream.bench import p50_p99
from streams.kafka_clients import Brokers


@click.command()
@click.option("--tracks", "n", default=2000, show_default=True, help="catalog texts (Last.fm artists)")
@click.option("--quick", is_flag=True, help="300 tracks")
@click.option("--rate", default=0.0, show_default=True, help="tracks/s to produce at (0: one burst)")
@click.option("--poll-ms", type=click.FloatRange(min=1), default=10.0, show_default=True,
              help="how often Feast is polled for readability (the latency's resolution); less often while a "
                   "read of many pending tracks is long, so the poller stays under --poll-max-duty busy "
                   "(`polls` in the output)")
@click.option("--poll-max-duty", type=click.FloatRange(min=0.01, max=1.0), default=0.2, show_default=True,
              help="the most of its time the readability poller may spend reading (1: poll every --poll-ms "
                   "whatever a read costs)")
@click.option("--warmup-tracks", type=click.IntRange(min=0), default=100, show_default=True,
              help="tracks sent first (copies of catalog tracks under other ids, same rate) and timed apart: a "
                   "fresh pipeline's first second is not its steady state")
@click.option("--replicas", "replicas_spec", default=None, metavar="ROLE=N,...",
              help="worker processes per role, e.g. text=2 (default one each)")
@click.option("--json", "as_json", is_flag=True)
def command(n: int, quick: bool, rate: float, poll_ms: float, poll_max_duty: float, warmup_tracks: int,
            replicas_spec: str | None, as_json: bool) -> None:
    """Throughput of the text encoder alone and of the full pipeline, their ratio, and p50/p99.

    The pipeline's workers start fresh; `--warmup-tracks` tracks go through it first, at the
    same rate (a burst: as one burst), and their latency is reported apart (`warmup`). The
    throughput, latency and stage figures are those of the `--tracks` tracks that follow."""
    from rich.console import Console

    from encoders.catalog import track_text
    from sidcore.catalog import lastfm_tracks
    from sidcore.config import get_settings
    from sidstream.harness import PipelineRun, parse_replicas
    from streams.admin.broker import local_broker
    from streams.sinks.store import open_store
    from trainer.bootstrap import ensure_codebooks

    try:  # before any work: a typo is reported at once
        replicas = parse_replicas(replicas_spec)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    n = 300 if quick else n
    s = get_settings()
    console = Console(stderr=True)
    tracks = lastfm_tracks(s.lastfm_source, n)
    texts = [track_text(t) for t in tracks]
    # the encoder alone, run as a worker runs it (ThreadsBySize: a batch this size is one part per core)
    bs = s.stream.batch_size
    encoder_s = _encoder_seconds(s, texts)

    local_broker(s).start()
    version = ensure_codebooks(s, [], on_status=console.print)
    run_dir = s.home / "bench" / time.strftime("%Y%m%dT%H%M%S")
    s2 = s.model_copy(update={"feast_root": run_dir / "feast", "registry_root": s.registry_dir})
    run = PipelineRun(s2, run_dir)
    run.create_topics()
    store = open_store(s2.feast_dir, profile=s2.feast_profile, redis_url=s2.redis)
    run.start_workers(groups=(("text",), ("assigner", "writer")), replicas=replicas)
    try:
        producer = run.producer()
        readable = functools.partial(_stream, producer, store, version=version, poll_s=poll_ms / 1000, rate=rate,
                                     max_duty=poll_max_duty)
        warm = [dataclasses.replace(t, track_id=f"warmup-{t.track_id}") for t in tracks[-warmup_tracks:]] if warmup_tracks else []
        warm_latency = readable(warm)[1] if warm else {}
        t1 = time.perf_counter()
        polls: dict[str, float] = {}
        produced, latency = readable(tracks, polls=polls)
        pipeline_s = time.perf_counter() - t1
        stages = _stage_latencies(s.kafka, run.names, produced, latency)
    finally:
        run.stop_workers()
    lat = np.array(list(latency.values()))
    result = {
        "bench": "pipeline",
        "tracks": len(tracks),
        "readable": len(latency),
        "encoder_texts_per_s": round(len(texts) / encoder_s, 1),
        "pipeline_tracks_per_s": round(len(latency) / pipeline_s, 1),
        "ratio_pipeline_to_encoder": round((len(latency) / pipeline_s) / (len(texts) / encoder_s), 3),
        "latency_ms": p50_p99(lat),
        "poll_ms": poll_ms,
        "poll_max_duty": poll_max_duty,
        "polls": polls,  # the mean interval is longer than poll_ms when reads are long (a burst's backlog)
        "warmup": {"tracks": len(warm), "readable": len(warm_latency),
                   "latency_ms": p50_p99(np.array(list(warm_latency.values()))) if warm_latency else None},
        "stages_ms": stages,
        "batch_size": bs,
        "batch_timeout_s": s.stream.batch_timeout_s,
        "produce_rate": rate or "burst",
        "peak_rss_mb": {
            "bench_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "largest_worker": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        },
        "cores": psutil.cpu_count(),
        "note": "pipeline wall time includes produce, 3 topic hops, the assigner and Feast writes, with encoder and writer processes sharing the cores",
    }
    click.echo(json.dumps(result) if as_json else json.dumps(result, indent=2))


def _encoder_seconds(s: Any, texts: list[str]) -> float:
    """Seconds the text encoder alone takes for `texts`, run as a worker runs it (ThreadsBySize:
    a batch of the stream's size is one part per core), after a warm-up batch."""
    from encoders.configured import configured_text_encoder
    from encoders.parts import threads_by_size

    te = threads_by_size(configured_text_encoder(s.encoders), os.cpu_count() or 1, s.encoders.busy_batch)
    te.encode(texts[:32])  # warm-up
    bs = s.stream.batch_size
    t0 = time.perf_counter()
    for i in range(0, len(texts), bs):
        te.encode(texts[i : i + bs])
    return time.perf_counter() - t0


def _stream(producer: Any, store: Any, tracks: list[Any], *, version: str, poll_s: float, rate: float,
            max_duty: float = 0.2, polls: dict[str, float] | None = None) -> tuple[dict[str, int], dict[str, float]]:
    """Produce `tracks` (paced at `rate` tracks/s; 0: one burst) and wait until each is readable
    in Feast; returns (track id -> produce time ms, track id -> produce-to-readable ms)."""
    import threading

    from sidstream.harness import wait_until_readable

    expected = {t.track_id: "text_sid" for t in tracks}
    produced: dict[str, int] = {}
    wait = functools.partial(wait_until_readable, store, expected, produced, 600, version, poll_s=poll_s,
                             max_duty=max_duty, polls=polls)
    if rate <= 0:
        produced.update(producer.send_metadata(tracks))
        producer.flush()
        return produced, wait()
    # paced: the p50/p99 of a steady stream rather than of a burst's queue
    start = time.perf_counter()

    def pace() -> None:
        step = max(1, int(rate / 10))
        for i in range(0, len(tracks), step):
            produced.update(producer.send_metadata(tracks[i : i + step]))
            producer.flush()
            time.sleep(max(0.0, start + (i + step) / rate - time.perf_counter()))

    thread = threading.Thread(target=pace)
    thread.start()
    try:
        return produced, wait()
    finally:
        thread.join()


def _stage_latencies(bootstrap: Brokers, names: Any, produced: dict[str, int], latency: dict[str, float]) -> dict[str, Any]:
    """Where the time goes, per track (p50/p99 ms): produce -> embeddings.text record (text
    worker), -> sids.assigned record (assigner), -> first readable in Feast (writer + poll).
    Times are the records' broker create timestamps, so all three hops are on one clock."""
    emb = _create_times(bootstrap, names.emb_text)
    sid = _create_times(bootstrap, names.sids)
    rows = [(produced[t], emb[t], sid[t], produced[t] + latency[t]) for t in latency if t in emb and t in sid]
    if not rows:
        return {}
    a = np.array(rows, dtype=np.float64)
    return {"encode": p50_p99(a[:, 1] - a[:, 0]), "assign": p50_p99(a[:, 2] - a[:, 1]), "write_and_read": p50_p99(a[:, 3] - a[:, 2])}


def _create_times(bootstrap: Brokers, topic: str) -> dict[str, float]:
    """track id (record key) -> the record's create timestamp (ms); the first record per key."""
    from sidstream.harness import topic_messages

    out: dict[str, float] = {}
    for msg in topic_messages(bootstrap, topic, timeout_s=60):
        out.setdefault(msg.key().decode(), float(msg.timestamp()[1]))
    return out
