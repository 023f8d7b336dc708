"""`sidstream bench soak`: a long paced stream with a short late-modality wait, so that join
entries expire during the run. Samples every worker's RSS and the assigner's join-table size.

Goals: each worker's peak RSS in the last quarter <= 1.1x the first quarter's (memory flat),
and the join table never above arrival rate x wait + one batch. Text-only tracks are used on
purpose: every one of them waits for an audio embedding that never comes, which is the worst
case for the join table.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.request

import click
import numpy as np
import psutil
from rich.console import Console

from sidcore.catalog import Track, lastfm_tracks
from sidcore.config import get_settings
from sidstream.harness import PipelineRun, topic_messages, wait_until_readable
from streams.admin.broker import local_broker
from streams.kafka_clients import Brokers
from streams.sinks.store import open_store
from trainer.bootstrap import ensure_codebooks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _gauge(port: int, name: str) -> float | None:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    m = re.search(rf"^{name} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else None


def _record_times_s(bootstrap: Brokers, topic: str) -> list[float]:
    """Create timestamps (s) of every record in `topic`."""
    return [m.timestamp()[1] / 1000.0 for m in topic_messages(bootstrap, topic, timeout_s=60)]


def _sample(run: PipelineRun, port: int, samples: list[dict[str, float]], stop: threading.Event) -> None:
    """Every second until `stop`: each worker's RSS (MB) and the assigner's join-table size."""
    t0 = time.monotonic()
    procs = {name: psutil.Process(p.pid) for name, p in run.processes.items()}
    while not stop.is_set():
        row = {"t": time.monotonic() - t0}
        for name, proc in procs.items():
            try:
                row[name] = proc.memory_info().rss / 2**20
            except psutil.Error:
                row[name] = float("nan")
        row["join"] = _gauge(port, "sidstream_join_waiting") or 0.0
        samples.append(row)
        stop.wait(1.0)


def _rss_quarters(samples: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Each worker's peak RSS in the first and last quarter of the run, and their ratio."""
    quarter = max(1, len(samples) // 4)
    out = {}
    for name in ("text", "assigner", "writer"):
        first = max(r[name] for r in samples[:quarter])
        last = max(r[name] for r in samples[-quarter:])
        out[f"{name}_rss_mb"] = {"first_quarter_peak": round(first, 1), "last_quarter_peak": round(last, 1),
                                 "ratio": round(last / first, 3)}
    return out


@click.command()
@click.option("--tracks", "n", type=click.IntRange(min=100), default=20_000, show_default=True)
@click.option("--rate", type=click.FloatRange(min=1), default=80.0, show_default=True, help="tracks/s produced")
@click.option("--wait", "wait_s", type=click.FloatRange(min=1), default=30.0, show_default=True,
              help="late-modality wait (audio_wait_s) for this run")
@click.option("--json", "as_json", is_flag=True)
def command(n: int, rate: float, wait_s: float, as_json: bool) -> None:
    """Memory and join-table size of the workers over a long stream (RSS first vs last quarter)."""
    console = Console(stderr=True)
    s = get_settings()
    local_broker(s).start()
    version = ensure_codebooks(s, [], on_status=console.print)
    base = lastfm_tracks(s.lastfm_source)
    tracks = [Track(f"soak:{i}", None, b.artist, None, b.tags, preset_text=f"{b.preset_text} (take {i // len(base)})")
              for i, b in ((i, base[i % len(base)]) for i in range(n))]
    run_dir = s.home / "bench" / f"soak-{time.strftime('%Y%m%dT%H%M%S')}"
    s2 = s.model_copy(update={"feast_root": run_dir / "feast", "registry_root": s.registry_dir,
                              "stream": s.stream.model_copy(update={"audio_wait_s": wait_s})})
    run = PipelineRun(s2, run_dir)
    run.create_topics()
    store = open_store(s2.feast_dir, profile=s2.feast_profile, redis_url=s2.redis)
    groups = (("text",), ("assigner",), ("writer",))
    port = _free_port()
    run.start_workers(groups, metrics_ports={("assigner",): port})
    samples: list[dict[str, float]] = []
    stop = threading.Event()
    sampler = threading.Thread(target=_sample, args=(run, port, samples, stop), daemon=True)
    sampler.start()
    producer = run.producer()
    produced_at: dict[str, int] = {}
    try:
        start = time.monotonic()
        for i, t in enumerate(tracks):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            produced_at.update(producer.send_metadata([t]))
        producer.flush(120)
        produce_s = time.monotonic() - start
        latency = wait_until_readable(store, {t.track_id: "text_sid" for t in tracks}, produced_at, 600, version)
    finally:
        stop.set()
        sampler.join(timeout=5)
        run.stop_workers()
    (run_dir / "samples.json").write_text(json.dumps(samples))  # the whole trace, for plotting
    report: dict[str, object] = {"bench": "soak", "tracks": n, "rate": rate, "wait_s": wait_s,
                                 "produce_s": round(produce_s, 1), "readable": len(latency), "samples": len(samples),
                                 "trace": str(run_dir / "samples.json"), **_rss_quarters(samples)}
    # the join table holds the tracks that reached the assigner in the last `wait_s`: bound it by
    # the most tracks the assigner emitted in any window of that length (the broker timestamps
    # of its sids.assigned records), plus one batch; the producer's rate x wait is the nominal
    seen = np.sort(_record_times_s(s.kafka, run.names.sids))
    peak = int(np.max(np.searchsorted(seen, seen + wait_s) - np.arange(len(seen)))) if len(seen) else 0
    bound = peak + s.stream.batch_size
    join_max = max(r["join"] for r in samples)
    report["join_table"] = {"max": join_max, "nominal_rate_x_wait": rate * wait_s,
                            "peak_arrivals_in_wait": peak, "bound": bound, "within_bound": join_max <= bound}
    if as_json:
        click.echo(json.dumps(report))
    else:
        console.print_json(json.dumps(report))
